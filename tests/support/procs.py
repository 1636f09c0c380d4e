"""Process helpers of the server-process tests: pids a toy server logged, and whether one lives."""

from __future__ import annotations

import re
import time
from pathlib import Path


def logged_pids(log: Path, tag: str, tries: int = 200) -> list[int]:
    """The pids logged as ``<tag> <pid>`` in ``log``, waiting up to ``tries`` x 50 ms for the first."""
    for _ in range(tries):
        found = [int(x) for x in re.findall(rf"{tag} (\d+)", log.read_text() if log.exists() else "")]
        if found:
            return found
        time.sleep(0.05)
    return []


def alive(pid: int) -> bool:
    """The process exists and is not a zombie."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[1].split()[0]
    except OSError:
        return False
    return state != "Z"
