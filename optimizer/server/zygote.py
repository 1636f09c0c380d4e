"""Fork server ("zygote") for vLLM servers: imports vLLM once, then forks one server per request.

Started as ``python zygote.py SOCKET MODULE [PRELOAD...]`` (by :mod:`optimizer.server.launcher`),
under the interpreter that runs vLLM. It imports MODULE (``vllm.entrypoints.openai.api_server``)
and the PRELOAD modules, refuses to serve if that initialised CUDA (a forked child could not use
it), then listens on the Unix socket SOCKET. Each connection carries one JSON request
``{"argv": [...], "env": {...}, "log": path, "cwd": dir, "grace": s, "owner": pid}``; the zygote
forks a *guard* that starts a new session (so it leads the server's process group, like
:mod:`optimizer.server.guard`), sends its output to the log file, and forks the server, which
replaces its environment with the request's and runs MODULE as ``__main__`` with the request's
flags. The zygote answers ``{"pid": guard}`` at once and ``{"exit": code}`` when the guard ends,
on the same connection.

The guard kills the whole group (SIGTERM, grace, SIGKILL) on SIGTERM/SIGINT, when the zygote dies
(``PR_SET_PDEATHSIG``), or when the server exits by itself (its leftovers), and exits with the
server's code. The zygote dies with the optimizer (``PR_SET_PDEATHSIG`` = SIGTERM) and when its
owner's pid is gone, and removes its socket and the socket's folder as it exits.

Standalone on purpose (standard library only, no package imports), like ``guard.py``.
"""

import ctypes
import json
import os
import runpy
import select
import signal
import socket
import sys
import time
import traceback

PR_SET_PDEATHSIG = 1


def _pdeathsig(sig: int) -> None:
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, sig)
    except OSError:
        pass


def _kill_others() -> None:
    me, group = os.getpid(), os.getpgid(0)
    for name in os.listdir("/proc"):
        if name.isdigit() and int(name) != me:
            try:
                if os.getpgid(int(name)) == group:
                    os.kill(int(name), signal.SIGKILL)
            except OSError:
                pass


def _exit_code(status: int) -> int:
    if os.WIFSIGNALED(status):
        return 128 + os.WTERMSIG(status)
    return os.WEXITSTATUS(status)


def _run_server(module: str, req: dict) -> None:
    """In the server process: become what ``python -m MODULE FLAGS`` would be, then exit."""
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGCHLD):
        signal.signal(sig, signal.SIG_DFL)
    os.environ.clear()
    os.environ.update(req["env"])
    os.chdir(req["cwd"])
    sys.path[0] = req["cwd"]  # as `python -m` has it (the zygote's own folder is there now)
    sys.argv = [module, *req["argv"]]
    code = 0
    try:
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException:  # noqa: BLE001 - report it as python -m would, then exit 1
        traceback.print_exc()
        code = 1
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    finally:
        os._exit(code)


def _guard(module: str, req: dict, zygote: int) -> None:
    """In the forked guard: lead a new session and group, start the server, take the group down."""
    os.setsid()
    _pdeathsig(signal.SIGTERM)
    log = os.open(req["log"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(log, 1)
    os.dup2(log, 2)
    os.close(log)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    stop: list[int] = []
    signal.signal(signal.SIGTERM, lambda signum, frame: stop.append(signum))
    signal.signal(signal.SIGINT, lambda signum, frame: stop.append(signum))
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    if os.getppid() != zygote:  # the zygote died before prctl took effect
        stop.append(signal.SIGTERM)
    grace = float(req.get("grace", 20.0))
    server = os.fork() if not stop else 0
    if server == 0 and not stop:
        _run_server(module, req)
    status = None
    while server and status is None and not stop:
        pid, st = os.waitpid(server, os.WNOHANG)
        if pid:
            status = st
        else:
            time.sleep(0.1)
    if status is None:  # asked to stop (or orphaned): the group goes, the server first
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        if os.getppid() != zygote:
            grace = min(grace, 3.0)
        try:
            os.killpg(0, signal.SIGTERM)
        except OSError:
            pass
        deadline = time.monotonic() + grace
        while server and time.monotonic() < deadline:
            pid, st = os.waitpid(server, os.WNOHANG)
            if pid:
                break
            time.sleep(0.05)
        _kill_others()
        os._exit(128 + signal.SIGTERM)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    _kill_others()  # leftovers (engine processes) of a server that exited by itself
    os._exit(_exit_code(status))


def _owner_alive(owner: int) -> bool:
    try:
        os.kill(owner, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def serve(sock_path: str, module: str, preload: list[str]) -> int:
    me = os.getpid()
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    _pdeathsig(signal.SIGTERM)
    try:
        return _serve(sock_path, module, preload)
    finally:
        if os.getpid() == me:  # not in a forked child: the socket and its folder are the zygote's
            for path in (sock_path, sock_path + ".tmp"):
                try:
                    os.unlink(path)
                except FileNotFoundError:
                    pass
            try:
                os.rmdir(os.path.dirname(sock_path))
            except OSError:
                pass


def _serve(sock_path: str, module: str, preload: list[str]) -> int:
    owner = int(os.environ.get("OPTIMIZER_ZYGOTE_OWNER", "0"))
    t0 = time.monotonic()
    __import__(module)
    for name in preload:
        try:
            __import__(name)
        except ImportError as exc:  # another vLLM release: the server imports what it needs itself
            print(f"zygote: preload {name} skipped: {exc}", flush=True)
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_initialized():
        print("zygote: importing vLLM initialised CUDA; a forked server could not use it. "
              "Use server.launcher=plain.", flush=True)
        return 3
    print(f"zygote: pid {os.getpid()} imported {module} in {time.monotonic() - t0:.1f} s", flush=True)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(sock_path + ".tmp")
    os.replace(sock_path + ".tmp", sock_path)  # appears only once it accepts
    listener.listen(16)
    children: dict[int, socket.socket] = {}
    while owner == 0 or _owner_alive(owner):
        readable, _, _ = select.select([listener], [], [], 0.2)
        if readable:
            conn, _ = listener.accept()
            try:
                req = json.loads(conn.makefile("r").readline())
            except (OSError, ValueError) as exc:
                print(f"zygote: bad request: {exc}", flush=True)
                conn.close()
                continue
            sys.stdout.flush()
            sys.stderr.flush()
            pid = os.fork()
            if pid == 0:
                listener.close()
                for c in children.values():
                    c.close()
                conn.close()
                try:
                    _guard(module, req, os.getppid())
                finally:
                    os._exit(1)
            children[pid] = conn
            try:
                conn.sendall((json.dumps({"pid": pid}) + "\n").encode())
            except OSError:
                pass
        while children:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if not pid:
                break
            if pid in children:
                done = children.pop(pid)
                try:
                    done.sendall((json.dumps({"exit": _exit_code(status)}) + "\n").encode())
                except OSError:
                    pass
                done.close()
    return 0


if __name__ == "__main__":
    sys.exit(serve(sys.argv[1], sys.argv[2], sys.argv[3:]))
