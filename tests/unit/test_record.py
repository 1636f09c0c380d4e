"""The trial record: its encoding to Optuna user attrs, and old studies read through it.

The committed H100 study (docs/results/h100-llama-3-8b/) pins the stored keys: each of its
trials decodes to a record that encodes back to exactly the attrs it holds, so renaming a key in
the record (``e2e_p99``, ``srv_kv_usage_peak``...) fails here, and the report, the study summary
and best.yaml of that study still come out as committed.
"""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import optuna
import pandas as pd
import pytest
import yaml
from optuna.trial import TrialState

from optimizer.core.errors import FailureReason
from optimizer.measures.metrics import Dist, LoadSummary
from optimizer.measures.objective import infeasible
from optimizer.record import Failure, LaunchInfo, Lineage, Measurement, MemoryPrediction, Setup, Timings, TrialRecord
from optimizer.reporting import best_yaml, write_study_report
from optimizer.reporting.data import Status, build_report_data
from optimizer.reporting.html import render_page
from optimizer.reporting.levers import main_levers
from optimizer.server.startlog import StartLog
from optimizer.server.telemetry import ServerStats
from optimizer.study.results import describe, study_result

H100 = Path(__file__).resolve().parents[2] / "docs" / "results" / "h100-llama-3-8b"


@pytest.fixture(scope="module")
def h100(tmp_path_factory: pytest.TempPathFactory) -> optuna.Study:
    db = tmp_path_factory.mktemp("h100") / "study.db"
    shutil.copy(H100 / "h100-llama-3-8b.db", db)  # never touch the committed file
    return optuna.load_study(study_name="h100-llama-3-8b", storage=f"sqlite:///{db}")


def test_every_stored_trial_of_the_h100_study_decodes_and_encodes_back_to_the_same_attrs(h100):
    for t in h100.trials:
        attrs = TrialRecord.from_trial(t).to_attrs()
        # the dashboard's copy of each constraint (constraint_<key>) is newer than this study
        assert {k: v for k, v in attrs.items() if not k.startswith("constraint_")} == t.user_attrs, t.number
        assert {k[len("constraint_"):]: v for k, v in attrs.items() if k.startswith("constraint_")} == t.constraints


def test_the_h100_study_reads_as_measured_records(h100):
    recs = {t.number: TrialRecord.from_trial(t) for t in h100.trials}
    complete = [t.number for t in h100.trials if t.state == TrialState.COMPLETE]
    assert len(complete) == 12 and all(recs[n].measured for n in complete)
    best = recs[8]
    assert best.measurement.summary.output_tok_s == pytest.approx(6268.5, abs=1)
    assert best.p99("e2e") == pytest.approx(1372, abs=1) and best.p99("ttft") == pytest.approx(618, abs=1)
    assert best.launch.serve_config["gpu_memory_utilization"] == 0.95 and best.launch.vllm_version == "0.26.0"
    assert best.measurement.latency_samples["e2e"] and best.measurement.kv_timeline
    assert math.isnan(best.measurement.telemetry.spec_acceptance)  # stored None: nothing drafted
    assert recs[0].lineage.baseline and recs[0].outcome.feasible
    interrupted = [r for r in recs.values() if r.interrupted]
    assert len(interrupted) == 3 and all(r.failure.reason == FailureReason.INTERRUPTED for r in interrupted)
    assert all(r.lineage.retry_of is not None for n, r in recs.items() if n in (13, 14, 15) and r.lineage.attempt)


def test_the_h100_study_summary_report_and_best_yaml_come_out_as_committed(h100):
    res = study_result(h100.trials)
    assert res.best.number == 8 and res.baseline.number == 0 and res.gain == pytest.approx(0.465, abs=0.001)
    text = describe(res, "e2e", 2000.0)
    assert "best: trial 8: 6268.5 output tok/s, P99 e2e 1372 ms" in text and "+46.5% over the baseline" in text
    d = build_report_data(h100.study_name, h100.trials, h100.user_attrs)
    assert d.summary.best.number == 8 and d.summary.vllm_version == "0.26.0"
    committed_csv = pd.read_csv(H100 / "trials.csv")
    assert [i.status.value for i in d.trials] == list(committed_csv["status"])
    assert d.summary.counts[Status.FEASIBLE.value] == 7 and d.summary.counts[Status.FAILED.value] == 3
    assert len(d.telemetry) == 12 and all(r.pred_kv_tokens > 0 for r in d.telemetry)
    committed = (H100 / "best.yaml").read_text()
    assert best_yaml(d) == committed


def _full_record() -> TrialRecord:
    summary = LoadSummary(n_requests=10, n_ok=9, error_rate=0.1, errors={"timeout": 1}, duration_s=2.0,
                          output_tok_s=450.5, total_tok_s=900.25, req_s=4.5, output_tokens=901, prompt_tokens=900,
                          ttft=Dist(9, 10.0, 9.0, 12.0, 13.0, 14.0, math.nan, math.nan), itl=Dist.of([]),
                          e2e=Dist(9, 100.0, 90.0, 120.0, 130.0, 140.0, 80.0, math.nan), tpot_mean_ms=5.5)
    stats = ServerStats(1.0, 2.0, 9.0, 0.0, math.nan, math.nan, 0.0, 0.5, 8.0, 1.0, 4096.0, 32.0, 128.0)
    return TrialRecord(
        Setup("cpu", "tiny", "chat-short", {"max_num_seqs": 8}, "h/w0", "0,1"),
        lineage=Lineage(True, 1, 3, "interrupted: the optimizer died"),
        memory=MemoryPrediction(2.0, 0.01, 0.25, 1.75, 4096, 2.0),
        launch=LaunchInfo(("-m", "vllm", "--max-num-seqs", "8"), "python -m vllm --max-num-seqs 8",
                          {"max_num_seqs": 8}, "/runs/s/trial-0004/server.log", "0.32.0"),
        start_log=StartLog(kv_tokens=4096, engine_init_s=40.09),
        timings=Timings(0.0, 41.5, 0.9, 2.0, 0.3, 45.0),
        measurement=Measurement(summary, stats, 0.5, 0.25, 1, "timeout after 30 s", {"e2e": [90.0, 100.0]},
                                [(0.0, {"vllm:kv_cache_usage_perc": 0.5})], client_wait_s=1.25, client_wait_share=0.125),
        failure=Failure(FailureReason.OUT_OF_MEMORY, "CUDA out of memory", during_load=True),
        interrupted=False)


def _same(a: object, b: object) -> bool:
    """Equality with NaN equal to NaN, through nested dataclasses."""
    return repr(a) == repr(b)


def test_a_record_survives_its_own_encoding_nan_included():
    rec = _full_record()
    attrs = rec.to_attrs()
    assert attrs["failure"] == "server_died:out_of_memory" and attrs["ttft_p99_low"] is None
    assert attrs["srv_prefix_cache_hit_rate"] is None and attrs["errors_timeout"] == 1
    assert all(not (isinstance(v, float) and math.isnan(v)) for v in attrs.values())  # JSON has no NaN
    assert _same(TrialRecord.from_attrs(attrs), rec)


def test_parts_that_were_not_reached_are_absent_not_zero():
    rec = TrialRecord(Setup("cpu", "tiny", "w", {}), failure=Failure(FailureReason.RULED_OUT, "too small"),
                      outcome=infeasible(memory=True))
    attrs = rec.to_attrs()
    assert attrs["counted"] is False and attrs["feasible"] is False
    back = TrialRecord.from_attrs(attrs)
    assert back.measurement is None and back.launch is None and back.timings is None and back.memory is None
    assert back.ruled_out and not back.counted and math.isnan(back.p99("e2e"))


def test_a_failure_reason_this_version_does_not_know_reads_as_other_and_keeps_its_name():
    f = Failure.from_attrs({"failure": "server_died:gremlins", "failure_detail": "ate the GPU"})
    assert f == Failure(FailureReason.OTHER, "gremlins: ate the GPU", during_load=True)


def test_the_h100_report_folder_is_written(h100, tmp_path):
    index = write_study_report(h100, tmp_path)
    assert "6268.5" in index.read_text() or "6,268" in index.read_text()
    assert (tmp_path / "best.yaml").read_text() == (H100 / "best.yaml").read_text()
    assert len(pd.read_csv(tmp_path / "trials.csv")) == 16


def test_the_h100_outputs_travel_no_machine_path_and_values_as_set(h100, tmp_path):
    """The study ran from /work/main with /opt/torch/.venv/bin/python3; its database keeps that,
    the files written for people do not. gpu_memory_utilization 0.87 is stored by Optuna as
    0.8700000000000001 (0.80 + 7 x 0.01 in binary); the server got 0.87, and so do the outputs."""
    assert "--gpu-memory-utilization 0.87 " in h100.trials[4].user_attrs["server_command"]
    write_study_report(h100, tmp_path)
    for name in ("index.html", "best.yaml", "trials.csv"):
        text = (tmp_path / name).read_text()
        assert not any(p in text for p in ("/work/", "/opt/", "/root/", "/home/", "/tmp/")), name
        assert "0.8700000000000001" not in text and "0.8300000000000001" not in text, name
    best = yaml.safe_load((tmp_path / "best.yaml").read_text())
    assert best["model"] == "/models/llama-3-8b-instruct-fp8" and "load-format" not in best
    row = pd.read_csv(tmp_path / "trials.csv").iloc[8]
    assert row["server_log"] == "runs/h100-llama-3-8b/trial-0008/server.log"
    assert row["server_command"].startswith("python -m vllm.entrypoints.openai.api_server --model "
                                            ".cache/models/llama-3-8b-instruct-fp8 ")


def test_the_h100_summary_names_fp8_weights_as_the_top_lever_with_its_measured_effect(h100):
    """Every fp8 trial served 3,341-6,269 tok/s (5,480+ with max_num_seqs >= 64), every bf16 one
    4,231-4,298: the old importances (feasible trials only) gave quantization ~0."""
    d = build_report_data(h100.study_name, h100.trials, h100.user_attrs)
    top = d.summary.levers.throughput[0]
    assert (top.better, top.worse, top.n, top.other_n) == ("quantization=fp8", "quantization=none", 8, 4)
    assert top.value == pytest.approx(5850, abs=1) and top.other_value == pytest.approx(4279.3, abs=1)
    assert top.text().startswith("quantization=fp8: median 5,850 output tok/s against 4,279 with quantization=none")
    page = render_page(d, {}, yaml_text=best_yaml(d))
    assert "What drove the result (12 measured trials)" in page and "quantization=fp8: median 5,850" in page
    # over the feasible trials alone (the old choice) bf16 has one trial: quantization cannot even be compared
    feasible = [i for i in d.trials if i.status == Status.FEASIBLE]
    assert "quantization" not in {x.param for x in main_levers([i.params for i in feasible],
                                                               [i.throughput for i in feasible],
                                                               [True] * len(feasible)).throughput}
    thr, feas = d.importances
    assert thr.n_trials == feas.n_trials == 12 and thr.values["quantization"] > 0.05
