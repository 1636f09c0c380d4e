"""The quality gate inside a real study: the optimizer CLI, SmolLM2-135M-Instruct served by vLLM's
CPU build, a SQLite study of two trials. The baseline (vLLM defaults) is probed and becomes the
study's reference, its server against itself (another batch composition) the noise floor; the
space offers only an fp8_e5m2 KV cache (2 mantissa bits; mean KLD ~0.1 and same top-1 ~80 % in
benchmarks/results/quality-v2.json), so the second trial is the damaging config and the quality
constraint must make it infeasible while its load test stands. (Passed in 167 s on the 2-core host:
floor mean KLD 5.6e-4; fp8_e5m2 mean KLD 0.068, same top-1 85 %, tasks 40.6 % against 48.4 %,
violation 18.5.)

Every server gets ``--enforce-eager`` (a compiled start takes minutes longer on a loaded host) and
the scheduler settings are fixed, so the trials differ only in the KV-cache dtype.

The study runs in ``load.mode=capacity`` (a short ladder: 1 then 2 users, the cap; with the probe call
removed it fails, no reference stored): a capacity trial
once returned before the quality probe, so its gate recorded every numerics change as satisfied
(issue 23). Every mode now shares the trial's one after-load step, so this study covers the
fixed-load gate too (tests/integration/test_trial_record.py shows both modes call the probe)."""

from __future__ import annotations

import json
import math

import pytest
from optuna.trial import TrialState

from optimizer.record import TrialRecord
from tests.support.study_runner import StudyDir

pytestmark = [pytest.mark.vllm, pytest.mark.slow, pytest.mark.timeout(3000)]

FIXED = ["model=smollm2-135m-instruct", "server.extra_args=[--enforce-eager]", "server.start_timeout_s=1200",
         "search.max_num_seqs.low=8", "search.max_num_seqs.high=8", "search.max_num_batched_tokens.low=2048",
         "search.max_num_batched_tokens.high=2048", "search.kv_cache_gib.low=1.0", "search.kv_cache_gib.high=1.0",
         "search.enable_chunked_prefill=[true]", "search.enable_prefix_caching=[true]",
         "search.kv_cache_dtype=[fp8_e5m2]", "slo.p99_ms=600000", "quality.mode=gate",
         # the capacity ladder as the load step: probes at 1 and 2 users, both well inside the limit
         "load.mode=capacity", "load.capacity.max=2", "load.capacity.max_probes=2", "load.capacity.min_windows=2",
         "load.num_requests=16", "load.warmup_requests=4", "load.p99_sizing=off"]


def test_the_gate_rejects_an_fp8_e5m2_kv_cache_and_keeps_the_baseline(tmp_path):
    sd = StudyDir(tmp_path, "q")
    r = sd.run("study.n_trials=2", *FIXED, timeout=2800)
    assert r.returncode == 0, r.stderr[-4000:]
    study = sd.study()
    trials = sorted((t for t in study.trials if t.state == TrialState.COMPLETE), key=lambda t: t.number)
    assert len(trials) == 2, [(t.number, t.state) for t in study.trials]
    base, fp8 = trials
    reference = json.loads(study.user_attrs["quality_reference"])
    assert reference["dataset"] == "quality-v2" and study.user_attrs["quality_floor"]["views"] == 1
    for t in trials:
        rec = TrialRecord.from_trial(t)
        assert rec.measured and rec.quality is not None and rec.quality.measured, t.user_attrs
        assert set(t.constraints) == {"slo", "errors", "startup", "memory", "quality"}
        assert rec.capacity is not None and rec.capacity.result.feasible, t.user_attrs  # measured by the ladder
        q = rec.quality
        print(f"\ntrial {t.number} ({q.numerics or 'baseline'}): mean KLD {q.mean_kld:.2e}, P99 {q.p99_kld:.2e}, "
              f"same top-1 {q.same_top1:.4f}, ppl ratio {q.ppl_ratio:.4f}, tasks {q.task_accuracy:.3f}, self "
              f"{q.self_mean_kld:.2e}, probe {q.probe_s:.1f} s, violation {q.violation:.3f}; {t.value:.1f} tok/s")
    qb, qf = TrialRecord.from_trial(base).quality, TrialRecord.from_trial(fp8).quality
    assert base.user_attrs.get("kind") == "baseline" and qb.is_reference and not qb.gated
    assert qb.mean_kld == 0.0 and qb.same_top1 == 1.0 and base.constraints["quality"] == 0.0
    assert all(v <= 0 for v in base.constraints.values()), base.constraints  # the baseline is feasible
    assert json.loads(fp8.user_attrs["engine_params"])["kv_cache_dtype"] == "fp8_e5m2"
    assert qf.gated and "kv_cache_dtype" in qf.numerics
    assert fp8.constraints["quality"] > 0 and qf.violation == pytest.approx(fp8.constraints["quality"], abs=1e-3)
    assert fp8.constraints["slo"] <= 0 and fp8.constraints["errors"] <= 0  # infeasible by quality alone
    assert math.isfinite(qf.mean_kld) and qf.mean_kld > 0.005 and "mean KLD" in qf.reasons
    assert "REJECTED by the quality gate" in r.stderr
    page = (tmp_path / "reports" / "q" / "index.html").read_text()
    assert 'id="quality"' in page and f"trial {fp8.number} (kv_cache_dtype" in page
