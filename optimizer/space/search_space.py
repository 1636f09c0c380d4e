"""The search space: which engine parameters a trial may take on this hardware and model.

Pure. :func:`build_space` filters the configured choices by what the hardware and model can run
(no bf16 below compute capability 8.0, fp8 only from 8.9, quantizations only with a checkpoint)
and :func:`suggest` draws one :class:`EngineParams` from an Optuna trial. Conditional parameters
(speculative decoding) are drawn only when they apply; the study uses TPE with ``group=True`` so
the sampler still models them jointly. :func:`check` lists the rules a config breaks, so a
hopeless server is never started.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import asdict, dataclass
from typing import Any, Protocol

from optimizer.config import Config, FloatRange, HardwareConfig, IntRange, ModelConfig, SearchConfig
from optimizer.errors import ConfigError
from optimizer.space.engine_args import EngineParams
from optimizer.space.memory import MemoryEstimate, estimate_memory

__all__ = ["Space", "TrialLike", "build_space", "baseline_params", "check", "suggest"]

log = logging.getLogger(__name__)


class TrialLike(Protocol):
    def suggest_int(self, name: str, low: int, high: int, *, step: int = 1, log: bool = False) -> int: ...

    def suggest_float(self, name: str, low: float, high: float, *, step: float | None = None,
                      log: bool = False) -> float: ...

    def suggest_categorical(self, name: str, choices: Any) -> Any: ...


@dataclass(frozen=True)
class Space:
    """The resolved space of one study (hardware and model applied)."""

    device: str
    max_num_seqs: IntRange
    max_num_batched_tokens: IntRange
    memory_share: FloatRange  # gpu_memory_utilization on GPUs, KV GiB on the CPU backend
    enable_chunked_prefill: tuple[bool, ...]
    enable_prefix_caching: tuple[bool, ...]
    quantization: tuple[str, ...]
    dtype: tuple[str, ...]
    kv_cache_dtype: tuple[str, ...]
    max_model_len: tuple[int, ...]
    tensor_parallel_size: tuple[int, ...]
    speculative: tuple[str, ...]
    num_speculative_tokens: IntRange
    ngram_lookup_max: IntRange
    draft_model: str

    def fingerprint(self) -> str:
        """Changes whenever a range or choice list changes (a new study version is needed)."""
        blob = json.dumps(asdict(self), sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _filtered(key: str, choices: list[Any], allowed: Any, why: str) -> tuple[Any, ...]:
    kept = tuple(c for c in choices if allowed(c))
    dropped = [c for c in choices if not allowed(c)]
    if dropped:
        log.info("search.%s: dropped %s (%s)", key, dropped, why)
    if not kept:
        raise ConfigError(f"search.{key}={list(choices)!r}: none of these can run here ({why}). "
                          f"Choose from values this hardware and model support.")
    return kept


def _quant_ok(q: str, hw: HardwareConfig, model: ModelConfig) -> bool:
    if q == "none":
        return True
    if hw.device == "cpu":
        return False
    if q == "fp8":
        return hw.supports_fp8  # online fp8 from the bf16 checkpoint, or a variant
    return q in model.variants  # awq, gptq: need their checkpoint


def build_space(cfg: Config) -> Space:
    s: SearchConfig = cfg.search
    hw, model = cfg.hardware, cfg.model
    cpu = hw.device == "cpu"
    dtypes = _filtered("dtype", s.dtype, lambda d: d != "bfloat16" or hw.supports_bf16,
                       f"{hw.name} (compute capability {hw.compute_capability}) has no bf16; use float16")
    kv = _filtered("kv_cache_dtype", s.kv_cache_dtype,
                   lambda d: not str(d).startswith("fp8") or (hw.supports_fp8_kv and not cpu),
                   f"fp8 KV cache needs compute capability >= 8.9; {hw.name} has {hw.compute_capability}")
    quant = _filtered("quantization", s.quantization, lambda q: _quant_ok(q, hw, model),
                      f"fp8 needs compute capability >= 8.9 ({hw.name}: {hw.compute_capability}); "
                      f"awq/gptq need a checkpoint in model.variants ({sorted(model.variants) or 'none'})")
    tps = _filtered("tensor_parallel_size", s.tensor_parallel_size,
                    lambda t: 1 <= t <= hw.gpu_count and (model.num_attention_heads or t) % t == 0,
                    f"must divide the {model.num_attention_heads} attention heads and be <= "
                    f"hardware.gpu_count={hw.gpu_count}")
    spec = _filtered("speculative", s.speculative, lambda m: m == "off" or not cpu,
                     "speculative decoding is not offered on the CPU backend")
    lens = tuple(s.max_model_len) or (model.max_model_len,)
    return Space(device=hw.device, max_num_seqs=s.max_num_seqs, max_num_batched_tokens=s.max_num_batched_tokens,
                 memory_share=s.kv_cache_gib if cpu else s.gpu_memory_utilization,
                 enable_chunked_prefill=tuple(s.enable_chunked_prefill),
                 enable_prefix_caching=tuple(s.enable_prefix_caching), quantization=quant, dtype=dtypes,
                 kv_cache_dtype=kv, max_model_len=lens, tensor_parallel_size=tps, speculative=spec,
                 num_speculative_tokens=s.num_speculative_tokens, ngram_lookup_max=s.ngram_lookup_max,
                 draft_model=s.draft_model)


def _int(trial: TrialLike, name: str, r: IntRange) -> int:
    if r.low == r.high:
        return r.low
    return trial.suggest_int(name, r.low, r.high, log=r.log)


def _cat(trial: TrialLike, name: str, choices: tuple[Any, ...]) -> Any:
    return choices[0] if len(choices) == 1 else trial.suggest_categorical(name, list(choices))


def suggest(trial: TrialLike, space: Space) -> EngineParams:
    """Draw one config. Fixed (single-choice) parameters are set without asking the sampler."""
    share = space.memory_share
    if share.low == share.high:
        mem = share.low
    else:
        mem = trial.suggest_float("kv_cache_gib" if space.device == "cpu" else "gpu_memory_utilization",
                                  share.low, share.high, step=share.step)
    spec = _cat(trial, "speculative", space.speculative)
    n_spec = lookup = None
    if spec != "off":
        n_spec = _int(trial, "num_speculative_tokens", space.num_speculative_tokens)
        if spec == "ngram":
            lookup = _int(trial, "ngram_lookup_max", space.ngram_lookup_max)
    return EngineParams(
        max_num_seqs=_int(trial, "max_num_seqs", space.max_num_seqs),
        max_num_batched_tokens=_int(trial, "max_num_batched_tokens", space.max_num_batched_tokens),
        gpu_memory_utilization=None if space.device == "cpu" else round(mem, 4),
        kv_cache_gib=mem if space.device == "cpu" else None,
        enable_chunked_prefill=_cat(trial, "enable_chunked_prefill", space.enable_chunked_prefill),
        enable_prefix_caching=_cat(trial, "enable_prefix_caching", space.enable_prefix_caching),
        quantization=_cat(trial, "quantization", space.quantization),
        dtype=_cat(trial, "dtype", space.dtype),
        kv_cache_dtype=_cat(trial, "kv_cache_dtype", space.kv_cache_dtype),
        max_model_len=_cat(trial, "max_model_len", space.max_model_len),
        tensor_parallel_size=_cat(trial, "tensor_parallel_size", space.tensor_parallel_size),
        speculative=spec,
        num_speculative_tokens=n_spec,
        ngram_lookup_max=lookup,
        ngram_lookup_min=1 if lookup else None,
        draft_model=space.draft_model if spec == "draft" else None,
    )


def baseline_params(cfg: Config) -> dict[str, Any]:
    """vLLM's defaults on this hardware as Optuna params: what the baseline trial records.

    The baseline server itself gets no tuning flag; these values only place it in the space so
    the sampler and the plots can use it. Unknown keys and parameters fixed by the space are
    dropped."""
    d = dict(cfg.hardware.vllm_defaults)
    if cfg.hardware.device == "cpu":
        d.setdefault("kv_cache_gib", cfg.hardware.cpu_kvcache_gib)
    d.setdefault("speculative", "off")
    return d


def defaults_as_params(cfg: Config) -> EngineParams:
    """vLLM's defaults for the memory estimate of a baseline (all-None) config."""
    return EngineParams.from_dict(baseline_params(cfg))


def check(params: EngineParams, cfg: Config) -> tuple[list[str], MemoryEstimate]:
    """The rules ``params`` breaks on this hardware and model (empty: worth starting)."""
    hw, model = cfg.hardware, cfg.model
    defaults = defaults_as_params(cfg)
    est = estimate_memory(params, model, hw, defaults)
    broken: list[str] = []
    dtype = params.dtype if params.dtype not in (None, "auto") else None
    if dtype == "bfloat16" and not hw.supports_bf16:
        broken.append(f"dtype bfloat16 needs compute capability >= 8.0 ({hw.name}: {hw.compute_capability})")
    if params.quantization == "fp8" and not hw.supports_fp8:
        broken.append(f"fp8 weights need compute capability >= 8.9 ({hw.name}: {hw.compute_capability})")
    if str(params.kv_cache_dtype or "").startswith("fp8") and not hw.supports_fp8_kv:
        broken.append(f"fp8 KV cache needs compute capability >= 8.9 ({hw.name}: {hw.compute_capability})")
    seqs = params.max_num_seqs or defaults.max_num_seqs
    mnbt = params.max_num_batched_tokens or defaults.max_num_batched_tokens
    max_len = params.max_model_len or model.max_model_len
    if seqs and mnbt and mnbt < seqs:
        broken.append(f"max_num_batched_tokens={mnbt} < max_num_seqs={seqs} (vLLM refuses this)")
    if params.enable_chunked_prefill is False and mnbt and mnbt < max_len:
        broken.append(f"chunked prefill off needs max_num_batched_tokens >= max_model_len "
                      f"({mnbt} < {max_len})")
    tp = params.tensor_parallel_size or 1
    if tp > hw.gpu_count:
        broken.append(f"tensor_parallel_size={tp} > {hw.gpu_count} GPUs")
    if est.weights_gib >= est.budget_gib and hw.device != "cpu":
        broken.append(f"weights {est.weights_gib:.1f} GiB do not fit the memory share "
                      f"{est.budget_gib:.1f} GiB per GPU")
    elif not est.fits:
        broken.append(f"estimated KV cache {est.kv_tokens} tokens < max_model_len {est.max_model_len} "
                      f"(budget {est.budget_gib:.1f} GiB, weights {est.weights_gib:.1f} GiB, "
                      f"activations {est.activation_gib:.1f} GiB)")
    return broken, est
