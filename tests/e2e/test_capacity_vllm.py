"""The capacity search against a real vLLM (CPU build) server: the session's shared one
(tests/support/shared_server.py: the tiny architecture with dummy weights, ``--enforce-eager``).

The server runs with ``--max-num-seqs 2``: from three users on, requests queue for a whole
service time, so the P99 E2E roughly doubles past two users. The limit is 1.5 x the P99 measured
at two users first (a calibration on the same warm server), which puts the capacity near 2 users
whatever this host's speed; the test does not assert the number (noise), only that the answer is
a probe that passed with a probe one step above it that failed, and the JSON the issue specifies.
"""

from __future__ import annotations

import asyncio
import json

import pytest

from optimizer.capacity import CapacitySearch, LimitedBy, LoadProbe, ProbeResult, SearchPlan, find_capacity
from optimizer.loadgen.client import Endpoint
from optimizer.loadgen.runner import run_load
from optimizer.loadgen.workload import RequestSet
from optimizer.measures.metrics import summarize
from optimizer.server.telemetry import TelemetrySampler
from optimizer.settings.config import CapacityConfig, LoadConfig, SloConfig, WorkloadConfig

pytestmark = [pytest.mark.vllm, pytest.mark.slow, pytest.mark.timeout(900)]


def test_capacity_search_on_a_real_vllm_server(shared_server):
    server = shared_server.server
    ep = Endpoint(server.url, shared_server.name)
    model = shared_server.cfg.model  # its prompt token range; dummy weights and ignore_eos: exact lengths
    rs = RequestSet.build(WorkloadConfig(name="cap", prompt_tokens=64, output_tokens=16), model)
    load = LoadConfig(num_requests=16, warmup_requests=8, p99_sizing="off",
                      capacity=CapacityConfig(start=1, max=8, max_probes=7, max_s=240))
    calib = asyncio.run(run_load(ep, rs, LoadConfig(concurrency=2, num_requests=16, warmup_requests=8,
                                                    p99_sizing="off")))
    p99_at_2 = summarize(calib.results, calib.duration_s).e2e.p99
    slo = SloConfig(metric="e2e", p99_ms=1.5 * p99_at_2)
    seen: list[ProbeResult] = []
    probe = LoadProbe(ep, rs, load, slo, telemetry=lambda: TelemetrySampler(server.url, 0.5))
    r = asyncio.run(find_capacity(probe, CapacitySearch(SearchPlan.of(load.capacity, 8), slo), on_probe=seen.append))
    print(f"\nP99 E2E at 2 users {p99_at_2:.0f} ms, limit {slo.p99_ms:.0f} ms: capacity {r.value} "
          f"({r.limited_by.value}: {r.stop_reason}); probes "
          + ", ".join(f"{p.load:g}:{'pass' if p.passed else 'FAIL'} {p.p99_ms:.0f} ms" for p in r.probes))

    doc = json.loads(json.dumps({"capacity": r.to_json()}, allow_nan=False))["capacity"]
    assert {"control", "value", "output_tok_s", "req_s", "p99_ms", "limited_by", "probes"} <= set(doc)
    assert doc["control"] == "concurrency" and doc["limited_by"] in ("slo", "errors", "cap")
    for p in doc["probes"]:
        assert {"load", "passed", "output_tok_s", "p99_ms", "n_requests"} <= set(p)
        assert p["n_requests"] >= 16 and p["kv_usage_peak"] is not None and p["preemptions"] is not None
    assert r.feasible and isinstance(doc["value"], int) and doc["value"] >= 1
    at = r.at_capacity
    assert at is not None and at.passed and at.p99_ms <= slo.p99_ms and doc["output_tok_s"] > 0
    if r.limited_by is not LimitedBy.CAP:
        nxt = min((p for p in r.probes if p.load > r.value), key=lambda p: p.load)
        assert nxt.load == r.value + 1 and not nxt.passed  # the bracket closed at one user
    assert [p.load for p in seen[:2]] == [1.0, 2.0]
    assert len({p.seed for p in r.probes}) == len(r.probes)
