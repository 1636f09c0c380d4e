"""``python -m optimizer.run [overrides]``: run (or resume) a tuning study.

Examples::

    python -m optimizer.run                                   # embedded default: CPU build, tiny model
    python -m optimizer.run hardware=h100 model=llama-3-8b-instruct slo.p99_ms=2500
    python -m optimizer.run study.n_trials=12                 # the same study, continued
    python -m optimizer.run hardware=t4 model=mistral-7b-instruct dry_run=true study.n_trials=50
    python -m optimizer.run hardware=auto study.workers=0 study.storage=postgresql://opt:pw@db/studies
                                                              # parallel trials on all GPUs (docs/fleet.md)
"""

from __future__ import annotations

import dataclasses
import logging
import os
import socket
import sys
import time
from pathlib import Path
from typing import Optional

from optimizer.commands.cli import compose, dump_config, show_config
from optimizer.core.entry import main_wrapper, setup_logging
from optimizer.report import report_quietly

__all__ = ["main"]

log = logging.getLogger("optimizer")

USAGE = __doc__ + """
Config groups (conf/<group>/<option>.yaml): hardware, model, workload, search.
Keys: study.{name,storage,n_trials,seed,workers,host,heartbeat_interval_s,heartbeat_grace_s},
study.confirm.{top_k,repeats,confidence,seed_offset} (the confirmation stage at the end; top_k=0: off),
slo.{metric,p99_ms,max_error_rate,use_upper_bound},
load.{mode,concurrency,request_rate,num_requests,duration_s,warmup_requests}, server.{start_timeout_s,...},
dry_run, report. See conf/config.yaml and optimizer/settings/config.py. --debug shows tracebacks.
Exit codes: 0 done, 1 study stopped, 2 bad input, 130 Ctrl-C, 143 SIGTERM.
"""


def _body(overrides: list[str], debug: bool) -> int:
    cfg = compose(overrides)
    from optimizer.commands.input_checks import ensure_writable_dirs, refuse_ignored

    if not cfg.dry_run:
        ensure_writable_dirs(cfg)  # a folder that cannot be written: refused before anything starts
    runs = Path(cfg.study.runs_dir) / cfg.study.name
    setup_logging(None if cfg.dry_run else runs / "optimizer.log", debug)
    refuse_ignored(cfg, overrides)  # a key typed on the command line that the others make irrelevant
    if cfg.dry_run:
        from optimizer.commands.dry_run import dry_run

        dry_run(cfg, sys.stdout)
        return 0
    from optimizer.server.gpu import list_gpus
    from optimizer.study.loop import Runtime
    from optimizer.study.storage import redact_url
    from optimizer.study.workers import host_plan, run_workers

    # the entry point is the one place that reads the environment and asks for the GPUs
    plan = host_plan(cfg, os.environ.get("CUDA_VISIBLE_DEVICES"), lambda: [g.index for g in list_gpus()])
    runs.mkdir(parents=True, exist_ok=True)
    shown = dataclasses.replace(cfg, study=dataclasses.replace(cfg.study, storage=redact_url(cfg.study.storage)))
    (runs / f"config-{time.strftime('%Y%m%d-%H%M%S')}.yaml").write_text(dump_config(shown))
    host = cfg.study.host or socket.gethostname()
    confirmed = None
    try:
        run_workers(cfg, Runtime(environ=dict(os.environ), python=sys.executable), plan, host=host,
                    log_file=runs / "optimizer.log", debug=debug)
        if cfg.study.confirm.top_k > 0:  # once, here: after every worker, on the same GPU groups
            from optimizer.confirmation.stage import run_confirmation

            confirmed = run_confirmation(cfg, Runtime(environ=dict(os.environ), python=sys.executable,
                                                      worker=f"{host}/confirm"),
                                         plan=plan, log_file=runs / "optimizer.log", debug=debug)
    finally:
        if cfg.report:
            report_quietly(cfg)
    if confirmed is not None:  # the log ends with the confirmed answer, not the search's best, and what it
        log.info("%s", confirmed.answer_line())  # would take to know more
        log.info("%s", confirmed.know_more_line())
    return 0


def main(argv: Optional[list[str]] = None) -> int:
    return main_wrapper(_body, USAGE, argv, show=show_config)


if __name__ == "__main__":
    sys.exit(main())
