"""The replay of studies against a measured grid (benchmarks/_grid.py, _replay.py, search_replay.py):
the table answers what the sampler proposed with one of its repeats, the study's own rules judge."""

from __future__ import annotations

import random
import sys
from pathlib import Path
from typing import Any

import optuna
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

from _grid import (DEFAULTS, LEVELS, STAGES, Rep, Table, complete_stage, grid_points, key_of, restrict,  # noqa: E402
                   server_key, server_params, space_overrides)
from _replay import confirm, replay, with_seed  # noqa: E402
from search_replay import run_search, synthetic_table  # noqa: E402

from optimizer.commands.cli import compose  # noqa: E402
from optimizer.space.search_space import build_space, suggest  # noqa: E402
from optimizer.study.loop import make_sampler  # noqa: E402


class Proposes(optuna.samplers.BaseSampler):
    """Proposes one fixed config, whatever the study holds."""

    def __init__(self, params: dict[str, Any]) -> None:
        self.params = params

    def infer_relative_search_space(self, study: Any, trial: Any) -> dict[str, Any]:
        return {}

    def sample_relative(self, study: Any, trial: Any, search_space: Any) -> dict[str, Any]:
        return {}

    def sample_independent(self, study: Any, trial: Any, name: str, dist: Any) -> Any:
        return self.params[name]


@pytest.fixture(scope="module")
def setup() -> tuple[Any, Any, Table]:
    cfg = compose(space_overrides(LEVELS))
    space = restrict(build_space(cfg), LEVELS)
    return cfg, space, synthetic_table(cfg, space, seed=1)


def _table(cfg: Any, space: Any, value: Any) -> Table:
    """A noiseless table: each server's one repeat from ``value(engine params) -> (tok/s, P99 ms)``, its
    median half its P99 (so the ``auto`` SLO, 3 x the defaults' median, is 1.5 x their P99)."""
    reps: dict[str, list[Rep]] = {}
    for p in grid_points():
        e = server_params(space, p)
        tok, p99 = value(e)
        reps[server_key(e)] = [Rep(tok, p99, n_ok=10, n_requests=10, p50_ms=p99 / 2)]
    return Table.build(cfg, space, reps)


def test_a_sampler_that_proposes_the_defaults_scores_the_defaults_share(setup: Any) -> None:
    cfg, space, table = setup
    share = table.share(table.defaults)
    assert 0 < share < 1  # the synthetic grid's best is another config
    for seed in range(3):
        rep = replay(table, space, with_seed(cfg, seed), lambda c: Proposes(DEFAULTS), 8, random.Random(seed))
        assert set(rep.servers) == {table.defaults}
        assert table.share(rep.servers[rep.best(8)]) == pytest.approx(share)


def test_a_sampler_that_proposes_the_grid_best_finds_it(setup: Any) -> None:
    cfg, space, table = setup
    best = next(p for p in grid_points() if table.server_of[key_of(p)] == table.best)
    rep = replay(table, space, cfg, lambda c: Proposes(best), 5, random.Random(0))
    assert rep.servers[0] == table.defaults  # the baseline trial comes first, as in the study
    assert set(rep.servers[1:]) == {table.best}


def test_a_config_proposed_twice_may_get_another_repeat(setup: Any) -> None:
    cfg, space, table = setup
    rep = replay(table, space, cfg, lambda c: Proposes(DEFAULTS), 20, random.Random(0))
    values = {t.value for t in rep.trials}
    assert len(values) > 1 and values <= {r.tok_s for r in table.reps[table.defaults]}


def test_the_baseline_repeat_it_drew_calibrates_the_study_slo(setup: Any) -> None:
    cfg, space, table = setup
    rep = replay(table, space, cfg, lambda c: make_sampler(c, 0), 3, random.Random(0))
    assert rep.baseline == 0
    drawn = [r for r in table.reps[table.defaults] if r.tok_s == rep.trials[0].value]
    assert len(drawn) == 1 and rep.slo_ms == round(3 * drawn[0].p50_ms)  # the study's rule: 3 x its median


def test_a_config_over_the_slo_is_infeasible_and_shares_nothing(setup: Any) -> None:
    cfg, space, _ = setup
    table = _table(cfg, space, lambda e: (1000.0 if e.max_num_seqs < 16 else 500.0,
                                           5000.0 if e.max_num_seqs < 16 else 1000.0))
    queued = table.server_of[key_of({**DEFAULTS, "max_num_seqs": 8})]
    assert not table.feasible(queued) and table.share(queued) == 0.0
    rep = replay(table, space, cfg, lambda c: Proposes({**DEFAULTS, "max_num_seqs": 8}), 4, random.Random(0))
    assert rep.best(4) == 0  # the faster but queued config never beats the feasible baseline


def test_the_confirmed_pick_of_a_clear_winner_is_the_grid_best(setup: Any) -> None:
    cfg, space, _ = setup
    table = _table(cfg, space, lambda e: (900.0 if not e.enable_prefix_caching else 600.0, 1000.0))
    best = next(p for p in grid_points() if table.server_of[key_of(p)] == table.best)
    rep = replay(table, space, cfg, lambda c: Proposes(best), 3, random.Random(0))
    assert confirm(rep, 3, table, space, cfg, random.Random(0)) == table.best


def test_run_search_reports_the_share_per_budget(setup: Any) -> None:
    cfg, space, table = setup
    out = run_search(table, space, cfg, "random", 3, 30)
    assert set(out["budgets"]) == {"10", "20", "30"}
    assert len(out["median_share_by_trials"]) == 30
    assert all(0 <= b["p10_share"] <= b["median_share"] <= 1 for b in out["budgets"].values())


def test_the_restricted_space_proposes_only_the_grid_levels() -> None:
    for levels in STAGES:
        cfg = compose(space_overrides(levels))
        space = restrict(build_space(cfg), levels)
        study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
        seen = set()
        for _ in range(400):
            t = study.ask()
            suggest(t, space)
            assert all(t.params.get(k, levels[k][0]) in levels[k] for k in levels), t.params
            seen.add(key_of({**{k: levels[k][0] for k in levels}, **t.params}))
            study.tell(t, 1.0)
        assert len(seen) == len(grid_points(levels))  # and every grid point can be proposed


def test_the_table_is_the_largest_stage_measured_twice_throughout(setup: Any) -> None:
    _, space, _ = setup
    first = {server_key(server_params(space, p)): 2 for p in grid_points(STAGES[0])}
    assert complete_stage(first, space) == STAGES[0]
    assert complete_stage({**first, **{server_key(server_params(space, p)): 1 for p in grid_points(STAGES[1])
                                       if server_key(server_params(space, p)) not in first}}, space) == STAGES[0]
    with pytest.raises(ValueError, match="no stage"):
        complete_stage({k: 1 for k in first}, space)
