"""``server.launcher=forkserver`` with real processes: a zygote that has imported the toy server
module forks each start (vLLM itself in tests/e2e/test_forkserver_vllm.py)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from optimizer.core.errors import ServerCrashed
from optimizer.server import launcher as launchers
from optimizer.server import pidfile
from optimizer.server.process import VllmServer, free_port, port_is_free
from tests.support.procs import alive, logged_pids

pytestmark = pytest.mark.timeout(120)
REPO = Path(__file__).resolve().parents[2]
TOY = "tests.support.toy_server"


@pytest.fixture(autouse=True)
def _no_zygote_left():
    yield
    launchers.shutdown_zygotes()


def _env(**extra: str) -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=str(REPO), PYTHONUNBUFFERED="1", **extra)


def _server(tmp_path: Path, *args: str, env: dict[str, str] | None = None, name: str = "server",
            stop_timeout_s: float = 5.0) -> VllmServer:
    port = free_port()
    return VllmServer(["-m", TOY, str(port), *args], python=sys.executable, host="127.0.0.1", port=port,
                      log_path=tmp_path / f"{name}.log", env=env or _env(), pid_dir=tmp_path / "pids",
                      stop_timeout_s=stop_timeout_s, launcher="forkserver")


def _pids(log: Path, tag: str) -> list[int]:
    return logged_pids(log, tag, 200)


_alive = alive


def _zygote_pid() -> int:
    (z,) = launchers._zygotes.values()
    return z.proc.pid


def test_each_start_is_a_fork_of_one_zygote_in_its_own_group_and_stop_kills_that_group(tmp_path):
    seen = []
    for i in range(2):
        srv = _server(tmp_path, "--grandchild", name=f"s{i}")
        with srv:
            srv.wait_ready(30)
            (leader,) = _pids(srv.log_path, "SERVER")
            (gc,) = _pids(srv.log_path, "GRANDCHILD")
            # forked, not started: the server's parent is the guard, whose parent is the zygote
            assert os.getpgid(leader) == os.getpgid(gc) == srv.pid == os.getsid(leader)
            assert int(Path(f"/proc/{srv.pid}/stat").read_text().split(")")[1].split()[1]) == _zygote_pid()
            seen.append(_zygote_pid())
            assert list((tmp_path / "pids").glob("server-*.json"))
        assert not _alive(leader) and not _alive(gc) and pidfile.group_members(srv.pid) == []
        assert srv.poll() == 128 + signal.SIGTERM  # the guard's code for a group it was asked to stop
        assert port_is_free("127.0.0.1", srv.port)
        assert not list((tmp_path / "pids").glob("*.json"))
    assert seen[0] == seen[1]  # the second start came from the same warm zygote


def test_a_crash_reaches_the_optimizer_with_its_exit_code_and_reason(tmp_path):
    line = "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB"
    srv = _server(tmp_path, "--crash-after", "0.5", "--log-line", line)
    with srv, pytest.raises(ServerCrashed) as e:
        srv.wait_ready(30)
    assert e.value.reason == "out_of_memory" and "exited with code 1" in str(e.value)


def test_a_group_that_ignores_sigterm_is_killed_by_the_forked_guard_after_its_grace(tmp_path, caplog):
    srv = _server(tmp_path, "--grandchild", "--ignore-term", stop_timeout_s=3.0)
    with caplog.at_level("WARNING", logger="optimizer.server.process"), srv:
        srv.wait_ready(30)
        (gc,) = _pids(srv.log_path, "GRANDCHILD")
    assert not _alive(gc) and pidfile.group_members(srv.pid) == []
    # the guard's grace (1 s) ended first: stop() never had to send SIGKILL itself
    assert "ignored SIGTERM" not in caplog.text


def test_the_start_gets_its_own_environment_and_a_different_base_gets_a_new_zygote(tmp_path):
    a = _server(tmp_path, "--print-env", "CUDA_VISIBLE_DEVICES", "--print-env", "OPT_TEST_BASE",
                env=_env(CUDA_VISIBLE_DEVICES="3", OPT_TEST_BASE="one"), name="a")
    with a:
        a.wait_ready(30)
        first = _zygote_pid()
    text = a.log_text()
    assert "ENV CUDA_VISIBLE_DEVICES=3" in text and "ENV OPT_TEST_BASE=one" in text
    b = _server(tmp_path, "--print-env", "CUDA_VISIBLE_DEVICES", env=_env(CUDA_VISIBLE_DEVICES="5", OPT_TEST_BASE="one"),
                name="b")
    with b:
        b.wait_ready(30)
        assert _zygote_pid() == first  # a per-start key does not need another zygote
    assert "ENV CUDA_VISIBLE_DEVICES=5" in b.log_text()
    c = _server(tmp_path, "--print-env", "OPT_TEST_BASE", env=_env(OPT_TEST_BASE="two"), name="c")
    with c:
        c.wait_ready(30)
        assert _zygote_pid() != first  # read at import time possibly: a zygote with that environment
    assert "ENV OPT_TEST_BASE=two" in c.log_text()


def test_when_the_optimizer_is_sigkilled_the_zygote_and_the_server_group_die_too(tmp_path):
    port = free_port()
    code = textwrap.dedent(f"""
        import os, sys, time
        from pathlib import Path
        from optimizer.server import launcher
        from optimizer.server.process import VllmServer
        s = VllmServer(["-m", {TOY!r}, "{port}", "--grandchild"], python=sys.executable, host="127.0.0.1",
                       port={port}, log_path=Path({str(tmp_path / 'server.log')!r}), env=dict(os.environ),
                       pid_dir=Path({str(tmp_path / 'pids')!r}), launcher="forkserver")
        s.start(); s.wait_ready(30)
        (z,) = launcher._zygotes.values()
        print("READY", z.proc.pid, s.pid, flush=True); time.sleep(300)
    """)
    owner = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, env=_env())
    assert owner.stdout is not None
    ready, zygote, group = owner.stdout.readline().split()
    assert ready == "READY"
    (gc,) = _pids(tmp_path / "server.log", "GRANDCHILD")
    owner.kill()
    owner.wait()
    deadline = time.monotonic() + 20
    while (pidfile.group_members(int(group)) or _alive(int(zygote))) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _alive(int(zygote)) and not _alive(gc) and pidfile.group_members(int(group)) == []
    assert pidfile.sweep(tmp_path / "pids") == []  # nothing left for the next run to kill


def test_the_forkserver_refuses_a_script_and_an_unknown_launcher(tmp_path):
    with pytest.raises(ValueError, match="runs a module"):
        VllmServer(["toy.py", "1"], python=sys.executable, host="127.0.0.1", port=1, log_path=tmp_path / "x.log",
                   env={}, pid_dir=tmp_path, launcher="forkserver")
    with pytest.raises(ValueError, match="expected one of"):
        VllmServer(["-m", TOY], python=sys.executable, host="127.0.0.1", port=1, log_path=tmp_path / "x.log",
                   env={}, pid_dir=tmp_path, launcher="zygote")


def test_a_zygote_that_cannot_import_the_module_is_reported(tmp_path):
    port = free_port()
    srv = VllmServer(["-m", "no_such_module_here", str(port)], python=sys.executable, host="127.0.0.1", port=port,
                     log_path=tmp_path / "s.log", env=_env(), pid_dir=tmp_path / "pids", launcher="forkserver",
                     zygote_timeout_s=30)
    with pytest.raises(ServerCrashed, match="fork server") as e:
        srv.start()
    assert not e.value.deterministic and "No module named" in str(e.value)
