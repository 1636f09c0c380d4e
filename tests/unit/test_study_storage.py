import optuna
import pytest

from optimizer.core.errors import ConfigError, StudyError
from optimizer.space.search_space import build_space
from optimizer.study.storage import StudyLock, fingerprint, fingerprint_diff, open_study


def _cfg(compose, tmp_path, *extra):
    return compose(f"study.storage=sqlite:///{tmp_path}/s.db", "study.name=s", *extra)


def test_resume_with_the_same_config_opens_the_same_study(compose, tmp_path):
    cfg = _cfg(compose, tmp_path)
    s1 = open_study(cfg, build_space(cfg), optuna.samplers.RandomSampler())
    s1.enqueue_trial({"max_num_seqs": 8})
    s2 = open_study(cfg, build_space(cfg), optuna.samplers.RandomSampler())
    assert s2._study_id == s1._study_id and len(s2.trials) == 1


@pytest.mark.parametrize("change", ["slo.p99_ms=123", "search.max_num_seqs.high=100", "workload.output_tokens=7",
                                    "load.concurrency=3"])
def test_resume_with_a_changed_objective_or_space_is_refused(compose, tmp_path, change):
    cfg = _cfg(compose, tmp_path)
    open_study(cfg, build_space(cfg), optuna.samplers.RandomSampler())
    cfg2 = _cfg(compose, tmp_path, change)
    with pytest.raises(StudyError, match="s-v2"):
        open_study(cfg2, build_space(cfg2), optuna.samplers.RandomSampler())


def test_a_setting_added_later_with_its_default_does_not_break_resume(compose, tmp_path):
    cfg = _cfg(compose, tmp_path)
    fp = fingerprint(cfg, build_space(cfg))
    old = {k: (dict(v) if isinstance(v, dict) else v) for k, v in fp.items()}
    del old["load"]["stall_timeout_s"]
    assert fingerprint_diff(old, fp) == []
    fp["load"]["stall_timeout_s"] = 1.0
    assert fingerprint_diff(old, fp) == ["load.stall_timeout_s (new: 1.0)"]


@pytest.mark.parametrize("change", ["load.capacity.early_stop=false", "study.budget=30", "study.patience=3"])
def test_resume_may_change_how_long_the_study_runs(compose, tmp_path, change):
    # budget, patience and the early stop decide how much is measured, not what a value means
    cfg = _cfg(compose, tmp_path)
    open_study(cfg, build_space(cfg), optuna.samplers.RandomSampler())
    cfg2 = _cfg(compose, tmp_path, change)
    open_study(cfg2, build_space(cfg2), optuna.samplers.RandomSampler())


def test_a_file_that_is_not_a_database_is_refused(compose, tmp_path):
    (tmp_path / "s.db").write_text("hello, not sqlite")
    cfg = _cfg(compose, tmp_path)
    with pytest.raises(ConfigError, match="not a SQLite database"):
        open_study(cfg, build_space(cfg), optuna.samplers.RandomSampler())


def test_a_foreign_study_is_refused(compose, tmp_path):
    s = optuna.create_study(study_name="s", storage=f"sqlite:///{tmp_path}/s.db", direction="maximize")
    s.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=1)
    cfg = _cfg(compose, tmp_path)
    with pytest.raises(StudyError, match="not made by this tool"):
        open_study(cfg, build_space(cfg), optuna.samplers.RandomSampler())


def test_second_optimizer_on_the_same_sqlite_file_is_refused(tmp_path):
    lock = StudyLock(tmp_path / "s.db").acquire()
    try:
        with pytest.raises(StudyError, match="PostgreSQL"):
            StudyLock(tmp_path / "s.db").acquire()
    finally:
        lock.release()
    StudyLock(tmp_path / "s.db").acquire().release()  # free again once released


def test_unopenable_storage_url_is_a_config_error(compose, tmp_path):
    cfg = compose("study.storage=postgresql://nobody@127.0.0.1:1/none", "study.name=s")
    with pytest.raises(ConfigError, match="cannot be opened|cannot open"):
        open_study(cfg, build_space(cfg), optuna.samplers.RandomSampler())
