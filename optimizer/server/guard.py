"""Process-group guard: runs a command and takes its whole group down with it.

Started as ``python guard.py CMD...`` in a new session (so it leads the server's process group).
The kernel sends it SIGTERM when the optimizer dies, even by SIGKILL (``PR_SET_PDEATHSIG``); on
that, or on any SIGTERM/SIGINT, it signals the whole group (SIGTERM, a grace period, SIGKILL), so
vLLM's EngineCore and worker processes, which outlive a killed API server, go too. When the
command exits by itself, the guard kills what it left in the group and exits with its code.

Standalone on purpose (standard library only, no package imports): it runs before anything else
and under whatever interpreter starts the server.
"""

import ctypes
import os
import signal
import subprocess
import sys
import time

PR_SET_PDEATHSIG = 1


def main() -> int:
    grace = float(os.environ.get("OPTIMIZER_GUARD_GRACE", "20"))
    parent = int(os.environ.get("OPTIMIZER_GUARD_PARENT", "0"))
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except OSError:
        pass
    stop = []
    signal.signal(signal.SIGTERM, lambda signum, frame: stop.append(signum))
    signal.signal(signal.SIGINT, lambda signum, frame: stop.append(signum))
    if parent and os.getppid() != parent:  # the optimizer died before prctl took effect
        stop.append(signal.SIGTERM)
    child = subprocess.Popen(sys.argv[1:]) if not stop else None
    while child is not None and child.poll() is None and not stop:
        time.sleep(0.1)
    if stop:
        if parent and os.getppid() != parent:
            grace = min(grace, 3.0)  # the optimizer is gone: nobody waits for a graceful shutdown
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            os.killpg(0, signal.SIGTERM)
        except OSError:
            pass
        deadline = time.monotonic() + grace
        while child is not None and child.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        _kill_others()
        return 128 + signal.SIGTERM
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    _kill_others()  # leftovers (engine processes) of a server that exited by itself
    rc = child.returncode if child is not None else 1
    return rc if rc >= 0 else 128 - rc


def _kill_others() -> None:
    me, group = os.getpid(), os.getpgid(0)
    for name in os.listdir("/proc"):
        if name.isdigit() and int(name) != me:
            try:
                if os.getpgid(int(name)) == group:
                    os.kill(int(name), signal.SIGKILL)
            except OSError:
                pass


if __name__ == "__main__":
    sys.exit(main())
