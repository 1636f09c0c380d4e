"""``server.launcher=forkserver`` on a real vLLM (CPU build) server: two starts in a row from one
zygote, each serving the tiny model with the same greedy answer, each API server a fork of the
zygote (not a new interpreter), and each group gone after its stop."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import httpx
import pytest

from optimizer.server import launcher as launchers
from optimizer.server import pidfile
from optimizer.server.process import VllmServer, free_port, port_is_free

pytestmark = [pytest.mark.vllm, pytest.mark.slow, pytest.mark.timeout(1500)]


def _cmdline(pid: int) -> str:
    return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()


def _children(pid: int) -> list[int]:
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if int((d / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    out.append(int(d.name))
            except (OSError, IndexError, ValueError):
                pass
    return out


def test_two_forkserver_starts_in_a_row_serve_and_leave_nothing_running(repo, tiny_model, tmp_path):
    cache = repo / ".cache"
    env = dict(os.environ) | {"HF_HUB_OFFLINE": "1", "VLLM_CACHE_ROOT": str(cache / "vllm"), "PYTHONUNBUFFERED": "1",
                              "VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1"}
    answers, zygotes = [], []
    try:
        for i in range(2):
            port = free_port()
            name = f"tiny-fork-{i}"
            argv = ["-m", "vllm.entrypoints.openai.api_server", "--model", str(tiny_model), "--served-model-name",
                    name, "--host", "127.0.0.1", "--port", str(port), "--kv-cache-memory-bytes", str(2**30),
                    "--max-num-seqs", "4", "--enforce-eager"]
            srv = VllmServer(argv, python=sys.executable, host="127.0.0.1", port=port, log_path=tmp_path / f"{i}.log",
                             env=env, pid_dir=cache / "pids", stop_timeout_s=30, identity=name,
                             launcher="forkserver")
            with srv:
                srv.wait_ready(900)
                (zygote,) = launchers._zygotes.values()
                zygotes.append(zygote.proc.pid)
                (api,) = _children(srv.pid)  # the guard's one child: the API server
                # a fork of the zygote, which imported vLLM: not a new `python -m` interpreter
                assert "zygote.py" in _cmdline(api) and "-m vllm" not in _cmdline(api)
                assert os.getpgid(api) == srv.pid
                r = httpx.post(srv.url + "/v1/completions", timeout=120, json={
                    "model": name, "prompt": "The capital of", "max_tokens": 8, "temperature": 0})
                assert r.status_code == 200
                answers.append(r.json()["choices"][0]["text"])
                group = srv.pid
            assert pidfile.group_members(group) == [] and port_is_free("127.0.0.1", port)
            assert "Starting vLLM" in srv.log_text() or "Application startup complete" in srv.log_text()
        assert zygotes[0] == zygotes[1]  # the second trial's server came from the same zygote
        assert answers[0] == answers[1] and answers[0]
    finally:
        launchers.shutdown_zygotes()
