"""Pid files of running servers, so that a run after a SIGKILL can sweep what was left.

Each started server group gets ``<dir>/server-<pgid>.json`` with its owner (the optimizer's pid
and start time, and the host). :func:`sweep` kills the groups whose owner is gone; process start
times guard against a recycled pid being mistaken for an old server, and the host name against
acting on another host's servers where the directory is on a shared disk.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import time
from pathlib import Path
from typing import Any, Optional

__all__ = ["group_members", "process_start_time", "record", "remove", "sweep"]

log = logging.getLogger(__name__)


def process_start_time(pid: int) -> Optional[int]:
    """The process's start time in clock ticks since boot (field 22 of /proc/PID/stat)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2:].split()
    return int(fields[19])


def record(directory: Path, pgid: int, **extra: Any) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"server-{pgid}.json"
    data = {"pgid": pgid, "leader_start": process_start_time(pgid), "owner_pid": os.getpid(),
            "owner_start": process_start_time(os.getpid()), "host": socket.gethostname(), "time": time.time(),
            **extra}
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)
    return path


def remove(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass


def _alive(pid: int, start: Optional[int]) -> bool:
    now = process_start_time(pid)
    return now is not None and (start is None or now == start)


def group_members(pgid: int) -> list[int]:
    """Live (not zombie) processes of process group ``pgid``."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        if fields[0] != "Z" and int(fields[2]) == pgid:  # state, ..., pgrp
            members.append(int(entry.name))
    return members


def sweep(directory: Path) -> list[int]:
    """Kill every recorded server group whose owning optimizer is dead. Returns the groups killed."""
    killed: list[int] = []
    if not directory.is_dir():
        return killed
    for path in sorted(directory.glob("server-*.json")):
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            remove(path)
            continue
        if data.get("host", socket.gethostname()) != socket.gethostname():
            continue  # another host's server (a shared cache directory): not ours to judge
        if _alive(int(data["owner_pid"]), data.get("owner_start")):
            continue  # another live optimizer owns it
        pgid = int(data["pgid"])
        # a pid is not reused as long as a process group of that id has members, so any member
        # of group `pgid` belongs to the recorded server
        if group_members(pgid):
            log.warning("killing server group %d left behind by dead optimizer pid %s (port %s)",
                        pgid, data.get("owner_pid"), data.get("port"))
            try:
                os.killpg(pgid, signal.SIGKILL)
                killed.append(pgid)
            except ProcessLookupError:
                pass
        remove(path)
    return killed
