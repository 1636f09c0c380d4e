"""The confirmation stage on a real SQLite study, with an injected trial runner (no server):
planning, interleaving, what it stores, resume after an interruption, and what the study's
budget and result make of confirmation runs."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from optimizer.core.errors import ServerStartTimeout, Terminated, TrialInterrupted
from optimizer.loadgen.records import RequestResult
from optimizer.measures.metrics import summarize
from optimizer.measures.objective import score
from optimizer.record import Failure, FailureReason, LaunchInfo, Measurement, Setup, TrialRecord
from optimizer.server.telemetry import Snapshot, server_stats
from optimizer.space.engine_args import ModelTarget, render
from optimizer.confirmation.stage import describe_confirmation, run_confirmation
from optimizer.confirmation.plan import Candidate, assign, candidates, plan, remaining, round_order
from optimizer.study.loop import Runtime, run_study
from optimizer.study.results import study_result
from optimizer.study.storage import finished_count

optuna.logging.set_verbosity(optuna.logging.WARNING)


def _record(ctx, params, tok_s: float, latency_s: float = 0.1) -> TrialRecord:
    n = 20
    results = [RequestResult(i, ok=True, ttft=latency_s / 4, latency=latency_s, output_tokens=int(tok_s / n),
                             prompt_tokens=64) for i in range(n)]
    summary = summarize(results, 1.0)
    launch = render(params, ModelTarget(str(ctx.model_dir)), host="127.0.0.1", port=8000)  # what the server ran
    return TrialRecord(Setup(ctx.cfg.hardware.name, ctx.cfg.model.name, ctx.cfg.workload.name, params.as_dict(),
                             ctx.worker), measurement=Measurement(summary, server_stats(Snapshot(), Snapshot(), {})),
                       launch=LaunchInfo(tuple(launch.argv), launch.command(), launch.serve_config, "server.log"),
                       outcome=score(summary, ctx.cfg.slo))


class Runner:
    """Scores a config by its max_num_seqs (the baseline: 100 tok/s); records every call."""

    def __init__(self, interrupt_at: int = -1, env_fault_at: int = -1, flat: bool = False) -> None:
        self.calls: list[tuple[int, dict, int, bool]] = []  # (number, engine params, workload seed, rule check)
        self.interrupt_at, self.env_fault_at = interrupt_at, env_fault_at
        self.flat = flat  # confirmation runs: every config alike, only the round (the host's drift) differs

    def __call__(self, ctx, number, params, tag, rule_check):
        self.calls.append((number, params.as_dict(), ctx.cfg.workload.seed, rule_check))
        k = len(self.calls) - 1
        if k == self.interrupt_at:
            raise TrialInterrupted(TrialRecord(Setup(engine_params=params.as_dict()), interrupted=True,
                                               failure=Failure(FailureReason.INTERRUPTED)), Terminated())
        if k == self.env_fault_at:
            raise ServerStartTimeout("not healthy within 5 s", reason="start_timeout")
        if self.flat and ctx.cfg.workload.seed >= 1000:
            return _record(ctx, params, [100.0, 120.0, 90.0][ctx.cfg.workload.seed - 1000] + 2 * (k % 2))
        return _record(ctx, params, 100.0 if params.max_num_seqs is None else 80.0 + params.max_num_seqs)


@pytest.fixture
def cfg_of(compose, tmp_path: Path):
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")

    def make(*overrides: str):
        return compose("model.generate=", "slo.p99_ms=1500", f"model.path={model}", "study.name=conf",
                       f"study.storage=sqlite:///{tmp_path / 'conf.db'}", f"study.runs_dir={tmp_path / 'runs'}",
                       f"server.cache_dir={tmp_path / 'cache'}", "search.sampler=random", "study.n_trials=5",
                       *overrides)
    return make


RT = Runtime(environ={}, worker="test/w0")


def _search(cfg) -> None:
    run_study(cfg, RT, runner=Runner())


def _trials(cfg):
    return optuna.load_study(study_name=cfg.study.name, storage=cfg.study.storage).get_trials(deepcopy=True)


def _confirmations(cfg):
    return [t for t in _trials(cfg) if TrialRecord.from_trial(t).confirmation is not None]


def test_the_plan_is_the_baseline_and_the_top_k_distinct_feasible_configs_interleaved(cfg_of):
    cfg = cfg_of("study.confirm.top_k=2", "study.confirm.repeats=3")
    _search(cfg)
    trials = _trials(cfg)
    cands = candidates(trials, 2)
    ranked = sorted((t for t in trials if t.user_attrs.get("kind") != "baseline"), key=lambda t: -t.value)
    assert [c.baseline for c in cands] == [True, False, False]
    assert [c.of for c in cands[1:]] == [t.number for t in ranked[:2]]
    slots = plan(cands, 3, 1000)
    assert len(slots) == 9 and plan(cands, 3, 1000) == slots  # reproducible: drawn from the rounds' seeds
    for r in range(3):  # every config once per round, on the round's prompts, in the round's drawn order
        rnd = [s for s in slots if s.repeat == r]
        assert [s.candidate.label for s in rnd] == [cands[i].label for i in round_order(3, 1000 + r)]
        assert [s.slot for s in rnd] == [0, 1, 2] and {s.seed for s in rnd} == {1000 + r}


def test_the_run_order_within_a_round_is_random_not_baseline_first():
    orders = [tuple(round_order(4, seed)) for seed in range(1000, 1200)]
    firsts = [o[0] for o in orders]
    assert all(0.15 < firsts.count(i) / len(firsts) < 0.35 for i in range(4))  # each config first ~1/4 of rounds
    assert round_order(4, 1000) == round_order(4, 1000) and len(set(orders)) > 12


def _cands(n: int) -> list[Candidate]:
    return [Candidate(i, i == 0, {"max_num_seqs": 2 ** (i + 2)}, {}, {}, 100.0 + i) for i in range(n)]


@pytest.mark.parametrize("n_cands, repeats, workers", [(2, 2, 2), (4, 2, 4), (4, 3, 4), (3, 3, 4), (5, 3, 2),
                                                       (4, 4, 2)])
def test_assign_gives_every_slot_once_and_moves_each_config_to_the_next_worker_every_round(n_cands, repeats,
                                                                                          workers):
    slots = plan(_cands(n_cands), repeats, 1000)
    shares = assign(slots, workers)
    assert len(shares) == workers
    assert sorted((s.repeat, s.slot) for share in shares for s in share) == [(s.repeat, s.slot) for s in slots]
    where = {(s.repeat, s.rank): w for w, share in enumerate(shares) for s in share}
    for i in range(n_cands):  # round by round, each config one worker further
        assert [where[(r, i)] for r in range(repeats)] == [(i + r) % workers for r in range(repeats)]
        # so a config meets min(repeats, workers) different workers
        assert len({where[(r, i)] for r in range(repeats)}) == min(repeats, workers)
    for r in range(repeats):  # a round's configs on different workers, as far as there are workers
        assert len({where[(r, i)] for i in range(n_cands)}) == min(n_cands, workers)
    for share in shares:  # each share in plan order
        assert [(s.repeat, s.slot) for s in share] == sorted((s.repeat, s.slot) for s in share)
    assert all(0 <= s.rank < n_cands for s in slots)


def test_assign_to_one_worker_is_the_plan_order_and_a_resume_keeps_each_slot_where_it_was():
    slots = plan(_cands(3), 3, 1000)
    assert assign(slots, 1) == [slots]
    full = assign(slots, 2)
    rest = slots[4:]  # a resumed stage: the first four runs are stored
    assert assign(rest, 2) == [[s for s in share if s in rest] for share in full]
    with pytest.raises(ValueError, match="workers=0"):
        assign(slots, 0)


def test_runs_are_stored_marked_on_held_out_prompts_and_never_count_as_study_trials(cfg_of):
    cfg = cfg_of("study.confirm.top_k=1", "study.confirm.repeats=2")
    _search(cfg)
    best_before = study_result(_trials(cfg)).best.number
    runner = Runner()
    res = run_confirmation(cfg, RT, runner=runner)
    assert [seed for _, _, seed, _ in runner.calls] == [1000, 1000, 1001, 1001]
    first = [round_order(2, 1000 + r) for r in range(2)]  # the runs' order: drawn per round, baseline at index 0
    assert [check for *_, check in runner.calls] == [i != 0 for order in first for i in order]  # baseline: no check
    confs = _confirmations(cfg)
    assert len(confs) == 4 and all(t.state == TrialState.COMPLETE for t in confs)
    marks = [TrialRecord.from_trial(t).confirmation for t in confs]
    assert [(m.repeat, m.slot, m.baseline) for m in marks] == [(r, pos, i == 0) for r, order in enumerate(first)
                                                               for pos, i in enumerate(order)]
    assert all(m.of == best_before for m in marks if not m.baseline)
    tuned = next(t for t, m in zip(confs, marks) if not m.baseline)
    assert tuned.params == next(t for t in _trials(cfg) if t.number == best_before).params
    # the budget and the study's answer skip them, even though a confirmation scored highest
    study = optuna.load_study(study_name=cfg.study.name, storage=cfg.study.storage)
    assert finished_count(study) == 5
    result = study_result(study.trials)
    assert result.n_complete == 5 and result.best.number == best_before
    assert res.recommendation.chosen.of == best_before and res.pick_survived
    # the closing line's inputs: the search trials and a run's median seconds, confirmation runs included
    assert res.n_search == 5 and res.run_s >= 0
    assert res.know_more_line().startswith("TO KNOW MORE: this study searched 5 configs; 2 configs confirmed in 2 rounds")
    # the log leads with the confirmed answer, and labels the search's best as the search's
    text = describe_confirmation(res).splitlines()
    assert text[0] == res.answer_line() and text[0].startswith(f"RECOMMENDATION (confirmed on fresh servers): "
                                                               f"trial {best_before}, x")
    assert text[-1].startswith(f"the search's best, trial {best_before}: on fresh servers over the defaults: x")
    # a second call finds every run done and starts nothing
    again = Runner()
    run_confirmation(cfg, RT, runner=again)
    assert again.calls == []
    # and the search resumed with more trials never pops a confirmation run
    run_study(cfg_of("study.confirm.top_k=1", "study.confirm.repeats=2", "study.n_trials=6"), RT, runner=Runner())
    assert len(_confirmations(cfg)) == 4 and finished_count(study) == 6


def test_an_interrupted_confirmation_is_stored_as_such_and_resumes_at_the_missing_runs(cfg_of):
    cfg = cfg_of("study.confirm.top_k=1", "study.confirm.repeats=2")
    _search(cfg)
    with pytest.raises(Terminated):
        run_confirmation(cfg, RT, runner=Runner(interrupt_at=2))
    confs = _confirmations(cfg)
    assert [t.state for t in confs] == [TrialState.COMPLETE, TrialState.COMPLETE, TrialState.FAIL]
    assert TrialRecord.from_trial(confs[2]).interrupted
    trials = _trials(cfg)  # the plan, derived from the database alone, resumes at round 2
    assert [(s.repeat, s.slot) for s in remaining(plan(candidates(trials, 1), 2, 1000), trials)] == [(1, 0), (1, 1)]
    resumed = Runner()
    run_confirmation(cfg, RT, runner=resumed)
    assert [seed for _, _, seed, _ in resumed.calls] == [1001, 1001]  # round 2 only: round 1 was kept
    done = [t for t in _confirmations(cfg) if t.state == TrialState.COMPLETE]
    assert [TrialRecord.from_trial(t).confirmation.repeat for t in done] == [0, 0, 1, 1]


def test_an_environmental_failure_is_stored_and_retried_after_the_rest(cfg_of):
    cfg = cfg_of("study.confirm.top_k=1", "study.confirm.repeats=2")
    _search(cfg)
    runner = Runner(env_fault_at=1)
    res = run_confirmation(cfg, RT, runner=runner)
    assert len(runner.calls) == 5 and runner.calls[1][1] == runner.calls[4][1]  # the failed slot, again, last
    confs = _confirmations(cfg)
    assert sum(t.state == TrialState.FAIL for t in confs) == 1
    assert TrialRecord.from_trial(confs[1]).failure.reason == FailureReason.START_TIMEOUT
    assert all(r.complete for r in res.runs)


def test_top_k_zero_turns_the_stage_off(cfg_of, caplog):
    cfg = cfg_of("study.confirm.top_k=0")
    _search(cfg)
    runner = Runner()
    with caplog.at_level("INFO", logger="optimizer.confirmation.stage"):
        assert run_confirmation(cfg, RT, runner=runner) is None and runner.calls == []
    assert not caplog.records  # off: not even looked at


def _report(cfg, tmp_path):
    from optimizer.reporting import write_report

    write_report(cfg)
    out = tmp_path / "reports" / cfg.study.name
    return (out / "index.html").read_text(), (out / "best.yaml").read_text()


def test_the_report_shows_the_confirmation_and_best_yaml_states_the_confirmed_uplift(cfg_of, tmp_path):
    cfg = cfg_of("study.confirm.top_k=2", "study.confirm.repeats=3", f"reports_dir={tmp_path / 'reports'}")
    _search(cfg)
    run_confirmation(cfg, RT, runner=Runner())
    page, best = _report(cfg, tmp_path)
    assert 'id="confirmation"' in page and 'id="fig-confirmation"' in page and "survived the confirmation" in page
    assert best.startswith("# vLLM server config confirmed on 3 fresh servers")
    assert "# uplift over vLLM's defaults: x" in best and "95% CI" in best
    assert "max-num-seqs" in best  # the confirmed config, not the defaults


def test_when_nothing_beats_the_defaults_beyond_noise_best_yaml_is_the_defaults_and_the_report_says_so(cfg_of,
                                                                                                      tmp_path):
    cfg = cfg_of("study.confirm.top_k=1", "study.confirm.repeats=3", f"reports_dir={tmp_path / 'reports'}")
    _search(cfg)
    res = run_confirmation(cfg, RT, runner=Runner(flat=True))
    assert not res.recommendation.beats_baseline and res.pick_survived is False
    page, best = _report(cfg, tmp_path)
    assert "No config was shown to beat vLLM&#x27;s defaults" in page
    # the summary leads with the confirmed answer: the search's best is labelled as the search's, with its interval
    assert "The search's best feasible config" in page and "The best config (trial" not in page
    assert "on fresh servers over the defaults: x" in page and "The search&#x27;s best config (trial" in page
    assert best.startswith("# vLLM's defaults: no config was shown to beat them")
    assert "max-num-seqs" not in best  # the baseline server got no tuning flag


def test_a_baseline_outside_a_narrowed_search_range_is_still_confirmed_and_reported(cfg_of, tmp_path):
    # vLLM's defaults (max_num_seqs 128, KV 2 GiB) lie outside this space: Optuna ran the enqueued
    # baseline with a warning, and its confirmation runs must be storable all the same
    cfg = cfg_of("study.confirm.top_k=1", "study.confirm.repeats=2", f"reports_dir={tmp_path / 'reports'}",
                 "search.max_num_seqs.low=4",
                 "search.max_num_seqs.high=8", "search.kv_cache_gib.low=1.0", "search.kv_cache_gib.high=1.5")
    _search(cfg)
    res = run_confirmation(cfg, RT, runner=Runner())
    assert all(r.complete for r in res.runs)
    base = [t for t in _confirmations(cfg) if TrialRecord.from_trial(t).confirmation.baseline]
    assert len(base) == 2 and "max_num_seqs" not in base[0].params
    page, _ = _report(cfg, tmp_path)  # the report's Optuna plots read the search alone, baseline included
    assert 'id="confirmation"' in page and 'id="fig-history"' in page
    from optimizer.reporting.write import search_view

    study = optuna.load_study(study_name=cfg.study.name, storage=cfg.study.storage)
    view = search_view(study)
    assert len(study.trials) == 9 and [t.number for t in view.get_trials()] == [0, 1, 2, 3, 4]
    assert view.direction == study.direction
