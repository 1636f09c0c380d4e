"""The probe's HTTP shell against an httpx.MockTransport that answers as vLLM's OpenAI server does."""

from __future__ import annotations

import json
import math

import httpx
import pytest

from optimizer.quality.dataset import QualityPrompt, QualitySet, QualityText, load_set
from optimizer.quality.probe import ProbeError, run_probe

QSET = QualitySet("t", 1, "0" * 64, (QualityText("a", "one two three"), QualityText("b", "four five")),
                  (QualityPrompt("p", "copy", "say it"),))


def vllm_like(requests: list[dict], *, logprobs: bool = True, status: int = 200):
    def handler(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        requests.append(body)
        if status != 200:
            return httpx.Response(status, json={"error": {"message": "boom"}})
        words = body["prompt"].split()
        ids = [100 + i for i in range(len(words))]
        choice = {"index": 0, "text": " x y", "finish_reason": "length", "token_ids": [7, 8, 9][:body["max_tokens"]],
                  "prompt_token_ids": ids}
        if body.get("prompt_logprobs") is not None and logprobs:
            choice["prompt_logprobs"] = [None] + [{str(t): {"logprob": -1.0, "rank": 1, "decoded_token": "w"}}
                                                  for t in ids[1:]]
        return httpx.Response(200, json={"choices": [choice], "usage": {}})
    return handler


def test_probe_scores_every_text_and_prompt_one_request_at_a_time_greedy():
    sent: list[dict] = []
    with httpx.Client(transport=httpx.MockTransport(vllm_like(sent))) as client:
        s = run_probe("http://srv", "m", QSET, max_tokens=3, client=client)
    assert [t.n_tokens for t in s.texts] == [2, 1]
    assert s.ppl == pytest.approx(math.e) and s.n_tokens == 3
    assert [g.token_ids for g in s.generations] == [(7, 8, 9)]
    assert all(b["temperature"] == 0.0 and b["return_token_ids"] for b in sent)
    assert [b["max_tokens"] for b in sent] == [1, 1, 3]
    assert [b.get("prompt_logprobs") for b in sent] == [0, 0, None]
    assert s.dataset == "t" and s.max_tokens == 3 and s.ppl_seconds >= 0 and s.gen_seconds >= 0


def test_a_server_without_prompt_logprobs_is_a_probe_error_that_says_what_is_missing():
    with httpx.Client(transport=httpx.MockTransport(vllm_like([], logprobs=False))) as client:
        with pytest.raises(ProbeError, match="prompt_logprobs"):
            run_probe("http://srv", "m", QSET, max_tokens=3, client=client)


def test_an_http_error_names_the_item_and_status():
    with httpx.Client(transport=httpx.MockTransport(vllm_like([], status=500))) as client:
        with pytest.raises(ProbeError, match=r"text 'a': HTTP 500"):
            run_probe("http://srv", "m", QSET, max_tokens=3, client=client)


def test_an_unreachable_server_is_a_probe_error():
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    with httpx.Client(transport=httpx.MockTransport(refuse)) as client:
        with pytest.raises(ProbeError, match="ConnectError"):
            run_probe("http://srv", "m", QSET, max_tokens=3, client=client)


def test_the_shipped_set_is_versioned_and_has_copy_and_open_prompts():
    s = load_set("quality-v1")
    assert s.version == 1 and len(s.sha256) == 64
    assert 20 <= len(s.texts) <= 40
    assert {p.kind for p in s.prompts} == {"copy", "open"}


def test_an_unknown_set_is_refused_listing_the_available_ones():
    from optimizer.errors import ConfigError

    with pytest.raises(ConfigError, match="quality-v1"):
        load_set("quality-v9")
