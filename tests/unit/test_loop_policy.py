"""The study loop's failure policy, with an injected trial runner (no server).

``run_study`` is the real loop (storage, locks, baseline, retries, budget); only the trial
itself is scripted: each call of the runner takes the next behaviour from a list.
"""

from __future__ import annotations

import math
import time
from dataclasses import replace
from pathlib import Path
from typing import Callable

import optuna
import pytest
from optuna.trial import TrialState

from optimizer.core.errors import (FailureReason, ServerStartTimeout, StudyError, Terminated, TrialError,
                                   TrialInterrupted)
from optimizer.loadgen.records import RequestResult
from optimizer.measures.metrics import summarize
from optimizer.measures.objective import infeasible, score
from optimizer.record import Failure, Measurement, Setup, Timings, TrialRecord
from optimizer.server.telemetry import Snapshot, server_stats
from optimizer.space.engine_args import EngineParams
from optimizer.study.loop import Runtime, run_study
from optimizer.trial.trial import TrialContext

optuna.logging.set_verbosity(optuna.logging.WARNING)

Behaviour = Callable[[TrialContext, int, EngineParams], TrialRecord]


def _setup(ctx: TrialContext, params: EngineParams) -> Setup:
    return Setup(ctx.cfg.hardware.name, ctx.cfg.model.name, ctx.cfg.workload.name, params.as_dict(), ctx.worker)


def measured(latency_s: float = 0.1) -> Behaviour:
    def run(ctx: TrialContext, number: int, params: EngineParams) -> TrialRecord:
        results = [RequestResult(i, ok=True, ttft=latency_s / 4, latency=latency_s, output_tokens=16,
                                 prompt_tokens=64) for i in range(20)]
        summary = summarize(results, 1.0)
        m = Measurement(summary, server_stats(Snapshot(), Snapshot(), {}), latency_samples={"e2e": [100.0]})
        return TrialRecord(_setup(ctx, params), measurement=m, timings=Timings(0.0, 1.0, 0.1, 1.0, 0.1, 2.3),
                           outcome=score(summary, ctx.cfg.slo))
    return run


def env_fault(ctx: TrialContext, number: int, params: EngineParams) -> TrialRecord:
    exc = ServerStartTimeout("the vLLM server did not become healthy within 5 s", reason="start_timeout")
    exc.record = TrialRecord(_setup(ctx, params), timings=Timings(0.0, 5.0, stop_s=0.2, total_s=5.3),
                             failure=Failure(FailureReason.START_TIMEOUT, str(exc)))
    raise exc


def cannot_start(ctx: TrialContext, number: int, params: EngineParams) -> TrialRecord:
    return TrialRecord(_setup(ctx, params), failure=Failure(FailureReason.OUT_OF_MEMORY, "CUDA out of memory"),
                       timings=Timings(0.0, 3.0, stop_s=0.1, total_s=3.1), outcome=infeasible(startup=True))


def ruled_out(ctx: TrialContext, number: int, params: EngineParams) -> TrialRecord:
    return TrialRecord(_setup(ctx, params), failure=Failure(FailureReason.RULED_OUT, "too small"),
                       outcome=infeasible(memory=True))


def interrupted(signal: KeyboardInterrupt) -> Behaviour:
    def run(ctx: TrialContext, number: int, params: EngineParams) -> TrialRecord:
        partial = TrialRecord(_setup(ctx, params), timings=Timings(0.0, 2.0), interrupted=True,
                              failure=Failure(FailureReason.INTERRUPTED))
        raise TrialInterrupted(partial, signal)
    return run


class Script:
    """The injected trial runner: one behaviour per call, in order."""

    def __init__(self, *behaviours: Behaviour) -> None:
        self.behaviours = list(behaviours)
        self.calls: list[tuple[int, bool]] = []  # (trial number, rule check)

    def __call__(self, ctx: TrialContext, number: int, params: EngineParams, tag: str, rule_check: bool
                 ) -> TrialRecord:
        self.calls.append((number, rule_check))
        if not self.behaviours:
            raise AssertionError(f"trial {number}: the loop ran more trials than scripted")
        return self.behaviours.pop(0)(ctx, number, params)


@pytest.fixture
def study_cfg(compose, tmp_path: Path):
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")

    def make(*overrides: str):
        return compose("model.generate=", f"model.path={model}", "study.name=policy", "slo.p99_ms=1500",
                       f"study.storage=sqlite:///{tmp_path / 'policy.db'}", f"study.runs_dir={tmp_path / 'runs'}",
                       f"server.cache_dir={tmp_path / 'cache'}", "search.sampler=random", *overrides)
    return make


def _run(cfg, script: Script):
    return run_study(cfg, Runtime(environ={}, worker="test/w0"), runner=script)


def _trials(cfg) -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name=cfg.study.name, storage=cfg.study.storage).trials


def test_measured_trials_complete_with_their_record_and_constraints(study_cfg):
    cfg = study_cfg("study.n_trials=2")
    script = Script(measured(), measured(9.0))
    result = _run(cfg, script)
    assert script.calls == [(0, False), (1, True)]  # the baseline is never ruled out by the estimate
    t0, t1 = _trials(cfg)
    assert t0.state == t1.state == TrialState.COMPLETE and result.n_complete == 2
    rec = TrialRecord.from_trial(t0)
    assert rec.lineage.baseline and rec.measured and rec.outcome.feasible and t0.user_attrs["feasible"] is True
    assert rec.timings == Timings(0.0, 1.0, 0.1, 1.0, 0.1, 2.3) and rec.setup.worker == "test/w0"
    assert set(t0.constraints) == {"slo", "errors", "startup", "memory", "quality"} and t1.constraints["slo"] > 0
    assert result.best.number == 0


def test_an_environmental_fault_fails_the_trial_keeps_its_partial_record_and_retries_it_once(study_cfg):
    cfg = study_cfg("study.n_trials=2")
    script = Script(measured(), env_fault, measured())
    _run(cfg, script)
    trials = _trials(cfg)
    failed, retry = trials[1], trials[2]
    assert failed.state == TrialState.FAIL and retry.state == TrialState.COMPLETE
    rec = TrialRecord.from_trial(failed)
    assert rec.failure.reason == FailureReason.START_TIMEOUT and rec.timings.start_s == 5.0
    assert retry.params == failed.params and TrialRecord.from_trial(retry).lineage.retry_of == 1


def test_a_trial_error_without_a_record_is_still_recorded_with_its_reason(study_cfg):
    cfg = study_cfg("study.n_trials=1", "study.enqueue_baseline=false")

    def bare(ctx, number, params):
        raise TrialError("the port stayed busy", reason="port_in_use")

    _run(cfg, Script(bare, measured()))
    rec = TrialRecord.from_trial(_trials(cfg)[0])
    assert rec.failure == Failure(FailureReason.PORT_IN_USE, "the port stayed busy")


def test_consecutive_environmental_faults_stop_the_study(study_cfg):
    cfg = study_cfg("study.n_trials=5", "study.max_consecutive_env_failures=2")
    with pytest.raises(StudyError, match="2 trials in a row failed.*start_timeout"):
        _run(cfg, Script(env_fault, env_fault))
    assert [t.state for t in _trials(cfg)][:2] == [TrialState.FAIL, TrialState.FAIL]


def test_a_config_that_cannot_start_completes_infeasible_and_the_study_goes_on(study_cfg):
    cfg = study_cfg("study.n_trials=2", "study.max_consecutive_env_failures=1")
    _run(cfg, Script(cannot_start, measured()))
    t0, t1 = _trials(cfg)
    assert t0.state == TrialState.COMPLETE and t0.value == 0.0 and t0.constraints["startup"] == 1.0
    assert TrialRecord.from_trial(t0).failure.reason == FailureReason.OUT_OF_MEMORY
    assert t1.state == TrialState.COMPLETE


def test_ruled_out_proposals_do_not_count_toward_the_budget(study_cfg):
    cfg = study_cfg("study.n_trials=2")
    _run(cfg, Script(measured(), ruled_out, ruled_out, measured()))
    trials = _trials(cfg)
    assert len(trials) == 4 and all(t.state == TrialState.COMPLETE for t in trials)
    assert [t.user_attrs.get("counted", True) for t in trials] == [True, False, False, True]


@pytest.mark.parametrize("signal, exit_type", [(KeyboardInterrupt(), KeyboardInterrupt), (Terminated(), Terminated)],
                         ids=["ctrl-c", "sigterm"])
def test_an_interrupted_trial_is_recorded_retried_and_the_interrupt_re_raised(study_cfg, signal, exit_type):
    cfg = study_cfg("study.n_trials=3")
    with pytest.raises(KeyboardInterrupt) as info:
        _run(cfg, Script(measured(), interrupted(signal)))
    assert type(info.value) is exit_type  # the entry point maps Ctrl-C and SIGTERM to different exit codes
    t0, t1, retry = _trials(cfg)
    assert t1.state == TrialState.FAIL and t1.user_attrs["interrupted"] is True
    rec = TrialRecord.from_trial(t1)
    assert rec.interrupted and rec.timings.start_s == 2.0 and rec.failure.reason == FailureReason.INTERRUPTED
    assert retry.state == TrialState.WAITING and TrialRecord.from_trial(retry).lineage.retry_of == 1
    # the next run resumes: the interrupted trial does not count against the environment
    _run(cfg, Script(measured(), measured()))
    assert sum(t.state == TrialState.COMPLETE for t in _trials(cfg)) == 3
    assert not math.isnan(TrialRecord.from_trial(_trials(cfg)[2]).p99("e2e"))


def test_a_runner_that_returns_no_outcome_is_a_bug_not_a_result(study_cfg):
    cfg = study_cfg("study.n_trials=1", "study.enqueue_baseline=false")

    def no_outcome(ctx, number, params):
        return replace(measured()(ctx, number, params), outcome=None)

    with pytest.raises(RuntimeError, match="without an outcome"):
        _run(cfg, Script(no_outcome))


# ---- study.budget, study.patience (optimizer/study/stopping.py) --------------------------------------
class Clock:
    """study.budget's clock: still while the loop sets up (a loaded host may take seconds), moved by
    the trials; the trials' own durations (the estimate) are real, at least their sleep."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def trial(self, seconds: float) -> Behaviour:
        def run(ctx: TrialContext, number: int, params: EngineParams) -> TrialRecord:
            time.sleep(seconds)
            self.now += seconds
            return measured()(ctx, number, params)
        return run


def _stopped(cfg) -> dict:
    return optuna.load_study(study_name=cfg.study.name, storage=cfg.study.storage).user_attrs["stopped"]


def test_the_budget_ends_the_study_before_n_trials_once_the_next_trial_would_not_fit(study_cfg, caplog):
    # the first trial starts (nothing timed yet); 1 s spent, and a trial takes >= 1 s: no longer fits in 1.8 s
    cfg = study_cfg("study.n_trials=5", "study.budget=0.03")
    clock = Clock()
    script = Script(clock.trial(1.0), clock.trial(1.0))
    with caplog.at_level("INFO"):
        result = run_study(cfg, Runtime(environ={}, worker="test/w0", started=0.0, clock=clock), runner=script)
    assert len(script.calls) == 1 and result.n_complete == 1
    stopped = _stopped(cfg)
    assert stopped["rule"] == "budget" and stopped["worker"] == "test/w0"
    assert "would not fit" in stopped["detail"] and "median of 1" in stopped["detail"]
    assert "stopping the study (study.budget)" in caplog.text and "1/5 done, 4 left" in caplog.text
    assert "budget 1 s of 2 s left" in caplog.text  # the progress line's budget (0.8 of 1.8 s)
    # a resumed command counts its own time only: the earlier command's time is not charged (whether
    # the same 1.8 s budget then fits one more trial depends on this host's real trial time: not tested)
    cfg3 = study_cfg("study.n_trials=5", "study.budget=1")
    clock3 = Clock()
    clock3.now = 0.0
    script3 = Script(*[clock3.trial(0.1) for _ in range(4)])
    run_study(cfg3, Runtime(environ={}, worker="test/w0", started=0.0, clock=clock3), runner=script3)
    assert len(script3.calls) == 4 and _stopped(cfg3)["rule"] == "n_trials"


def test_whichever_ends_first_ends_the_study_n_trials_under_a_large_budget(study_cfg):
    cfg = study_cfg("study.n_trials=2", "study.budget=60")
    script = Script(measured(), measured())
    _run(cfg, script)
    assert len(script.calls) == 2 and _stopped(cfg)["rule"] == "n_trials"


def test_workers_of_one_command_share_its_budget(study_cfg):
    # a worker that starts when the command's budget is spent starts nothing, and says why
    cfg = study_cfg("study.n_trials=3", "study.budget=1")
    script = Script(measured())
    result = run_study(cfg, Runtime(environ={}, worker="test/w1", started=-61.0, clock=lambda: 0.0), runner=script)
    assert script.calls == [] and result.n_complete == 0
    assert _stopped(cfg)["rule"] == "budget" and "spent" in _stopped(cfg)["detail"]
    from optimizer.trial.gpus import WorkerPlan
    from optimizer.study.workers import worker_runtimes

    rt = Runtime(environ={}, started=123.0)
    plan = WorkerPlan(groups=((0,), (1,)), idle=(), note="")
    assert [(r.started, r.workers) for r in worker_runtimes(rt, "h", plan)] == [(123.0, 2), (123.0, 2)]


def test_patience_ends_the_study_after_n_trials_in_a_row_without_a_gain(study_cfg, caplog):
    # every scripted trial serves the same throughput: after the first, none gains beyond +2 %
    cfg = study_cfg("study.n_trials=10", "study.patience=2")
    script = Script(*[measured() for _ in range(10)])
    with caplog.at_level("INFO"):
        result = _run(cfg, script)
    assert len(script.calls) == 3 and result.n_complete == 3
    stopped = _stopped(cfg)
    assert stopped["rule"] == "patience" and "2 trials in a row gained nothing" in stopped["detail"]
    assert "stopping the study (study.patience)" in caplog.text
    # off by default: the same script runs to n_trials
    cfg2 = study_cfg("study.n_trials=4", "study.name=policy2")
    script2 = Script(*[measured() for _ in range(4)])
    _run(cfg2, script2)
    assert len(script2.calls) == 4


def test_a_capacity_trial_reads_the_studys_incumbent_for_the_early_stop(study_cfg):
    from optimizer.measures.objective import Outcome
    from optimizer.record import Capacity
    from optimizer.trial.capacity_load import Incumbent
    from tests.unit.test_record_capacity import capacity_result

    cfg = study_cfg("study.n_trials=3", "load.mode=capacity")
    seen: list = []

    def runner(ctx, number, params, tag="", rule_check=True, /, *, report=None):
        seen.append(ctx.incumbent() if ctx.incumbent is not None else "no hook")
        res = capacity_result(feasible=number != 1)  # trial 1 carries nothing: never the incumbent
        return TrialRecord(_setup(ctx, params), capacity=Capacity(res), timings=Timings(0.0, 1.0, total_s=1.0),
                           outcome=Outcome(res.throughput() + number, {"slo": -0.1 if res.feasible else 0.5},
                                           res.feasible))

    run_study(cfg, Runtime(environ={}, worker="test/w0"), runner=runner)
    # before the baseline: none; then the best feasible trial's capacity (3 users)
    assert [i if i is None else i[:2] for i in seen] == [None, (0, 3.0), (0, 3.0)]
    assert all(isinstance(i, Incumbent) and 0 <= i.low_value <= capacity_result().output_tok_s for i in seen[1:])
    cfg2 = study_cfg("study.n_trials=1", "study.name=fixed")  # fixed-load studies get no hook
    seen.clear()
    run_study(cfg2, Runtime(environ={}, worker="test/w0"), runner=runner)
    assert seen == ["no hook"]
