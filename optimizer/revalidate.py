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
import sys

from optimizer.commands.cli import show_config
from optimizer.confirm import run_stage
from optimizer.core.entry import main_wrapper

__all__ = ["main"]

log = logging.getLogger("optimizer")

USAGE = __doc__ + """
The study is found as optimizer.run finds it (study.name, study.storage); its settings must be the
ones it was run with (a changed load or workload is refused). Writes the report afterwards
(report=false: not). --debug shows tracebacks.
Exit codes: 0 done, 1 no such study or too many environmental failures, 2 bad input, 130 Ctrl-C, 143 SIGTERM.
"""


def _body(overrides: list[str], debug: bool) -> int:
    from optimizer.confirmation.revalidation import run_revalidation

    return run_stage(overrides, debug, "revalidate", run_revalidation)


def main(argv: list[str] | None = None) -> int:
    return main_wrapper(_body, USAGE, argv, show=show_config)


if __name__ == "__main__":
    sys.exit(main())
