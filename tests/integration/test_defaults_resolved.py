"""vLLM's defaults for the baseline's command, resolved by the installed vLLM (its server parser and
``EngineArgs.create_engine_config``, in a subprocess of its interpreter): no server starts, about
10-40 s of importing vLLM."""

from __future__ import annotations

import importlib.util
import sys

import pytest

from optimizer.server.defaults import resolve_defaults
from optimizer.space.engine_args import EngineParams, ModelTarget, render

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="vLLM is not installed")]


def test_the_installed_vllm_resolves_the_baselines_defaults_for_this_model(tiny_model):
    argv = render(EngineParams(kv_cache_gib=2.0), ModelTarget(str(tiny_model)), host="127.0.0.1", port=8000).argv
    d = resolve_defaults(sys.executable, argv)
    assert d is not None, "the installed vLLM could not resolve its defaults"
    # the flag the baseline sets is kept; the rest is vLLM's choice for this model on this platform
    assert d["kv_cache_memory_bytes"] == 2 * 1024**3
    assert d["max_num_batched_tokens"] >= d["max_num_seqs"] > 0
    assert isinstance(d["enable_chunked_prefill"], bool) and isinstance(d["enable_prefix_caching"], bool)
    assert d["max_model_len"] > 0 and d["tensor_parallel_size"] == 1


def test_an_interpreter_without_vllm_resolves_nothing(tmp_path):
    assert resolve_defaults("/nonexistent/python", ["--model", str(tmp_path)]) is None
