"""How long the load generator waited for a CPU: its run-queue time, from ``/proc``.

A client's CPU share says whether it *used* too much CPU; it does not say whether it *got* the CPU
when it needed it. On a host whose cores the server keeps busy, a client that used 5 % of a core
can still read every stream late: it is woken by each token, waits for a core, and by the time it
runs the stream has ended. Measured on the 2-core dev host (vLLM CPU build, the tiny model, one
user): the client waited 2.5 s in the run queue over 20 requests of ~190 ms, in ~56
scheduling slices (it was woken about 3 times a request, and each wake waited 45-120 ms), against
33 ms over ~1,000 slices in a good spell minutes earlier; in the bad spell every stream arrived in
one read, so its TTFT read as its E2E (~190 ms against ~12 ms) while the server's own
``vllm:time_to_first_token_seconds`` still said ~10 ms. Raising the client's priority (nice -19)
did not help.

Linux keeps, per thread, the time it was runnable but not running (the second field of
``/proc/thread-self/schedstat``, ns, since the thread started). :func:`runqueue_wait_s` reads it
for the calling thread, the one that runs the client's event loop (its other threads, and the
optimizer's own when the load runs in its process, are not the client); the difference across the
measured phase is the client's wait, reported beside its CPU time (``LoadRun.client_wait_s``,
summed over the client processes) and noted when its share of the run passes
``load.client_wait_warn``. NaN where there is no schedstat (not Linux, or schedstats compiled
out): unknown, never 0.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Union

__all__ = ["runqueue_wait_s", "waited"]


def runqueue_wait_s(stat: Union[str, Path] = "/proc/thread-self/schedstat") -> float:
    """Seconds the calling thread (or the thread whose ``schedstat`` file is ``stat``) has spent
    runnable but waiting for a CPU since it started; NaN when it cannot be read."""
    try:
        return int(Path(stat).read_text().split()[1]) / 1e9
    except (OSError, IndexError, ValueError):
        return math.nan


def waited(since: float) -> float:
    """The calling thread's run-queue wait since ``since`` (its :func:`runqueue_wait_s` reading then);
    NaN when either reading is unknown."""
    d = runqueue_wait_s() - since
    return max(0.0, d) if math.isfinite(d) else math.nan
