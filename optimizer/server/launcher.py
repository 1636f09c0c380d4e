"""How a server process is started: ``plain`` (a new interpreter per start) or ``forkserver``.

``forkserver`` keeps one long-lived zygote (:mod:`optimizer.server.zygote`) per interpreter and
environment that has imported vLLM's API server once; each start is a fork of that warm state, so
the API server's Python imports are paid once per study instead of once per trial. What vLLM
starts below the API server is vLLM's choice: its CLI sets ``VLLM_WORKER_MULTIPROC_METHOD=spawn``
unless the environment says otherwise, and its CPU platform forces ``spawn`` for the EngineCore
and its worker, so those still import vLLM in every start (measured in docs/start-time.md).

Correctness rules kept here:

- the zygote is keyed by the interpreter, the module and the whole environment except
  :data:`PER_START_KEYS` (read by torch only when CUDA initialises, which the zygote refuses to
  do): a start whose environment differs elsewhere gets a new zygote, since vLLM and torch read
  some variables at import time (logging set-up, thread counts);
- the forked guard leads its own session and process group, so :class:`~optimizer.server.process.
  VllmServer`'s group kill, pid file and sweep hold unchanged;
- the server's exit code reaches the optimizer through the zygote (:meth:`ForkedServer.poll`).
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import select
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Optional

from optimizer.core.errors import FailureReason, ServerCrashed
from optimizer.server.failures import tail

__all__ = ["LAUNCHERS", "PER_START_KEYS", "ForkedServer", "Zygote", "resolve", "shutdown_zygotes", "zygote_for"]

log = logging.getLogger(__name__)
LAUNCHERS = ("plain", "forkserver")
# environment variables a forked start may set differently from its zygote (read at CUDA init)
PER_START_KEYS = frozenset({"CUDA_VISIBLE_DEVICES", "CUDA_DEVICE_ORDER"})
# imported in the zygote beside the server module where the installed vLLM has them
PRELOAD = ("vllm.entrypoints.launchers.api_server.entry", "vllm.v1.engine.async_llm", "vllm.v1.engine.core")
_ZYGOTE = Path(__file__).with_name("zygote.py")


def resolve(launcher: str, device: str, gpus: int = 1) -> str:
    """The launcher a start uses: ``auto`` (``server.launcher``'s value in conf/config.yaml) is
    ``forkserver`` on the CPU build and for a server on one GPU, and ``plain`` for a server on
    ``gpus`` > 1 (tensor parallelism: its workers have not run forked from a zygote here). On the
    CPU build the zygote saves the API server's imports of every start after the first (9-18 s on a
    quiet 2-core host, 46-50 s on a loaded one: docs/start-time.md). On an H200 (vLLM
    0.26.0, 2026-12-07, docs/results/h200-capacity-quality-smollm2/) a 4-trial capacity study ran
    with it end to end: every start and stop clean, GPU memory back to 0 MiB between trials, and
    each forked start reached CUDA 24-27 s after the trial began against 67 s for a plain start (the
    first start, which imports in the zygote, 80 s); outside the engine's own init a forked start
    spent 27-34 s against 51-66 s plain."""
    if launcher == "auto":
        return "forkserver" if device == "cpu" or gpus <= 1 else "plain"
    return launcher


class ForkedServer:
    """A server group forked by a zygote, with the part of ``subprocess.Popen``'s interface that
    :class:`~optimizer.server.process.VllmServer` uses (``pid``, ``poll``, ``wait``). ``pid`` is
    the guard that leads the group; the exit code is the server's, as the zygote reports it."""

    def __init__(self, pid: int, conn: socket.socket) -> None:
        self.pid = pid
        self.returncode: Optional[int] = None
        self._conn = conn
        self._buf = b""

    def poll(self) -> Optional[int]:
        if self.returncode is not None:
            return self.returncode
        while select.select([self._conn], [], [], 0)[0]:
            chunk = self._conn.recv(4096)
            if not chunk:  # the zygote is gone: the guard dies with it (PR_SET_PDEATHSIG)
                if not _alive(self.pid):
                    self.returncode = -1
                    self._conn.close()
                return self.returncode
            self._buf += chunk
            if b"\n" in self._buf:
                self.returncode = int(json.loads(self._buf.split(b"\n", 1)[0])["exit"])
                self._conn.close()
                return self.returncode
        return None

    def wait(self, timeout: Optional[float] = None) -> int:
        end = None if timeout is None else time.monotonic() + timeout
        while (code := self.poll()) is None:
            if end is not None and time.monotonic() >= end:
                raise subprocess.TimeoutExpired(f"forked server {self.pid}", timeout or 0.0)
            time.sleep(0.05)
        return code


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


class Zygote:
    """One zygote process: started with ``env`` under ``python``, ready once it has imported
    ``module`` and listens on its socket."""

    def __init__(self, python: str, module: str, env: dict[str, str], log_path: Path,
                 preload: tuple[str, ...] = ()) -> None:
        self.python, self.module, self.env = python, module, dict(env)
        self.log_path = Path(log_path)
        self._dir = tempfile.mkdtemp(prefix="vllm-opt-zygote-")
        self.socket_path = os.path.join(self._dir, "sock")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as out:
            self.proc = subprocess.Popen(
                [python, str(_ZYGOTE), self.socket_path, module, *preload], stdout=out, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, env=dict(env, OPTIMIZER_ZYGOTE_OWNER=str(os.getpid())),
                start_new_session=True)
        self.started = time.monotonic()
        self.ready_s: Optional[float] = None  # seconds from launch to listening (its import time)

    def wait_ready(self, timeout_s: float) -> float:
        """Block until the zygote listens; the seconds this call waited.

        Raises:
            ServerCrashed: the zygote exited (an import error, or CUDA initialised on import) or
                did not listen within ``timeout_s``."""
        t0 = time.monotonic()
        while not os.path.exists(self.socket_path):
            code = self.proc.poll()
            if code is not None or time.monotonic() - t0 > timeout_s:
                text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
                what = f"exited with code {code}" if code is not None else f"did not start within {timeout_s:.0f} s"
                self.close()
                raise ServerCrashed(
                    f"the vLLM fork server (server.launcher=forkserver) {what} while importing {self.module}: "
                    f"{tail(text, 3)!r}. Full log: {self.log_path}. server.launcher=plain avoids it.",
                    reason=FailureReason.OTHER, deterministic=False, log_tail=tail(text))
            time.sleep(0.1)
        if self.ready_s is None:
            self.ready_s = time.monotonic() - self.started
        return time.monotonic() - t0

    def alive(self) -> bool:
        return self.proc.poll() is None

    def spawn(self, flags: list[str], env: dict[str, str], log_path: Path, cwd: str, grace_s: float) -> ForkedServer:
        """Fork a guarded server running ``python -m <module> <flags>`` with ``env``; output to
        ``log_path``."""
        conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        conn.connect(self.socket_path)
        req = {"argv": flags, "env": env, "log": str(log_path), "cwd": cwd, "grace": grace_s}
        conn.sendall((json.dumps(req) + "\n").encode())
        buf = b""
        while b"\n" not in buf:
            chunk = conn.recv(4096)
            if not chunk:
                conn.close()
                raise ServerCrashed(f"the vLLM fork server closed the connection before forking a server; "
                                    f"its log: {self.log_path}", reason=FailureReason.OTHER, deterministic=False)
            buf += chunk
        first, rest = buf.split(b"\n", 1)
        handle = ForkedServer(int(json.loads(first)["pid"]), conn)
        handle._buf = rest
        return handle

    def close(self) -> None:
        """Stop the zygote (its running servers' guards then take their groups down)."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for path in (self.socket_path, self.socket_path + ".tmp"):
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
        try:
            os.rmdir(self._dir)
        except OSError:
            pass


_zygotes: dict[tuple[str, str, frozenset[tuple[str, str]]], Zygote] = {}


def _key(python: str, module: str, env: dict[str, str]) -> tuple[str, str, frozenset[tuple[str, str]]]:
    return python, module, frozenset((k, v) for k, v in env.items() if k not in PER_START_KEYS)


def zygote_for(python: str, module: str, env: dict[str, str], log_dir: Path) -> Zygote:
    """The running zygote for this interpreter, module and environment, started if there is none
    (or it died). One zygote at a time: another environment replaces it (a zygote holds vLLM's
    imports in memory, several hundred MiB)."""
    key = _key(python, module, env)
    z = _zygotes.get(key)
    if z is not None and z.alive():
        return z
    shutdown_zygotes()
    base = {k: v for k, v in env.items() if k not in PER_START_KEYS}
    preload = PRELOAD if module.startswith("vllm.") else ()
    z = Zygote(python, module, base, Path(log_dir) / f"zygote-{os.getpid()}.log", preload)
    log.info("started a vLLM fork server (pid %d, log %s)", z.proc.pid, z.log_path)
    _zygotes[key] = z
    return z


def shutdown_zygotes() -> None:
    """Stop every zygote this process started (their servers are stopped by their owners)."""
    while _zygotes:
        _, z = _zygotes.popitem()
        z.close()


atexit.register(shutdown_zygotes)
