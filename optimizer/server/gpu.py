"""GPU inventory and "is it free?" checks, through ``nvidia-smi`` (present wherever the driver is).

Before a server starts, the GPUs it will use must hold no other compute process: a previous
server's memory is released a second or so after its process group dies, and starting into a
busy GPU fails with "Free memory on device ... is less than desired". The wait is bounded.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
import time
from dataclasses import dataclass

from optimizer.core.errors import EnvironmentBusy

__all__ = ["Gpu", "list_gpus", "wait_for_free_gpus"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Gpu:
    index: int
    name: str
    memory_mib: int
    used_mib: int
    compute_capability: float


def _smi(*args: str) -> str:
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return ""
    try:
        return subprocess.run([exe, *args], capture_output=True, text=True, timeout=20, check=False).stdout
    except (OSError, subprocess.SubprocessError):
        return ""


def list_gpus() -> list[Gpu]:
    out = _smi("--query-gpu=index,name,memory.total,memory.used,compute_cap", "--format=csv,noheader,nounits")
    gpus = []
    for line in out.strip().splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) < 5:
            continue
        try:
            gpus.append(Gpu(int(parts[0]), parts[1], int(float(parts[2])), int(float(parts[3])), float(parts[4])))
        except ValueError:
            continue
    return gpus


def _busy(gpu_ids: tuple[int, ...]) -> list[str]:
    uuids = {}
    for line in _smi("--query-gpu=index,uuid", "--format=csv,noheader").strip().splitlines():
        idx, _, uuid = line.partition(",")
        if idx.strip().isdigit():
            uuids[uuid.strip()] = int(idx)
    busy = []
    for line in _smi("--query-compute-apps=gpu_uuid,pid,used_memory", "--format=csv,noheader").strip().splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) >= 2:
            index = uuids.get(parts[0], -1)
            if not gpu_ids or index in gpu_ids:
                busy.append(f"GPU {index}: pid {parts[1]} ({parts[2] if len(parts) > 2 else '?'})")
    return busy


def wait_for_free_gpus(gpu_ids: tuple[int, ...], timeout_s: float) -> float:
    """Wait until no compute process holds the GPUs; EnvironmentBusy after ``timeout_s``."""
    if shutil.which("nvidia-smi") is None:
        return 0.0
    t0 = time.monotonic()
    while True:
        busy = _busy(gpu_ids)
        if not busy:
            return time.monotonic() - t0
        if time.monotonic() - t0 > timeout_s:
            raise EnvironmentBusy(f"GPU still in use after {timeout_s:.0f} s (server.free_wait_s): {'; '.join(busy)}. "
                                  f"Stop the other process or give this study other GPUs.", reason="gpu_busy")
        time.sleep(1.0)
