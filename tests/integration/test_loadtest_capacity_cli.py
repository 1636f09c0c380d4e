"""``python -m optimizer.loadtest ... load.mode=capacity`` as a user runs it: a subprocess against the
loaded fake server (latency grows with load by a known law), judged by what it prints and the
``capacity`` object it writes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from optimizer.testing.loaded_server import LoadModel, spawn_loaded_server

pytestmark = pytest.mark.timeout(180)
REPO = Path(__file__).resolve().parents[2]
# E2E = (10 + 16 x 5) x (1 + C/2) = 90 + 45 C ms: a 382.5 ms limit is met up to C = 6 exactly
LAW = LoadModel(base_ms=5.0, k=2.0, prefill_ms=10.0)
COMMON = ("workload.prompt_tokens=16", "workload.output_tokens=16", "workload.endpoint=completions",
          "load.num_requests=24", "load.warmup_requests=4", "load.p99_sizing=off", "slo.metric=e2e")


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "optimizer.loadtest", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=150)


def test_capacity_mode_prints_each_probe_and_writes_the_capacity_object(tmp_path: Path):
    out = tmp_path / "cap.json"
    with spawn_loaded_server(LAW) as url:
        p = _cli(f"endpoint={url}", "load.mode=capacity", "slo.p99_ms=382.5", "load.capacity.max=16",
                 *COMMON, f"out={out}")
    assert p.returncode == 0, p.stderr + p.stdout
    doc = json.loads(out.read_text())["capacity"]
    assert {"control", "value", "output_tok_s", "req_s", "p99_ms", "limited_by", "probes"} <= set(doc)
    assert doc["control"] == "concurrency" and doc["limited_by"] == "slo"
    assert 3 <= doc["value"] <= 6, doc  # the true capacity is 6; host noise can only lower it
    for q in doc["probes"]:
        assert {"load", "passed", "output_tok_s", "p99_ms", "n_requests"} <= set(q)
    at = next(q for q in doc["probes"] if q["load"] == doc["value"])
    assert at["passed"] and at["p99_ms"] <= 382.5 and doc["output_tok_s"] == at["output_tok_s"] > 0
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith("probe ")]
    assert len(lines) == len(doc["probes"]) and "1 users" in lines[0]  # printed as they finished
    assert f"capacity: {doc['value']} users" in p.stdout and "limited by slo" in p.stdout
    # the capacity fitted over every probe, with its interval (README: capacity.low / capacity.high)
    assert {"estimate", "low", "high", "confidence", "flags"} <= set(doc) and doc["confidence"] == 0.95
    assert doc["low"] is not None and doc["low"] <= doc["estimate"] and "fitted over every probe: ~" in p.stdout
    assert all(q["tail_n"] == q["n_ok"] and q["tail_ms"] for q in doc["probes"] if q["n_ok"])


def test_capacity_mode_exits_1_when_even_the_lowest_load_fails_and_refuses_records(tmp_path: Path):
    out = tmp_path / "cap.json"
    with spawn_loaded_server(LAW) as url:
        p = _cli(f"endpoint={url}", "load.mode=capacity", "slo.p99_ms=50", *COMMON, f"out={out}")
        bad = _cli(f"endpoint={url}", "load.mode=capacity", "slo.p99_ms=1000", "records=true", *COMMON)
    assert p.returncode == 1, p.stderr
    doc = json.loads(out.read_text())["capacity"]
    assert doc["value"] is None and doc["feasible"] is False and doc["constraints"]["slo"] > 0
    assert [q["load"] for q in doc["probes"]] == [1]
    assert "capacity: none" in p.stdout
    assert bad.returncode == 2 and "records=true" in bad.stderr
    auto = _cli("endpoint=http://127.0.0.1:9", "load.mode=capacity", "slo.p99_ms=auto")  # no study to calibrate it
    assert auto.returncode == 2 and "slo.p99_ms=auto" in auto.stderr and "Traceback" not in auto.stderr
