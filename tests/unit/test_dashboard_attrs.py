"""What optuna-dashboard shows of a stored study: the metric's name, and feasibility and each
constraint's value as user attrs (it reads only Optuna 4's constraint format, not Optuna 5's)."""

from __future__ import annotations

import optuna

from optimizer.study.storage import METRIC_NAME
from tests.unit.test_loop_policy import Script, _run, cannot_start, measured, study_cfg  # noqa: F401 (fixture)


def _study(cfg) -> optuna.Study:
    return optuna.load_study(study_name=cfg.study.name, storage=cfg.study.storage)


def test_the_stored_study_names_its_metric_and_mirrors_feasibility_and_constraints_in_user_attrs(study_cfg):
    cfg = study_cfg("study.n_trials=3")
    _run(cfg, Script(measured(), measured(9.0), cannot_start))
    study = _study(cfg)
    assert study.metric_names == [METRIC_NAME] == ["output tokens/s"]
    feasible = []
    for t in study.trials:
        assert t.user_attrs["feasible"] is all(v <= 0 for v in t.constraints.values())
        assert {k: t.user_attrs[f"constraint_{k}"] for k in t.constraints} == t.constraints
        assert {"slo", "errors", "startup", "memory"} <= set(t.constraints)
        feasible.append(t.user_attrs["feasible"])
    assert feasible == [True, False, False]


def test_a_study_resumed_from_before_the_metric_name_gets_it(study_cfg):
    _run(study_cfg("study.n_trials=1"), Script(measured()))
    old = _study(study_cfg())
    old._storage.set_study_system_attr(old._study_id, "study:metric_names", None)  # as studies made before
    assert _study(study_cfg()).metric_names is None
    _run(study_cfg("study.n_trials=2"), Script(measured()))
    assert _study(study_cfg()).metric_names == [METRIC_NAME]
