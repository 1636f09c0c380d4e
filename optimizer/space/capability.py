"""What this hardware and model can run: the choices of the search space that are kept.

Pure (apart from log lines saying what was dropped). :func:`runnable_choices` filters the
configured choices of the knobs whose values depend on the hardware or the model: no bf16 below
compute capability 8.0, fp8 weights and fp8 KV cache only from 8.9, awq/gptq only with a
checkpoint, tensor parallel sizes that fit the GPUs and divide the heads, max_model_len within
the model's, no speculative decoding on the CPU backend. Other knobs are kept as configured.
:func:`quant_problem` and :func:`tp_problem` are also the rules ``check`` applies to one config.
"""

from __future__ import annotations

import logging
from typing import Any, Optional

from optimizer.core.errors import ConfigError
from optimizer.settings.config import HardwareConfig, ModelConfig

__all__ = ["BF16_MIN_CC", "FP8_KV_MIN_CC", "cc", "quant_problem", "runnable_choices", "tp_problem", "warn_once"]

log = logging.getLogger(__name__)

# the lowest compute capability each quantization runs at in vLLM 0.32 (libraries.md 3.3): AWQ and
# GPTQ through Marlin/Exllama; fp8 as W8A8 (below 8.9 vLLM falls back to weight-only W8A16, which
# is a different config than the one asked for, so it is not offered)
QUANT_MIN_CC = {"awq": 7.5, "gptq": 6.0, "fp8": 8.9}
FP8_KV_MIN_CC = 8.9
BF16_MIN_CC = 8.0
_warned: set[str] = set()


def warn_once(msg: str) -> None:
    if msg not in _warned:
        _warned.add(msg)
        log.warning("%s", msg)


def _filtered(key: str, choices: list[Any], allowed: Any, why: str) -> tuple[Any, ...]:
    kept = tuple(c for c in choices if allowed(c))
    dropped = [c for c in choices if not allowed(c)]
    if dropped:
        log.info("search.%s: dropped %s (%s)", key, dropped, why)
    if not kept:
        raise ConfigError(f"search.{key}={list(choices)!r}: none of these can run here ({why}). "
                          f"Choose from values this hardware and model support.")
    return kept


def cc(hw: HardwareConfig) -> str:
    return f"{hw.name} has compute capability {hw.compute_capability}"


def quant_problem(q: Optional[str], hw: HardwareConfig, model: ModelConfig) -> str:
    """Why quantization ``q`` cannot run here ('' if it can)."""
    if q is None or q == "none":
        return ""
    if hw.device == "cpu":
        return f"quantization {q} is not offered on the CPU backend"
    if q == "fp8" and not hw.supports_fp8:
        return f"fp8 weights (W8A8) need compute capability >= {QUANT_MIN_CC['fp8']} ({cc(hw)})"
    if hw.compute_capability and hw.compute_capability < QUANT_MIN_CC.get(q, 0.0):
        return f"{q} needs compute capability >= {QUANT_MIN_CC[q]} ({cc(hw)})"
    if q != "fp8" and not model.variants.get(q) and model.generate != "config":
        return (f"{q} needs its checkpoint in model.variants.{q} "
                f"(configured: {sorted(model.variants) or 'none'})")
    return ""


def tp_problem(tp: int, hw: HardwareConfig, model: ModelConfig) -> str:
    if tp < 1 or tp > hw.gpu_count:
        return f"more GPUs than hardware.gpu_count={hw.gpu_count}"
    heads, kv = model.num_attention_heads, model.num_kv_heads
    if heads and heads % tp:
        return f"does not divide the {heads} attention heads"
    if kv and kv % tp and tp % kv:
        return f"neither divides nor is a multiple of the {kv} KV heads"
    return ""


def _resolved_dtype(choice: str, model: ModelConfig, hw: HardwareConfig) -> str:
    d = {"half": "float16", "float": "float32"}.get(choice, choice)
    if d == "auto":
        d = model.dtype
        if d == "bfloat16" and not hw.supports_bf16:
            d = "float16"  # vLLM's own fallback on GPUs without bf16
    return d


def _dtypes(s: Any, hw: HardwareConfig, model: ModelConfig) -> tuple[str, ...]:
    kept = _filtered("dtype", s.dtype, lambda d: d != "bfloat16" or hw.supports_bf16,
                     f"bfloat16 needs compute capability >= {BF16_MIN_CC} ({cc(hw)}); vLLM uses float16")
    # choices that run the same dtype are one config twice (auto is bfloat16 for a bf16 checkpoint);
    # auto is the one kept, since it is vLLM's default and the baseline trial records it
    seen: dict[str, str] = {}
    for d in kept:
        if d == "auto" or _resolved_dtype(d, model, hw) not in seen:
            seen[_resolved_dtype(d, model, hw)] = d
    unique = tuple(d for d in kept if d in seen.values())
    if len(unique) < len(kept):
        log.info("search.dtype: kept %s (the others run the same dtype here)", list(unique))
    return unique


def _lens(s: Any, model: ModelConfig) -> tuple[int, ...]:
    if not s.max_model_len:
        return (model.max_model_len,)
    return _filtered("max_model_len", s.max_model_len, lambda n: 0 < n <= model.max_model_len,
                     f"the model's max_model_len is {model.max_model_len}")


def runnable_choices(s: Any, hw: HardwareConfig, model: ModelConfig) -> dict[str, tuple[Any, ...]]:
    """The choices of ``search`` (a SearchConfig) this hardware and model can run, for the knobs
    that depend on them. Raises ConfigError where none of a knob's choices can run."""
    cpu = hw.device == "cpu"
    kv = _filtered("kv_cache_dtype", s.kv_cache_dtype,
                   lambda d: not str(d).startswith("fp8") or hw.supports_fp8_kv,
                   f"fp8 KV cache needs compute capability >= {FP8_KV_MIN_CC} ({cc(hw)})")
    quant = _filtered("quantization", s.quantization, lambda q: not quant_problem(q, hw, model),
                      "; ".join(sorted({p for q in s.quantization if (p := quant_problem(q, hw, model))})))
    tps = _filtered("tensor_parallel_size", s.tensor_parallel_size, lambda t: not tp_problem(t, hw, model),
                    "; ".join(sorted({p for t in s.tensor_parallel_size if (p := tp_problem(t, hw, model))})))
    spec = _filtered("speculative", s.speculative, lambda m: m == "off" or not cpu,
                     "speculative decoding is not offered on the CPU backend")
    if model.load_format == "dummy" and any(m != "off" for m in spec):
        warn_once("speculative decoding is in the search space but model.load_format=dummy: with random "
                  "weights the draft acceptance rate (srv_spec_acceptance) is meaningless, and so is any "
                  "speed-up it buys. Tune speculation with real weights, or set search.speculative=[off].")
    return {"dtype": _dtypes(s, hw, model), "kv_cache_dtype": kv, "quantization": quant, "tensor_parallel_size": tps,
            "speculative": spec, "max_model_len": _lens(s, model)}
