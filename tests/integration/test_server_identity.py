"""The server a trial measures is the one it started: another server answering on the port is
refused, not measured (issue 16, item 6). Real processes: the study's trial code starts a small
fake vLLM (optimizer/testing/fake_vllm.py) while a foreign HTTP server already holds the port."""

from __future__ import annotations

import http.server
import json
import os
import sys
import threading
from pathlib import Path

import pytest

from optimizer.core.errors import EnvironmentBusy
from optimizer.server.process import VllmServer
from optimizer.space.engine_args import EngineParams
from optimizer.trial import trial as trial_mod
from optimizer.trial.trial import TrialContext, run_trial

pytestmark = pytest.mark.timeout(120)


class _Foreign(http.server.BaseHTTPRequestHandler):
    """Someone else's OpenAI-compatible server: healthy, serving another model."""

    hits: list[str] = []

    def do_GET(self) -> None:
        self.hits.append(self.path)
        if self.path == "/health":
            body = b""
        elif self.path == "/v1/models":
            body = json.dumps({"object": "list", "data": [{"id": "someone-elses-model"}]}).encode()
        else:
            self.send_response(404)
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self) -> None:
        self.hits.append(self.path)
        self.send_response(500)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def foreign():
    _Foreign.hits = []
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Foreign)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        yield srv.server_address[1], _Foreign.hits
    finally:
        srv.shutdown()
        srv.server_close()


def _ctx(compose, tmp_path: Path) -> TrialContext:
    cfg = compose("server.module=optimizer.testing.fake_vllm", "slo.p99_ms=60000", "load.num_requests=8",
                  "load.warmup_requests=2", "load.concurrency=2", "workload.prompt_tokens=16", "workload.output_tokens=4",
                  "load.p99_sizing=off", "server.start_timeout_s=60")
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2]), FAKE_VLLM_START_DELAY_S="3")
    return TrialContext(cfg=cfg, model_dir=tmp_path / "m", python=sys.executable, server_env=env, api_key=None,
                        trial_root=tmp_path / "runs", pid_dir=tmp_path / "pids")


def test_a_foreign_server_on_the_trials_port_fails_the_trial_and_is_not_measured(compose, tmp_path,
                                                                                  foreign, monkeypatch):
    port, hits = foreign
    monkeypatch.setattr(trial_mod, "free_port", lambda host: port)  # the port was taken after it was picked
    with pytest.raises(EnvironmentBusy) as e:
        run_trial(_ctx(compose, tmp_path), 0, EngineParams(), "", False)
    assert e.value.reason == "foreign_server" and not e.value.deterministic  # failed and retried, not learned
    assert "someone-elses-model" in str(e.value) and f"port {port}" in str(e.value)
    assert "/v1/models" in hits and not [h for h in hits if h.startswith("/v1/completions")]
    assert e.value.record is None or e.value.record.measurement is None


def test_the_trials_own_server_is_recognised_and_measured(compose, tmp_path):
    rec = run_trial(_ctx(compose, tmp_path), 0, EngineParams(), "", False)
    attrs = rec.to_attrs()
    assert attrs["n_ok"] == 8 and rec.outcome is not None and rec.outcome.value > 0
    argv = json.loads(attrs["server_argv"])
    names = argv[argv.index("--served-model-name") + 1:argv.index("--served-model-name") + 3]
    assert names[0] == "tiny" and names[1].startswith("vllm-opt-t0-")
    assert json.loads(attrs["serve_config"])["served_model_name"] == "tiny"  # what best.yaml shows
    assert "vllm-opt-" not in attrs["server_command"]  # the command a user reruns ("serve it")


def test_wait_ready_without_identity_accepts_any_healthy_server(tmp_path, foreign):
    """The behaviour the identity check exists to prevent: /health alone is answered by anyone."""
    port, _ = foreign
    srv = VllmServer(["-c", "import time; time.sleep(60)"], python=sys.executable, host="127.0.0.1", port=port,
                     log_path=tmp_path / "s.log", env=dict(os.environ), pid_dir=tmp_path / "pids",
                     stop_timeout_s=5)
    with srv:
        assert srv.wait_ready(10) < 10
