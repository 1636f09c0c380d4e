"""Every server command we render is accepted by the installed vLLM's own argument parser.

For each hardware preset x model, 100 seeded samples of the study's space are rendered and
parsed with ``make_arg_parser(FlexibleArgumentParser())`` (what ``vllm serve`` and the API server
use), then checked by ``validate_parsed_serve_args``, and each parsed value is compared with the
typed parameter it came from: a flag vLLM no longer accepts, or one that lands in the wrong
field, fails here. Where vLLM can build its whole engine config without a GPU (the tiny model on
the CPU platform), ``EngineArgs.from_cli_args(...).create_engine_config()`` runs too, and it must
agree with :func:`~optimizer.space.search_space.check` on which configs are invalid.

No server is started; this imports vLLM only (about 10 s the first time).
"""

from __future__ import annotations

import json
import random
import shlex
import subprocess
import sys

import optuna
import pytest

from optimizer.core.errors import ConfigError
from optimizer.model.resolve import planned_model_dir, planned_target
from optimizer.settings.knobs import KNOBS
from optimizer.space.engine_args import SERVER_MODULE, EngineParams, ModelTarget, render
from optimizer.space.search_space import build_space, check, suggest

pytest.importorskip("vllm")
pytestmark = pytest.mark.slow

PRESETS = ["cpu", "t4", "l4", "a10g", "a100-40gb", "a100-80gb", "h100", "h200"]
MODELS = ["tiny", "mistral-7b-instruct", "llama-3-8b-instruct", "llama-3-70b-instruct"]
# (hardware, model): the study refuses to start, since no config of its space fits in memory
REFUSED = {("t4", "llama-3-70b-instruct"), ("l4", "llama-3-70b-instruct"), ("a10g", "llama-3-70b-instruct"),
           ("a100-40gb", "llama-3-70b-instruct")}


@pytest.fixture(scope="module")
def parser():
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    try:  # vLLM 0.32 moved the API server's parser here
        from vllm.entrypoints.launchers.cli_args import make_arg_parser, validate_parsed_serve_args
    except ImportError:  # older releases (the GPU host's 0.26)
        from vllm.entrypoints.openai.cli_args import make_arg_parser, validate_parsed_serve_args

    p = make_arg_parser(FlexibleArgumentParser(description="vLLM OpenAI-Compatible RESTful API server."))

    def parse(argv: list[str]):
        assert argv[:2] == ["-m", SERVER_MODULE]
        try:
            args = p.parse_args(argv[2:])
        except SystemExit as exc:  # argparse's way of saying "unrecognized arguments" or a bad value
            raise AssertionError(f"vLLM's parser refused: {shlex.join(argv)}") from exc
        validate_parsed_serve_args(args)
        return args

    return parse


def _samples(cfg, n: int = 100):
    space = build_space(cfg)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1234))
    for _ in range(n):
        trial = study.ask()
        yield suggest(trial, space)
        study.tell(trial, 0.0)


def _assert_parsed_as_rendered(args, p: EngineParams, target: ModelTarget) -> None:
    assert args.model == target.path
    for k in KNOBS:  # every knob rendered as its flag (async_scheduling among them) reads back as drawn
        value = getattr(p, k.name)
        if k.flag and value not in k.neutral:
            assert getattr(args, k.flag) == value, k.name
    if p.kv_cache_gib is not None:
        assert args.kv_cache_memory_bytes == int(round(p.kv_cache_gib * 1024**3))
    assert args.kv_cache_dtype == (p.kv_cache_dtype or "auto")
    assert args.dtype == (p.dtype or "auto")
    if p.quantization in (None, "none") or target.quantized_checkpoint:
        assert args.quantization is None  # the checkpoint names its own method
    else:
        assert args.quantization == p.quantization
    if p.speculative in (None, "off"):
        assert args.speculative_config is None
    else:
        spec = args.speculative_config
        assert spec["num_speculative_tokens"] == p.num_speculative_tokens
        assert spec["method"] == {"ngram": "ngram", "draft": "draft_model"}[p.speculative]
        if p.speculative == "ngram":
            assert 1 <= spec["prompt_lookup_min"] <= spec["prompt_lookup_max"] == p.ngram_lookup_max


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("hardware", PRESETS)
def test_sampled_commands_parse_with_vllms_own_parser(compose, parser, hardware, model):
    cfg = compose(f"hardware={hardware}", f"model={model}")
    if (hardware, model) in REFUSED:
        with pytest.raises(ConfigError, match="cannot run on hardware"):
            build_space(cfg)
        return
    base = planned_model_dir(cfg.model, cfg.server.cache_dir)
    for p in _samples(cfg):
        target = planned_target(cfg.model, base, p.quantization)
        argv = render(p, target, host="127.0.0.1", port=8000, fixed_args=tuple(cfg.hardware.fixed_args)).argv
        _assert_parsed_as_rendered(parser(argv), p, target)


@pytest.mark.parametrize("overrides", [
    ("hardware=h100", "hardware.gpu_count=8", "model=llama-3-70b-instruct"),
    ("hardware=a100-80gb", "hardware.gpu_count=4", "model=llama-3-70b-instruct"),
    ("hardware=l4", "hardware.gpu_count=2", "model=mistral-7b-instruct", "model.load_format=dummy",
     "model.generate=config"),
    ("hardware=h200", "model=llama-3-8b-instruct", "search.speculative=[off,ngram,draft]",
     "search.draft_model=/models/llama-3.2-1b-instruct"),
])
def test_multi_gpu_dummy_and_draft_model_commands_parse(compose, parser, overrides):
    cfg = compose(*overrides)
    base = planned_model_dir(cfg.model, cfg.server.cache_dir)
    seen_tp, seen_spec = set(), set()
    for p in _samples(cfg):
        target = planned_target(cfg.model, base, p.quantization)
        argv = render(p, target, host="127.0.0.1", port=8000).argv
        args = parser(argv)
        _assert_parsed_as_rendered(args, p, target)
        assert args.load_format == cfg.model.load_format
        if p.speculative == "draft":
            assert args.speculative_config["model"] == "/models/llama-3.2-1b-instruct"
        seen_tp.add(p.tensor_parallel_size)
        seen_spec.add(p.speculative)
    assert len(seen_tp) > 1 or cfg.hardware.gpu_count == 1
    assert "draft" in seen_spec or "draft" not in cfg.search.speculative


def test_the_parser_refuses_flags_removed_from_vllm(parser):
    """The check has teeth: the flags libraries.md 3.1 lists as removed fail here."""
    for removed in (["--max-num-partial-prefills", "2"], ["--cuda-graph-sizes", "8"]):
        with pytest.raises(AssertionError, match="refused"):
            parser(["-m", SERVER_MODULE, "--model", "/m", *removed])


def _dry_run(repo, *overrides: str) -> list[str]:
    """The command lines ``python -m optimizer.run ... dry_run=true study.n_trials=200`` prints."""
    r = subprocess.run([sys.executable, "-m", "optimizer.run", *overrides, "dry_run=true", "study.n_trials=200"],
                       capture_output=True, text=True, timeout=300, check=False, cwd=repo)
    assert r.returncode == 0, r.stderr[-2000:]
    return [line for line in r.stdout.splitlines() if line and not line.startswith("#")]


def test_dry_run_t4_mistral_prints_200_commands_vllm_accepts_none_bf16_or_fp8(parser, repo):
    commands = _dry_run(repo, "hardware=t4", "model=mistral-7b-instruct")
    assert len(commands) == 200
    for line in commands:
        words = shlex.split(line)
        args = parser(words[1:])  # after the interpreter
        assert args.dtype in ("auto", "float16", "half") and args.kv_cache_dtype == "auto"
        assert args.quantization in (None, "awq", "gptq") and "fp8" not in args.model
        assert "bfloat16" not in line and "fp8" not in line


def test_dry_run_h100_llama3_8b_includes_fp8(parser, repo):
    commands = _dry_run(repo, "hardware=h100", "model=llama-3-8b-instruct")
    assert len(commands) == 200
    fp8_kv = fp8_weights = 0
    for line in commands:
        args = parser(shlex.split(line)[1:])
        fp8_kv += args.kv_cache_dtype == "fp8"
        fp8_weights += args.quantization == "fp8" or args.model.endswith("-fp8")
    assert fp8_kv > 0 and fp8_weights > 0


# --- the whole engine config, where vLLM builds it without a GPU: the tiny model on the CPU platform


@pytest.fixture(scope="module")
def engine_config(tiny_model):
    from vllm.engine.arg_utils import AsyncEngineArgs

    def build(args) -> str:
        """'' when vLLM accepts the config, else the first line of its complaint."""
        try:
            AsyncEngineArgs.from_cli_args(args).create_engine_config()
        except Exception as exc:  # pydantic ValidationError, ValueError: vLLM's verdict, whatever its type
            return f"{type(exc).__name__}: {str(exc).splitlines()[0]}"
        return ""

    return build


def test_vllm_builds_the_engine_config_of_every_sampled_cpu_config(compose, parser, engine_config, tiny_model):
    cfg = compose("model.load_format=dummy")
    target = ModelTarget(str(tiny_model), "tiny", "dummy")
    for p in _samples(cfg, 60):
        args = parser(render(p, target, host="127.0.0.1", port=8000).argv)
        assert engine_config(args) == "", p


def test_check_and_vllm_agree_on_which_configs_are_invalid(compose, parser, engine_config, tiny_model):
    """Random configs, many deliberately broken (batched tokens below max_num_seqs or, with chunked
    prefill off, below max_model_len): check()'s static rules flag exactly those vLLM refuses."""
    cfg = compose("model.load_format=dummy")
    target = ModelTarget(str(tiny_model), "tiny", "dummy")
    rng = random.Random(7)
    agreed = refused = 0
    for _ in range(80):
        p = EngineParams(max_num_seqs=rng.choice([1, 8, 64, 256, 1024]),
                         max_num_batched_tokens=rng.choice([16, 256, 1000, 2048, 4096]),
                         enable_chunked_prefill=rng.choice([True, False]),
                         enable_prefix_caching=rng.choice([True, False]),
                         max_model_len=rng.choice([512, 1024, 2048]), kv_cache_gib=0.5,
                         dtype=rng.choice(["auto", "float16", "bfloat16", "float32"]))
        broken, _ = check(p, cfg)
        verdict = engine_config(parser(render(p, target, host="127.0.0.1", port=8000).argv))
        assert bool(broken) == bool(verdict), (p, broken, verdict)
        agreed += 1
        refused += bool(verdict)
    assert agreed == 80 and 10 < refused < 70  # both kinds were exercised


def test_vllm_accepts_the_speculative_config_json_we_render(parser, engine_config, tiny_model):
    target = ModelTarget(str(tiny_model), "tiny", "dummy")
    p = EngineParams(speculative="ngram", num_speculative_tokens=3, ngram_lookup_max=4, ngram_lookup_min=1,
                     kv_cache_gib=0.5)
    args = parser(render(p, target, host="127.0.0.1", port=8000).argv)
    assert json.dumps(args.speculative_config, sort_keys=True) == json.dumps(
        {"method": "ngram", "num_speculative_tokens": 3, "prompt_lookup_max": 4, "prompt_lookup_min": 1},
        sort_keys=True)
    assert engine_config(args) == ""
    # and it refuses what our rules also refuse: a max_model_len beyond the model's positions
    too_long = parser(render(EngineParams(max_model_len=10**6, kv_cache_gib=0.5), target, host="h", port=1).argv)
    assert engine_config(too_long) != ""


@pytest.mark.parametrize("quantization", ["awq", "gptq", "fp8"])
def test_vllm_reads_the_method_of_a_generated_quantized_stand_in(tmp_path, quantization):
    """model.generate=config writes AWQ/GPTQ/FP8 stand-ins; vLLM must see their method."""
    from vllm.engine.arg_utils import EngineArgs

    from optimizer.model.tiny import TINY_ARCH, write_config_only

    folder = write_config_only(tmp_path / quantization, dict(TINY_ARCH), "bfloat16", quantization)
    config = EngineArgs(model=str(folder), load_format="dummy", kv_cache_memory_bytes=2**28).create_engine_config()
    assert quantization in str(config.model_config.quantization)  # awq, auto_gptq, fp8
