"""The vLLM server as a context manager that always takes its whole process group down.

``VllmServer`` starts ``python -m vllm.entrypoints.openai.api_server ...`` in a new session (its
own process group), with its output in a log file (never an unread pipe), under a small guard
(:mod:`optimizer.server.guard`) that the kernel signals when the optimizer dies, even by SIGKILL,
and that then kills the whole group: vLLM's EngineCore and workers outlive a killed API server,
so killing the API server alone is not enough. A pid file records the group so that a run
after a SIGKILL sweeps what is left (:mod:`optimizer.server.pidfile`). ``wait_ready`` polls
``/health`` against a monotonic deadline and checks the process on every loop, so a crash is
reported at once with the reason read from the log. A ``/health`` answer alone does not prove the
server is ours (another process can take the port between :func:`free_port` and vLLM's bind):
with ``identity`` (a served model name unique to this start) the server is ready only when its
``/v1/models`` lists that name, and any other answer is refused as a foreign server. ``stop``
signals the group (SIGTERM, grace, SIGKILL) whether or not the leader is still alive, reaps it,
and waits until the port is free.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Optional

import httpx

from optimizer.core.auth import bearer
from optimizer.core.errors import EnvironmentBusy, ServerCrashed, ServerStartTimeout
from optimizer.server import launcher as launchers
from optimizer.server import pidfile
from optimizer.server.failures import classify, tail

__all__ = ["VllmServer", "free_port", "port_is_free"]

log = logging.getLogger(__name__)
_GUARD = Path(__file__).with_name("guard.py")


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def port_is_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def _group_alive(pgid: int) -> bool:
    """Any live member left? Zombies don't count: an orphaned zombie waits for init, which in a
    container may never reap it."""
    return bool(pidfile.group_members(pgid))


class VllmServer:
    """One vLLM OpenAI server process group. Use as ``with VllmServer(...) as srv:``."""

    def __init__(self, argv: list[str], *, python: str, host: str, port: int, log_path: Path,
                 env: dict[str, str], pid_dir: Path, stop_timeout_s: float = 30.0,
                 api_key: Optional[str] = None, identity: str = "", launcher: str = "plain",
                 zygote_timeout_s: float = 600.0) -> None:
        if launcher not in launchers.LAUNCHERS:
            raise ValueError(f"launcher={launcher!r}: expected one of {launchers.LAUNCHERS}")
        if launcher == "forkserver" and argv[:1] != ["-m"]:
            raise ValueError(f"launcher='forkserver' runs a module (argv '-m MODULE ...'), not {argv[:2]}")
        self.argv = [python, *argv]
        self.host, self.port = host, port
        self.log_path = Path(log_path)
        self.env = env
        self.pid_dir = Path(pid_dir)
        self.stop_timeout_s = stop_timeout_s
        self.api_key = api_key
        self.identity = identity  # a served model name only this start has ("" = no identity check)
        self.launcher = launcher
        self.zygote_timeout_s = zygote_timeout_s
        self.launch_s = 0.0  # seconds start() waited for the fork server's imports (first start only)
        self._proc: Optional[subprocess.Popen[bytes] | launchers.ForkedServer] = None
        self._pgid: Optional[int] = None
        self._pidfile: Optional[Path] = None
        self._stopped = False
        self.stop_seconds = 0.0

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def pid(self) -> int:
        if self._proc is None:
            raise RuntimeError("the server has not been started")
        return self._proc.pid

    def start(self) -> "VllmServer":
        if self._proc is not None:
            raise RuntimeError("the server was already started; make a new VllmServer")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        env = dict(self.env, OPTIMIZER_GUARD_PARENT=str(os.getpid()),
                   OPTIMIZER_GUARD_GRACE=str(max(1.0, self.stop_timeout_s - 2)))
        if self.launcher == "forkserver":
            self._proc = self._fork()
        else:
            guarded = [sys.executable, str(_GUARD), *self.argv]
            with open(self.log_path, "ab") as out:
                self._proc = subprocess.Popen(guarded, stdout=out, stderr=subprocess.STDOUT,
                                              stdin=subprocess.DEVNULL, env=env, start_new_session=True)
        self._pgid = self._proc.pid  # leader of its own session and group
        self._pidfile = pidfile.record(self.pid_dir, self._pgid, port=self.port, log=str(self.log_path))
        log.debug("server pid %d on port %d, log %s", self._proc.pid, self.port, self.log_path)
        return self

    def _fork(self) -> launchers.ForkedServer:
        """The server forked by this interpreter's and environment's zygote (started, and its
        imports waited for, on first use: that wait is ``launch_s``)."""
        python, module, flags = self.argv[0], self.argv[2], self.argv[3:]
        zygote = launchers.zygote_for(python, module, self.env, self.pid_dir.parent / "zygote")
        self.launch_s = zygote.wait_ready(self.zygote_timeout_s)
        return zygote.spawn(flags, self.env, self.log_path, os.getcwd(), max(1.0, self.stop_timeout_s - 2))

    def poll(self) -> Optional[int]:
        if self._proc is None:
            raise RuntimeError("the server has not been started")
        return self._proc.poll()

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def _crash(self, code: int, during: str) -> ServerCrashed:
        text = self.log_text()
        d = classify(text, code)
        return ServerCrashed(f"the vLLM server exited with code {code} {during}: {d.reason}: {d.evidence}. "
                             f"Full log: {self.log_path}", reason=d.reason, deterministic=d.deterministic,
                             log_tail=tail(text))

    def _check_identity(self, client: httpx.Client) -> bool:
        """After /health said 200: True when ``/v1/models`` lists our identity; False when it could
        not be read yet. Raises :class:`EnvironmentBusy` when another server answers."""
        try:
            r = client.get(self.url + "/v1/models")
        except httpx.HTTPError:
            return False
        names: list[str] = []
        if r.status_code == 200:
            try:
                names = [str(m.get("id")) for m in r.json().get("data", [])]
            except (ValueError, AttributeError, TypeError):
                names = []
            if self.identity in names:
                return True
        seen = f"it serves {names[:3]}" if names else f"GET /v1/models answered {r.status_code}"
        raise EnvironmentBusy(
            f"the server answering on {self.url} is not the one this trial started: {seen}, not this start's "
            f"name {self.identity!r}. Another process took port {self.port} (a shared host?); nothing was "
            f"measured, and the trial is retried on another free port. Server log: {self.log_path}",
            reason="foreign_server", deterministic=False, log_tail=tail(self.log_text()))

    def wait_ready(self, timeout_s: float, on_tick: Optional[Callable[[float], None]] = None) -> float:
        """Block until ``/health`` answers 200 and, with an ``identity``, ``/v1/models`` lists it.
        Returns the seconds it took, plus ``launch_s`` (the fork server's imports, when this start
        waited for them), so that both launchers report launch-to-ready.

        Raises:
            ServerCrashed: the process exited.
            ServerStartTimeout: not ready within ``timeout_s``.
            EnvironmentBusy: another server answers on the port (reason ``foreign_server``)."""
        t0 = time.monotonic()
        deadline = t0 + timeout_s
        headers = bearer(self.api_key)
        with httpx.Client(timeout=httpx.Timeout(2.0), headers=headers) as client:
            while True:
                code = self.poll()
                if code is not None:
                    raise self._crash(code, "during start")
                try:
                    if client.get(self.url + "/health").status_code == 200 and (
                            not self.identity or self._check_identity(client)):
                        return time.monotonic() - t0 + self.launch_s
                except httpx.HTTPError:
                    pass  # refused while the engine initialises: normal
                now = time.monotonic()
                if now >= deadline:
                    text = self.log_text()
                    raise ServerStartTimeout(
                        f"the vLLM server did not become healthy within {timeout_s:.0f} s "
                        f"(server.start_timeout_s). Last log line: {tail(text, 1)!r}. Full log: {self.log_path}",
                        reason="start_timeout", deterministic=False, log_tail=tail(text))
                if on_tick:
                    on_tick(now - t0)
                time.sleep(0.5)

    def stop(self) -> float:
        """Terminate the whole group: SIGTERM, up to stop_timeout_s, SIGKILL. Idempotent: later
        calls return the seconds the first one took."""
        if self._proc is None:
            return 0.0
        if self._stopped:
            return self.stop_seconds
        t0 = time.monotonic()
        pgid = self._pgid
        assert pgid is not None
        try:
            os.killpg(pgid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        deadline = t0 + self.stop_timeout_s
        while time.monotonic() < deadline and (_group_alive(pgid) or self._proc.poll() is None):
            self._proc.poll()  # reap the leader so the group can empty
            time.sleep(0.1)
        if _group_alive(pgid):
            log.warning("server group %d ignored SIGTERM for %.0f s; sending SIGKILL", pgid, self.stop_timeout_s)
            try:
                os.killpg(pgid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        try:
            self._proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            log.error("server leader %d did not exit after SIGKILL", self._proc.pid)
        end = time.monotonic() + 10
        while _group_alive(pgid) and time.monotonic() < end:
            time.sleep(0.05)
        end = time.monotonic() + 15
        while not port_is_free(self.host, self.port) and time.monotonic() < end:
            time.sleep(0.1)
        self._stopped = True
        if self._pidfile is not None:
            pidfile.remove(self._pidfile)
        self.stop_seconds = time.monotonic() - t0
        return self.stop_seconds

    def __enter__(self) -> "VllmServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
