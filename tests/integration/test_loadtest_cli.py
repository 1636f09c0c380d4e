"""``python -m optimizer.loadtest`` as a user runs it: a subprocess against the fake vLLM server,
judged by the JSON it writes and its exit code."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from optimizer.testing.fake_server import spawn_fake_server

pytestmark = pytest.mark.timeout(120)
REPO = Path(__file__).resolve().parents[2]


def _cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "optimizer.loadtest", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=timeout)


def test_a_closed_loop_run_writes_the_summary_and_matches_the_server_token_counters(fake_server, tmp_path: Path):
    out = tmp_path / "r.json"
    p = _cli(f"endpoint={fake_server.url}", "load.num_requests=30", "load.concurrency=4", "load.warmup_requests=2",
             "workload.output_tokens=8", f"out={out}")
    assert p.returncode == 0, p.stderr
    assert "TTFT" in p.stdout and "E2E" in p.stdout and "output tok/s" in p.stdout
    doc = json.loads(out.read_text())
    assert doc["model"] == "fake"  # the config says tiny; the server serves one model: fake
    s = doc["summary"]
    assert s["n_requests"] == s["n_ok"] == 30 and s["output_tokens"] == 240 and s["errors"] == {}
    assert s["e2e"]["n"] == 30 and s["e2e"]["p99_high"] is None  # too few for an upper bound: null, not NaN
    assert doc["load"]["concurrency"] == 4 and doc["workload"]["name"] == "chat-short"
    assert doc["tokens"]["match"] is True and doc["tokens"]["server_output_tokens"] == 32 * 8
    assert doc["p99_upper_bound_needs"] == 368 and any("368" in n for n in doc["notes"])
    assert fake_server.stats()["requests"] == 32 and doc["prefix_cache_reset"] is True


def test_faults_on_the_chat_endpoint_are_counted_by_kind_with_per_request_records(fake_server_factory,
                                                                                  tmp_path: Path):
    srv = fake_server_factory(fault="http500,drop", fault_rate=0.4, tokens_per_s=2000)
    out = tmp_path / "r.json"
    p = _cli(f"endpoint={srv.url}", "workload=chat", "load.num_requests=40", "load.warmup_requests=0",
             "workload.output_tokens=6", "records=true", f"out={out}")
    assert p.returncode == 0, p.stderr
    doc = json.loads(out.read_text())
    faults = srv.stats()["faults"]
    assert doc["summary"]["errors"] == {"http_status": faults["http500"], "stream_broken": faults["drop"]}
    assert doc["summary"]["n_ok"] == 40 - sum(faults.values())
    recs = doc["records"]
    assert [r["index"] for r in recs] == list(range(40))
    assert {r["status"] for r in recs if r["error_kind"] == "http_status"} == {500}
    assert all(len(r["itl"]) == 5 for r in recs if r["ok"])


def test_auto_sizing_raises_the_request_count_and_bounds_the_p99(fake_server, tmp_path: Path):
    out = tmp_path / "r.json"
    p = _cli(f"endpoint={fake_server.url}", "load.p99_sizing=auto", "load.num_requests=50", "load.concurrency=16",
             "workload.output_tokens=2", "workload=fixed-256-64", f"out={out}")
    assert p.returncode == 0, p.stderr
    doc = json.loads(out.read_text())
    assert doc["num_requests"] == 368 and doc["summary"]["n_ok"] == 368
    assert doc["summary"]["e2e"]["p99_high"] is not None


def test_an_open_loop_for_a_duration_against_a_subprocess_server(tmp_path: Path):
    with spawn_fake_server(model="tiny", tokens_per_s=500) as srv:
        out = tmp_path / "r.json"
        p = _cli(f"endpoint={srv.url}", "load.mode=rate", "load.request_rate=40", "load.duration_s=1.5",
                 "load.warmup_requests=0", "workload.output_tokens=4", "load.p99_sizing=off", f"out={out}")
    assert p.returncode == 0, p.stderr
    doc = json.loads(out.read_text())
    assert doc["model"] == "tiny" and 40 <= doc["summary"]["n_requests"] <= 85
    assert doc["client"]["dispatch_lag_ms"]["p50"] is not None


@pytest.mark.parametrize("args,code,text", [
    (["--help"], 0, "endpoint=URL"),
    (["load.concurrency=4"], 2, "endpoint=URL is required"),
    (["endpoint=http://127.0.0.1:9", "load.concurency=4"], 2, "error:"),
    (["endpoint=http://127.0.0.1:9"], 1, "Is the server running"),
])
def test_usage_errors_and_an_unreachable_endpoint_exit_with_a_one_line_reason(args: list[str], code: int,
                                                                              text: str):
    p = _cli(*args)
    assert p.returncode == code, (p.stdout, p.stderr)
    assert text in p.stdout + p.stderr
    assert "Traceback" not in p.stderr
