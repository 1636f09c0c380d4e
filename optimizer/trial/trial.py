"""One trial: rule check, server start, warm-up, load test, telemetry, stop.

``run_trial`` returns the :class:`~optimizer.record.TrialRecord` of every config the sampler
should learn from (measured, ruled out by the memory estimate, or unable to start for a reason
of its own). It raises :class:`~optimizer.core.errors.TrialError` (``deterministic=False``: the
environment was to blame, so the study fails and retries the trial) or
:class:`~optimizer.core.errors.TrialInterrupted` (Ctrl-C, SIGTERM); either carries the partial record
of what the trial got to.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Optional, Protocol

import httpx

from optimizer.core.auth import bearer
from optimizer.settings.config import Config, SloConfig
from optimizer.core.errors import (
    EnvironmentBusy,
    FailureReason,
    ServerDied,
    TrialError,
    TrialInterrupted,
)
from optimizer.loadgen.client import Endpoint
from optimizer.loadgen.workload import RequestSet
from optimizer.measures.metrics import LoadSummary
from optimizer.model.resolve import target_for
from optimizer.measures.objective import infeasible, score
from optimizer.record import Failure, LaunchInfo, MemoryPrediction, Setup, Timings, TrialRecord
from optimizer.server.defaults import defaults_from_log, resolve_defaults
from optimizer.server.engine import Engine
from optimizer.server.failures import classify
from optimizer.server.gpu import wait_for_free_gpus
from optimizer.server.launcher import resolve as resolve_launcher
from optimizer.server.process import VllmServer, free_port
from optimizer.server.startlog import parse_start_log
from optimizer.space.engine_args import EngineParams, Launch, render
from optimizer.space.search_space import check
from optimizer.trial import calibrate
from optimizer.trial.capacity_load import CapacityLadder, Incumbent, Reporter
from optimizer.trial.gpus import trial_gpus
from optimizer.trial.trial_quality import probe_server
from optimizer.trial.load import FixedLoad, Loaded, LoadStrategy

__all__ = ["TrialContext", "TrialRunner", "launch_for", "run_trial"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrialContext:
    """Everything a trial needs besides its parameters; built once per run."""

    cfg: Config
    model_dir: Path
    python: str
    server_env: dict[str, str]  # the full environment of a server process
    api_key: Optional[str]
    trial_root: Path  # runs/<study>
    pid_dir: Path
    gpu_ids: tuple[int, ...] = ()  # the GPUs this worker owns; a trial uses its first tensor_parallel_size
    worker: str = ""  # <host>/w<index>
    # [calibrate] slo.p99_ms=auto: this trial is the baseline, whose load test sets the study's SLO
    calibrates: bool = False
    # [calibrate] (the study's calibration, is a baseline running?): read by a trial that must wait for
    # another worker's baseline (optimizer.trial.calibrate.wait)
    calibration: Optional[tuple[Callable[[], Any], Callable[[], bool]]] = None
    # load.mode=capacity: reads the study's incumbent (best feasible trial, its capacity) for the early stop
    incumbent: Optional[Callable[[], Optional[Incumbent]]] = None
    engine: Engine = Engine()  # the vLLM and torch build installed for ``python`` (optimizer.server.engine)
    # [quality] this trial may become the study's quality reference: its probe also measures the noise
    # floor (optimizer.trial.trial_quality.measures_floor); every other trial reuses the stored one
    measures_floor: bool = False


class TrialRunner(Protocol):
    """What the study loop calls: (context, trial number, parameters, tag, rule check) -> record;
    ``report`` (given with load.mode=capacity only) takes each probe as an intermediate value."""

    def __call__(self, ctx: TrialContext, number: int, params: EngineParams, tag: str = "",
                 rule_check: bool = True, /, *, report: Optional[Reporter] = None) -> TrialRecord: ...


def launch_for(ctx: TrialContext, params: EngineParams, port: int, identity: str = "") -> Launch:
    target = target_for(ctx.cfg.model, ctx.model_dir, params.quantization)
    return render(params, target, host=ctx.cfg.server.host, port=port,
                  fixed_args=tuple(ctx.cfg.hardware.fixed_args), extra_args=tuple(ctx.cfg.server.extra_args),
                  module=ctx.cfg.server.module, identity=identity)


def _progress(tag: str) -> Callable[[str, int], None]:
    last = [time.monotonic()]

    def tick(phase: str, k: int) -> None:
        now = time.monotonic()
        if now - last[0] >= 10:
            last[0] = now
            log.info("%s %s: %d requests done", tag, phase, k)

    return tick


def run_trial(ctx: TrialContext, number: int, params: EngineParams, tag: str = "",
              rule_check: bool = True, /, *, report: Optional[Reporter] = None) -> TrialRecord:
    """Run one trial and return its record (see the module docstring for what it raises).
    ``report(value, step)``: with load.mode=capacity, each probe of the search (optuna's trial.report)."""
    cfg = ctx.cfg
    broken, est = check(params, cfg)
    rec = TrialRecord(Setup(cfg.hardware.name, cfg.model.name, cfg.workload.name, params.as_dict(), ctx.worker,
                            engine=ctx.engine),
                      memory=MemoryPrediction.of(est))
    if broken and rule_check:
        log.info("%s ruled out without starting a server: %s", tag, "; ".join(broken))
        return replace(rec, failure=Failure(FailureReason.RULED_OUT, "; ".join(broken)),
                       outcome=infeasible(memory=True))
    if not rule_check and ctx.cfg.server.module.split(".")[0] == "vllm":  # the baseline: what are the defaults?
        rec = replace(rec, vllm_defaults=_resolved_defaults(ctx, params, tag))
    progress = _Progress(rec)
    try:
        return _run_server(ctx, number, params, progress, tag, report)
    except TrialError as exc:
        exc.record = progress.rec if progress.rec.failure is not None else \
            replace(progress.rec, failure=Failure(exc.reason, str(exc)))
        raise
    except KeyboardInterrupt as exc:
        partial = replace(progress.rec, interrupted=True,
                          failure=progress.rec.failure or Failure(FailureReason.INTERRUPTED))
        raise TrialInterrupted(partial, exc) from exc


class _Progress:
    """The record so far, replaced (never mutated) as each stage completes."""

    def __init__(self, rec: TrialRecord) -> None:
        self.rec = rec
        self.seconds: dict[str, float] = {}  # Timings field -> s

    def timings(self) -> Timings:
        return Timings(**self.seconds)


def _run_server(ctx: TrialContext, number: int, params: EngineParams, p: _Progress, tag: str,
                report: Optional[Reporter] = None) -> TrialRecord:
    cfg = ctx.cfg
    trial_dir = ctx.trial_root / f"trial-{number:04d}"
    trial_dir.mkdir(parents=True, exist_ok=True)
    try:
        gpus = trial_gpus(ctx.gpu_ids, params.tensor_parallel_size)
    except ValueError as exc:  # a worker of another host with a smaller GPU group proposed it
        raise EnvironmentBusy(f"{exc}: study.workers splits this host's GPUs by the largest "
                              f"search.tensor_parallel_size; give this host's workers more GPUs each",
                              reason=FailureReason.TOO_FEW_GPUS) from None
    t_wait = time.monotonic()
    if cfg.hardware.device == "cuda":
        wait_for_free_gpus(gpus, cfg.server.free_wait_s)
    p.seconds["wait_s"] = time.monotonic() - t_wait
    port = free_port(cfg.server.host)
    # a served name no other server has: wait_ready measures nothing but the server started here
    identity = f"vllm-opt-t{number}-{secrets.token_hex(4)}"
    launch = launch_for(ctx, params, port, identity)
    # what a user reruns (command.txt, "serve it"): the model's own served name, without the identity
    command = launch_for(ctx, params, port).command(ctx.python)
    log_path = trial_dir / "server.log"
    info = LaunchInfo(tuple(launch.argv), command, launch.serve_config, str(log_path))
    (trial_dir / "command.txt").write_text(command + "\n")
    env = dict(ctx.server_env)
    setup = p.rec.setup
    if gpus:  # nvidia-smi's indexes, which are PCI bus order; CUDA's default order may differ
        env["CUDA_VISIBLE_DEVICES"] = ",".join(str(g) for g in gpus)
        env["CUDA_DEVICE_ORDER"] = "PCI_BUS_ID"
        setup = replace(setup, gpus=env["CUDA_VISIBLE_DEVICES"])
    p.rec = replace(p.rec, setup=setup, launch=info, timings=p.timings())
    server = VllmServer(launch.argv, python=ctx.python, host=cfg.server.host, port=port, log_path=log_path,
                        env=env, pid_dir=ctx.pid_dir, stop_timeout_s=cfg.server.stop_timeout_s, api_key=ctx.api_key,
                        identity=identity,
                        launcher=resolve_launcher(cfg.server.launcher, cfg.hardware.device,
                                                 max(len(gpus), params.tensor_parallel_size or 1)))
    t0 = time.monotonic()
    try:
        with server:
            log.info("%s starting server on port %d", tag, port)

            def tick(elapsed: float) -> None:
                if int(elapsed) % 30 == 0 and elapsed - int(elapsed) < 0.5 and elapsed >= 30:
                    log.info("%s still starting (%.0f s)", tag, elapsed)

            if _started(server, cfg.server.start_timeout_s, tick, p, t0, tag):
                p.rec = replace(p.rec, launch=replace(info, vllm_version=_version(server)))
                log.info("%s server ready in %.0f s; warm-up and load test", tag, p.seconds["start_s"])
                _measure(ctx, server, p, tag, params, report)
    finally:
        p.seconds["stop_s"] = server.stop()
        p.seconds["total_s"] = time.monotonic() - t0
        start_log = parse_start_log(server.log_text())  # vLLM's own account of its start
        p.rec = replace(p.rec, timings=p.timings(), start_log=None if start_log.empty else start_log)
        if p.rec.vllm_defaults is not None:  # the baseline: the settings its server logged, beside the resolved
            p.rec = replace(p.rec, vllm_defaults_logged=defaults_from_log(server.log_text()) or None)
    return p.rec  # after the stop: the record holds its time and the start log (a return inside would not)


def _started(server: VllmServer, timeout_s: float, tick: Callable[[float], None], p: _Progress, t0: float,
             tag: str) -> bool:
    """Wait for the server. False: it could not start for a reason of its config (recorded as an
    infeasible outcome); the environment's reasons raise."""
    try:
        p.seconds["start_s"] = server.wait_ready(timeout_s, tick)
        return True
    except TrialError as exc:
        p.seconds["start_s"] = time.monotonic() - t0
        p.rec = replace(p.rec, failure=Failure(exc.reason, str(exc)))
        if not exc.deterministic:
            raise
        log.warning("%s server failed to start: %s", tag, exc)
        p.rec = replace(p.rec, outcome=infeasible(startup=True))
        return False


def _strategy(ctx: TrialContext, params: Optional[EngineParams], tag: str,
              report: Optional[Reporter]) -> LoadStrategy:
    """The trial's load step for ``load.mode``: the capacity ladder, or one fixed (closed/open loop) load."""
    cfg = ctx.cfg
    if cfg.load.mode == "capacity":  # optimizer/trial/capacity_load.py
        return CapacityLadder(cfg, params.max_num_seqs if params else None, tag, report, _progress(tag),
                              ctx.incumbent, ctx.calibrates, ctx.calibration)
    return FixedLoad(cfg.load, _progress(tag))


def _measure(ctx: TrialContext, server: VllmServer, p: _Progress, tag: str,
             params: Optional[EngineParams] = None, report: Optional[Reporter] = None) -> None:
    """Load the warm server (the strategy of ``load.mode``), then the one after-load step of every mode."""
    cfg = ctx.cfg
    ep = Endpoint(server.url, cfg.model.served_name or cfg.model.name, cfg.workload.endpoint, ctx.api_key,
                  cfg.load.request_timeout_s, cfg.load.stall_timeout_s)
    rs = RequestSet.build(cfg.workload, cfg.model)
    strategy = _strategy(ctx, params, tag, report)
    loaded = asyncio.run(strategy.run(ep, rs, bearer(ctx.api_key)))
    p.seconds["warmup_s"], p.seconds["load_s"] = loaded.warmup_s, loaded.load_s
    p.rec = replace(p.rec, measurement=loaded.measurement, capacity=loaded.capacity, timings=p.timings(),
                    throughput_ci=loaded.throughput_ci,
                    calibration=loaded.calibration.as_attr() if loaded.calibration else None)  # [calibrate]
    _after_load(ctx, server, p, ep.model, loaded, strategy.during)


def _after_load(ctx: TrialContext, server: VllmServer, p: _Progress, model: str, loaded: Loaded,
                during: str) -> None:
    """What follows the load in every mode: the death check, the quality probe on the warm server,
    the latency limit (where the strategy left the outcome to it) and the outcome."""
    died = _death(server)
    if died is not None:
        d = classify(server.log_text(), server.poll())
        p.rec = replace(p.rec, failure=Failure(d.reason, d.evidence, during_load=True))
        raise ServerDied(f"the server {died} during {during}: {d.reason}: {d.evidence}",
                         reason=d.reason, deterministic=d.deterministic)
    p.rec = replace(p.rec, quality=probe_server(ctx.cfg, server.url, model, ctx.api_key,
                                                floor=ctx.measures_floor))  # [quality] warm server
    outcome = loaded.outcome
    if outcome is None:
        if loaded.summary is None:
            raise TypeError(f"a load strategy returned neither an outcome nor a summary to score: {loaded!r}")
        outcome = score(loaded.summary, _limit(ctx, p, loaded.summary))
    p.rec = replace(p.rec, outcome=outcome)


def _limit(ctx: TrialContext, p: _Progress, summary: LoadSummary) -> SloConfig:
    """The latency limit to score a fixed-load trial by: the configured one, or with slo.p99_ms=auto the
    study's calibrated one (this trial's own when it is the baseline, stored with its record)."""
    cfg = ctx.cfg
    if not cfg.slo.is_auto:
        return cfg.slo
    if not ctx.calibrates:  # [calibrate] not calibrated when the trial started: the baseline
        get, coming = ctx.calibration or ((lambda: None), (lambda: False))  # may run on another worker
        return calibrate.resolved(cfg, calibrate.wait(get, coming, cfg.server.start_timeout_s)).slo
    try:  # [calibrate] this is the baseline: its load test sets the study's SLO
        cal = calibrate.from_summary(summary, cfg)
    except ValueError as exc:
        raise ServerDied(f"the SLO could not be calibrated (slo.p99_ms=auto): {exc}: the baseline served no "
                         f"request", reason="calibration", deterministic=False) from None
    if (warning := cal.spread_warning()) is not None:
        log.warning("%s", warning)
    p.rec = replace(p.rec, calibration=cal.as_attr())  # the loop stores it with the study
    return calibrate.resolved(cfg, cal).slo


def _death(server: VllmServer, wait_s: float = 15.0) -> Optional[str]:
    """How the server died during the load test, in words; None when it is up and healthy.

    vLLM's API server outlives a killed engine for a while (it answers /health with an error, then
    shuts down), so a live process is asked for its health too: a dead engine behind it is a
    dead server, not a config whose requests failed."""
    code = server.poll()
    if code is None and not _healthy(server):
        deadline = time.monotonic() + wait_s
        while server.poll() is None and time.monotonic() < deadline:
            time.sleep(0.5)
        code = server.poll()
        if code is None:
            return "stopped answering /health (its engine is gone)"
    return None if code is None else f"exited with code {code}"


def _healthy(server: VllmServer, tries: int = 3) -> bool:
    headers = bearer(server.api_key)
    for i in range(tries):  # an idle server answers at once; a loaded host may be slow once
        try:
            if httpx.get(server.url + "/health", timeout=10.0, headers=headers).status_code == 200:
                return True
        except httpx.HTTPError:
            pass
        if i + 1 < tries:
            time.sleep(1.0)
    return False


_DEFAULTS_CACHE: dict[tuple[str, tuple[str, ...]], Optional[dict[str, Any]]] = {}


def _resolved_defaults(ctx: TrialContext, params: EngineParams, tag: str) -> Optional[dict[str, Any]]:
    """vLLM's defaults for the baseline's command, as the installed vLLM resolves them (once per
    command and process: the confirmation's repeats of the baseline reuse it); {} where it cannot."""
    argv = tuple(launch_for(ctx, params, 0).argv)
    key = (ctx.python, argv)
    if key not in _DEFAULTS_CACHE:
        t0 = time.monotonic()
        d = resolve_defaults(ctx.python, argv, ctx.server_env)
        log.info("%s vLLM's defaults for this command, as the installed vLLM resolves them (%.0f s): %s", tag,
                 time.monotonic() - t0, d if d is not None else "could not be resolved")
        _DEFAULTS_CACHE[key] = d
    return dict(_DEFAULTS_CACHE[key] or {})


def _version(server: VllmServer) -> str:
    try:
        r = httpx.get(server.url + "/version", timeout=5.0,
                      headers=bearer(server.api_key))
        return str(r.json().get("version", "unknown"))
    except (httpx.HTTPError, ValueError):
        return "unknown"
