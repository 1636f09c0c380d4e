"""Input a user typed is used or refused, never silently ignored (issue 16, item 7): every
"typed but ignored" rule, each with a case where the key is ignored (refused, naming both keys)
and one where it is used (accepted)."""

from __future__ import annotations

import pytest

from optimizer.commands.input_checks import IGNORED_WHEN, ensure_writable_dirs, refuse_ignored, typed_keys
from optimizer.core.errors import ConfigError

GPU = ("hardware=h100", "model=llama-3-8b-instruct", "model.load_format=dummy", "model.generate=config")

# key -> (overrides where it is ignored, the deciding key the message names, overrides where it is used)
CASES = {
    "model.path": (("model.path=/nonexistent/model",), "model.generate",
                   ("model.generate=", "model.path=/nonexistent/model")),
    "load.request_rate": (("load.request_rate=3",), "load.mode", ("load.mode=rate", "load.request_rate=3")),
    "load.arrival": (("load.arrival=constant",), "load.mode", ("load.mode=rate", "load.arrival=constant")),
    "load.max_inflight": (("load.max_inflight=4",), "load.mode", ("load.mode=rate", "load.max_inflight=4")),
    "load.num_requests": (("load.duration_s=30", "load.num_requests=400"), "load.duration_s",
                          ("load.num_requests=400",)),
    "load.p99_sizing": (("load.duration_s=30", "load.p99_sizing=auto"), "load.duration_s",
                        ("load.p99_sizing=auto",)),
    "slo.auto_factor": (("slo.p99_ms=1500", "slo.auto_factor=3"), "slo.p99_ms",
                        ("slo.p99_ms=auto", "slo.auto_factor=3")),
    "search.gpu_memory_utilization": (("search.gpu_memory_utilization.low=0.9",), "hardware",
                                      (*GPU, "search.gpu_memory_utilization.low=0.9")),
    "search.kv_cache_gib": ((*GPU, "search.kv_cache_gib.high=2"), "hardware", ("search.kv_cache_gib.high=2",)),
    "hardware.cpu_kvcache_gib": ((*GPU, "hardware.cpu_kvcache_gib=3"), "hardware", ("hardware.cpu_kvcache_gib=3",)),
    "search.num_speculative_tokens": ((*GPU, "search.speculative=[off]", "search.num_speculative_tokens.high=3"),
                                      "search.speculative", (*GPU, "search.num_speculative_tokens.high=3")),
    "search.ngram_lookup_max": ((*GPU, "search.speculative=[off]", "search.ngram_lookup_max.high=3"),
                                "search.speculative", (*GPU, "search.ngram_lookup_max.high=3")),
    "search.draft_model": ((*GPU, "search.draft_model=/d"), "search.speculative",
                           (*GPU, "search.speculative=[off,draft]", "search.draft_model=/d")),
    "search.n_startup_trials": (("search.sampler=random", "search.n_startup_trials=2"), "search.sampler",
                                ("search.n_startup_trials=2",)),
    "workload.num_prefixes": (("workload.num_prefixes=3",), "workload.shared_prefix_tokens",
                              ("workload.shared_prefix_tokens=64", "workload.num_prefixes=3")),
    "workload.prompt_tokens": (("workload=jsonl-prompts", "workload.prompt_tokens=99"), "workload.dataset",
                               ("workload.prompt_tokens=99",)),
    "workload.prompt_tokens_spread": (("workload=jsonl-prompts", "workload.prompt_tokens_spread=0.1"),
                                      "workload.dataset", ("workload.prompt_tokens_spread=0.1",)),
    "workload.shared_prefix_tokens": (("workload=jsonl-prompts", "workload.shared_prefix_tokens=8"),
                                      "workload.dataset", ("workload.shared_prefix_tokens=8",)),
}


def test_every_rule_has_a_case():
    assert sorted(r.key for r in IGNORED_WHEN) == sorted(CASES)


@pytest.mark.parametrize("key", sorted(CASES))
def test_a_typed_key_that_would_be_ignored_is_refused_naming_both_keys(compose, key):
    ignored, deciding, _ = CASES[key]
    with pytest.raises(ConfigError) as e:
        refuse_ignored(compose(*ignored), ignored)
    msg = str(e.value)
    assert msg.startswith(f"{key} was set") and f"{deciding}=" in msg and "would be ignored" in msg


@pytest.mark.parametrize("key", sorted(CASES))
def test_the_same_key_where_it_is_used_is_accepted(compose, key):
    used = CASES[key][2]
    refuse_ignored(compose(*used), used)


def test_a_default_the_user_did_not_type_is_not_refused(compose):
    # the CPU demo's own config sets load.request_rate beside load.mode=concurrency
    refuse_ignored(compose(), [])


@pytest.mark.parametrize("override, dropped", [
    ("search.tensor_parallel_size=[1,2]", "[2]"),
    ("search.speculative=[off,ngram]", "['ngram']"),
    ("search.max_model_len=[1024,4096]", "[4096]"),
])
def test_a_typed_search_choice_the_hardware_cannot_run_is_refused(compose, override, dropped):
    with pytest.raises(ConfigError, match=r"cannot run with hardware='cpu'") as e:
        refuse_ignored(compose(override), [override])
    assert dropped in str(e.value) and override.split("=")[0] in str(e.value)


def test_override_keys_are_parsed_with_prefixes():
    assert typed_keys(["+a.b=1", "~c", "model=tiny", "x.y=[1,2]"]) == {"a.b", "c", "model", "x.y"}


@pytest.mark.parametrize("key, value", [
    ("study.storage", "sqlite:////proc/x/study.db"),
    ("study.runs_dir", "/proc/x/runs"),
    ("server.cache_dir", "/proc/x/cache"),
    ("reports_dir", "/proc/x/reports"),
])
def test_a_folder_that_cannot_be_created_is_refused(compose, tmp_path, key, value):
    paths = {"study.storage": f"sqlite:///{tmp_path}/s.db", "study.runs_dir": str(tmp_path / "runs"),
             "server.cache_dir": str(tmp_path / "c"), "reports_dir": str(tmp_path / "r")}
    paths[key] = value
    cfg = compose(*(f"{k}={v}" for k, v in paths.items()))
    with pytest.raises(ConfigError, match=key.replace(".", r"\.") + r".*/proc/x.*cannot be created"):
        ensure_writable_dirs(cfg)


def test_writable_folders_are_created(compose, tmp_path):
    cfg = compose(f"study.storage=sqlite:///{tmp_path}/a/s.db", f"study.runs_dir={tmp_path}/b",
                  f"server.cache_dir={tmp_path}/c", f"reports_dir={tmp_path}/d")
    ensure_writable_dirs(cfg)
    assert all((tmp_path / d).is_dir() for d in "abcd")
