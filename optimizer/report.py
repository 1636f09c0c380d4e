"""``python -m optimizer.report [overrides]``: write the HTML report of a study.

Examples::

    python -m optimizer.report                                # the default study of conf/config.yaml
    python -m optimizer.report study.name=dbg1
    python -m optimizer.report hardware=h100 model=llama-3-8b-instruct   # that study's default name
    python -m optimizer.report study.name=dbg1 reports_dir=/tmp/reports
"""

from __future__ import annotations

import logging
import sys
from typing import Optional

from optimizer.commands.cli import compose, show_config
from optimizer.core.entry import main_wrapper, setup_logging
from optimizer.settings.config import Config

__all__ = ["main", "report_quietly"]

log = logging.getLogger("optimizer")

USAGE = __doc__ + """
The study is found as optimizer.run finds it: study.name (default <model>__<hardware>__<workload>)
in study.storage (default sqlite:///studies/<study.name>.db). Nothing is measured and no server
is started. Writes <reports_dir>/<study.name>/index.html (one offline page), best.yaml
(`vllm serve --config best.yaml`) and trials.csv. --debug shows tracebacks.
Exit codes: 0 written, 1 no such study, 2 bad input.
"""


def _body(overrides: list[str], debug: bool) -> int:
    cfg = compose(overrides)
    setup_logging(None, debug)
    from optimizer.reporting import write_report

    path = write_report(cfg)
    log.info("report: %s", path)
    print(path.resolve())
    return 0


def report_quietly(cfg: Config) -> None:
    """Write the study's report after a run (optimizer.run, optimizer.confirm) and log where; a report
    that cannot be written (reporting's libraries missing, an unreadable study) is a warning, never
    the run's outcome."""
    try:
        from optimizer.reporting import write_report
    except ImportError as exc:
        log.warning("no report: the reporting libraries are missing (%s); install the package's dependencies "
                    "and run `python -m optimizer.report`", exc)
        return
    try:
        path = write_report(cfg)
        log.info("report: %s", path)
    except Exception as exc:  # a report must never hide the study's own outcome
        log.warning("could not write the report: %s: %s; run `python -m optimizer.report` with the same "
                    "overrides to retry", type(exc).__name__, exc)


def main(argv: Optional[list[str]] = None) -> int:
    return main_wrapper(_body, USAGE, argv, show=show_config)


if __name__ == "__main__":
    sys.exit(main())
