"""The search space per hardware and model: what is offered, what is ruled out, what is refused."""

from __future__ import annotations

import json
import logging

import optuna
import pytest

from optimizer.core.errors import ConfigError
from optimizer.model.resolve import planned_target, target_for
from optimizer.space import capability
from optimizer.space.engine_args import EngineParams, render
from optimizer.space.search_space import baseline_params, build_space, check, memory_friendliest, suggest


def _sample(space, n: int, seed: int = 0):
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    out = []
    for _ in range(n):
        t = study.ask()
        out.append((t, suggest(t, space)))
        study.tell(t, 0.0)
    return out


def test_t4_offers_no_bf16_no_fp8_and_one_gpu(compose):
    space = build_space(compose("hardware=t4", "model=mistral-7b-instruct"))
    assert "bfloat16" not in space.dtype and space.dtype == ("auto",)  # auto runs float16 on a T4
    assert space.kv_cache_dtype == ("auto",)
    assert space.quantization == ("none", "awq", "gptq")
    assert space.tensor_parallel_size == (1,)


def test_h100_offers_fp8_weights_and_fp8_kv_cache(compose):
    space = build_space(compose("hardware=h100", "model=llama-3-8b-instruct"))
    assert "fp8" in space.quantization and "fp8" in space.kv_cache_dtype
    assert space.dtype == ("auto", "float16")  # bfloat16 is what auto runs: kept once


def test_tensor_parallel_sizes_follow_the_gpu_count_and_the_heads(compose):
    cfg = compose("hardware=h100", "hardware.gpu_count=8", "model=llama-3-70b-instruct",
                  "search.tensor_parallel_size=[1,2,3,4,8]")
    assert build_space(cfg).tensor_parallel_size == (1, 2, 4, 8)  # 3 divides neither 64 nor 8 heads


def test_awq_and_gptq_need_a_checkpoint(compose):
    cfg = compose("hardware=h100", "model=llama-3-8b-instruct", "~model.variants.awq", "~model.variants.gptq")
    assert build_space(cfg).quantization == ("none", "fp8")  # fp8 without a variant: online quantization
    broken, _ = check(EngineParams(quantization="awq"), cfg)
    assert any("model.variants.awq" in b for b in broken)


def test_max_model_len_choices_stop_at_the_models(compose):
    cfg = compose("hardware=h100", "model=llama-3-8b-instruct", "search.max_model_len=[4096,8192,16384]")
    assert build_space(cfg).max_model_len == (4096, 8192)
    broken, _ = check(EngineParams(max_model_len=16384), cfg)
    assert any("exceeds the model's 8192" in b for b in broken)


@pytest.mark.parametrize("hardware,model,params,needle", [
    ("t4", "mistral-7b-instruct", EngineParams(dtype="bfloat16", quantization="awq"), "bfloat16 needs"),
    ("a100-80gb", "llama-3-8b-instruct", EngineParams(quantization="fp8"), "fp8 weights"),
    ("a10g", "llama-3-8b-instruct", EngineParams(kv_cache_dtype="fp8"), "fp8 KV cache"),
    ("h100", "llama-3-8b-instruct", EngineParams(max_num_seqs=512, max_num_batched_tokens=256), "< max_num_seqs"),
    ("h100", "llama-3-8b-instruct", EngineParams(enable_chunked_prefill=False, max_num_batched_tokens=2048,
                                                 max_model_len=8192), "chunked prefill off"),
    ("t4", "mistral-7b-instruct", EngineParams(), "KV cache 0 tokens"),  # 13.5 GiB of fp16 weights, 13.6 usable
    ("t4", "mistral-7b-instruct", EngineParams(gpu_memory_utilization=0.8), "do not fit"),
    ("h100", "llama-3-70b-instruct", EngineParams(quantization="awq", max_model_len=8192,
                                                  gpu_memory_utilization=0.5), "< max_model_len 8192"),
])
def test_check_names_the_rule_a_hopeless_config_breaks(compose, hardware, model, params, needle):
    broken, _ = check(params, compose(f"hardware={hardware}", f"model={model}"))
    assert any(needle in b for b in broken), broken


def test_a_config_that_fits_breaks_no_rule(compose):
    broken, est = check(EngineParams(quantization="awq", max_model_len=8192),
                        compose("hardware=t4", "model=mistral-7b-instruct"))
    assert broken == [] and est.kv_tokens > 8192


@pytest.mark.parametrize("hardware,model,extra", [
    ("t4", "llama-3-70b-instruct", ()),
    ("a10g", "llama-3-70b-instruct", ()),
    ("a100-80gb", "llama-3-70b-instruct", ("search.quantization=[none]",)),
    ("t4", "mistral-7b-instruct", ("search.quantization=[none]",)),
])
def test_a_space_where_nothing_fits_refuses_to_start(compose, hardware, model, extra):
    with pytest.raises(ConfigError, match="cannot run on hardware"):
        build_space(compose(f"hardware={hardware}", f"model={model}", *extra))


@pytest.mark.parametrize("hardware,model,extra", [
    ("a10g", "llama-3-70b-instruct", ("hardware.gpu_count=4",)),  # AWQ over 4 GPUs fits
    ("h100", "llama-3-70b-instruct", ()),  # one H100 holds the AWQ checkpoint
    ("h100", "llama-3-70b-instruct", ("hardware.gpu_count=2", "search.quantization=[none]")),
])
def test_more_gpus_or_a_quantized_checkpoint_make_it_fit(compose, hardware, model, extra):
    cfg = compose(f"hardware={hardware}", f"model={model}", *extra)
    space = build_space(cfg)
    broken, _ = check(memory_friendliest(space, cfg), cfg)
    assert broken == []


@pytest.mark.parametrize("hardware,model", [("h100", "llama-3-8b-instruct"), ("t4", "mistral-7b-instruct"),
                                            ("cpu", "tiny")])
def test_search_space_never_proposes_batched_tokens_below_max_len_or_max_seqs(compose, hardware, model):
    space = build_space(compose(f"hardware={hardware}", f"model={model}"))
    for _, p in _sample(space, 300):
        assert p.max_num_batched_tokens >= p.max_num_seqs
        if p.enable_chunked_prefill is False:
            assert p.max_num_batched_tokens >= p.max_model_len


def test_speculative_sub_parameters_are_drawn_only_when_speculation_is_on(compose):
    space = build_space(compose("hardware=h100", "model=llama-3-8b-instruct"))
    seen = set()
    for trial, p in _sample(space, 100):
        seen.add(p.speculative)
        names = set(trial.params)
        if p.speculative == "off":
            assert p.num_speculative_tokens is None and not names & {"num_speculative_tokens", "ngram_lookup_max"}
        else:
            assert {"num_speculative_tokens", "ngram_lookup_max"} <= names
            assert 1 <= p.ngram_lookup_min <= p.ngram_lookup_max
    assert seen == {"off", "ngram"}


def test_dummy_weights_with_speculation_warn_once(compose, caplog, monkeypatch):
    monkeypatch.setattr(capability, "_warned", set())
    dummy = compose("hardware=h100", "model=llama-3-8b-instruct", "model.load_format=dummy")
    with caplog.at_level(logging.WARNING, logger="optimizer.space.capability"):
        build_space(dummy)
        build_space(dummy)
        build_space(compose("hardware=h100", "model=llama-3-8b-instruct", "model.load_format=dummy",
                            "search.speculative=[off]"))
        build_space(compose("hardware=h100", "model=llama-3-8b-instruct"))
    warnings = [r for r in caplog.records if "meaningless" in r.getMessage()]
    assert len(warnings) == 1 and "srv_spec_acceptance" in warnings[0].getMessage()


@pytest.mark.parametrize("hardware,model,extra", [
    ("h100", "llama-3-8b-instruct", ()), ("t4", "mistral-7b-instruct", ()), ("cpu", "tiny", ()),
    ("a100-80gb", "llama-3-70b-instruct", ()), ("t4", "mistral-7b-instruct", ("search.dtype=[float16,auto]",)),
])
def test_baseline_params_are_values_of_the_space(compose, hardware, model, extra):
    """Optuna fails an enqueued trial whose categorical value is not a choice."""
    cfg = compose(f"hardware={hardware}", f"model={model}", *extra)
    space = build_space(cfg)
    for key, value in baseline_params(cfg).items():
        choices = getattr(space, key, None)
        if isinstance(choices, tuple):
            assert value in choices, (key, value, choices)
        elif choices is not None and hasattr(choices, "low"):
            assert choices.low <= value <= choices.high, (key, value, choices)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    study.enqueue_trial(baseline_params(cfg))
    trial = study.ask()
    suggest(trial, space)
    for key, value in baseline_params(cfg).items():
        if key in trial.params:
            assert trial.params[key] == value


def test_a_quantized_variant_loads_its_own_checkpoint_without_a_quantization_flag(compose, tmp_path):
    cfg = compose("hardware=h100", "model=llama-3-8b-instruct", "model.variants.awq=/m/awq", "~model.variants.fp8")
    awq = planned_target(cfg.model, tmp_path / "base", "awq")
    fp8 = planned_target(cfg.model, tmp_path / "base", "fp8")
    argv = render(EngineParams(quantization="awq"), awq, host="h", port=1).argv
    assert argv[argv.index("--model") + 1] == "/m/awq" and "--quantization" not in argv
    argv = render(EngineParams(quantization="fp8"), fp8, host="h", port=1).argv
    assert argv[argv.index("--model") + 1] == str(tmp_path / "base") and argv[argv.index("--quantization") + 1] == "fp8"
    with pytest.raises(ConfigError, match="model.variants.awq"):
        target_for(cfg.model, tmp_path / "base", "awq")  # checked only when a server is about to start


def test_a_generated_model_gets_quantized_stand_ins(compose, tmp_path):
    cfg = compose("hardware=h100", "model=llama-3-8b-instruct", "model.load_format=dummy", "model.generate=config",
                  "model.num_layers=2", "model.vocab_size=1000")
    base = tmp_path / "models" / cfg.model.name
    target = target_for(cfg.model, base, "gptq")
    assert target.path == str(tmp_path / "models" / "llama-3-8b-instruct-gptq") and target.quantized_checkpoint
    config = json.loads((tmp_path / "models" / "llama-3-8b-instruct-gptq" / "config.json").read_text())
    assert config["quantization_config"]["quant_method"] == "gptq" and config["num_hidden_layers"] == 2


def test_dry_run_touches_no_model_folder(compose, tmp_path):
    import io

    from optimizer.commands.dry_run import dry_run

    cfg = compose("hardware=t4", "model=mistral-7b-instruct", "study.n_trials=5",
                  f"server.cache_dir={tmp_path}", "model.path=/nonexistent/mistral")
    out = io.StringIO()
    dry_run(cfg, out)
    commands = [line for line in out.getvalue().splitlines() if not line.startswith("#")]
    assert len(commands) == 5 and all("--model /nonexistent/mistral" in c for c in commands if "awq" not in c
                                      and "gptq" not in c)
    assert list(tmp_path.iterdir()) == []


def test_memory_friendliest_corner_is_in_the_space(compose):
    cfg = compose("hardware=h100", "hardware.gpu_count=4", "model=llama-3-70b-instruct")
    space = build_space(cfg)
    p = memory_friendliest(space, cfg)
    assert p.quantization in ("awq", "gptq") and p.tensor_parallel_size == 4 and p.kv_cache_dtype == "fp8"
    assert p.max_model_len == min(space.max_model_len) and p.gpu_memory_utilization == space.memory_share.high
    assert p.max_num_batched_tokens >= p.max_num_seqs and p.enable_chunked_prefill is True
