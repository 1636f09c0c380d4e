"""One real vLLM CPU server: the KV capacity it reports equals the memory estimate, and a
config-only model (dummy weights, generated full-vocabulary tokenizer) streams completions.

The model is the tiny architecture (2 layers here) with a 32000-token vocabulary, generated with
``model.generate=config`` and served with ``--load-format dummy``: random weights emit any token id
below the vocabulary size, so the stream checks that the generated tokenizer covers them all.

On the CPU backend the KV space is explicit (``--kv-cache-memory-bytes``), so the estimate must
be exact; the brief's tolerance is 10 %. The server is the session's shared one
(tests/support/shared_server.py: this model, ``--max-num-seqs 2``, ``--enforce-eager``), which the
capacity test (tests/e2e/test_capacity_vllm.py) uses too.
"""

from __future__ import annotations

import json
import random
import time

import httpx
import pytest

from optimizer.server.telemetry import parse_metrics
from optimizer.space.memory import estimate_memory

pytestmark = [pytest.mark.vllm, pytest.mark.slow, pytest.mark.timeout(900)]

OUTPUT_TOKENS = 64


def test_kv_capacity_reported_by_vllm_matches_the_estimate(shared_server):
    cfg, server = shared_server.cfg, shared_server.server
    est = estimate_memory(shared_server.params, cfg.model, cfg.hardware)
    info = parse_metrics(httpx.get(server.url + "/metrics", timeout=10).text).cache_info
    measured = int(float(info["kv_cache_size_tokens"]))
    print(f"\nKV cache tokens: estimated {est.kv_tokens}, vLLM reports {measured} "
          f"(block_size {info.get('block_size')}, num_gpu_blocks {info.get('num_gpu_blocks')}); "
          f"max concurrency at {est.max_model_len}: estimated {est.max_concurrency:.2f}")
    assert abs(est.kv_tokens - measured) <= 0.10 * measured
    assert est.kv_tokens == measured  # explicit KV space on the CPU backend: exact
    assert f"KV cache size: {measured:,} tokens" in server.log_text()


def _stream(url: str, name: str, prompt: list[int]) -> tuple[int, str, list[str]]:
    body = {"model": name, "prompt": prompt, "max_tokens": OUTPUT_TOKENS, "ignore_eos": True, "stream": True,
            "stream_options": {"include_usage": True}, "temperature": 1.0}
    text, errors, completion_tokens = [], [], 0
    with httpx.stream("POST", url + "/v1/completions", json=body, timeout=120) as r:
        assert r.status_code == 200, r.read()
        for line in r.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            event = json.loads(line[len("data: "):])
            if "error" in event:
                errors.append(str(event["error"]))
            for choice in event.get("choices") or []:
                text.append(choice.get("text") or "")
            if event.get("usage"):
                completion_tokens = event["usage"]["completion_tokens"]
    return completion_tokens, "".join(text), errors


def test_dummy_weights_stream_64_tokens_through_the_full_vocabulary_tokenizer(shared_server):
    cfg, server = shared_server.cfg, shared_server.server
    rng = random.Random(0)
    t0 = time.perf_counter()
    for _ in range(4):
        prompt = [rng.randrange(3, cfg.model.vocab_size) for _ in range(32)]  # ids from every corner of the vocab
        completion_tokens, text, errors = _stream(server.url, shared_server.name, prompt)
        assert errors == [] and completion_tokens == OUTPUT_TOKENS and text
    metrics = parse_metrics(httpx.get(server.url + "/metrics", timeout=10).text)
    assert metrics.counters.get("vllm:generation_tokens", 0) >= 4 * OUTPUT_TOKENS
    assert server.poll() is None, "the server died while streaming"
    print(f"\n4 streams of {OUTPUT_TOKENS} tokens in {time.perf_counter() - t0:.1f} s")
