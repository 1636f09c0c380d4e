"""``python -m optimizer.confirm study.name=X [overrides]``: confirm a study's winner on fresh servers.

Examples::

    python -m optimizer.confirm study.name=dbg1                       # baseline + top 3, 3 rounds each
    python -m optimizer.confirm study.name=dbg1 study.confirm.top_k=1 study.confirm.repeats=5

The baseline and the ``study.confirm.top_k`` best feasible configs are each started on a fresh
server ``study.confirm.repeats`` times, in interleaved rounds, on held-out prompts; the runs are
stored in the study (marked as confirmations), so an interrupted confirmation resumes where it
stopped. ``python -m optimizer.run`` does the same at the end of every study. With several GPU
groups (``study.workers``, as for the search; PostgreSQL), the runs go to the groups at once.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Callable

from optimizer.commands.cli import compose, show_config
from optimizer.core.entry import main_wrapper, setup_logging

__all__ = ["main", "run_stage"]

log = logging.getLogger("optimizer")

USAGE = __doc__ + """
The study is found as optimizer.run finds it (study.name, study.storage); its settings must be the
ones it was run with (a changed load or workload is refused). Writes the report afterwards
(report=false: not). --debug shows tracebacks.
Exit codes: 0 done, 1 no such study or too many environmental failures, 2 bad input, 130 Ctrl-C, 143 SIGTERM.
"""


def run_stage(overrides: list[str], debug: bool, what: str, stage: Callable[..., object]) -> int:
    """An entry point's stage over a stored study (the confirmation here, the revalidation in
    :mod:`optimizer.revalidate`): the study must exist, the host's GPU groups are the search's, and
    the report is written afterwards (``report=false``: not). ``stage(cfg, runtime, plan=, log_file=, debug=)``."""
    cfg = compose(overrides)
    log_file = Path(cfg.study.runs_dir) / cfg.study.name / "optimizer.log"
    setup_logging(log_file, debug)
    from optimizer.core.errors import ConfigError
    from optimizer.server.gpu import list_gpus
    from optimizer.study.loop import Runtime
    from optimizer.study.storage import load_study
    from optimizer.study.workers import host_plan

    if cfg.study.confirm.top_k == 0:
        raise ConfigError(f"study.confirm.top_k=0: nothing to {what}; give the number of top configs, e.g. "
                          "study.confirm.top_k=3")
    load_study(cfg.study.storage, cfg.study.name)  # refuse a study that does not exist (never create one)
    # the GPU groups of the search (study.workers): the entry point reads the environment and asks for the GPUs
    plan = host_plan(cfg, os.environ.get("CUDA_VISIBLE_DEVICES"), lambda: [g.index for g in list_gpus()])
    try:
        stage(cfg, Runtime(environ=dict(os.environ), python=sys.executable,
                           worker=f"{cfg.study.host or os.uname().nodename}/{what}"),
              plan=plan, log_file=log_file, debug=debug)
    finally:
        if cfg.report:
            from optimizer.report import report_quietly

            report_quietly(cfg)
    return 0


def _body(overrides: list[str], debug: bool) -> int:
    from optimizer.confirmation.stage import run_confirmation

    return run_stage(overrides, debug, "confirm", run_confirmation)


def main(argv: list[str] | None = None) -> int:
    return main_wrapper(_body, USAGE, argv, show=show_config)


if __name__ == "__main__":
    sys.exit(main())
