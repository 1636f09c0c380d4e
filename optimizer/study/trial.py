"""One trial: rule check, server start, warm-up, load test, telemetry, stop.

``run_trial`` returns a :class:`TrialRecord` for every config the sampler should learn from
(measured, ruled out by the memory estimate, or unable to start for a reason of its own) and
raises :class:`~optimizer.errors.TrialError` with ``deterministic=False`` when the environment
was to blame, so the study fails and retries the trial.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import httpx

from optimizer.config import Config
from optimizer.errors import EnvironmentBusy, ServerDied, TrialError
from optimizer.loadgen.client import Endpoint
from optimizer.loadgen.runner import run_load
from optimizer.loadgen.workload import RequestSet
from optimizer.metrics import summarize
from optimizer.model.resolve import target_for
from optimizer.objective import Outcome, infeasible, score
from optimizer.server.failures import classify
from optimizer.server.gpu import wait_for_free_gpus
from optimizer.server.process import VllmServer, free_port
from optimizer.server.startlog import parse_start_log
from optimizer.server.telemetry import TelemetrySampler
from optimizer.space.engine_args import EngineParams, Launch, render
from optimizer.space.search_space import check
from optimizer.study import calibrate
from optimizer.study.gpus import trial_gpus

__all__ = ["TrialContext", "TrialRecord", "run_trial", "launch_for"]

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


@dataclass
class TrialRecord:
    outcome: Outcome
    attrs: dict[str, Any] = field(default_factory=dict)
    latencies: dict[str, list[float]] = field(default_factory=dict)  # ms samples for the report's CDFs


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


def _sample(values: list[float], limit: int = 2000) -> list[float]:
    if len(values) <= limit:
        return [round(v, 3) for v in values]
    step = len(values) / limit
    s = sorted(values)
    return [round(s[int(i * step)], 3) for i in range(limit)] + [round(s[-1], 3)]


def run_trial(ctx: TrialContext, number: int, params: EngineParams, attrs: dict[str, Any], *, tag: str = "",
              rule_check: bool = True, calibrates: bool = False,
              calibration: Optional[tuple[Callable[[], Any], Callable[[], bool]]] = None) -> TrialRecord:
    """Run one trial. ``attrs`` (the caller's) collects what is known even if this raises.
    ``calibrates``: this is the baseline, whose load test sets an uncalibrated ``slo.p99_ms=auto``;
    ``calibration``: (the study's calibration, is a baseline running?), read by a trial that must
    wait for another worker's baseline (:func:`optimizer.study.calibrate.wait`)."""
    cfg = ctx.cfg
    attrs |= {"hardware": cfg.hardware.name, "model": cfg.model.name, "workload": cfg.workload.name,
                             "engine_params": json.dumps(params.as_dict(), sort_keys=True)}
    if ctx.worker:
        attrs["worker"] = ctx.worker
    broken, est = check(params, cfg)
    attrs.update(est.as_attrs())
    if broken and rule_check:
        attrs.update({"failure": "ruled_out", "failure_detail": "; ".join(broken), "counted": False})
        log.info("%s ruled out without starting a server: %s", tag, "; ".join(broken))
        return TrialRecord(infeasible(memory=True), attrs)

    trial_dir = ctx.trial_root / f"trial-{number:04d}"
    trial_dir.mkdir(parents=True, exist_ok=True)
    try:
        gpus = trial_gpus(ctx.gpu_ids, params.tensor_parallel_size)
    except ValueError as exc:  # a worker of another host with a smaller GPU group proposed it
        raise EnvironmentBusy(f"{exc}: study.workers splits this host's GPUs by the largest "
                              f"search.tensor_parallel_size; give this host's workers more GPUs each",
                              reason="too_few_gpus") from None
    t_wait = time.monotonic()
    if cfg.hardware.device == "cuda":
        wait_for_free_gpus(gpus, cfg.server.free_wait_s)
    port = free_port(cfg.server.host)
    # a served name no other server has: wait_ready measures nothing but the server started here
    identity = f"vllm-opt-t{number}-{secrets.token_hex(4)}"
    launch = launch_for(ctx, params, port, identity)
    # what a user reruns (command.txt, "serve it"): the model's own served name, without the identity
    command = launch_for(ctx, params, port).command(ctx.python)
    attrs.update({"server_argv": json.dumps(launch.argv), "server_command": command,
                  "serve_config": json.dumps(launch.serve_config, sort_keys=True),
                  "server_log": str(trial_dir / "server.log"), "t_wait_s": round(time.monotonic() - t_wait, 2)})
    (trial_dir / "command.txt").write_text(command + "\n")
    env = dict(ctx.server_env)
    env.update(launch.env)
    if gpus:  # nvidia-smi's indexes, which are PCI bus order; CUDA's default order may differ
        env["CUDA_VISIBLE_DEVICES"] = ",".join(str(g) for g in gpus)
        env["CUDA_DEVICE_ORDER"] = "PCI_BUS_ID"
        attrs["gpus"] = env["CUDA_VISIBLE_DEVICES"]
    server = VllmServer(launch.argv, python=ctx.python, host=cfg.server.host, port=port,
                        log_path=trial_dir / "server.log", env=env, pid_dir=ctx.pid_dir,
                        stop_timeout_s=cfg.server.stop_timeout_s, api_key=ctx.api_key, identity=identity)
    record: Optional[TrialRecord] = None
    t0 = time.monotonic()
    try:
        with server:
            log.info("%s starting server on port %d", tag, port)

            def tick(elapsed: float) -> None:
                if int(elapsed) % 30 == 0 and elapsed - int(elapsed) < 0.5 and elapsed >= 30:
                    log.info("%s still starting (%.0f s)", tag, elapsed)

            try:
                attrs["t_start_s"] = round(server.wait_ready(cfg.server.start_timeout_s, tick), 2)
            except TrialError as exc:
                attrs["t_start_s"] = round(time.monotonic() - t0, 2)
                attrs.update({"failure": exc.reason, "failure_detail": str(exc)[:1000]})
                if not exc.deterministic:
                    raise
                log.warning("%s server failed to start: %s", tag, exc)
                record = TrialRecord(infeasible(startup=True), attrs)
                return record
            attrs["vllm_version"] = _version(server)
            log.info("%s server ready in %.0f s; warm-up and load test", tag, attrs["t_start_s"])
            record = asyncio.run(_measure(ctx, server, attrs, tag, calibrates, calibration))
            return record
    finally:
        attrs["t_stop_s"] = round(server.stop(), 2)
        attrs["t_total_s"] = round(time.monotonic() - t0, 2)
        _kv_from_log(server, attrs)


async def _measure(ctx: TrialContext, server: VllmServer, attrs: dict[str, Any], tag: str,
                   calibrates: bool = False,
                   calibration: Optional[tuple[Callable[[], Any], Callable[[], bool]]] = None) -> TrialRecord:
    cfg = ctx.cfg
    ep = Endpoint(server.url, cfg.model.served_name or cfg.model.name, cfg.workload.endpoint, ctx.api_key,
                  cfg.load.request_timeout_s, cfg.load.stall_timeout_s)
    rs = RequestSet.build(cfg.workload, cfg.model)
    headers = {"Authorization": f"Bearer {ctx.api_key}"} if ctx.api_key else None
    async with TelemetrySampler(server.url, 1.0, headers) as tel:
        run = await run_load(ep, rs, cfg.load, _progress(tag))
    attrs["t_warmup_s"] = round(run.warmup_s, 2)
    attrs["t_load_s"] = round(run.duration_s, 2)
    attrs["client_cpu_s"] = round(run.client_cpu_s, 2)
    attrs["client_cpu_share"] = round(run.client_cpu_s / run.duration_s, 3) if run.duration_s > 0 else math.nan
    summary = summarize(run.results, run.duration_s, cfg.load.p99_confidence)
    attrs.update({k: _clean(v) for k, v in summary.flat().items()})
    attrs.update({k: _clean(v) for k, v in tel.stats().items()})
    attrs["warmup_errors"] = sum(1 for r in run.warmup if not r.ok)
    first_error = next((r.error for r in run.results if not r.ok), "")
    if first_error:
        attrs["first_error"] = first_error[:300]
    code = server.poll()
    if code is not None:
        d = classify(server.log_text(), code)
        attrs.update({"failure": "server_died:" + d.reason, "failure_detail": d.evidence})
        raise ServerDied(f"the server exited with code {code} during the load test: {d.reason}: {d.evidence}",
                         reason=d.reason, deterministic=d.deterministic)
    slo = cfg.slo
    if slo.is_auto and not calibrates:  # [calibrate] not calibrated when the trial started: the baseline
        get, coming = calibration or ((lambda: None), (lambda: False))  # it may run on another worker
        cal = calibrate.wait(get, coming, cfg.server.start_timeout_s)
        slo = calibrate.resolved(cfg, cal).slo
    elif slo.is_auto:  # [calibrate] this is the baseline: its load test sets the study's SLO
        try:
            cal = calibrate.from_summary(summary, cfg)
        except ValueError as exc:
            raise ServerDied(f"the SLO could not be calibrated (slo.p99_ms=auto): {exc}: the baseline served no "
                             f"request", reason="calibration", deterministic=False) from None
        attrs[calibrate.ATTR] = cal.as_attr()  # the loop stores it with the study
        slo = calibrate.resolved(cfg, cal).slo
    outcome = score(summary, slo)
    latencies = {
        "ttft": _sample([r.ttft * 1000 for r in run.results if r.ok]),
        "e2e": _sample([r.latency * 1000 for r in run.results if r.ok]),
        "itl": _sample([x * 1000 for r in run.results if r.ok for x in r.itl]),
    }
    attrs["kv_timeline"] = json.dumps(tel.timeline[-600:])
    return TrialRecord(outcome, attrs, latencies)


def _clean(v: Any) -> Any:
    if isinstance(v, float) and math.isfinite(v):
        return round(v, 4)
    return v  # NaN stays NaN: an empty sample is not 0


def _version(server: VllmServer) -> str:
    try:
        r = httpx.get(server.url + "/version", timeout=5.0,
                      headers={"Authorization": f"Bearer {server.api_key}"} if server.api_key else None)
        return str(r.json().get("version", "unknown"))
    except (httpx.HTTPError, ValueError):
        return "unknown"


def _kv_from_log(server: VllmServer, attrs: dict[str, Any]) -> None:
    """vLLM's own account of its start (KV capacity beside the estimate, where the time went)."""
    attrs.update(parse_start_log(server.log_text()))
