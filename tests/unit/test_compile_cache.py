"""Compile-cache hits: shape parameters drawn on grids that repeat, one host-wide cache for every
study, and the start log's account of whether a start loaded its compiled model.

The log lines are vLLM 0.32's CPU build's, copied from real server logs (runs of this repository:
a cold start that compiles and saves, a start whose saved artifact vLLM cannot load back, and
the load lines a hit writes)."""

from __future__ import annotations

import math

import optuna
import pytest

from optimizer.core.errors import ConfigError
from optimizer.server.environment import compile_cache_root, server_env
from optimizer.server.startlog import START_PHASES, StartLog, parse_start_log
from optimizer.settings.config import IntRange, ServerConfig
from optimizer.space.grid import grid_values
from optimizer.space.search_space import build_space, suggest

KEY = "fb9b2fcb6088a8aed696bc19f2caf29f4a7350fdf777089c90ff44ba16eca487"
ROOT = "/cache/vllm/torch_compile_cache/torch_aot_compile"
COLD_CPU = f"""\
(Worker pid=3704) INFO 11-28 13:15:37 [cpu_model_runner.py:68] Starting to load model /m/tiny...
(Worker pid=3704) INFO 11-28 13:15:37 [default_loader.py:501] Loading weights took 0.03 seconds
(Worker pid=3704) INFO 11-28 13:15:39 [cpu_model_runner.py:87] Warming up model for the compilation...
(EngineCore pid=3546) INFO 11-28 13:16:40 [shm_broadcast.py:871] No available shared memory broadcast block found in 60 seconds.
(Worker pid=3704) INFO 11-28 13:17:10 [decorators.py:743] [backbone] saved AOT compiled function to {ROOT}/{KEY}/rank_0_0/model
(Worker pid=3704) INFO 11-28 13:17:12 [cpu_model_runner.py:91] Warming up done.
(EngineCore pid=3546) INFO 11-28 13:17:15 [core.py:402] init engine (profile, create kv cache, warmup model) took 96.50 s
"""
RELOAD_FAILED = f"""\
(Worker pid=5199) INFO 11-28 13:18:24 [cpu_model_runner.py:87] Warming up model for the compilation...
(Worker pid=5199) WARNING 11-28 13:18:28 [decorators.py:333] [backbone] Compiling model again due to a load failure from {ROOT}/{KEY}/rank_0_0/model, reason: 'function' object has no attribute 'finalize_loading'
(Worker pid=5199) INFO 11-28 13:18:46 [decorators.py:743] [backbone] saved AOT compiled function to {ROOT}/{KEY}/rank_0_0/model
(Worker pid=5199) INFO 11-28 13:18:47 [cpu_model_runner.py:91] Warming up done.
(EngineCore pid=5062) INFO 11-28 13:18:48 [core.py:402] init engine (profile, create kv cache, warmup model) took 23.39 s
"""
HIT = f"""\
(Worker pid=7) INFO 11-28 13:30:01 [cpu_model_runner.py:87] Warming up model for the compilation...
(Worker pid=7) INFO 11-28 13:30:03 [decorators.py:321] [backbone] Directly load AOT compilation from path {ROOT}/{KEY}/rank_0_0/model
(Worker pid=7) INFO 11-28 13:30:04 [cpu_model_runner.py:91] Warming up done.
(EngineCore pid=6) INFO 11-28 13:30:05 [core.py:402] init engine (profile, create kv cache, warmup model) took 4.20 s
"""


def test_a_cold_cpu_start_compiles_under_its_key_and_its_warm_up_span_is_the_compile():
    log = parse_start_log(COLD_CPU)
    assert log.compile_cache_hit is False and log.compile_key == KEY
    assert log.compile_s == 93.0 and log.model_load_s == 0.03 and log.engine_init_s == 96.5


def test_a_load_line_is_a_hit_and_so_is_an_artifact_of_the_key_vllm_cannot_load_back():
    """vLLM 0.32's CPU build cannot load its AOT artifact back; it compiles again from inductor's
    cache of the same key: the key was in the cache (its compile took 23 s instead of 93 s)."""
    again = parse_start_log(RELOAD_FAILED)
    assert again.compile_cache_hit is True and again.compile_key == KEY and again.compile_s == 23.0
    hit = parse_start_log(HIT)
    assert hit.compile_cache_hit is True and hit.compile_key == KEY and hit.compile_s == 3.0


def test_an_eager_start_says_nothing_about_the_cache():
    log = parse_start_log("(EngineCore pid=1) INFO 11-28 13:30:05 [core.py:402] init engine (profile, create kv "
                          "cache, warmup model) took 4.20 s\n")
    assert log.compile_cache_hit is None and log.compile_key == "" and math.isnan(log.compile_s)


def test_a_start_splits_into_its_phases_and_they_add_up_to_it():
    got = parse_start_log(COLD_CPU).phases(120.0)
    assert list(got) == [label for label, _ in START_PHASES]
    assert got["torch.compile"] == 93.0 and got["engine init rest"] == pytest.approx(3.5)
    assert got["process start + imports"] == pytest.approx(120 - 96.5 - 0.03)
    assert sum(got.values()) == pytest.approx(120.0)
    squeezed = parse_start_log(COLD_CPU).phases(50.0)  # the log accounts for more than the trial timed
    assert sum(squeezed.values()) == pytest.approx(50.0) and min(squeezed.values()) >= 0
    assert StartLog(compile_s=3.0).phases(40.0) is None  # no engine init time: nothing to split on


def test_the_key_and_the_hit_survive_the_trial_record():
    from optimizer.record import Setup, TrialRecord

    rec = TrialRecord(Setup("h", "m", "w", {}), start_log=parse_start_log(HIT))
    back = TrialRecord.from_attrs(rec.to_attrs()).start_log
    assert back == rec.start_log and back.compile_key == KEY


@pytest.mark.parametrize("r, include, want", [
    (IntRange(4, 256, grid="pow2"), (), (4, 8, 16, 32, 64, 128, 256)),
    (IntRange(6, 100, grid="pow2"), (), (6, 8, 16, 32, 64, 100)),
    (IntRange(4, 256, grid="pow2"), (100, 1000, None), (4, 8, 16, 32, 64, 100, 128, 256)),
    (IntRange(4, 256), (), ()),
    (IntRange(64, 64, grid="pow2"), (), ()),
])
def test_a_pow2_grid_holds_its_ends_the_powers_between_and_vllms_default(r, include, want):
    assert grid_values(r, include) == want


@pytest.mark.parametrize("hardware,model,n_seqs,n_tokens", [("cpu", "tiny", 7, 6),
                                                            ("h100", "llama-3-8b-instruct", 7, 5)])
def test_the_shipped_spaces_draw_the_compile_shape_from_a_few_values(compose, hardware, model, n_seqs, n_tokens):
    """Each distinct (max_num_seqs, max_num_batched_tokens, max_model_len) is a compile of its own."""
    space = build_space(compose(f"hardware={hardware}", f"model={model}"))
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seqs, tokens, shapes = set(), set(), set()
    for _ in range(300):
        t = study.ask()
        p = suggest(t, space)
        study.tell(t, 0.0)
        seqs.add(p.max_num_seqs)
        tokens.add(t.params["max_num_batched_tokens"])
        shapes.add((p.max_num_seqs, p.max_num_batched_tokens, p.max_model_len))
    assert len(seqs) == n_seqs and len(tokens) == n_tokens
    assert all(s & (s - 1) == 0 for s in seqs | tokens)  # powers of two
    assert len(shapes) <= n_seqs * n_tokens * len(space.max_model_len)


@pytest.mark.parametrize("overrides, needle", [
    (["search.max_num_seqs.grid=pow3"], "must be pow2"),
    (["search.max_num_batched_tokens.step=256", "search.max_num_batched_tokens.log=false"], "a grid replaces step"),
])
def test_a_bad_grid_is_refused(compose, overrides, needle):
    from optimizer.settings.config import validate

    with pytest.raises(ConfigError, match=needle):
        validate(compose(*overrides))


def test_every_study_on_the_host_shares_one_compile_cache_and_a_setting_moves_it(tmp_path):
    home = {"HOME": str(tmp_path / "home")}
    a = server_env(ServerConfig(cache_dir="/study-a"), home)
    b = server_env(ServerConfig(cache_dir="/study-b"), home)
    assert a["VLLM_CACHE_ROOT"] == b["VLLM_CACHE_ROOT"] == str((tmp_path / "home" / ".cache" / "vllm").resolve())
    assert compile_cache_root(ServerConfig(), home | {"XDG_CACHE_HOME": str(tmp_path / "x")}) == tmp_path / "x" / "vllm"
    assert compile_cache_root(ServerConfig(), home | {"VLLM_CACHE_ROOT": str(tmp_path / "v")}) == tmp_path / "v"
    moved = server_env(ServerConfig(compile_cache_dir=str(tmp_path / "cc")), home)
    assert moved["VLLM_CACHE_ROOT"] == str(tmp_path / "cc") and moved["HF_HUB_OFFLINE"] == "1"


def test_a_cache_root_in_server_env_is_refused_with_the_setting_that_owns_it():
    with pytest.raises(ConfigError, match="server.compile_cache_dir"):
        server_env(ServerConfig(env={"VLLM_CACHE_ROOT": "/x"}), {})
