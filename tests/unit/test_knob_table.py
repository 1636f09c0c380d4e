"""The knob table (optimizer/settings/knobs.py) is the one place a knob is declared: the search schema, its
checks, the space, the draw, the command line, the memory estimate's inputs and the resume
fingerprint are derived from it. The new knob async_scheduling went in through the table alone."""

from __future__ import annotations

import dataclasses
import shutil
import sqlite3
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import optuna
import pytest

from optimizer.core.errors import ConfigError, StudyError
from optimizer.settings.knobs import (KNOBS, NUMERICS_PARAMS, EngineParams, Kind, knob, knobs_of, memory_inputs,
                                      predates_ok)
from optimizer.model.resolve import planned_target
from optimizer.settings.search_config import SearchConfig, search_config_type, validate_search
from optimizer.space.engine_args import render
from optimizer.space.memory import estimate_memory
from optimizer.space.search_space import build_space, check, suggest
from optimizer.study.storage import fingerprint, fingerprint_diff, open_study

ROOT = Path(__file__).resolve().parents[2]
GPU = ("hardware=h100", "model=llama-3-8b-instruct", "model.load_format=dummy")


@dataclass(frozen=True)
class WithLookahead(EngineParams):
    """EngineParams plus one knob, declared the way a contributor adds one."""

    lookahead_slots: Optional[int] = knob(Kind.choice, (None,), item=Optional[int], flag="num_lookahead_slots")


def _with_lookahead(cfg, choices):
    fields = {f.name: getattr(cfg.search, f.name) for f in dataclasses.fields(cfg.search)}
    search = search_config_type(WithLookahead)(**fields, lookahead_slots=choices)
    return dataclasses.replace(cfg, search=search)


def _argv(params, cfg):
    return render(params, planned_target(cfg.model, Path("."), params.quantization), host="127.0.0.1", port=8000).argv


def test_a_knob_added_to_the_table_is_in_the_space_the_draw_the_command_line_and_the_fingerprint(compose):
    cfg = _with_lookahead(compose(), [0, 4])
    validate_search(cfg.search, WithLookahead)
    space = build_space(cfg, WithLookahead)
    assert space.lookahead_slots == (0, 4)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    drawn = set()
    for _ in range(12):
        trial = study.ask()
        p = suggest(trial, space)
        assert isinstance(p, WithLookahead) and trial.params["lookahead_slots"] == p.lookahead_slots
        argv = _argv(p, cfg)
        assert argv[argv.index("--num-lookahead-slots") + 1] == str(p.lookahead_slots)
        drawn.add(p.lookahead_slots)
    assert drawn == {0, 4}
    assert fingerprint(cfg, space)["space"]["lookahead_slots"] == [0, 4]
    with pytest.raises(ConfigError, match=r"search.lookahead_slots=\[\]: the choice list is empty"):
        validate_search(dataclasses.replace(cfg.search, lookahead_slots=[]), WithLookahead)


def test_a_study_that_predates_a_knob_resumes_only_while_the_knob_is_at_its_default(compose):
    # the knob's default leaves vLLM's default: the old study ran exactly that
    assert predates_ok("lookahead_slots", [None], "cpu", WithLookahead)
    assert not predates_ok("lookahead_slots", [0, 4], "cpu", WithLookahead)
    assert not predates_ok("lookahead_slots", [None], "cpu")  # not a knob of EngineParams
    cfg = compose()
    now = fingerprint(cfg, build_space(cfg))
    old = json.loads(json.dumps(now))
    del old["space"]["async_scheduling"]
    assert fingerprint_diff(old, now) == []
    gpu = compose(*GPU, "search.speculative=[off]")
    now = fingerprint(gpu, build_space(gpu))  # the GPU space searches async_scheduling: [false, true]
    old = json.loads(json.dumps(now))
    del old["space"]["async_scheduling"]
    [diff] = fingerprint_diff(old, now)
    assert diff.startswith("space.async_scheduling (new: [False, True]") and "search.async_scheduling=[null]" in diff


def test_the_committed_cpu_study_predates_async_scheduling_and_still_resumes(compose, tmp_path):
    db = tmp_path / "cpu-vllm-versions.db"
    shutil.copy(ROOT / "docs/results/cpu-vllm-versions/cpu-vllm-versions.db", db)
    row = sqlite3.connect(db).execute("select value_json from study_user_attributes where key='fingerprint'").fetchone()
    assert "async_scheduling" not in json.loads(row[0])["space"]
    before = optuna.load_study(study_name="cpu-vllm-versions", storage=f"sqlite:///{db}")
    values = [t.value for t in before.trials]
    cfg = compose("study.name=cpu-vllm-versions", f"study.storage=sqlite:///{db}", "study.n_trials=3",
                  "study.confirm.top_k=1", "study.confirm.repeats=2")
    study = open_study(cfg, build_space(cfg), optuna.samplers.RandomSampler())
    assert [t.value for t in study.trials] == values and len(values) >= 3
    gpu_only = compose("study.name=cpu-vllm-versions", f"study.storage=sqlite:///{db}", "study.n_trials=3",
                       "study.confirm.top_k=1", "study.confirm.repeats=2", "search.async_scheduling=[false,true]")
    with pytest.raises(StudyError, match="space.async_scheduling"):  # a changed space is still refused
        open_study(gpu_only, build_space(gpu_only), optuna.samplers.RandomSampler())


def test_async_scheduling_renders_as_vllm_takes_it_and_is_searched_on_gpus_only(compose):
    cpu, gpu = compose(), compose(*GPU)
    assert build_space(cpu).async_scheduling == (None,) and build_space(gpu).async_scheduling == (False, True)
    assert not any("async-scheduling" in a for a in _argv(EngineParams(async_scheduling=None), gpu))
    assert "--async-scheduling" in _argv(EngineParams(async_scheduling=True), gpu)
    assert "--no-async-scheduling" in _argv(EngineParams(async_scheduling=False), gpu)
    # vLLM refuses it explicitly on with the n-gram proposer; check() says so before a start
    broken, _ = check(EngineParams(async_scheduling=True, speculative="ngram", num_speculative_tokens=3), gpu)
    assert any("async_scheduling=True with speculative=ngram" in b for b in broken)
    assert check(EngineParams(async_scheduling=False, speculative="ngram", num_speculative_tokens=3), gpu)[0] == []
    # so the space never draws it with the n-gram proposer: vLLM's default (off there) is left alone
    space = build_space(compose("hardware=h100", "model=llama-3-8b-instruct", "search.quantization=[none]"))
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=3))
    seen = set()
    for _ in range(40):
        p = suggest(study.ask(), space)
        seen.add((str(p.speculative), p.async_scheduling))
        assert check(p, gpu)[0] == [] or "async_scheduling" not in " ".join(check(p, gpu)[0])
    assert seen == {("off", False), ("off", True), ("ngram", None)}


def test_a_bad_async_scheduling_value_is_refused_naming_the_key(compose):
    with pytest.raises(ConfigError, match=r"search.async_scheduling=\[maybe\].*not a valid bool"):
        compose("search.async_scheduling=[maybe]")
    bad = dataclasses.replace(compose().search, async_scheduling=[True, "yes"])
    with pytest.raises(ConfigError, match=r"search.async_scheduling=\[True, 'yes'\]: 'yes' is not a choice; "
                                          r"valid choices: null, true, false \(null: vLLM's default\)"):
        validate_search(bad)


def test_the_schema_and_the_numerics_list_come_from_the_table():
    names = [k.name for k in KNOBS]
    assert "async_scheduling" in names and set(names) <= {f.name for f in dataclasses.fields(SearchConfig)}
    assert SearchConfig().async_scheduling == [None] and SearchConfig().max_num_seqs.low == 4
    assert SearchConfig().max_num_seqs is not SearchConfig().max_num_seqs  # a fresh default each
    assert set(NUMERICS_PARAMS) >= {"quantization", "dtype", "kv_cache_dtype", "speculative"}
    assert not {"async_scheduling", "max_num_seqs", "enable_prefix_caching"} & set(NUMERICS_PARAMS)
    assert [k.name for k in knobs_of(WithLookahead)] == names + ["lookahead_slots"]


@dataclass(frozen=True)
class KvDtypeNotMemory(EngineParams):
    """EngineParams with kv_cache_dtype's table entry saying the memory estimate does not read it."""

    kv_cache_dtype: Optional[str] = knob(Kind.choice, ("auto",), item=str, flag="kv_cache_dtype",
                                         neutral=(None, "auto"))


def test_the_memory_estimate_reads_only_the_knobs_marked_memory(compose):
    gpu = compose(*GPU)
    p = EngineParams(max_num_seqs=64, kv_cache_dtype="fp8", async_scheduling=False, enable_prefix_caching=False)
    assert memory_inputs(p) == EngineParams(max_num_seqs=64, kv_cache_dtype="fp8")
    fp8, auto = (estimate_memory(EngineParams(kv_cache_dtype=d), gpu.model, gpu.hardware) for d in ("fp8", "auto"))
    assert fp8.kv_tokens > 1.9 * auto.kv_tokens  # the table marks kv_cache_dtype memory: the estimate reads it
    unread = estimate_memory(KvDtypeNotMemory(kv_cache_dtype="fp8"), gpu.model, gpu.hardware)
    assert unread == estimate_memory(KvDtypeNotMemory(), gpu.model, gpu.hardware) == auto


@pytest.mark.parametrize("preset", sorted(p.stem for p in (ROOT / "conf/search").glob("*.yaml")))
def test_a_search_preset_sets_only_what_differs_from_the_tables_defaults(preset):
    from omegaconf import OmegaConf

    raw = OmegaConf.to_container(OmegaConf.load(ROOT / f"conf/search/{preset}.yaml"))
    default = OmegaConf.to_container(OmegaConf.structured(SearchConfig()))
    for key, value in raw.items():
        if key == "defaults":
            continue
        merged = OmegaConf.to_container(OmegaConf.merge(OmegaConf.create({key: default[key]}), {key: value}))
        assert merged[key] != default[key], f"conf/search/{preset}.yaml repeats the default of search.{key}"


def test_the_composed_config_is_frozen_and_changed_by_a_copy(compose):
    cfg = compose()
    for section, key in ((cfg, "load"), (cfg.search, "max_num_seqs"), (cfg.search.max_num_seqs, "low"),
                         (cfg.load.capacity, "start"), (cfg.study.confirm, "top_k")):
        with pytest.raises(dataclasses.FrozenInstanceError, match="dataclasses.replace"):
            setattr(section, key, getattr(section, key))
    changed = dataclasses.replace(cfg, search=dataclasses.replace(cfg.search, async_scheduling=[False, True]))
    assert changed.search.async_scheduling == [False, True] and cfg.search.async_scheduling == [None]
    with pytest.raises(dataclasses.FrozenInstanceError):
        changed.search.version = 2
