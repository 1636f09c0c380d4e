"""The probe's HTTP shell against an httpx.MockTransport that answers as vLLM's OpenAI server does."""

from __future__ import annotations

import json
import math

import httpx
import pytest

from optimizer.quality.dataset import QualityPrompt, QualitySet, QualityTask, QualityText, load_set
from optimizer.quality.server_probe import ProbeError, probe_distributions, run_probe

QSET = QualitySet("t", 1, "0" * 64, (QualityText("a", "one two three"), QualityText("b", "four five")),
                  (QualityPrompt("p", "copy", "say it"),),
                  (QualityTask("k1", "arithmetic", "1 + 1 =", "2"), QualityTask("k2", "lookup", "x is", "5")))


def vllm_like(requests: list[dict], *, logprobs: bool = True, status: int = 200, max_model_len: int = 4096):
    """Word i of a prompt is token 100 + i; ``/tokenize`` answers as vLLM's does (its context included);
    a prompt of token ids is read as they are; a passage (prompt_logprobs) longer than the context is
    refused with 400."""
    def handler(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        if status != 200:
            return httpx.Response(status, json={"error": {"message": "boom"}})
        if request.url.path == "/tokenize":
            toks = [100 + i for i in range(len(body["prompt"].split()))]
            return httpx.Response(200, json={"count": len(toks), "max_model_len": max_model_len, "tokens": toks})
        requests.append(body)
        prompt = body["prompt"]
        ids = list(prompt) if isinstance(prompt, list) else [100 + i for i in range(len(prompt.split()))]
        if body.get("prompt_logprobs") is not None and len(ids) + body["max_tokens"] > max_model_len:
            return httpx.Response(400, json={"error": {"message": "This model's maximum context length is ..."}})
        gen = [7, 8, 9][:body["max_tokens"]]
        choice = {"index": 0, "text": " 2." if body["prompt"] == "1 + 1 =" else " x y", "finish_reason": "length",
                  "token_ids": gen, "prompt_token_ids": ids}
        if body.get("prompt_logprobs") is not None and logprobs:
            # the actual token (rank 2 here) and the top-k, as vLLM keys them: token ids as strings
            choice["prompt_logprobs"] = [None] + [
                {str(t): {"logprob": -1.0, "rank": 2, "decoded_token": "w"},
                 **{str(900 + r): {"logprob": -0.5 - r, "rank": r + 1, "decoded_token": "v"}
                    for r in range(body["prompt_logprobs"]) if r != 1}} for t in ids[1:]]
        if body.get("logprobs"):
            choice["logprobs"] = {"tokens": [f"token_id:{t}" for t in gen],
                                  "top_logprobs": [{f"token_id:{t}": -0.1, f"token_id:{t + 1}": -2.0} for t in gen]}
        return httpx.Response(200, json={"choices": [choice], "usage": {}})
    return handler


def test_probe_scores_every_text_and_prompt_one_request_at_a_time_greedy():
    sent: list[dict] = []
    with httpx.Client(transport=httpx.MockTransport(vllm_like(sent))) as client:
        s = run_probe("http://srv", "m", QSET, max_tokens=3, top_k=4, client=client)
    assert [t.n_tokens for t in s.texts] == [2, 1]
    assert s.ppl == pytest.approx(math.e) and s.n_tokens == 3
    assert [g.token_ids for g in s.generations] == [(7, 8, 9)]
    assert s.generations[0].top_ids == ((7, 8), (8, 9), (9, 10))  # "token_id:N" keys read as ids
    assert all(b["temperature"] == 0.0 for b in sent)
    assert [b["max_tokens"] for b in sent] == [1, 1, 3, 16, 16]
    assert [b.get("prompt_logprobs") for b in sent] == [4, 4, None, None, None]
    assert sent[2]["logprobs"] == 5 and sent[2]["return_tokens_as_token_ids"] and sent[3]["stop"] == ["\n"]
    a = s.dists[0]
    assert a.n == 2 and a.k == 4 and a.top(0)[101] == -1.0 and a.top1(0) == 900
    assert a.top_ids[:4] == (900, 101, 902, 903)  # the best 4, ranked: the actual token was second
    assert [(t.id, t.correct) for t in s.tasks] == [("k1", True), ("k2", False)] and s.task_accuracy == 0.5
    assert s.dataset == "t" and s.max_tokens == 3 and s.ppl_seconds >= 0 and s.gen_seconds >= 0


def test_a_passage_longer_than_the_servers_context_is_scored_on_the_tokens_that_fit():
    """Text 'a' has 3 tokens; a server of max_model_len 3 cannot answer it with one more token (vLLM
    refuses with 400), so it is sent as its first 2 token ids and scores 1 position, the same as the
    first position of the full passage on a larger server."""
    sent: list[dict] = []
    with httpx.Client(transport=httpx.MockTransport(vllm_like(sent, max_model_len=3))) as client:
        short = run_probe("http://srv", "m", QSET, max_tokens=1, top_k=4, client=client)
    assert sent[0]["prompt"] == [100, 101] and sent[1]["prompt"] == "four five"  # b fits: sent as text
    assert [t.n_tokens for t in short.texts] == [1, 1]
    with httpx.Client(transport=httpx.MockTransport(vllm_like([]))) as client:
        full = run_probe("http://srv", "m", QSET, max_tokens=1, top_k=4, client=client)
    assert short.dists[0].token_ids == full.dists[0].token_ids[:1] and short.dists[0].top(0) == full.dists[0].top(0)


def test_the_batched_view_sends_every_passage_and_reads_the_same_distributions():
    sent: list[dict] = []
    with httpx.Client(transport=httpx.MockTransport(vllm_like(sent))) as client:
        one = run_probe("http://srv", "m", QSET, max_tokens=3, top_k=4, client=client).dists
        batched = probe_distributions("http://srv", "m", QSET, top_k=4, concurrency=2, client=client)
    assert batched == one


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
    assert {p.kind for p in s.prompts} == {"copy", "open"} and s.tasks == ()


def test_quality_v2_is_the_generators_output_with_long_passages_and_four_task_kinds():
    from optimizer.quality import _make_v2
    from optimizer.quality.dataset import DATA_DIR

    assert (DATA_DIR / "quality-v2.json").read_text() == _make_v2.render()  # versioned: regenerated byte for byte
    s = load_set("quality-v2")
    assert s.version == 2 and [t.id for t in s.texts[:30]] == [t.id for t in load_set("quality-v1").texts]
    long = [t for t in s.texts if t.id.startswith("long-")]
    assert len(long) == 2 and all(len(t.text.split()) > 2000 for t in long)  # ~2.5-3.9k SmolLM2 tokens
    assert {t.kind for t in s.tasks} == {"arithmetic", "copy", "format", "lookup"} and len(s.tasks) == 64
    arith = s.tasks[0]
    a, b = arith.prompt.rsplit("\n", 1)[1].removesuffix(" =").split(" + ")
    assert int(arith.answer) == int(a) + int(b)


def test_quality_v2_ci_is_quality_v2_cut_by_the_generators_rule_keeping_both_long_passages():
    from optimizer.quality import _make_v2
    from optimizer.quality.dataset import DATA_DIR

    assert (DATA_DIR / "quality-v2-ci.json").read_text() == _make_v2.render_ci()  # regenerated byte for byte
    ci, v2 = load_set("quality-v2-ci"), load_set("quality-v2")
    assert ci.name == "quality-v2-ci" and ci.sha256 != v2.sha256
    # a subset: every item is quality-v2's, unedited, in quality-v2's order
    for part in ("texts", "prompts", "tasks"):
        mine, theirs = getattr(ci, part), getattr(v2, part)
        assert set(mine) <= set(theirs) and sorted(mine, key=theirs.index) == list(mine), part
    assert [t.id for t in ci.texts if t.id.startswith("long-")] == ["long-ledger", "long-recall"]
    assert len(ci.texts) == 10 and len(ci.prompts) == 4 and len(ci.tasks) == 16
    assert sorted(p.kind for p in ci.prompts) == ["copy", "copy", "open", "open"]
    assert sorted({t.kind for t in ci.tasks}) == ["arithmetic", "copy", "format", "lookup"]
    assert all(sum(t.kind == k for t in ci.tasks) == 4 for k in ("arithmetic", "copy", "format", "lookup"))


def test_an_unknown_set_is_refused_listing_the_available_ones():
    from optimizer.core.errors import ConfigError

    with pytest.raises(ConfigError, match="quality-v1"):
        load_set("quality-v9")
