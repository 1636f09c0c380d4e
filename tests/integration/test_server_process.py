"""Server lifecycle with real processes (a toy server; vLLM itself in tests/e2e)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from optimizer.core.errors import ServerCrashed, ServerStartTimeout
from optimizer.server import pidfile
from optimizer.server.process import VllmServer, free_port, port_is_free
from tests.support.procs import alive, logged_pids

TOY = str(Path(__file__).resolve().parents[1] / "support" / "toy_server.py")


def _server(tmp_path: Path, *args: str, stop_timeout_s: float = 5.0) -> VllmServer:
    port = free_port()
    return VllmServer([TOY, str(port), *args], python=sys.executable, host="127.0.0.1", port=port,
                      log_path=tmp_path / "server.log", env=dict(os.environ), pid_dir=tmp_path / "pids",
                      stop_timeout_s=stop_timeout_s)


def _pids(log: Path, tag: str) -> list[int]:
    return logged_pids(log, tag, 100)


_alive = alive


@pytest.mark.parametrize("leader_already_exited", [False, True])
def test_stop_kills_the_whole_group_even_if_the_server_already_exited(tmp_path, leader_already_exited):
    srv = _server(tmp_path, "--grandchild")
    with srv:
        assert srv.wait_ready(20) < 20
        (gc,) = _pids(srv.log_path, "GRANDCHILD")
        (leader,) = _pids(srv.log_path, "SERVER")
        assert _alive(gc)
        if leader_already_exited:
            # the server died by itself: its guard takes down what it left (vLLM's engine processes)
            os.kill(leader, signal.SIGKILL)
            deadline = time.monotonic() + 10
            while _alive(gc) and time.monotonic() < deadline:
                time.sleep(0.05)
            assert not _alive(gc)
            # the guard exits right after killing the group; give its exit a moment to be seen
            while srv.poll() is None and time.monotonic() < deadline + 5:
                time.sleep(0.01)
            assert srv.poll() is not None
    assert not _alive(gc) and not _alive(leader)
    assert port_is_free("127.0.0.1", srv.port)
    assert not list((tmp_path / "pids").glob("*.json"))  # pid file removed after a clean stop


def test_a_group_that_ignores_sigterm_is_killed_by_its_guard_after_the_grace(tmp_path):
    srv = _server(tmp_path, "--grandchild", "--ignore-term", stop_timeout_s=2.0)
    srv.start()
    srv.wait_ready(20)
    (gc,) = _pids(srv.log_path, "GRANDCHILD")
    took = srv.stop()
    assert not _alive(gc) and took < 15


def test_stop_escalates_to_sigkill_itself_when_the_guard_cannot(tmp_path, caplog):
    """The guard (the group's leader) normally kills a group that ignores SIGTERM before stop()'s
    own grace ends; here it is stopped (SIGSTOP, as a hung guard would be), so only stop()'s
    SIGKILL can end the group."""
    srv = _server(tmp_path, "--grandchild", "--ignore-term", stop_timeout_s=2.0)
    srv.start()
    srv.wait_ready(20)
    (gc,) = _pids(srv.log_path, "GRANDCHILD")
    (leader,) = _pids(srv.log_path, "SERVER")
    os.kill(srv.pid, signal.SIGSTOP)  # the guard
    t0 = time.monotonic()
    with caplog.at_level("WARNING", logger="optimizer.server.process"):
        srv.stop()
    took = time.monotonic() - t0
    assert not _alive(gc) and not _alive(leader) and not _alive(srv.pid)
    assert took >= 2.0  # SIGTERM first, SIGKILL only after stop_timeout_s
    assert "ignored SIGTERM" in caplog.text and "sending SIGKILL" in caplog.text


def test_crash_during_start_is_reported_at_once_with_the_reason_from_the_log(tmp_path):
    line = "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB"
    srv = _server(tmp_path, "--crash-after", "0.5", "--log-line", line)
    t0 = time.monotonic()
    with srv, pytest.raises(ServerCrashed) as e:
        srv.wait_ready(60)
    assert time.monotonic() - t0 < 15
    assert e.value.reason == "out_of_memory" and e.value.deterministic
    assert "exited with code 1" in str(e.value)


def test_a_server_that_never_becomes_healthy_hits_the_start_timeout(tmp_path):
    srv = _server(tmp_path, "--never-ready")
    with srv, pytest.raises(ServerStartTimeout) as e:
        srv.wait_ready(1.5)
    assert not e.value.deterministic and "server.start_timeout_s" in str(e.value)


def test_misuse_raises():
    srv = VllmServer(["x"], python=sys.executable, host="127.0.0.1", port=1, log_path=Path("/tmp/x.log"), env={},
                     pid_dir=Path("/tmp"))
    with pytest.raises(RuntimeError):
        srv.poll()
    assert srv.stop() == 0.0  # never started: nothing to stop


def test_when_the_optimizer_is_sigkilled_its_server_group_dies_too(tmp_path):
    """The guard gets SIGTERM from the kernel (PR_SET_PDEATHSIG) and kills the group."""
    port = free_port()
    code = textwrap.dedent(f"""
        import os, sys, time
        from pathlib import Path
        from optimizer.server.process import VllmServer
        s = VllmServer([{TOY!r}, "{port}", "--grandchild"], python=sys.executable, host="127.0.0.1", port={port},
                       log_path=Path({str(tmp_path / 'server.log')!r}), env=dict(os.environ),
                       pid_dir=Path({str(tmp_path / 'pids')!r}))
        s.start(); s.wait_ready(20); print("READY", flush=True); time.sleep(300)
    """)
    owner = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                             env=dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2])))
    assert owner.stdout is not None and owner.stdout.readline().strip() == "READY"
    (gc,) = _pids(tmp_path / "server.log", "GRANDCHILD")
    (leader,) = _pids(tmp_path / "server.log", "SERVER")
    owner.kill()
    owner.wait()
    group = int(re.search(r"server-(\d+)\.json", str(next((tmp_path / "pids").glob("server-*.json")))).group(1))
    deadline = time.monotonic() + 15
    while pidfile.group_members(group) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _alive(gc) and not _alive(leader) and pidfile.group_members(group) == []
    # the pid file stays behind for the next run's sweep, which finds nothing left to kill
    assert list((tmp_path / "pids").glob("server-*.json"))
    assert pidfile.sweep(tmp_path / "pids") == []
    assert not list((tmp_path / "pids").glob("server-*.json"))


def test_sweep_kills_a_group_whose_owner_is_dead(tmp_path):
    victim = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"], start_new_session=True)
    rec = pidfile.record(tmp_path, victim.pid, port=1)
    data = rec.read_text().replace(f'"owner_pid": {os.getpid()}', '"owner_pid": 999999999')
    rec.write_text(data)
    assert pidfile.sweep(tmp_path) == [victim.pid]
    assert victim.wait(timeout=10) == -signal.SIGKILL


def test_sweep_leaves_groups_of_live_owners_alone(tmp_path):
    victim = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"], start_new_session=True)
    try:
        pidfile.record(tmp_path, victim.pid, port=1)
        assert pidfile.sweep(tmp_path) == []
        assert victim.poll() is None
    finally:
        victim.kill()
        victim.wait()


def test_stop_keeps_its_duration_for_later_calls(tmp_path):
    """Found on the H100: the context manager's exit stopped the server, and the trial's own call
    to stop() then recorded 0 s."""
    srv = _server(tmp_path)
    with srv:
        srv.wait_ready(20)
    first = srv.stop_seconds
    assert first > 0 and srv.stop() == first
