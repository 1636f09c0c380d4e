"""Storage pieces of parallel workers that need no database server: heartbeat settings, the
stale-trial retry, reaping one worker's leftovers, the worker lock, the new config keys."""

from __future__ import annotations

import optuna
import pytest
from optuna.distributions import IntDistribution
from optuna.trial import TrialState, create_trial

from optimizer.core.errors import ConfigError, StudyError
from optimizer.study.coordination import WorkerLock, enqueue_baseline_once, in_flight
from optimizer.study.storage import RetryStaleTrial, make_storage, reap_interrupted, redact_url

optuna.logging.set_verbosity(optuna.logging.WARNING)


@pytest.mark.parametrize("url, shown", [
    ("postgresql://opt:s3cr3t@db:5432/studies", "postgresql://opt:***@db:5432/studies"),
    ("postgresql://opt@db/studies", "postgresql://opt@db/studies"),
    ("sqlite:///studies/x.db", "sqlite:///studies/x.db"),
])
def test_storage_urls_are_logged_without_the_password(url, shown):
    assert redact_url(url) == shown


def test_heartbeat_settings_reach_the_storage(tmp_path):
    st = make_storage(f"sqlite:///{tmp_path}/s.db", heartbeat=True, interval_s=2, grace_s=5, max_retries=3)
    assert st.heartbeat_interval == 2 and st.grace_period == 5
    cb = st.get_heartbeat_stale_trial_callback()
    assert isinstance(cb, RetryStaleTrial) and cb.max_retries == 3


def _study(tmp_path):
    return optuna.create_study(study_name="s", storage=f"sqlite:///{tmp_path}/s.db", direction="maximize")


def _running(study, worker, **attrs):
    study.add_trial(create_trial(state=TrialState.RUNNING, params={"max_num_seqs": 64},
                                 distributions={"max_num_seqs": IntDistribution(8, 256)},
                                 user_attrs={"worker": worker, **attrs}))
    return study.trials[-1]


def test_a_stale_trial_is_retried_with_its_params_kind_and_the_reason(tmp_path):
    study = _study(tmp_path)
    t = _running(study, "gpu-7/w1", kind="baseline", gpus="2,3")
    RetryStaleTrial(1)(study, t)
    retry = study.trials[-1]
    assert retry.state == TrialState.WAITING and retry.params == {"max_num_seqs": 64}
    assert retry.system_attrs["failed_trial"] == t.number
    assert retry.user_attrs["retry_of"] == t.number and retry.user_attrs["attempt"] == 1
    assert retry.user_attrs["kind"] == "baseline" and "gpu-7/w1 stopped beating" in retry.user_attrs["retry_reason"]
    assert "worker" not in retry.user_attrs and "gpus" not in retry.user_attrs  # the new worker records its own


def test_a_stale_trial_past_its_retries_is_not_retried_again(tmp_path):
    study = _study(tmp_path)
    t = _running(study, "gpu-7/w1", attempt=1)
    RetryStaleTrial(1)(study, t)
    assert len(study.trials) == 1


def test_a_restarted_worker_fails_only_its_own_leftover_trials(tmp_path):
    study = _study(tmp_path)
    mine = _running(study, "a/w0")
    other = _running(study, "b/w0")
    assert reap_interrupted(study, max_retries=1, worker="a/w0") == 1
    states = {t.number: t.state for t in study.trials}
    assert states[mine.number] == TrialState.FAIL and states[other.number] == TrialState.RUNNING
    assert in_flight(study) == 1
    assert [t.user_attrs.get("retry_of") for t in study.trials if t.state == TrialState.WAITING] == [mine.number]


def test_the_baseline_is_enqueued_once_across_calls(tmp_path):
    study = _study(tmp_path)
    url = f"sqlite:///{tmp_path}/s.db"
    assert enqueue_baseline_once(study, url, {"max_num_seqs": 128}) is True
    assert enqueue_baseline_once(study, url, {"max_num_seqs": 128}) is False
    assert [t.user_attrs["kind"] for t in study.trials] == ["baseline"]


def test_one_process_per_worker_name(tmp_path):
    with WorkerLock(tmp_path, "s", "host/w0"):
        with pytest.raises(StudyError, match="already running on this host"):
            WorkerLock(tmp_path, "s", "host/w0").acquire()
        WorkerLock(tmp_path, "s", "host/w1").acquire().release()  # another name is another worker
    WorkerLock(tmp_path, "s", "host/w0").acquire().release()


@pytest.mark.parametrize("override, key", [
    ("study.workers=-1", "study.workers"),
    ("study.heartbeat_interval_s=0", "study.heartbeat_interval_s"),
    ("study.heartbeat_grace_s=30", "study.heartbeat_grace_s"),
    ("hardware.gpu_ids=[0,0]", "hardware.gpu_ids"),
    ("server.module=not a module", "server.module"),
    ("study.host=a/b", "study.host"),
])
def test_new_fleet_settings_are_checked(compose, override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        compose(override)


def test_server_module_reaches_the_command(compose, tmp_path):
    from pathlib import Path

    from optimizer.space.engine_args import EngineParams
    from optimizer.trial.trial import TrialContext, launch_for

    cfg = compose("server.module=optimizer.testing.fake_vllm")
    ctx = TrialContext(cfg=cfg, model_dir=Path("/m"), python="python", server_env={}, api_key=None,
                       trial_root=tmp_path, pid_dir=tmp_path)
    assert launch_for(ctx, EngineParams(), 8000).argv[:2] == ["-m", "optimizer.testing.fake_vllm"]
