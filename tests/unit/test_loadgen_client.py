"""The streaming request function against scripted responses (httpx.MockTransport): what counts
as a token, and every way a stream can go wrong becoming a record of the right kind."""

from __future__ import annotations

import asyncio
import json
from typing import Iterable

import httpx
import pytest

from optimizer.loadgen.client import Endpoint, send
from optimizer.loadgen.records import ERROR_KINDS, RequestSpec

SPEC = RequestSpec(0, [1, 2, 3], 3, prompt_tokens=3)


def _cmpl(text: str, finish=None) -> bytes:
    return b"data: " + json.dumps({"id": "c", "object": "text_completion", "choices": [
        {"index": 0, "text": text, "logprobs": None, "finish_reason": finish}]}).encode() + b"\n\n"


def _chat(delta: dict, finish=None) -> bytes:
    return b"data: " + json.dumps({"id": "c", "object": "chat.completion.chunk", "choices": [
        {"index": 0, "delta": delta, "finish_reason": finish}]}).encode() + b"\n\n"


USAGE = b'data: {"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":3,"total_tokens":6}}\n\n'
DONE = b"data: [DONE]\n\n"


class _Body(httpx.AsyncByteStream):
    def __init__(self, parts: Iterable[bytes], fail: Exception | None = None) -> None:
        self.parts, self.fail = list(parts), fail

    async def __aiter__(self):
        for p in self.parts:
            await asyncio.sleep(0.001)
            yield p
        if self.fail is not None:
            raise self.fail


def _run(parts: Iterable[bytes], *, kind: str = "completions", status: int = 200, fail: Exception | None = None,
         ignore_eos: bool = True):
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(status, stream=_Body(parts, fail), headers={"content-type": "text/event-stream"})

    async def go():
        ep = Endpoint("http://x", "m", kind, ignore_eos=ignore_eos, request_timeout_s=5, stall_timeout_s=5)
        async with httpx.AsyncClient(transport=httpx.MockTransport(handler), base_url="http://x") as c:
            return await send(c, ep, SPEC)

    return asyncio.run(go())


def test_a_complete_stream_counts_every_token_event_even_with_empty_text():
    r = _run([_cmpl("a"), _cmpl(""), _cmpl("c", "length"), USAGE, DONE])
    assert r.ok and r.chunks == 3 and len(r.itl) == 2 and r.output_tokens == 3 and r.prompt_tokens == 3
    assert 0 < r.ttft < r.latency


def test_the_chat_role_announcement_is_not_a_token():
    r = _run([_chat({"role": "assistant", "content": ""}), _chat({"content": "a"}), _chat({"content": "b"}),
              _chat({"content": "c"}, "length"), USAGE, DONE], kind="chat")
    assert r.ok and r.chunks == 3 and len(r.itl) == 2


def test_events_split_across_reads_and_joined_in_one_read_parse_alike():
    whole = _cmpl("a") + _cmpl("b") + _cmpl("c") + USAGE + DONE
    r = _run([whole[:7], whole[7:50], whole[50:51], whole[51:]])
    assert r.ok and r.chunks == 3
    r2 = _run([whole])
    assert r2.ok and r2.chunks == 3 and r2.itl == [0.0, 0.0]  # one read: the events arrived together


def test_without_usage_the_token_events_are_counted():
    r = _run([_cmpl("a"), _cmpl("b"), _cmpl("c"), DONE])
    assert r.ok and r.output_tokens == 3 and r.prompt_tokens == 3


@pytest.mark.parametrize("parts,status,fail,kind", [
    ([b'{"error":{"message":"boom"}}'], 500, None, "http_status"),
    ([b'{"error":{"message":"slow down"}}'], 429, None, "rate_limited"),
    ([_cmpl("a"), b"data: {not json\n\n", DONE], 200, None, "malformed"),
    ([_cmpl("a"), b"data: [1, 2]\n\n", DONE], 200, None, "malformed"),
    ([_cmpl("a"), b'data: {"error": {"message": "engine died"}}\n\n', DONE], 200, None, "http_status"),
    ([_cmpl("a"), _cmpl("b"), _cmpl("c"), USAGE], 200, None, "no_done"),
    ([_cmpl("a"), USAGE.replace(b'"completion_tokens":3', b'"completion_tokens":1'), DONE], 200, None,
     "incomplete"),
    ([_cmpl("a")], 200, httpx.RemoteProtocolError("peer closed"), "stream_broken"),
    ([_cmpl("a")], 200, httpx.ReadTimeout("no data"), "stalled"),
    ([], 200, httpx.ConnectError("refused"), "connect"),
    ([_cmpl("a")], 200, RuntimeError("surprise"), "other"),
])
def test_each_failure_is_a_record_of_its_kind_never_an_exception(parts, status, fail, kind):
    r = _run(parts, status=status, fail=fail)
    assert not r.ok and r.error_kind == kind and r.error and kind in ERROR_KINDS
    if status != 200:
        assert r.status == status


def test_a_request_over_its_time_limit_is_a_timeout():
    async def go():
        async def handler(request: httpx.Request) -> httpx.Response:
            await asyncio.sleep(5)
            return httpx.Response(200)

        ep = Endpoint("http://x", "m", request_timeout_s=0.2)
        async with httpx.AsyncClient(transport=httpx.MockTransport(handler), base_url="http://x") as c:
            return await send(c, ep, SPEC)

    r = asyncio.run(go())
    assert not r.ok and r.error_kind == "timeout"


def test_the_request_body_asks_for_exact_lengths_and_usage():
    ep = Endpoint("http://x", "m", "chat")
    b = ep.body(RequestSpec(0, [{"role": "user", "content": "hi"}], 7))
    assert b["messages"] and b["max_tokens"] == 7 and b["ignore_eos"] is True and "min_tokens" not in b
    assert b["stream"] is True and b["stream_options"] == {"include_usage": True} and ep.path == "/v1/chat/completions"


def test_the_request_body_carries_the_workloads_sampling_exactly():
    from optimizer.loadgen.client import Sampling
    from optimizer.settings.config import WorkloadConfig

    greedy = json.loads(Endpoint("http://x", "m").encode(SPEC))
    assert greedy["temperature"] == 0.0 and "top_p" not in greedy and "top_k" not in greedy and "seed" not in greedy
    w = WorkloadConfig(name="t", temperature=0.8, top_p=0.95, top_k=40, sampling_seed=7)
    body = json.loads(Endpoint("http://x", "m", sampling=Sampling.of(w)).encode(SPEC))
    assert (body["temperature"], body["top_p"], body["top_k"], body["seed"]) == (0.8, 0.95, 40, 7)
    assert body["ignore_eos"] is True and body["max_tokens"] == 3 and body["prompt"] == [1, 2, 3]
