"""The quality gate's noise floor is measured once per study, by the trial that becomes its reference.

A real study (``run_study``, SQLite, the real trial runner) of small fake vLLM servers
(optimizer.testing.fake_vllm); only the probe's two HTTP parts are replaced by counting fakes: the
probe itself (``run_probe``, every trial) and the floor's batched pass over the passages
(``probe_distributions`` with every passage in flight, ~40 s a trial on the 2-core CPU host with
SmolLM2). The floor is a property of the reference under batching: measured by the baseline,
stored with it (``quality_floor``), reused by every later trial and by a resumed study.
"""

from __future__ import annotations

import os
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from optimizer.record import TrialRecord
from optimizer.study.loop import Runtime, run_study
from optimizer.trial import trial_quality as study_quality
from tests.support.quality_fakes import scores

pytestmark = pytest.mark.timeout(600)
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def probes(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    calls = {"probe": 0, "floor": 0}

    def run_probe(url, model, qset, **kw):
        calls["probe"] += 1
        return scores()

    def probe_distributions(url, model, qset, **kw):
        calls["floor"] += 1
        return scores(0.01).dists  # the reference's passages all at once: a little off itself

    monkeypatch.setattr(study_quality, "run_probe", run_probe)
    monkeypatch.setattr(study_quality, "probe_distributions", probe_distributions)
    return calls


def _cfg(compose, tmp_path: Path, n_trials: int):
    model = tmp_path / "model"
    model.mkdir(exist_ok=True)
    (model / "config.json").write_text("{}")
    return compose(f"study.n_trials={n_trials}", "quality.mode=gate", "server.module=optimizer.testing.fake_vllm",
                   "slo.p99_ms=60000", "model.generate=", f"model.path={model}", "search.sampler=random",
                   "study.confirm.top_k=0", "load.num_requests=8", "load.warmup_requests=1", "load.concurrency=2",
                   "workload.prompt_tokens=32", "workload.output_tokens=4", "server.start_timeout_s=60",
                   "study.name=floor", f"study.storage=sqlite:///{tmp_path / 'floor.db'}",
                   f"study.runs_dir={tmp_path / 'runs'}", f"server.cache_dir={tmp_path / 'cache'}",
                   "search.kv_cache_dtype=[auto,fp8_e5m2]", "study.enqueue=[{kv_cache_dtype:fp8_e5m2}]")


def test_the_noise_floor_is_probed_once_per_study_by_its_reference_and_reused_on_resume(compose, tmp_path, probes):
    rt = Runtime(environ=dict(os.environ, PYTHONPATH=str(REPO)), worker="test/w0")
    cfg = _cfg(compose, tmp_path, 3)
    run_study(cfg, rt)
    study = optuna.load_study(study_name="floor", storage=cfg.study.storage)
    done = [t for t in study.trials if t.state == TrialState.COMPLETE]
    assert len(done) == 3 and probes["probe"] == 3, (probes, [(t.number, t.state) for t in study.trials])
    assert probes["floor"] == 1, probes  # the baseline only: not once per probed trial
    floor = study.user_attrs[study_quality.FLOOR_ATTR]
    assert floor["views"] == 1 and floor["mean_kld"] > 0
    recs = {t.number: TrialRecord.from_trial(t).quality for t in done}
    assert recs[0].is_reference and recs[0].self_mean_kld == pytest.approx(floor["mean_kld"], rel=0.05)
    assert all(not q.is_reference and q.self_mean_kld != q.self_mean_kld for n, q in recs.items() if n), recs  # NaN
    fp8 = next(q for q in recs.values() if "kv_cache_dtype" in q.numerics)
    assert fp8.gated and fp8.floor_mean_kld == pytest.approx(floor["mean_kld"], rel=0.05)  # graded against the stored floor

    run_study(_cfg(compose, tmp_path, 4), rt)  # resumed: one trial more, the floor read back, not measured
    study = optuna.load_study(study_name="floor", storage=cfg.study.storage)
    assert probes == {"probe": 4, "floor": 1} and study.user_attrs[study_quality.FLOOR_ATTR] == floor
