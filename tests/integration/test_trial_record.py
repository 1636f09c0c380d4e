"""``run_trial`` against a real server process (the small fake vLLM of optimizer.testing): the
record it returns holds every stage, the stop included (vLLM itself: tests/e2e)."""

from __future__ import annotations

import math
import os
from pathlib import Path

import pytest

from optimizer.record import Quality, TrialRecord
from optimizer.trial import trial as trial_module
from optimizer.space.engine_args import EngineParams
from optimizer.space.search_space import build_space
from optimizer.study.loop import Runtime, make_context
from optimizer.trial.trial import run_trial

REPO = Path(__file__).resolve().parents[2]


def _ctx(compose, tmp_path: Path, *overrides: str):
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    cfg = compose(*overrides, "server.module=optimizer.testing.fake_vllm", "slo.p99_ms=60000", "model.generate=", f"model.path={model}",
                  "load.num_requests=12", "load.warmup_requests=2", "load.concurrency=2", "workload.prompt_tokens=32",
                  "workload.output_tokens=8", "server.start_timeout_s=60", f"study.runs_dir={tmp_path / 'runs'}",
                  f"server.cache_dir={tmp_path / 'cache'}", "study.name=rec")
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return make_context(cfg, Runtime(environ=env), build_space(cfg))


@pytest.fixture
def ctx(compose, tmp_path: Path):
    return _ctx(compose, tmp_path)


def test_a_measured_trial_records_every_stage_the_stop_included(ctx):
    rec = run_trial(ctx, 0, EngineParams(kv_cache_gib=1.0), "", False)
    assert rec.measured and rec.outcome is not None and rec.failure is None
    t = rec.timings
    assert t is not None and all(math.isfinite(v) and v >= 0 for v in (t.wait_s, t.start_s, t.warmup_s, t.load_s,
                                                                        t.stop_s, t.total_s))
    assert t.total_s >= t.start_s + t.load_s
    assert rec.launch.argv[:2] == ("-m", "optimizer.testing.fake_vllm") and rec.launch.vllm_version
    assert rec.memory is not None and rec.setup.engine_params == {"kv_cache_gib": 1.0}
    attrs = rec.to_attrs()
    assert {"t_wait_s", "t_start_s", "t_warmup_s", "t_load_s", "t_stop_s", "t_total_s", "server_command",
            "output_tok_s", "srv_generation_tokens", "feasible"} <= set(attrs)
    back = TrialRecord.from_attrs(attrs)
    assert back.timings == _rounded(t) and back.measured
    assert (ctx.trial_root / "trial-0000" / "server.log").exists()


def _rounded(t):  # noqa: N802 - what the attrs keep: seconds to 0.01
    from dataclasses import fields, replace

    return replace(t, **{f.name: round(getattr(t, f.name), 2) for f in fields(t)})


CAPACITY = ("load.mode=capacity", "load.capacity.max=2", "load.capacity.max_probes=2", "load.capacity.min_windows=1",
            "load.p99_sizing=off")


@pytest.mark.parametrize("mode", [(), CAPACITY], ids=["fixed-load", "capacity"])
def test_every_load_mode_probes_the_quality_of_its_warm_server_after_the_load(compose, tmp_path, monkeypatch, mode):
    # one after-load step for every mode: a capacity trial that skipped the probe left the quality gate
    # satisfied without checking anything (issue 23)
    calls: list[tuple[str, str, bool]] = []

    def probe(cfg, url, model, api_key, floor=False):
        calls.append((url, model, cfg.load.mode == "capacity"))
        return Quality(error="the fake probe ran")

    monkeypatch.setattr(trial_module, "probe_server", probe)
    ctx = _ctx(compose, tmp_path, "quality.mode=gate", *mode)
    rec = run_trial(ctx, 0, EngineParams(kv_cache_gib=1.0), "", False)
    assert rec.measured and rec.outcome is not None and rec.failure is None
    assert len(calls) == 1 and calls[0][0].startswith("http://") and calls[0][2] == bool(mode), calls
    assert rec.quality == Quality(error="the fake probe ran")
    assert (rec.capacity is not None) == bool(mode)
