"""The study loop: ask the sampler, run the trial, tell the outcome; resume where it stopped.

Trial-level failure handling lives here, in one place:

- measured, ruled out, or unable to start for a reason of its own: COMPLETE, with every
  constraint set, so the sampler learns from it;
- the environment was in the way (timeout, busy GPU, crash with no config cause): FAIL, the
  config is enqueued again once, and N consecutive such failures stop the study;
- interrupted (Ctrl-C, SIGTERM): FAIL with ``interrupted``, enqueued again, re-raised.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import socket
import sys
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import optuna
from optuna.trial import FrozenTrial, Trial, TrialState

from optimizer.settings.config import Config
from optimizer.core.errors import ConfigError, FailureReason, StudyError, TrialError, TrialInterrupted
from optimizer.model.resolve import resolve_model_dir, target_for
from optimizer.record import Failure, Setup, TrialRecord
from optimizer.server import pidfile
from optimizer.server.defaults import differences
from optimizer.server.engine import Engine, read_engine, read_flags
from optimizer.server.environment import server_env
from optimizer.space.engine_args import EngineParams
from optimizer.space.search_space import Space, baseline_params, build_space, seed_params, suggest
from optimizer.trial import calibrate
from optimizer.study.coordination import WorkerLock, enqueue_baseline_once, enqueue_seeds_once, fail_stale, in_flight
from optimizer.trial.gpus import trial_gpus
from optimizer.trial.trial_quality import judge, measures_floor
from optimizer.trial.noise import ranking_note
from optimizer.study.results import StudyResult, describe, study_result
from optimizer.study.storage import (
    StudyLock,
    finished_count,
    open_study,
    reap_interrupted,
    redact_url,
    retry_trial,
    sqlite_path,
)
from optimizer.study.stopping import StudyStopper
from optimizer.trial.capacity_load import Incumbent, lower_value
from optimizer.trial.trial import TrialContext, TrialRunner, run_trial
from optimizer.study.versions import FlagReader, check_engine, enqueue_baseline_for

__all__ = ["Runtime", "make_context", "make_sampler", "run_study"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Runtime:
    """What the entry point read from the process environment, passed down explicitly.

    ``gpu_ids`` are the GPUs this worker owns (empty: none pinned); ``worker`` names it in the
    trial records, ``<host>/w<index>`` (empty: ``<hostname>/w0``)."""

    environ: dict[str, str]
    python: str = sys.executable
    gpu_ids: tuple[int, ...] = ()
    worker: str = ""
    summary: bool = True  # log the study's closing lines (a worker of several leaves it to its parent)
    # when this command started (time.time(), shared by its workers): study.budget counts from here
    started: float = field(default_factory=time.time)
    clock: Callable[[], float] = time.time  # what study.budget reads the time from (a test fakes it)
    workers: int = 1  # this command's workers on this host (the progress line's ETA)
    # reads the vLLM and torch build installed for the server's interpreter (a test fakes another version)
    engine_reader: Callable[[str, dict[str, str], str], Engine] = read_engine
    # reads the installed vLLM's server parser, when the study meets a new version (a test fakes it)
    flags_reader: FlagReader = read_flags


def make_sampler(cfg: Config, n_existing: int, worker: str = "") -> optuna.samplers.BaseSampler:
    # a fresh seed per resume: the same seed would repeat the random start-up configs; and one per
    # worker, or workers started together would propose the same configs
    seed = (cfg.study.seed + n_existing + (zlib.crc32(worker.encode()) if worker else 0)) % 2**31
    if cfg.search.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed, multivariate=True, group=True,
                                      n_startup_trials=cfg.search.n_startup_trials, constant_liar=True)


def make_context(cfg: Config, rt: Runtime, space: Space) -> TrialContext:
    """Check the model folders of every quantization the space may choose (a missing one is refused
    now, not hours into the study) and build what every trial shares."""
    cache = Path(cfg.server.cache_dir).resolve()
    model_dir = resolve_model_dir(cfg.model, str(cache))
    for q in space.quantization:
        target_for(cfg.model, model_dir, q)
    env = server_env(cfg.server, rt.environ)
    api_key = None
    if cfg.server.api_key_env:
        api_key = rt.environ.get(cfg.server.api_key_env)
        if not api_key:
            raise ConfigError(f"server.api_key_env={cfg.server.api_key_env!r}: that environment variable is not "
                              f"set. Export it, or leave server.api_key_env empty.")
        env["VLLM_API_KEY"] = api_key  # the server reads it from its environment: never on argv
    env.update(cfg.server.env)
    python = cfg.server.python or rt.python
    return TrialContext(cfg=cfg, model_dir=model_dir, python=python, server_env=env,
                        api_key=api_key, trial_root=Path(cfg.study.runs_dir).resolve() / cfg.study.name,
                        pid_dir=cache / "pids", gpu_ids=rt.gpu_ids,
                        worker=rt.worker or f"{cfg.study.host or socket.gethostname()}/w0",
                        engine=rt.engine_reader(python, env, cfg.server.module.split(".")[0]))


def _log_done(tag: str, rec: TrialRecord, cfg: Config) -> None:
    """The trial's measurement; the progress line (optimizer.study.progress) follows with the best so far."""
    o = rec.outcome
    if rec.failure is not None or o is None or rec.measurement is None:
        return
    err = rec.measurement.summary.error_rate
    log.info("%s %.1f output tok/s, P99 %s %.0f ms (SLO %.0f ms), errors %.1f%%: %s", tag, o.value,
             cfg.slo.metric, rec.p99(cfg.slo.metric), cfg.slo.p99_ms, 100 * (err if err == err else 0.0),
             "feasible" if o.feasible else "infeasible")


def _objective(cfg: Config, ctx: TrialContext, space: Space,  # type: ignore[no-untyped-def]
               taken_over: list[int], runner: TrialRunner = run_trial):
    """The trial function, running each trial with ``runner``. A trial another worker failed
    meanwhile (see :func:`_optimize`) is appended to ``taken_over``."""

    def objective(trial: Trial) -> float:
        study = trial.study
        n_done = finished_count(study)
        tag = f"[trial {trial.number} | {n_done + 1}/{cfg.study.n_trials}]"
        baseline = trial.user_attrs.get("kind") == "baseline"
        suggested = suggest(trial, space)
        params = _baseline_engine_params(cfg) if baseline else suggested
        log.info("%s %s: %s", tag, "baseline (vLLM defaults)" if baseline else "proposed",
                 json.dumps(params.as_dict(), sort_keys=True))
        # who runs it, recorded now: a trial whose host dies still says where it ran
        trial.set_user_attr("worker", ctx.worker)
        with contextlib.suppress(ValueError):  # run_trial reports a too-small GPU group
            gpus = trial_gpus(ctx.gpu_ids, params.tensor_parallel_size)
            if gpus:
                trial.set_user_attr("gpus", ",".join(str(g) for g in gpus))
        setup = Setup(cfg.hardware.name, cfg.model.name, cfg.workload.name, params.as_dict(), ctx.worker,
                  engine=ctx.engine)
        # [calibrate] slo.p99_ms=auto: judge by the study's calibrated SLO once there is one; the baseline
        # calibrates it; a trial that ends before it waits for a baseline running on another worker
        ctx_t = dataclasses.replace(ctx, cfg=calibrate.resolved(cfg, calibrate.stored(study.user_attrs)),
                                    calibrates=baseline,
                                    calibration=(lambda: calibrate.stored(study.user_attrs),
                                                 lambda: _baseline_running(study)),
                                    incumbent=(lambda: _incumbent(study, cfg.load.capacity.value))
                                    if cfg.load.mode == "capacity" else None,
                                    measures_floor=measures_floor(study, cfg, params.as_dict(),  # [quality]
                                                                  _baseline_engine_params(cfg).as_dict()))
        try:
            if cfg.load.mode == "capacity":  # each probe of the search: an intermediate value of the trial
                rec = runner(ctx_t, trial.number, params, tag, not baseline, report=trial.report)
            else:
                rec = runner(ctx_t, trial.number, params, tag, not baseline)
        except TrialError as exc:
            _store(trial, exc.record or TrialRecord(setup, failure=Failure(exc.reason, str(exc))))
            log.warning("%s failed (%s): %s", tag, exc.reason, exc)
            retry_trial(study, study.get_trials(deepcopy=False)[trial.number], exc.reason, cfg.study.max_retries)
            raise
        except KeyboardInterrupt as exc:
            partial = exc.record if isinstance(exc, TrialInterrupted) else \
                TrialRecord(setup, failure=Failure(FailureReason.INTERRUPTED), interrupted=True)
            _store(trial, partial)
            retry_trial(study, study.get_trials(deepcopy=False)[trial.number], "interrupted", cfg.study.max_retries)
            if isinstance(exc, TrialInterrupted):
                raise exc.original from None  # Ctrl-C or SIGTERM, as the entry point maps them to exit codes
            raise
        rec = judge(study, cfg, rec, params.as_dict(), _baseline_engine_params(cfg).as_dict(),  # [quality]
                    baseline_running=None if baseline else (lambda: _baseline_running(study)))
        if rec.outcome is None:
            raise RuntimeError(f"{tag}: the trial runner returned a record without an outcome")
        _store(trial, rec)
        if baseline and rec.vllm_defaults:
            _log_defaults(tag, cfg, rec)
        cfg_t = calibrate.resolved(cfg, calibrate.store(study, trial.number, rec.to_attrs()))  # [calibrate]
        for key, value in rec.outcome.constraints.items():
            trial.set_constraint(key, float(value))
        _log_done(tag, rec, cfg_t)
        if cfg.hardware.device == "cpu" and (note := ranking_note(study.get_trials(deepcopy=False), trial.number, rec)):
            log.warning("%s %s", tag, note)
        return rec.outcome.value

    def guarded(trial: Trial) -> float:
        try:
            return objective(trial)
        except optuna.exceptions.UpdateFinishedTrialError as exc:
            # another worker failed this trial: our heartbeat was silent past the grace period
            taken_over.append(trial.number)
            if isinstance(exc.__context__, KeyboardInterrupt):
                raise exc.__context__ from None
            raise

    return guarded


def _log_defaults(tag: str, cfg: Config, rec: TrialRecord) -> None:
    """The baseline's defaults as the installed vLLM resolved them, against what the preset's search space
    assumed (hardware.vllm_defaults: grid points, the memory estimate): the record holds vLLM's."""
    resolved = rec.vllm_defaults or {}
    log.info("%s vLLM %s's defaults here (recorded with the baseline): %s", tag, rec.vllm_version or "?",
             json.dumps(resolved, sort_keys=True))
    if diff := differences(cfg.hardware.vllm_defaults, resolved):
        log.warning("%s hardware=%s's search space assumed other defaults than this vLLM resolves (the report and "
                    "the record use vLLM's): %s", tag, cfg.hardware.name, "; ".join(diff))


def _incumbent(study: optuna.Study, value: str = "output_tok_s") -> Optional[Incumbent]:
    """load.mode=capacity: the study's best feasible trial, its capacity and the lower confidence bound
    of its ``value`` (the early stop's bar)."""
    best = study_result(study.get_trials(deepcopy=False)).best
    cap = TrialRecord.from_trial(best).capacity if best is not None else None
    if best is None or cap is None or not cap.result.feasible:
        return None
    return Incumbent(best.number, cap.result.value, lower_value(cap.result, value))


def _baseline_running(study: optuna.Study) -> bool:
    """[calibrate] Is a baseline trial running on a live worker? (Dead workers' trials are failed first.)"""
    fail_stale(study)
    return any(t.user_attrs.get("kind") == "baseline"
               for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)))


def _store(trial: Trial, rec: TrialRecord) -> None:
    """The record into the trial's user attrs, through its own encoding."""
    for k, v in rec.to_attrs().items():
        trial.set_user_attr(k, v)


def _baseline_engine_params(cfg: Config) -> EngineParams:
    """The baseline server: no tuning flag, except the CPU backend's KV space, which has no sane
    default on a shared machine (vLLM would reserve 92% of RAM)."""
    if cfg.hardware.device == "cpu":
        return EngineParams(kv_cache_gib=cfg.hardware.cpu_kvcache_gib)
    return EngineParams()


def _optimize(study: optuna.Study, cfg: Config, ctx: TrialContext, space: Space, budget: StudyStopper,
              runner: TrialRunner = run_trial) -> None:
    """``study.optimize`` until the budget stops it, surviving a trial taken over by another worker.

    When this worker's heartbeat was silent longer than ``study.heartbeat_grace_s`` (a stalled host,
    a network cut), another worker fails its running trial and retries it. Writing the result then
    fails, and Optuna raises out of ``optimize``. The result is dropped, since the retry measures the
    config again, and the loop goes on."""
    taken_over: list[int] = []
    objective = _objective(cfg, ctx, space, taken_over, runner)
    while True:
        try:
            study.optimize(objective, n_trials=None, callbacks=[budget], catch=(TrialError,), gc_after_trial=False)
            return
        except Exception:
            if not taken_over:
                raise
            log.warning("trial %d was failed by another worker while this one ran it: this worker's heartbeat was "
                        "silent longer than study.heartbeat_grace_s=%d s (a stalled host or network). Its result "
                        "is dropped; the retry measures the config again.", taken_over[-1],
                        cfg.study.heartbeat_grace_s)
            taken_over.clear()
            fail_stale(study)
            if budget.abort or budget.stopped or finished_count(study) + in_flight(study) >= cfg.study.n_trials:
                return


def run_study(cfg: Config, rt: Runtime, runner: TrialRunner = run_trial) -> StudyResult:
    """Open (or resume) the study and run trials until it holds ``study.n_trials`` finished ones.
    ``runner`` runs each trial (a test injects one that starts no server)."""
    space = build_space(cfg)
    ctx = make_context(cfg, rt, space)
    killed = pidfile.sweep(ctx.pid_dir)
    if killed:
        log.warning("stopped %d server group(s) left behind by a killed run", len(killed))
    seeds = seed_params(cfg, space)  # study.enqueue: refused (ConfigError) before the study is touched
    db = sqlite_path(cfg.study.storage)
    # SQLite: this process holds the whole study; a server database: this worker name on this host
    lock = StudyLock(db.resolve()).acquire() if db is not None else WorkerLock(ctx.pid_dir, cfg.study.name,
                                                                                ctx.worker).acquire()
    try:
        probe = optuna.samplers.RandomSampler()
        study = open_study(cfg, space, probe)
        study.sampler = make_sampler(cfg, len(study.trials), ctx.worker)
        # trials a killed run left RUNNING: all of them on SQLite; on a shared database those of this
        # worker name now, and other workers' once their heartbeat is older than the grace period
        n = reap_interrupted(study, cfg.study.max_retries, None if db is not None else ctx.worker)
        if n:
            log.warning("%d trial(s) were interrupted by a killed run: recorded as failed and retried", n)
        if db is None:
            fail_stale(study)
        # a study made on another vLLM: said now, before any server starts; its trials are ranked apart
        change = check_engine(study, ctx.engine, ctx.python, ctx.server_env, rt.flags_reader)
        if cfg.study.enqueue_baseline:
            enqueue_baseline_once(study, cfg.study.storage, baseline_params(cfg))
            if change is not None and enqueue_baseline_for(study, cfg.study.storage, change.now.vllm,
                                                           baseline_params(cfg)):
                log.info("enqueued a baseline trial: vLLM %s's defaults", change.now.vllm)
        if seeds:
            n_seeds = enqueue_seeds_once(study, cfg.study.storage, seeds)
            if n_seeds:
                log.info("enqueued %d config(s) of study.enqueue (vLLM's defaults with the changes given)", n_seeds)
        done = finished_count(study)
        running = in_flight(study)
        log.info("study %s: %d of %d trials finished%s; storage %s; worker %s%s", cfg.study.name, done,
                 cfg.study.n_trials, f", {running} running elsewhere" if running else "",
                 redact_url(cfg.study.storage), ctx.worker,
                 f" on GPU(s) {','.join(map(str, ctx.gpu_ids))}" if ctx.gpu_ids else "")
        if cfg.slo.is_auto:  # [calibrate]
            cal = calibrate.stored(study.user_attrs)
            at = "at one user, before its capacity search" if cfg.load.mode == "capacity" else "at this load"
            log.info("%s", cal.describe() if cal else f"slo.p99_ms=auto: the baseline trial calibrates the SLO "
                     f"(slo.auto_factor {cfg.slo.auto_factor:g} x the median {cfg.slo.metric} of vLLM's defaults, "
                     f"the baseline trial, {at})")
        budget = StudyStopper(cfg, started=rt.started, workers=rt.workers, worker=ctx.worker, clock=rt.clock)
        if done + running < cfg.study.n_trials and budget.may_start(study):
            _optimize(study, cfg, ctx, space, budget, runner)
        result = study_result(study.get_trials(deepcopy=False))
        if rt.summary:
            slo_ms = calibrate.slo_ms(cfg.slo, calibrate.stored(study.user_attrs))  # [calibrate]
            log.info("%s", describe(result, cfg.slo.metric, slo_ms))
        if budget.stopped and not budget.stopped.startswith("n_trials"):
            log.warning("the study stopped before study.n_trials=%d (%s); run the same command to go on",
                        cfg.study.n_trials, budget.stopped)
        if budget.abort:
            raise StudyError(budget.abort)
        return result
    finally:
        lock.release()


