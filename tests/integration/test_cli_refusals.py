"""Bad input and busy resources are refused before any server starts (no vLLM needed)."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from optimizer.core.errors import EnvironmentBusy
from optimizer.server.gpu import wait_for_free_gpus
from optimizer.study.storage import StudyLock

REPO = Path(__file__).resolve().parents[2]


def _run(tmp_path: Path, *overrides: str) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "optimizer.run", f"study.storage=sqlite:///{tmp_path}/s.db", "study.name=s",
            f"study.runs_dir={tmp_path}/runs", f"reports_dir={tmp_path}/reports", f"server.cache_dir={tmp_path}/c",
            "report=false", *overrides]
    return subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, PYTHONPATH=str(REPO)))


def test_a_model_path_that_does_not_exist_is_refused_with_exit_2(tmp_path):
    r = _run(tmp_path, "model.generate=", "model.path=/nonexistent/model")
    assert r.returncode == 2, r.stderr
    assert "model.path='/nonexistent/model'" in r.stderr and "Traceback" not in r.stderr
    assert not list((tmp_path / "runs").glob("s/trial-*"))  # no trial, no server


def test_a_second_optimizer_on_the_same_study_file_is_refused(tmp_path):
    lock = StudyLock(tmp_path / "s.db").acquire()
    try:
        r = _run(tmp_path)
    finally:
        lock.release()
    assert r.returncode == 1
    assert "in use by pid" in r.stderr and "PostgreSQL" in r.stderr and "database is locked" not in r.stderr


def test_an_unset_api_key_variable_is_refused(tmp_path):
    r = _run(tmp_path, "server.api_key_env=NO_SUCH_VARIABLE_HERE")
    assert r.returncode == 2 and "NO_SUCH_VARIABLE_HERE" in r.stderr


def _fake_smi(tmp_path: Path, busy_until: float) -> Path:
    """An nvidia-smi that reports a compute process on GPU 0 until ``busy_until`` (epoch s)."""
    d = tmp_path / "bin"
    d.mkdir()
    exe = d / "nvidia-smi"
    exe.write_text(f"""#!{sys.executable}
import sys, time
args = " ".join(sys.argv[1:])
if "query-gpu=index,uuid" in args:
    print("0, GPU-aaa"); print("1, GPU-bbb")
elif "query-compute-apps" in args:
    if time.time() < {busy_until}:
        print("GPU-aaa, 4242, 70000 MiB")
""")
    exe.chmod(exe.stat().st_mode | stat.S_IEXEC)
    return d


def test_the_next_server_waits_until_the_gpu_is_released(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", f"{_fake_smi(tmp_path, time.time() + 2.0)}:{os.environ['PATH']}")
    waited = wait_for_free_gpus((0,), timeout_s=30)
    assert 1.0 <= waited < 15


def test_a_gpu_held_by_someone_else_is_reported_after_the_bounded_wait(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", f"{_fake_smi(tmp_path, time.time() + 3600)}:{os.environ['PATH']}")
    t0 = time.monotonic()
    with pytest.raises(EnvironmentBusy) as e:
        wait_for_free_gpus((0,), timeout_s=1.5)
    assert time.monotonic() - t0 < 10
    assert "pid 4242" in str(e.value) and not e.value.deterministic


def test_other_gpus_being_busy_does_not_block(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", f"{_fake_smi(tmp_path, time.time() + 3600)}:{os.environ['PATH']}")
    assert wait_for_free_gpus((1,), timeout_s=1.0) < 1.0


@pytest.mark.parametrize("overrides, names", [
    (("study.storage=sqlite:////proc/x/study.db",), ("study.storage", "/proc/x")),  # a virtual file system
    (("model.path=/nonexistent/model",), ("model.path", "model.generate='tiny'")),  # the default preset
    (("load.request_rate=2",), ("load.request_rate", "load.mode='concurrency'")),
])
def test_input_that_would_be_ignored_or_cannot_be_used_is_refused_with_exit_2(tmp_path, overrides, names):
    r = _run(tmp_path, *overrides)
    assert r.returncode == 2, r.stderr
    assert all(n in r.stderr for n in names) and "Traceback" not in r.stderr
    assert not list((tmp_path / "runs").glob("s/trial-*"))  # no trial, no server
