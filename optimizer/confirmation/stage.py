"""The confirmation stage: the study's winner, re-measured where it was not selected.

A study picks the best of many noisy measurements, so its winner's score is biased upward (the
winner's curse). This stage starts the baseline and the ``study.confirm.top_k`` best feasible
distinct configs again, each on a fresh server, ``study.confirm.repeats`` times in interleaved
rounds (:mod:`~optimizer.confirmation.plan`), with the study's own trial function and config
(so every load mode is confirmed the same way) on held-out prompts: round ``r`` uses workload
seed ``workload.seed + seed_offset + r``. The recommendation comes from these runs alone
(:func:`~optimizer.confirmation.uplift.recommend`).

Each run is stored as a trial of the same study once it has finished (``study.add_trial``):
COMPLETE with its value and constraints, the confirmed trial's params and a
:class:`~optimizer.record.Confirmation` part; FAIL (with its partial record) when the
environment or a signal stopped it. Nothing is enqueued, so no search worker ever pops a
confirmation, and no trial is left RUNNING. The budget (``finished_count``) and the study's
result (``study_result``) skip them. TPE does see them if the study is continued afterwards:
they are COMPLETE observations of configs it had already proposed, measured with the study's
own objective, so they add replicates (the sampler's density around the confirmed configs gets
sharper, never a new proposal); Optuna's own ``study.best_trial`` may then name one of them,
which is why nothing here reads it.

With several GPU groups on the host (``study.workers``, the same plan as the search's), the
runs still missing go to the groups at once, one process per group (the process machinery of
:func:`~optimizer.study.workers.spawn_and_wait`); :func:`~optimizer.confirmation.plan.assign`
moves each config to the next group from one round to the next, so no config is tied to one
GPU. Each worker runs its share in plan order with the retry and environmental-failure rules
above; the entry process holds the study for the stage, waits, and summarizes once. Each run
records its worker and the ``CUDA_VISIBLE_DEVICES`` its server got.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from dataclasses import replace
from pathlib import Path
from typing import Iterator, Optional, Sequence

import optuna
from optuna.distributions import BaseDistribution
from optuna.trial import TrialState, create_trial

from optimizer.settings.config import Config
from optimizer.core.errors import FailureReason, StudyError, TrialError, TrialInterrupted
from optimizer.record import Confirmation, Failure, Setup, TrialRecord
from optimizer.server import pidfile
from optimizer.space.engine_args import EngineParams
from optimizer.space.search_space import baseline_params, build_space
from optimizer.trial import calibrate
from optimizer.confirmation.plan import (Candidate, Slot, assign, candidates, failed_attempts, flags_changed,
                                         remaining)
from optimizer.confirmation.plan import plan as plan_slots
from optimizer.confirmation.confirm_result import (ConfirmResult, describe_confirmation, of_engine,
                                                   summarize_confirmation)
from optimizer.study.coordination import advisory_lock
from optimizer.trial.gpus import WorkerPlan, trial_gpus
from optimizer.study.loop import Runtime, make_context
from optimizer.study.storage import StudyLock, open_study, sqlite_path
from optimizer.trial.trial import TrialContext, TrialRunner, run_trial
from optimizer.study.workers import WorkerJob, exit_text, spawn_and_wait

__all__ = ["run_confirmation"]

log = logging.getLogger(__name__)


@contextlib.contextmanager
def _held(cfg: Config) -> Iterator[None]:
    """The study, held for the stage: the SQLite file's lock, or a PostgreSQL advisory lock (a second
    host finishing its search at the same moment waits, then finds every run done)."""
    db = sqlite_path(cfg.study.storage)
    if db is None:
        with advisory_lock(cfg.study.storage, f"vllm-optimizer:confirm:{cfg.study.name}"):
            yield
        return
    lock = StudyLock(db.resolve()).acquire()
    try:
        yield
    finally:
        lock.release()


def _in_space(c: Candidate) -> tuple[dict[str, object], dict[str, BaseDistribution]]:
    """The candidate's params that its distributions contain. The baseline's are vLLM's defaults,
    which may lie outside a narrowed search range (Optuna runs an enqueued value it warns about, but
    ``create_trial`` refuses it); the config itself is in the record's engine parameters."""
    kept = {k: v for k, v in c.params.items()
            if k in c.distributions and c.distributions[k]._contains(c.distributions[k].to_internal_repr(v))}
    return kept, {k: c.distributions[k] for k in kept}


def _store(study: optuna.Study, c: Candidate, rec: TrialRecord, state: TrialState) -> None:
    o = rec.outcome if state == TrialState.COMPLETE else None
    params, dists = _in_space(c)
    study.add_trial(create_trial(state=state, value=o.value if o else None, params=params,
                                 distributions=dists, user_attrs=rec.to_attrs(),
                                 constraints=dict(o.constraints) if o else None))


def _run_slot(study: optuna.Study, ctx: TrialContext, s: Slot, conf: Confirmation, runner: TrialRunner,
              n_slots: int, k: int) -> bool:
    """Run one slot and store it; False when the environment failed it."""
    cfg = dataclasses.replace(ctx.cfg, workload=dataclasses.replace(ctx.cfg.workload, seed=s.seed))
    run_ctx = replace(ctx, cfg=cfg, trial_root=ctx.trial_root / "confirm")
    c = s.candidate
    tag = f"[confirm {k}/{n_slots} | round {s.repeat + 1}, {c.label}]"
    params = EngineParams.from_dict(c.engine_params)
    gpus: tuple[int, ...] = ()
    with contextlib.suppress(ValueError):  # a group too small for the config: run_trial says so
        gpus = trial_gpus(ctx.gpu_ids, params.tensor_parallel_size)
    log.info("%s seed %d%s: %s", tag, s.seed, f", GPU(s) {','.join(map(str, gpus))}" if ctx.gpu_ids and gpus else "",
             c.key)
    setup = Setup(cfg.hardware.name, cfg.model.name, cfg.workload.name, params.as_dict(), ctx.worker,
                  engine=ctx.engine)
    try:
        rec = runner(run_ctx, s.index, params, tag, not c.baseline)
    except TrialError as exc:
        _store(study, c, replace(exc.record or TrialRecord(setup, failure=Failure(exc.reason, str(exc))),
                                 confirmation=conf), TrialState.FAIL)
        log.warning("%s failed (%s): %s", tag, exc.reason, exc)
        return False
    except TrialInterrupted as exc:
        _store(study, c, replace(exc.record, confirmation=conf, interrupted=True), TrialState.FAIL)
        raise exc.original from None
    except KeyboardInterrupt:
        _store(study, c, TrialRecord(setup, failure=Failure(FailureReason.INTERRUPTED), interrupted=True,
                                     confirmation=conf), TrialState.FAIL)
        raise
    if rec.outcome is None:
        raise RuntimeError(f"{tag}: the trial runner returned a record without an outcome")
    _store(study, c, replace(rec, confirmation=conf), TrialState.COMPLETE)
    log.info("%s %.1f (search: %.1f): %s", tag, rec.outcome.value, c.value,
             "feasible" if rec.outcome.feasible else "infeasible")
    return True


def _run_slots(study: optuna.Study, ctx: TrialContext, todo: list[Slot], n_slots: int, per_round: int,
               runner: TrialRunner) -> None:
    """Run ``todo`` in order, each failed one again after the rest (``study.max_retries``);
    ``study.max_consecutive_env_failures`` environmental failures in a row stop it (StudyError).
    One worker's share, or the whole stage where there is one worker."""
    cfg = ctx.cfg
    defaults = baseline_params(cfg)
    todo = list(todo)
    streak = 0
    while todo:
        s = todo.pop(0)
        c = s.candidate
        conf = Confirmation(c.of, s.repeat, s.slot, s.seed, c.baseline,
                            0 if c.baseline else flags_changed(c.engine_params, defaults))
        if _run_slot(study, ctx, s, conf, runner, n_slots, s.repeat * per_round + s.slot + 1):
            streak = 0
            continue
        streak += 1
        if streak >= cfg.study.max_consecutive_env_failures:
            raise StudyError(f"{streak} confirmation runs in a row failed for reasons outside their config "
                             f"({ctx.worker}); fix the environment and run `python -m optimizer.confirm study.name="
                             f"{cfg.study.name}` to resume (study.max_consecutive_env_failures="
                             f"{cfg.study.max_consecutive_env_failures}).")
        if failed_attempts(s, of_engine(study.get_trials(deepcopy=False), ctx.engine.vllm or None)) <= \
                cfg.study.max_retries:
            todo.append(s)  # once more, after the rest


def _calibrated(ctx: TrialContext, study: optuna.Study) -> TrialContext:
    """slo.p99_ms=auto: every run is judged by the limit the study's baseline calibrated."""
    return dataclasses.replace(ctx, cfg=calibrate.resolved(ctx.cfg, calibrate.stored(study.user_attrs)))


def _confirm_worker(cfg: Config, rt: Runtime, share: list[Slot], n_slots: int, per_round: int,
                    runner: TrialRunner) -> None:
    """A worker process of a parallel confirmation: its share of the slots, on its GPUs."""
    space = build_space(cfg)
    ctx = make_context(cfg, rt, space)
    study = open_study(cfg, space, optuna.samplers.RandomSampler())
    _run_slots(study, _calibrated(ctx, study), share, n_slots, per_round, runner)


def _worker_runtimes(rt: Runtime, plan: Optional[WorkerPlan]) -> list[Runtime]:
    """One runtime per GPU group of ``plan`` (None: ``rt`` alone, as given); several are named
    ``<rt.worker>/w<i>``."""
    if plan is None:
        return [rt]
    if plan.workers == 1:
        return [replace(rt, gpu_ids=plan.groups[0])]
    return [replace(rt, gpu_ids=g, worker=f"{rt.worker}/w{i}", workers=plan.workers) for i, g in enumerate(plan.groups)]


def _run_parallel(cfg: Config, runtimes: list[Runtime], shares: list[list[Slot]], n_slots: int, per_round: int,
                  runner: TrialRunner, log_file: Optional[Path], debug: bool) -> dict[str, int]:
    jobs = [WorkerJob(r.worker, r.gpu_ids, _confirm_worker, (cfg, r, share, n_slots, per_round, runner))
            for r, share in zip(runtimes, shares) if share]
    for job in jobs:
        log.info("confirmation worker %s (GPU(s) %s): %s", job.name, ",".join(map(str, job.gpus)) or "-",
                 ", ".join(f"round {s.repeat + 1} {s.candidate.label}" for s in job.args[2]))
    return spawn_and_wait(jobs, log_file, debug, on_death="and its run is started again on the next call")


def run_confirmation(cfg: Config, rt: Runtime, runner: TrialRunner = run_trial, *,
                     plan: Optional[WorkerPlan] = None, log_file: Optional[Path] = None,
                     debug: bool = False) -> Optional[ConfirmResult]:
    """Run (or resume) the confirmation stage of the study ``cfg`` names; its result, or None when
    ``study.confirm.top_k`` is 0 or the study has nothing to confirm.

    Args:
        cfg: the study's config.
        rt: the runtime; ``rt.worker`` names the stage's runs (``<host>/confirm``).
        runner: runs one slot (a module-level function where ``plan`` has several workers: it
            crosses to their processes).
        plan: this host's workers (:func:`optimizer.study.workers.host_plan`, as for the search).
            None: one worker with ``rt``'s GPUs. One group: the runs go there. Several: the
            remaining slots run on the groups at once, one process per group
            (:func:`~optimizer.confirmation.plan.assign` rotates each config over the groups).
        log_file / debug: the logging of the worker processes.

    Raises:
        StudyError: ``study.max_consecutive_env_failures`` runs in a row failed for reasons
            outside their config (one worker's runs, in parallel), or a worker died and left
            runs missing; the next call resumes at them.
        KeyboardInterrupt / Terminated: a signal stopped it (that run is stored as interrupted;
            the next call resumes at it).
    """
    cc = cfg.study.confirm
    if cc.top_k == 0:
        return None
    runtimes = _worker_runtimes(rt, plan)
    space = build_space(cfg)
    ctx = make_context(cfg, runtimes[0], space)
    killed = pidfile.sweep(ctx.pid_dir)
    if killed:
        log.warning("stopped %d server group(s) left behind by a killed run", len(killed))
    with _held(cfg):
        study = open_study(cfg, space, optuna.samplers.RandomSampler())
        ctx = _calibrated(ctx, study)
        version = ctx.engine.vllm or None  # the runs of the installed vLLM
        cands = candidates(of_engine(study.get_trials(deepcopy=False), version), cc.top_k)
        if not any(c.baseline for c in cands) or len(cands) < 2:
            log.warning("confirmation: nothing to confirm (%s); it needs the baseline and at least one feasible "
                        "search trial", "no completed baseline" if not any(c.baseline for c in cands)
                        else "no feasible search trial besides the baseline")
            return summarize_confirmation(study.get_trials(deepcopy=False), cc.confidence, cc.margin, version)
        slots = plan_slots(cands, cc.repeats, cfg.workload.seed + cc.seed_offset)
        todo = remaining(slots, of_engine(study.get_trials(deepcopy=False), version))
        shares = assign(todo, len(runtimes))
        busy = sum(1 for share in shares if share)
        log.info("confirmation of %s: %d rounds, %d of %d runs done%s", ", ".join(c.label for c in cands),
                 cc.repeats, len(slots) - len(todo), len(slots),
                 f"; the rest on {busy} GPU group(s) at once" if busy > 1 else "")
        if busy > 1:
            codes = _run_parallel(cfg, runtimes, shares, len(slots), len(cands), runner, log_file, debug)
            _after_parallel(cfg, codes, remaining(slots, of_engine(study.get_trials(deepcopy=False), version)),
                            len(slots))
        elif busy == 1:
            i = next(i for i, share in enumerate(shares) if share)
            ctx = _calibrated(make_context(cfg, runtimes[i], space), study) if i else ctx
            _run_slots(study, ctx, shares[i], len(slots), len(cands), runner)
        result = summarize_confirmation(study.get_trials(deepcopy=False), cc.confidence, cc.margin, version)
    if result is not None:
        log.info("%s", describe_confirmation(result))
    return result


def _after_parallel(cfg: Config, codes: dict[str, int], missing: list[Slot], n_slots: int) -> None:
    failed = {name: code for name, code in codes.items() if code != 0}
    what = "; ".join(f"{name} {exit_text(code)}" for name, code in sorted(failed.items()))
    if missing:
        raise StudyError(f"{what or 'the confirmation workers stopped'}; {len(missing)} of {n_slots} confirmation "
                         f"runs are missing. Fix what the worker log says (runs/{cfg.study.name}/optimizer.log) and "
                         f"run `python -m optimizer.confirm study.name={cfg.study.name}` to resume.")
    if failed:
        log.warning("%s; every confirmation run is stored all the same", what)
