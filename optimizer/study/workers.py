"""Parallel workers on one host: one study loop per GPU group, all on the same study storage.

The entry point plans the workers (:func:`host_plan`: the GPU inventory split by the largest
tensor-parallel size) and calls :func:`run_workers`. One worker runs in the entry process, as
before. Several run as processes, not threads: a server's guard dies with the thread that
started it (``PR_SET_PDEATHSIG``) and signal handling belongs to a main thread. Each worker runs
:func:`~optimizer.study.loop.run_study` with its own GPUs and name (``<host>/w<i>``); the storage
gives each trial to one worker (:mod:`optimizer.study.coordination`). There is no scheduler
here: another host running the same command joins the same study the same way.

The entry process forwards SIGINT and SIGTERM to the workers (they run in their own process
group, so a Ctrl-C reaches each of them once, through the parent), waits for all of them, and
reports. A worker that dies does not stop the others: its trial is failed by the heartbeat and
retried by one of them. Workers get SIGTERM when the entry process dies, even by SIGKILL.
That process machinery is :func:`spawn_and_wait`; the confirmation stage runs its parallel
workers with it too (:mod:`optimizer.confirmation.stage`).
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import logging
import multiprocessing
import os
import signal
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from optimizer.core.errors import ConfigError, OptimizerError, StudyError, Terminated
from optimizer.model.resolve import resolve_model_dir
from optimizer.settings.config import Config
from optimizer.study.loop import Runtime, run_study
from optimizer.study.results import StudyResult, describe, study_result
from optimizer.study.storage import finished_count, sqlite_path
from optimizer.trial import calibrate
from optimizer.trial.gpus import WorkerPlan, gpu_inventory, plan_workers

__all__ = ["WorkerJob", "exit_text", "host_plan", "run_workers", "spawn_and_wait", "worker_runtimes"]

log = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1


def host_plan(cfg: Config, visible_devices: Optional[str], detect: Callable[[], Sequence[int]]) -> WorkerPlan:
    """The workers of this host. ``visible_devices`` is ``CUDA_VISIBLE_DEVICES`` as the entry
    point found it; ``detect`` lists GPU indexes (``nvidia-smi``) and is called only when neither
    ``hardware.gpu_ids`` nor ``CUDA_VISIBLE_DEVICES`` names the GPUs."""
    from optimizer.space.search_space import build_space

    hw = cfg.hardware
    detected: Sequence[int] = ()
    if hw.device == "cuda" and not hw.gpu_ids and visible_devices is None:
        detected = detect()
    inventory = gpu_inventory(hw.gpu_ids, visible_devices, detected) if hw.device == "cuda" else ()
    return plan_workers(device=hw.device, workers=cfg.study.workers, gpu_ids=inventory,
                        tp_choices=build_space(cfg).tensor_parallel_size,
                        single_writer=sqlite_path(cfg.study.storage) is not None, storage=cfg.study.storage)


def worker_runtimes(rt: Runtime, host: str, plan: WorkerPlan) -> list[Runtime]:
    """One runtime per worker: its GPU group and its name, ``<host>/w<index>``; all keep the
    command's start time (``rt.started``), so they share ``study.budget``."""
    several = plan.workers > 1
    return [dataclasses.replace(rt, gpu_ids=group, worker=f"{host}/w{i}", summary=not several, workers=plan.workers)
            for i, group in enumerate(plan.groups)]


def run_workers(cfg: Config, rt: Runtime, plan: WorkerPlan, *, host: str, log_file: Optional[Path] = None,
                debug: bool = False) -> Optional[StudyResult]:
    """Run the study with ``plan``'s workers; returns the study's result.

    Raises:
        StudyError: a worker stopped with an error and the study is short of ``study.n_trials``.
        KeyboardInterrupt / Terminated: SIGINT / SIGTERM reached the entry process (forwarded to
            every worker, which stopped its server and recorded its trial as interrupted).
    """
    runtimes = worker_runtimes(rt, host, plan)
    log.info("this host runs %s%s", plan.note,
             f"; idle GPU(s): {','.join(map(str, plan.idle))}" if plan.idle else "")
    if len(runtimes) == 1:
        return run_study(cfg, runtimes[0])
    # what every worker would do first is done once here: write a generated model (not all at the
    # same moment), and open the study, so that a bad storage URL or a changed config is one error
    resolve_model_dir(cfg.model, str(Path(cfg.server.cache_dir).resolve()))
    _open_once(cfg)
    jobs = [WorkerJob(r.worker, r.gpu_ids, _study_body, (cfg, r)) for r in runtimes]
    codes = spawn_and_wait(jobs, log_file, debug,
                           on_death="and retry its trial once the heartbeat fails it (study.heartbeat_grace_s)")
    return _closing(cfg, codes)


@dataclass(frozen=True)
class WorkerJob:
    """One worker process: its name (the tag of its log lines), the GPUs it owns (for the log) and
    what it runs, ``body(*args)``: a module-level function, which the spawn start method pickles by
    reference (a lambda or a local function cannot cross)."""

    name: str
    gpus: tuple[int, ...]
    body: Callable[..., None]
    args: tuple[Any, ...]


def spawn_and_wait(jobs: Sequence[WorkerJob], log_file: Optional[Path], debug: bool, *,
                   on_death: str) -> dict[str, int]:
    """Run ``jobs`` as processes at once and wait for all of them; their exit codes by name.

    Each runs in its own process group (a terminal's Ctrl-C reaches this process only), gets
    SIGTERM when this process dies (even by SIGKILL), logs with its name as the tag, and maps its
    errors to exit codes as an entry point does (:func:`optimizer.core.entry.run_guarded`). SIGINT and
    SIGTERM reaching this process are forwarded to every live job, once. A job that dies or fails
    does not stop the others: the warning names it and says ``on_death`` (what becomes of its work).

    Raises:
        KeyboardInterrupt / Terminated: SIGINT / SIGTERM reached this process (after every job ended).
    """
    mp = multiprocessing.get_context("spawn")
    procs: list[Any] = []
    signals: list[int] = []

    def forward(signum: int, frame: object) -> None:
        signals.append(signum)
        log.warning("%s: stopping %d worker(s); each stops its server and records its run as interrupted",
                    signal.Signals(signum).name, sum(p.is_alive() for p in procs))
        for p in procs:
            if p.is_alive():
                os.kill(p.pid, signum)

    previous = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    codes: dict[str, int] = {}
    try:
        for job in jobs:
            if signals:
                break
            p = mp.Process(target=_worker_main, args=(job, log_file, debug, os.getpid()), name=job.name)
            p.start()
            procs.append(p)
            log.info("worker %s: pid %d, GPU(s) %s", job.name, p.pid, ",".join(map(str, job.gpus)) or "-")
        while len(codes) < len(procs):
            for p in procs:
                if p.name in codes:
                    continue
                p.join(0.2)
                if p.exitcode is not None:
                    codes[p.name] = p.exitcode
                    if p.exitcode < 0 and not signals:
                        log.warning("worker %s %s; the others go on%s", p.name, exit_text(p.exitcode),
                                    f", {on_death}" if on_death else "")
                    elif p.exitcode > 0 and not signals:
                        log.warning("worker %s %s; the others go on", p.name, exit_text(p.exitcode))
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    if signals:
        raise Terminated() if signal.SIGTERM in signals else KeyboardInterrupt()
    return codes


def _open_once(cfg: Config) -> None:
    import optuna

    from optimizer.space.search_space import build_space
    from optimizer.study.storage import open_study

    open_study(cfg, build_space(cfg), optuna.samplers.RandomSampler())


def exit_text(code: int) -> str:
    """A worker's exit code, in words."""
    if code < 0:
        return f"was killed by {signal.Signals(-code).name}"
    return {1: "stopped with a study error (its error line is above)",
            2: "refused its configuration (its error line is above)"}.get(code, f"exited with code {code}")


def _closing(cfg: Config, codes: dict[str, int]) -> Optional[StudyResult]:
    import optuna

    from optimizer.study.storage import make_storage

    failed = {name: code for name, code in codes.items() if code != 0}
    what = "; ".join(f"{name} {exit_text(code)}" for name, code in sorted(failed.items()))
    if failed and set(failed.values()) == {2} and len(failed) == len(codes):
        raise ConfigError(f"every worker refused the configuration ({what})")
    try:
        study = optuna.load_study(study_name=cfg.study.name,
                                  storage=make_storage(cfg.study.storage, heartbeat=False))
    except (KeyError, OptimizerError) as exc:  # no study: every worker stopped before creating it
        raise StudyError(f"{what or 'the workers stopped'}; the study could not be read: {exc}") from None
    result = study_result(study.get_trials(deepcopy=False))
    log.info("%s", describe(result, cfg.slo.metric, calibrate.slo_ms(cfg.slo, calibrate.stored(study.user_attrs))))
    if not failed:
        return result
    done = finished_count(study)
    if done >= cfg.study.n_trials:
        log.warning("%s; the study holds its %d trials all the same", what, cfg.study.n_trials)
        return result
    raise StudyError(f"{what}; the study holds {done} of {cfg.study.n_trials} finished trials. Fix what the worker "
                     f"log says (runs/{cfg.study.name}/optimizer.log) and run the same command to resume.")


def _study_body(cfg: Config, rt: Runtime) -> None:
    run_study(cfg, rt)


def _worker_main(job: WorkerJob, log_file: Optional[Path], debug: bool, parent: int) -> None:
    """A worker process: its own process group, SIGTERM when the parent dies, then the job's body."""
    os.setpgrp()  # a terminal's Ctrl-C reaches the parent only, which forwards it once
    with contextlib.suppress(OSError, AttributeError):  # not Linux: the parent's forwarding still works
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent:  # the parent died before prctl took effect
        sys.exit(143)
    from optimizer.core.entry import run_guarded, setup_logging

    setup_logging(log_file, debug, tag=job.name)

    def body() -> int:
        job.body(*job.args)
        return 0

    sys.exit(run_guarded(body, debug))
