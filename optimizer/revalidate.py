"""``python -m optimizer.revalidate study.name=X [overrides]``: re-measure a study's answer on the vLLM
installed now.

Examples::

    python -m optimizer.revalidate study.name=dbg1                   # baseline + top 3, 3 rounds each
    python -m optimizer.revalidate study.name=dbg1 server.python=/venvs/vllm-next/bin/python

On the installed vLLM (``server.python``'s, else this interpreter's), the study's recommended config,
vLLM's defaults *of this version* and the study's next-best configs (``study.confirm.top_k``) are each
started on fresh servers ``study.confirm.repeats`` times in interleaved rounds on the held-out prompts,
as the confirmation does. The log and the report give each config's change since the study (now over
then, with intervals) and say whether the recommendation still holds; ``best.yaml`` is then the
recommendation (it holds) or the new winner, marked as such. The runs are stored in the study, marked
with their vLLM version, beside the study's own; an interrupted revalidation resumes where it stopped.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

from optimizer.cli import compose, show_config
from optimizer.entry import main_wrapper, setup_logging

__all__ = ["main"]

log = logging.getLogger("optimizer")

USAGE = __doc__ + """
The study is found as optimizer.run finds it (study.name, study.storage); its settings must be the
ones it was run with (a changed load or workload is refused). Writes the report afterwards
(report=false: not). --debug shows tracebacks.
Exit codes: 0 done, 1 no such study or too many environmental failures, 2 bad input, 130 Ctrl-C, 143 SIGTERM.
"""


def _body(overrides: list[str], debug: bool) -> int:
    cfg = compose(overrides)
    log_file = Path(cfg.study.runs_dir) / cfg.study.name / "optimizer.log"
    setup_logging(log_file, debug)
    from optimizer.errors import ConfigError
    from optimizer.server.gpu import list_gpus
    from optimizer.study.loop import Runtime
    from optimizer.study.revalidation import run_revalidation
    from optimizer.study.storage import load_study
    from optimizer.study.workers import host_plan

    if cfg.study.confirm.top_k == 0:
        raise ConfigError("study.confirm.top_k=0: nothing to revalidate; give the number of top configs, e.g. "
                          "study.confirm.top_k=3")
    load_study(cfg.study.storage, cfg.study.name)  # refuse a study that does not exist (never create one)
    plan = host_plan(cfg, os.environ.get("CUDA_VISIBLE_DEVICES"), lambda: [g.index for g in list_gpus()])
    try:
        run_revalidation(cfg, Runtime(environ=dict(os.environ), python=sys.executable,
                                      worker=f"{cfg.study.host or os.uname().nodename}/revalidate"),
                         plan=plan, log_file=log_file, debug=debug)
    finally:
        if cfg.report:
            from optimizer.report import report_quietly

            report_quietly(cfg)
    return 0


def main(argv: list[str] | None = None) -> int:
    return main_wrapper(_body, USAGE, argv, show=show_config)


if __name__ == "__main__":
    sys.exit(main())
