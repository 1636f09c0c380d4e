"""The search space: which engine parameters a trial may take on this hardware and model.

Pure (apart from log lines saying what was dropped). :func:`build_space` filters the configured
choices by what the hardware and model can run (no bf16 below compute capability 8.0, fp8 weights
and fp8 KV cache only from 8.9, awq/gptq only with a checkpoint, tensor parallel sizes that fit
the GPUs and divide the heads, max_model_len within the model's) and refuses a space in which no
config can fit in memory (:func:`check_space_fits`). :func:`suggest` draws one
:class:`EngineParams` from an Optuna trial; conditional parameters (speculative decoding) are
drawn only when they apply, and the study uses TPE with ``group=True`` so the sampler still
models them jointly. :func:`check` lists the rules a config breaks, so a hopeless server is never
started.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Optional, Protocol

from optimizer.config import Config, FloatRange, HardwareConfig, IntRange, ModelConfig, SearchConfig
from optimizer.errors import ConfigError
from optimizer.space.engine_args import EngineParams
from optimizer.space.grid import grid_values
from optimizer.space.memory import MemoryEstimate, estimate_memory, kv_bytes_per_token, weights_gib

__all__ = ["Space", "TrialLike", "baseline_params", "build_space", "check", "check_space_fits", "seed_params",
           "memory_friendliest", "suggest"]

log = logging.getLogger(__name__)

# the lowest compute capability each quantization runs at in vLLM 0.32 (libraries.md 3.3): AWQ and
# GPTQ through Marlin/Exllama; fp8 as W8A8 (below 8.9 vLLM falls back to weight-only W8A16, which
# is a different config than the one asked for, so it is not offered)
_QUANT_MIN_CC = {"awq": 7.5, "gptq": 6.0, "fp8": 8.9}
_FP8_KV_MIN_CC = 8.9
_BF16_MIN_CC = 8.0
_warned: set[str] = set()


class TrialLike(Protocol):
    def suggest_int(self, name: str, low: int, high: int, *, step: int = 1, log: bool = False) -> int: ...

    def suggest_float(self, name: str, low: float, high: float, *, step: Optional[float] = None,
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
    # parameters drawn as choices from a grid (search.<name>.grid): name -> the values, ascending
    grids: dict[str, tuple[int, ...]] = field(default_factory=dict)

    def int_low(self, name: str) -> int:
        """The smallest value integer parameter ``name`` may take."""
        values = self.grids.get(name)
        return values[0] if values else int(getattr(self, name).low)


def _warn_once(msg: str) -> None:
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


def _cc(hw: HardwareConfig) -> str:
    return f"{hw.name} has compute capability {hw.compute_capability}"


def _quant_problem(q: Optional[str], hw: HardwareConfig, model: ModelConfig) -> str:
    """Why quantization ``q`` cannot run here ('' if it can)."""
    if q is None or q == "none":
        return ""
    if hw.device == "cpu":
        return f"quantization {q} is not offered on the CPU backend"
    if q == "fp8" and not hw.supports_fp8:
        return f"fp8 weights (W8A8) need compute capability >= {_QUANT_MIN_CC['fp8']} ({_cc(hw)})"
    if hw.compute_capability and hw.compute_capability < _QUANT_MIN_CC.get(q, 0.0):
        return f"{q} needs compute capability >= {_QUANT_MIN_CC[q]} ({_cc(hw)})"
    if q != "fp8" and not model.variants.get(q) and model.generate != "config":
        return (f"{q} needs its checkpoint in model.variants.{q} "
                f"(configured: {sorted(model.variants) or 'none'})")
    return ""


def _tp_problem(tp: int, hw: HardwareConfig, model: ModelConfig) -> str:
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


def _dtypes(s: SearchConfig, hw: HardwareConfig, model: ModelConfig) -> tuple[str, ...]:
    kept = _filtered("dtype", s.dtype, lambda d: d != "bfloat16" or hw.supports_bf16,
                     f"bfloat16 needs compute capability >= {_BF16_MIN_CC} ({_cc(hw)}); vLLM uses float16")
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


def _lens(s: SearchConfig, model: ModelConfig) -> tuple[int, ...]:
    if not s.max_model_len:
        return (model.max_model_len,)
    return _filtered("max_model_len", s.max_model_len, lambda n: 0 < n <= model.max_model_len,
                     f"the model's max_model_len is {model.max_model_len}")


def build_space(cfg: Config) -> Space:
    """The study's space: configured choices minus what this hardware and model cannot run.

    Raises:
        ConfigError: a choice list ends up empty, ``hardware=auto`` was not resolved, or no
            config of the space fits in memory (:func:`check_space_fits`).
    """
    s: SearchConfig = cfg.search
    hw, model = cfg.hardware, cfg.model
    if hw.name == "auto":
        raise ConfigError("hardware=auto was not resolved into a preset: the entry point does that "
                          "(optimizer.hardware_auto.resolve_hardware_overrides). Name a preset instead.")
    cpu = hw.device == "cpu"
    dtypes = _dtypes(s, hw, model)
    kv = _filtered("kv_cache_dtype", s.kv_cache_dtype,
                   lambda d: not str(d).startswith("fp8") or hw.supports_fp8_kv,
                   f"fp8 KV cache needs compute capability >= {_FP8_KV_MIN_CC} ({_cc(hw)})")
    quant = _filtered("quantization", s.quantization, lambda q: not _quant_problem(q, hw, model),
                      "; ".join(sorted({p for q in s.quantization if (p := _quant_problem(q, hw, model))})))
    tps = _filtered("tensor_parallel_size", s.tensor_parallel_size, lambda t: not _tp_problem(t, hw, model),
                    "; ".join(sorted({p for t in s.tensor_parallel_size if (p := _tp_problem(t, hw, model))})))
    spec = _filtered("speculative", s.speculative, lambda m: m == "off" or not cpu,
                     "speculative decoding is not offered on the CPU backend")
    if model.load_format == "dummy" and any(m != "off" for m in spec):
        _warn_once("speculative decoding is in the search space but model.load_format=dummy: with random "
                   "weights the draft acceptance rate (srv_spec_acceptance) is meaningless, and so is any "
                   "speed-up it buys. Tune speculation with real weights, or set search.speculative=[off].")
    space = Space(device=hw.device, max_num_seqs=s.max_num_seqs, max_num_batched_tokens=s.max_num_batched_tokens,
                  memory_share=s.kv_cache_gib if cpu else s.gpu_memory_utilization,
                  enable_chunked_prefill=tuple(s.enable_chunked_prefill),
                  enable_prefix_caching=tuple(s.enable_prefix_caching), quantization=quant, dtype=dtypes,
                  kv_cache_dtype=kv, max_model_len=_lens(s, model), tensor_parallel_size=tps, speculative=spec,
                  num_speculative_tokens=s.num_speculative_tokens, ngram_lookup_max=s.ngram_lookup_max,
                  draft_model=s.draft_model, grids=_grids(cfg))
    check_space_fits(space, cfg)
    return space


def memory_friendliest(space: Space, cfg: Config) -> EngineParams:
    """The config of ``space`` that leaves the most room for the KV cache per device: the
    smallest weights, the most tensor parallelism, the smallest KV dtype, the shortest
    max_model_len, the fewest sequences and batched tokens, the largest memory share."""
    hw, model = cfg.hardware, cfg.model
    tp = max(space.tensor_parallel_size)
    quant = min(space.quantization, key=lambda q: weights_gib(EngineParams(quantization=q), model, hw, tp))
    kv = min(space.kv_cache_dtype, key=lambda d: kv_bytes_per_token(EngineParams(kv_cache_dtype=d), model, hw))
    max_len = min(space.max_model_len)
    chunked = True if True in space.enable_chunked_prefill else space.enable_chunked_prefill[0]
    seqs = space.int_low("max_num_seqs")
    mnbt = max(space.int_low("max_num_batched_tokens"), seqs if chunked else max(seqs, max_len))
    mnbt = min(mnbt, space.max_num_batched_tokens.high)
    share = space.memory_share.high
    return EngineParams(max_num_seqs=seqs, max_num_batched_tokens=mnbt,
                        gpu_memory_utilization=None if space.device == "cpu" else share,
                        kv_cache_gib=share if space.device == "cpu" else None, enable_chunked_prefill=chunked,
                        quantization=quant, dtype=space.dtype[0], kv_cache_dtype=kv, max_model_len=max_len,
                        tensor_parallel_size=tp, speculative="off" if "off" in space.speculative else None)


def check_space_fits(space: Space, cfg: Config) -> None:
    """Refuse a study in which not a single config fits in memory (a 70B model on one T4).

    Raises:
        ConfigError: even :func:`memory_friendliest` leaves no room for one request of
            max_model_len tokens; the message says what would help.
    """
    p = memory_friendliest(space, cfg)
    hw, model = cfg.hardware, cfg.model
    est = estimate_memory(p, model, hw, defaults_as_params(cfg))
    weights_fit = est.weights_fit or hw.device == "cpu"  # CPU weights live outside the KV space
    if weights_fit and est.fits:
        return
    if not weights_fit:
        why = f"the weights alone take {est.weights_gib:.1f} GiB per GPU of {est.budget_gib:.1f} GiB usable"
    else:
        why = (f"after {est.weights_gib:.1f} GiB of weights and {est.activation_gib:.1f} GiB of activations, "
               f"the KV cache holds {est.kv_tokens} tokens, fewer than max_model_len={est.max_model_len}")
    raise ConfigError(
        f"model={model.name} cannot run on hardware={hw.name} ({hw.gpu_count} x {hw.gpu_mem_gib:g} GiB) with any "
        f"config of this search space: even the most memory-friendly one (quantization={p.quantization}, "
        f"tensor_parallel_size={p.tensor_parallel_size}, kv_cache_dtype={p.kv_cache_dtype}, "
        f"max_model_len={p.max_model_len}, gpu_memory_utilization={p.gpu_memory_utilization}) fails: {why}. "
        f"Use a quantized checkpoint (model.variants + search.quantization), more GPUs (hardware.gpu_count=N "
        f"with search.tensor_parallel_size), a shorter search.max_model_len, or a bigger GPU.")


def _grids(cfg: Config) -> dict[str, tuple[int, ...]]:
    defaults = cfg.hardware.vllm_defaults
    out = {}
    for name in ("max_num_seqs", "max_num_batched_tokens", "num_speculative_tokens", "ngram_lookup_max"):
        default = defaults.get(name)
        if values := grid_values(getattr(cfg.search, name), [default] if isinstance(default, int) else []):
            out[name] = values
    return out


def _int(trial: TrialLike, name: str, r: IntRange, grid: tuple[int, ...] = ()) -> int:
    if r.low == r.high:
        return r.low
    if grid:  # a choice keeps the values on the grid; Optuna's int distributions cannot
        try:
            return int(trial.suggest_categorical(name, list(grid)))
        except ValueError:  # an enqueued value off the grid: vLLM's default outside a narrowed range, recorded
            pass  # as it was run (Optuna warns that it lies outside the range)
    if r.step > 1:
        return trial.suggest_int(name, r.low, r.high, step=r.step)
    return trial.suggest_int(name, r.low, r.high, log=r.log)


def _cat(trial: TrialLike, name: str, choices: tuple[Any, ...]) -> Any:
    return choices[0] if len(choices) == 1 else trial.suggest_categorical(name, list(choices))


def suggest(trial: TrialLike, space: Space) -> EngineParams:
    """Draw one config. Fixed (single-choice) parameters are set without asking the sampler.

    ``max_num_batched_tokens`` is raised to what vLLM requires of the drawn config (at least
    ``max_num_seqs``, and at least ``max_model_len`` with chunked prefill off), as vLLM does for
    its own default: the space never proposes a config vLLM refuses on these rules, and every
    drawn value below the floor means the same config, a flat region the sampler learns quickly.
    The recorded trial param keeps the drawn value; the server gets the raised one.
    """
    share = space.memory_share
    if share.low == share.high:
        mem = share.low
    else:
        mem = trial.suggest_float("kv_cache_gib" if space.device == "cpu" else "gpu_memory_utilization",
                                  share.low, share.high, step=share.step)
    spec = _cat(trial, "speculative", space.speculative)
    n_spec = lookup = None
    if spec != "off":
        n_spec = _int(trial, "num_speculative_tokens", space.num_speculative_tokens,
                      space.grids.get("num_speculative_tokens", ()))
        if spec == "ngram":
            lookup = _int(trial, "ngram_lookup_max", space.ngram_lookup_max, space.grids.get("ngram_lookup_max", ()))
    seqs = _int(trial, "max_num_seqs", space.max_num_seqs, space.grids.get("max_num_seqs", ()))
    mnbt = _int(trial, "max_num_batched_tokens", space.max_num_batched_tokens,
                space.grids.get("max_num_batched_tokens", ()))
    chunked = _cat(trial, "enable_chunked_prefill", space.enable_chunked_prefill)
    max_len = _cat(trial, "max_model_len", space.max_model_len)
    mnbt = max(mnbt, seqs, 0 if chunked else max_len)
    return EngineParams(
        max_num_seqs=seqs,
        max_num_batched_tokens=mnbt,
        gpu_memory_utilization=None if space.device == "cpu" else round(mem, 4),
        kv_cache_gib=mem if space.device == "cpu" else None,
        enable_chunked_prefill=chunked,
        enable_prefix_caching=_cat(trial, "enable_prefix_caching", space.enable_prefix_caching),
        quantization=_cat(trial, "quantization", space.quantization),
        dtype=_cat(trial, "dtype", space.dtype),
        kv_cache_dtype=_cat(trial, "kv_cache_dtype", space.kv_cache_dtype),
        max_model_len=max_len,
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
    the sampler and the plots can use it. A categorical default is included only where the
    configured choices hold it (Optuna fails an enqueued trial whose value is not a choice), and
    keys the space does not sample are ignored by Optuna."""
    s = cfg.search
    d = dict(cfg.hardware.vllm_defaults)
    if cfg.hardware.device == "cpu":
        d.setdefault("kv_cache_gib", cfg.hardware.cpu_kvcache_gib)
    for key, default in (("speculative", "off"), ("quantization", "none"), ("dtype", "auto"),
                         ("kv_cache_dtype", "auto"), ("tensor_parallel_size", 1),
                         ("max_model_len", cfg.model.max_model_len)):
        if default in getattr(s, key):
            d.setdefault(key, default)
    return d


_CHOICES = ("enable_chunked_prefill", "enable_prefix_caching", "quantization", "dtype", "kv_cache_dtype",
            "max_model_len", "tensor_parallel_size", "speculative")
_INTS = ("max_num_seqs", "max_num_batched_tokens", "num_speculative_tokens", "ngram_lookup_max")


def _seed_value_error(space: Space, name: str, value: Any) -> Optional[str]:
    """Why ``name=value`` cannot be enqueued in ``space`` (None: it can)."""
    if name in _CHOICES:
        choices = [c.value if hasattr(c, "value") else c for c in getattr(space, name)]
        if len(choices) < 2:
            return f"the space fixes {name} to {choices!r}: add choices to search.{name}"
        if str(value) not in [str(c) for c in choices]:
            return f"not one of search.{name}={choices!r}"
        return None
    if name in _INTS:
        r: IntRange = getattr(space, name)
        grid = space.grids.get(name, ())
        if r.low == r.high:
            return f"the space fixes {name} to {r.low}: widen search.{name}"
        if grid and value not in grid:
            return f"not on search.{name}'s grid {list(grid)}"
        if not (isinstance(value, int) and not isinstance(value, bool) and r.low <= value <= r.high):
            return f"not a whole number in search.{name} [{r.low}, {r.high}]"
        return None
    memory = "kv_cache_gib" if space.device == "cpu" else "gpu_memory_utilization"
    if name == memory:
        m = space.memory_share
        if m.low == m.high:
            return f"the space fixes {name} to {m.low}: widen search.{name}"
        if not (isinstance(value, (int, float)) and m.low <= value <= m.high):
            return f"not in search.{name} [{m.low}, {m.high}]"
        return None
    return f"not a search parameter; one of {', '.join(_CHOICES + _INTS + (memory,))}"


def seed_params(cfg: Config, space: Space) -> list[dict[str, Any]]:
    """``study.enqueue`` as Optuna params: each entry is vLLM's defaults (:func:`baseline_params`)
    with the entry's changes, so a seed measures one knob (or a few) against the baseline.

    Raises:
        ConfigError: an entry names a parameter the space does not sample, or a value outside it.
    """
    out = []
    for i, entry in enumerate(cfg.study.enqueue):
        if not entry:
            raise ConfigError(f"study.enqueue[{i}] is empty: give the changes from vLLM's defaults, e.g. "
                              f"{{quantization: fp8}}")
        for name, value in entry.items():
            why = _seed_value_error(space, name, value)
            if why:
                raise ConfigError(f"study.enqueue[{i}]: {name}={value!r} is {why}" if why.startswith("not")
                                  else f"study.enqueue[{i}]: {name}={value!r}: {why}")
        out.append({**baseline_params(cfg), **entry})
    return out


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
        broken.append(f"dtype bfloat16 needs compute capability >= {_BF16_MIN_CC} ({_cc(hw)})")
    if params.quantization not in (None, "none") and (why := _quant_problem(params.quantization, hw, model)):
        broken.append(why)
    if str(params.kv_cache_dtype or "").startswith("fp8") and not hw.supports_fp8_kv:
        broken.append(f"fp8 KV cache needs compute capability >= {_FP8_KV_MIN_CC} ({_cc(hw)})")
    seqs = params.max_num_seqs or defaults.max_num_seqs
    mnbt = params.max_num_batched_tokens or defaults.max_num_batched_tokens
    max_len = params.max_model_len or model.max_model_len
    if max_len > model.max_model_len:
        broken.append(f"max_model_len={max_len} exceeds the model's {model.max_model_len} (vLLM refuses this)")
    # the two scheduler rules of vLLM 0.32 (config/scheduler.py::verify_max_model_len)
    if seqs and mnbt and mnbt < seqs:
        broken.append(f"max_num_batched_tokens={mnbt} < max_num_seqs={seqs} (vLLM refuses this)")
    if params.enable_chunked_prefill is False and mnbt and mnbt < max_len:
        broken.append(f"chunked prefill off needs max_num_batched_tokens >= max_model_len "
                      f"({mnbt} < {max_len}; vLLM refuses this)")
    if params.tensor_parallel_size and (why := _tp_problem(params.tensor_parallel_size, hw, model)):
        broken.append(f"tensor_parallel_size={params.tensor_parallel_size}: {why}")
    if hw.device != "cpu" and not est.weights_fit:
        broken.append(f"weights {est.weights_gib:.1f} GiB do not fit the memory share "
                      f"{est.budget_gib:.1f} GiB per GPU")
    elif not est.fits:
        broken.append(f"estimated KV cache {est.kv_tokens} tokens < max_model_len {est.max_model_len} "
                      f"(budget {est.budget_gib:.1f} GiB, weights {est.weights_gib:.1f} GiB, "
                      f"activations {est.activation_gib:.1f} GiB)")
    return broken, est
