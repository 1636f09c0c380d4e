"""The report's data step (optimizer.reporting.data) and the files written beside the page.

Studies are built in memory from trials shaped like the study loop's (tests/support/report_fixtures.py);
assertions are on the data tuples, as Optuna's visualization tests do, plus a few on the page text
where the report must say something plainly (no trials, no feasible trial) or escape user text.
"""

from __future__ import annotations

import json
import math

import optuna
import pytest
import yaml
from optuna.trial import TrialState

from optimizer.record import TrialRecord
from optimizer.reporting import best_yaml, trials_frame, write_study_report
from optimizer.reporting import figures as F
from optimizer.reporting.data import (
    PHASES,
    START_LABELS,
    Status,
    build_report_data,
    classify,
    pareto_front,
    trial_info,
)
from optimizer.reporting.html import render_page
from optimizer.server.startlog import StartLog
from tests.support.report_fixtures import SLO_MS, make_study, make_trial, study_config, synthetic_trials

optuna.logging.set_verbosity(optuna.logging.WARNING)

P = {"kv_cache_gib": 2.0, "max_num_seqs": 64, "max_num_batched_tokens": 2048,
     "enable_chunked_prefill": True, "enable_prefix_caching": False}
CFG = study_config()


def _data(trials, cfg=CFG, name="s"):
    return build_report_data(name, trials, {"config": cfg})


def _page(d):
    return render_page(d, {}, yaml_text=best_yaml(d))


@pytest.mark.parametrize("trial, status", [
    (make_trial(0, P, throughput=2000, e2e_center=500), Status.FEASIBLE),
    (make_trial(0, P, throughput=2000, e2e_center=5000), Status.INFEASIBLE),
    (make_trial(0, P, outcome="startup"), Status.FAILED),
    (make_trial(0, P, outcome="ruled_out"), Status.RULED_OUT),
    (make_trial(0, P, outcome="env", state=TrialState.FAIL), Status.FAILED),
    (make_trial(0, P, outcome="env", state=TrialState.RUNNING), Status.RUNNING),
], ids=["feasible", "slo-broken", "could-not-start", "ruled-out", "env-fail", "running"])
def test_each_kind_of_trial_is_classified(trial, status):
    assert classify(trial) == status
    info = trial_info(trial, "e2e")
    assert info.status == status
    assert info.measured == (status in (Status.FEASIBLE, Status.INFEASIBLE))


def test_an_infeasible_trial_says_which_limit_it_broke():
    info = trial_info(make_trial(0, P, throughput=2000, e2e_center=5000), "e2e")
    assert "over the SLO" in info.detail and info.failure == ""


def test_missing_and_none_attrs_read_as_nan():
    t = make_trial(0, P, throughput=2000, extra={"error_rate": None, "e2e_p99": None, "srv_kv_usage_peak": None})
    rec = TrialRecord.from_trial(t)
    assert math.isnan(rec.measurement.summary.error_rate) and math.isnan(rec.p99("e2e"))
    odd = TrialRecord.from_attrs(t.user_attrs | {"n_ok": "abc", "ttft_p99": True, "itl_p99": "x"})
    assert odd.measurement.summary.n_ok == 0 and math.isnan(odd.p99("ttft")) and math.isnan(odd.p99("itl"))
    d = _data([t])
    assert d.telemetry == [] and not d.trials[0].measured
    assert d.trials[0].status == Status.FEASIBLE  # the constraints decide, not the missing P99


def test_best_is_compared_with_the_baseline():
    base = make_trial(0, P, kind="baseline", throughput=1000, e2e_center=500)
    best = make_trial(1, P | {"max_num_seqs": 128}, throughput=1500, e2e_center=600)
    slow = make_trial(2, P | {"max_num_seqs": 256}, throughput=3000, e2e_center=5000)  # faster, but breaks the SLO
    s = _data([base, best, slow]).summary
    assert s.best.number == 1 and s.baseline.number == 0
    assert s.gain == pytest.approx(0.5)
    assert s.margin == pytest.approx(1 - TrialRecord.from_trial(best).p99("e2e") / SLO_MS)
    assert s.counts == {"trials": 3, "feasible": 2, "infeasible": 1, "failed": 0, "ruled out": 0, "running": 0}
    assert s.serve_config == json.loads(best.user_attrs["serve_config"])
    assert s.trial_command == best.user_attrs["server_command"]
    assert not any("SLO" in n for n in s.notes)


def test_an_infeasible_baseline_gives_no_gain_and_a_note():
    base = make_trial(0, P, kind="baseline", throughput=1000, e2e_center=5000)
    best = make_trial(1, P, throughput=1500, e2e_center=600)
    s = _data([base, best]).summary
    assert s.best.number == 1 and math.isnan(s.gain)
    assert any("baseline" in n and "did not meet the SLO" in n for n in s.notes)


def test_a_study_without_feasible_trials_recommends_nothing(tmp_path):
    trials = synthetic_trials(feasible=False)
    d = _data(trials)
    assert d.summary.best is None and d.summary.counts["feasible"] == 0
    assert any(n.startswith("No trial met the SLO") for n in d.summary.notes)
    thr, feas = d.importances  # measured trials still say what drives throughput; nothing separates feasibility
    assert thr.values and not feas.values and "0 of" in feas.reason
    assert best_yaml(d) == ""
    assert "No trial met the SLO" in _page(d)
    out = tmp_path / "r"
    out.mkdir()
    (out / "best.yaml").write_text("stale: true\n")
    write_study_report(make_study(trials), out)
    assert not (out / "best.yaml").exists()


def test_an_empty_study_renders_and_says_so(tmp_path):
    d = _data([])
    assert d.trials == [] and d.summary.best is None and d.summary.baseline is None
    assert d.cdfs == [] and d.telemetry == [] and d.phases == [] and d.pareto == [] and d.total_s == 0
    assert "has no trials yet" in d.summary.notes[0]
    for make in (F.scatter_figure, F.importance_figure, F.cdf_figure, F.telemetry_figure, F.timeline_figure,
                 F.phases_figure):
        assert make(d) is None
    page = write_study_report(make_study([]), tmp_path).read_text()
    assert "has no trials yet" in page and "Plotly.newPlot" not in page
    assert trials_frame([]).empty


def test_a_single_trial_renders_and_says_so(tmp_path):
    d = _data(synthetic_trials(n=1))
    assert any("Only one trial" in n for n in d.summary.notes)
    assert d.summary.best.number == 0 == d.summary.baseline.number and d.summary.gain == pytest.approx(0.0)
    assert [c.number for c in d.cdfs] == [0]  # baseline and best are one trial: one curve
    page = write_study_report(make_study(synthetic_trials(n=1)), tmp_path).read_text()
    assert "no tuned config beat it" in page


def test_failed_trials_are_counted_and_explained():
    d = _data(synthetic_trials())
    c = d.summary.counts
    assert (c["failed"], c["ruled out"], c["trials"]) == (2, 1, 14)
    failed = {i.number: i for i in d.trials if i.status in (Status.FAILED, Status.RULED_OUT)}
    assert failed[3].failure == "ruled_out" and failed[5].failure == "out_of_memory" and failed[7].failure == "start_timeout"
    assert all(not i.measured for i in failed.values())
    assert any("2 trial(s) failed" in n for n in d.summary.notes)


def test_pareto_front_keeps_trials_no_other_beats_on_both_axes():
    trials = [make_trial(i, P, throughput=thr, e2e_center=lat, seed=1)
              for i, (thr, lat) in enumerate([(1000, 300), (1500, 600), (1200, 900), (2500, 2000), (900, 250)])]
    infos = [trial_info(t, "e2e") for t in trials]
    front = pareto_front(infos)
    by_p99 = sorted(infos, key=lambda i: i.p99)
    assert front[0] == by_p99[0].number and 2 not in front
    assert [infos[n].p99 for n in front] == sorted(infos[n].p99 for n in front)
    assert [infos[n].throughput for n in front] == sorted(infos[n].throughput for n in front)


def test_importances_use_every_measured_trial_for_throughput_and_for_feasibility():
    d = _data(synthetic_trials(n=20))
    thr, feas = d.importances
    measured = sum(1 for i in d.trials if i.measured)
    assert thr.n_trials == measured > d.summary.counts["feasible"] and thr.values and not thr.reason
    assert feas.target == "feasible vs infeasible" and feas.values and feas.n_trials == measured
    assert set(thr.values) <= set(P) and sum(thr.values.values()) == pytest.approx(1.0)


def test_too_few_measured_trials_give_a_reason_not_importances():
    thr, feas = _data(synthetic_trials(n=3, failures=False)).importances
    assert not thr.values and "at least" in thr.reason and not feas.values


def test_latency_cdfs_and_timelines_cover_baseline_best_and_a_few_others():
    d = _data(synthetic_trials())
    nums = [c.number for c in d.cdfs]
    assert nums[:2] == [d.summary.baseline.number, d.summary.best.number] and len(set(nums)) == len(nums) <= 5
    for c in d.cdfs:
        for metric in ("ttft", "itl", "e2e"):
            xs, ys = c.curves[metric]
            assert xs == sorted(xs) and ys == sorted(ys) and ys[-1] == pytest.approx(1.0) and len(xs) <= 400
    assert [t.number for t in d.timelines] == nums
    assert max(d.timelines[0].gauges["kv"]) <= 100


def test_phases_add_up_to_the_wall_time():
    d = _data(synthetic_trials())
    for row in d.phases:
        assert set(row.seconds) == {label for _, label in PHASES} | set(START_LABELS) | {"other"}
        assert sum(row.seconds.values()) == pytest.approx(row.wall_s, abs=0.01)
    assert d.total_s == pytest.approx(sum(r.wall_s for r in d.phases)) and d.span_s >= d.total_s


def _cached_study():
    """Four measured starts of two compile keys (one miss, then a hit each), one with no log."""
    logs = [StartLog(model_load_s=0.5, compile_s=20.0, engine_init_s=30.0, compile_cache_hit=False, compile_key="a1"),
            StartLog(model_load_s=0.5, compile_s=4.0, engine_init_s=9.0, compile_cache_hit=True, compile_key="a1"),
            StartLog(model_load_s=0.5, compile_s=25.0, graph_capture_s=2.0, engine_init_s=35.0,
                     compile_cache_hit=False, compile_key="b2"),
            StartLog(model_load_s=0.5, compile_s=5.0, engine_init_s=9.0, compile_cache_hit=True, compile_key="b2"),
            None]
    return [make_trial(n, P, throughput=2000, start_log=log) for n, log in enumerate(logs)]


def test_each_start_is_split_into_the_phases_of_its_log():
    d = _data(_cached_study())
    for row in d.phases:
        assert sum(row.seconds.values()) == pytest.approx(row.wall_s, abs=0.01)
    first, _, third, _, no_log = d.phases
    start = first.seconds
    assert start["start: torch.compile"] == 20 and start["start: model load"] == 0.5
    assert start["start: engine init rest"] == pytest.approx(10) and start["server start"] == 0
    t = _cached_study()[0]
    assert sum(start[k] for k in START_LABELS) == pytest.approx(TrialRecord.from_trial(t).timings.start_s)
    assert third.seconds["start: CUDA graphs"] == 2 and third.seconds["start: engine init rest"] == pytest.approx(8)
    assert no_log.seconds["server start"] > 0 and all(no_log.seconds[k] == 0 for k in START_LABELS)
    assert [p.compile_cache_hit for p in d.phases] == [False, True, False, True, None]


def test_the_study_compile_cache_hit_rate_counts_starts_whose_log_said():
    c = _data(_cached_study()).compile_cache
    assert (c.hits, c.misses, c.unknown, c.keys) == (2, 2, 1, 2) and c.rate == 0.5
    assert math.isnan(_data([make_trial(0, P, throughput=2000)]).compile_cache.rate)
    title = F.phases_figure(_data(_cached_study())).layout.title.text
    assert "2 of 4 server starts loaded the compiled model (50% hit rate)" in title and "2 distinct" in title


def test_user_text_is_escaped_everywhere():
    evil = '<script>alert(1)</script><img src=x onerror="alert(2)">'
    t = make_trial(0, P, outcome="startup", extra={"failure": evil, "failure_detail": evil,
                                                 "server_command": "python -m x --a '<b>'"})
    ok = make_trial(1, P, throughput=2000, e2e_center=500,
                    extra={"server_command": "python -m vllm --served-model-name '<evil>' & rm"})
    cfg = study_config() | {"model": {"name": "</title><script>x()</script>", "path": "<p>"}}
    d = _data([t, ok], cfg, name='<b onmouseover="x()">name</b>')
    page = _page(d)
    assert "<script>alert" not in page and "<img src=x" not in page and "<b onmouseover" not in page
    assert "</title><script>" not in page and "'<evil>'" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page and "&lt;b onmouseover=" in page
    # a stored failure this version does not know reads as "other", its name kept in the (escaped) words
    assert d.trials[0].failure == "other" and d.trials[0].detail.startswith(evil)
    hover = json.dumps(F.scatter_figure(d).to_plotly_json()["data"])
    assert "<script" not in hover and "<evil>" not in hover


def test_best_yaml_is_what_vllm_config_reads():
    serve = {"model": "/m", "served_model_name": "tiny", "max_num_seqs": 64, "enable_chunked_prefill": True,
             "enable_prefix_caching": False, "speculative_config": {"method": "ngram", "num_speculative_tokens": 3}}
    t = make_trial(0, P, throughput=2000, e2e_center=500, extra={"serve_config": json.dumps(serve)})
    text = best_yaml(_data([t], dict(CFG, model=dict(CFG["model"], path="/m"))))
    assert text.startswith("# vLLM server config found by study s: trial 0")
    assert yaml.safe_load(text) == {"model": "/m", "served-model-name": "tiny", "max-num-seqs": 64,
                                    "enable-chunked-prefill": True, "no-enable-prefix-caching": True,
                                    "speculative-config": {"method": "ngram", "num_speculative_tokens": 3}}


def test_write_study_report_writes_page_yaml_and_csv(tmp_path):
    trials = synthetic_trials()
    index = write_study_report(make_study(trials, name="w"), tmp_path / "w")
    assert index == tmp_path / "w" / "index.html"
    page = index.read_text()
    assert page.count("Plotly.newPlot") == 9 and page.count("plotly.js v") == 1
    assert yaml.safe_load((tmp_path / "w" / "best.yaml").read_text())["model"] == "tiny"  # the config names no path
    import pandas as pd

    df = pd.read_csv(tmp_path / "w" / "trials.csv")
    assert list(df["number"]) == list(range(len(trials)))
    assert {"status", "value", "params_max_num_seqs", "constraint_slo", "failure", "e2e_p99"} <= set(df.columns)
    assert "latency_samples" not in df.columns and "kv_timeline" not in df.columns
    assert set(df["status"]) == {"feasible", "infeasible", "failed", "ruled out"}


def test_the_host_and_gpus_that_ran_a_trial_are_in_the_table_hover_and_csv(tmp_path):
    a = make_trial(0, P, throughput=2000, e2e_center=500, extra={"worker": "gpu-host-3/w1", "gpus": "2,3"})
    b = make_trial(1, P, outcome="env", state=TrialState.FAIL, extra={"worker": "gpu-host-7/w0", "gpus": "0"})
    d = _data([a, b])
    assert [(i.worker, i.gpus) for i in d.trials] == [("gpu-host-3/w1", "2,3"), ("gpu-host-7/w0", "0")]
    page = _page(d)
    assert "host / GPUs" in page and "gpu-host-3/w1" in page and "GPU 2,3" in page
    hover = json.dumps(F.scatter_figure(d).to_plotly_json()["data"])
    assert "ran on gpu-host-3/w1, GPU 2,3" in hover
    write_study_report(make_study([a, b], name="hosts"), tmp_path / "hosts")
    import pandas as pd

    df = pd.read_csv(tmp_path / "hosts" / "trials.csv")
    assert list(df["worker"]) == ["gpu-host-3/w1", "gpu-host-7/w0"]


def test_trials_from_before_parallel_workers_show_no_host():
    t = make_trial(0, P, throughput=2000, e2e_center=500)
    t.user_attrs.pop("worker")
    info = trial_info(t, "e2e")
    assert info.worker == "" and info.gpus == ""
    assert "ran on" not in json.dumps(F.scatter_figure(_data([t])).to_plotly_json()["data"])


def test_a_study_whose_client_waited_for_a_cpu_says_so_and_by_how_much():
    quiet = [make_trial(0, P, kind="baseline", throughput=1500), make_trial(1, P, throughput=2000),
             make_trial(2, P, throughput=2100)]
    assert not any("waited for a CPU" in n for n in _data(quiet).summary.notes)  # not measured: no note
    waits = {0: 0.05, 1: 0.62, 2: 0.31}
    starved = [make_trial(t.number, P, kind=t.user_attrs.get("kind", ""), throughput=t.value,
                          extra={"client_wait_s": 9.9, "client_wait_share": waits[t.number]}) for t in quiet]
    note = next(n for n in _data(starved).summary.notes if "waited for a CPU" in n)
    assert "in 2 of 3 trial(s), up to 62% of a measured run (trial 1)" in note  # above load.client_wait_warn=0.1
    cfg = {**CFG, "load": {**CFG["load"], "client_wait_warn": 0.5}}
    assert "in 1 of 3 trial(s)" in next(n for n in _data(starved, cfg).summary.notes if "waited for a CPU" in n)
