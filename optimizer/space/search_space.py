"""The search space: which engine parameters a trial may take on this hardware and model.

Pure. Every knob of the table (:mod:`optimizer.settings.knobs`) searched on this device is a domain of
the :class:`Space`; :func:`build_space` keeps the choices the hardware and model can run
(:mod:`optimizer.space.capability`) and refuses a space in which no config can fit in memory
(:func:`check_space_fits`). :func:`suggest` draws one :class:`EngineParams` from an Optuna trial,
knob by knob; conditional knobs (speculative decoding's) are drawn only when they apply, and the
study uses TPE with ``group=True`` so the sampler still models them jointly. :func:`check` lists
the rules a config breaks, so a hopeless server is never started.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Optional, Protocol

from optimizer.core.errors import ConfigError
from optimizer.settings.config import Config, FloatRange, IntRange
from optimizer.settings.knobs import EngineParams, Kind, knobs_of
from optimizer.space.capability import BF16_MIN_CC, FP8_KV_MIN_CC, cc, quant_problem, runnable_choices, tp_problem
from optimizer.space.grid import grid_values
from optimizer.space.memory import MemoryEstimate, estimate_memory, kv_bytes_per_token, weights_gib

__all__ = ["Space", "TrialLike", "baseline_params", "build_space", "check", "check_space_fits", "seed_params",
           "memory_friendliest", "suggest"]


class TrialLike(Protocol):
    def suggest_int(self, name: str, low: int, high: int, *, step: int = 1, log: bool = False) -> int: ...

    def suggest_float(self, name: str, low: float, high: float, *, step: Optional[float] = None,
                      log: bool = False) -> float: ...

    def suggest_categorical(self, name: str, choices: Any) -> Any: ...


@dataclass(frozen=True)
class Space:
    """The resolved space of one study (hardware and model applied): a domain per knob searched on
    this device (an IntRange, a FloatRange or a tuple of choices), read as ``space.<knob>``."""

    device: str
    domains: dict[str, Any]
    draft_model: str = ""
    # parameters drawn as choices from a grid (search.<name>.grid): name -> the values, ascending
    grids: dict[str, tuple[int, ...]] = field(default_factory=dict)
    params_type: type = EngineParams  # the knob table (EngineParams, or a subclass that adds knobs)

    def __getattr__(self, name: str) -> Any:
        domains = self.__dict__.get("domains")
        if domains is None or name not in domains:
            raise AttributeError(f"{type(self).__name__} has no knob {name!r}")
        return domains[name]

    @property
    def memory_share(self) -> FloatRange:
        """gpu_memory_utilization on GPUs, the KV GiB on the CPU backend."""
        return self.domains["kv_cache_gib" if self.device == "cpu" else "gpu_memory_utilization"]

    def int_low(self, name: str) -> int:
        """The smallest value integer parameter ``name`` may take."""
        values = self.grids.get(name)
        return values[0] if values else int(self.domains[name].low)

    def identity(self) -> dict[str, Any]:
        """The space as the resume fingerprint stores it: each knob under its identity key."""
        out: dict[str, Any] = {"device": self.device, "draft_model": self.draft_model, "grids": dict(self.grids)}
        for k in knobs_of(self.params_type):
            if k.name in self.domains:
                d = self.domains[k.name]
                out[k.identity or k.name] = list(d) if k.kind == Kind.choice else dataclasses.asdict(d)
        return out


def build_space(cfg: Config, params_type: type = EngineParams) -> Space:
    """The study's space: configured choices minus what this hardware and model cannot run.
    ``params_type`` is the knob table (a subclass of EngineParams adds knobs; ``cfg.search`` then
    holds their domains: optimizer.settings.search_config.search_config_type).

    Raises:
        ConfigError: a choice list ends up empty, ``hardware=auto`` was not resolved, or no
            config of the space fits in memory (:func:`check_space_fits`).
    """
    s, hw = cfg.search, cfg.hardware
    if hw.name == "auto":
        raise ConfigError("hardware=auto was not resolved into a preset: the entry point does that "
                          "(optimizer.commands.hardware_auto.resolve_hardware_overrides). Name a preset instead.")
    domains = {k.name: tuple(getattr(s, k.name)) if k.kind == Kind.choice else getattr(s, k.name)
               for k in knobs_of(params_type) if hw.device in k.devices}
    domains.update(runnable_choices(s, hw, cfg.model))
    space = Space(device=hw.device, domains=domains, draft_model=s.draft_model, grids=_grids(cfg, domains),
                  params_type=params_type)
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


def _grids(cfg: Config, domains: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    defaults = cfg.hardware.vllm_defaults
    out = {}
    for name, r in domains.items():
        default = defaults.get(name)
        if isinstance(r, IntRange) and (values := grid_values(r, [default] if isinstance(default, int) else [])):
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


def _draw(trial: TrialLike, name: str, domain: Any, grid: tuple[int, ...]) -> Any:
    if isinstance(domain, IntRange):
        return _int(trial, name, domain, grid)
    if isinstance(domain, FloatRange):
        value = domain.low if domain.low == domain.high else trial.suggest_float(
            name, domain.low, domain.high, step=domain.step)
        return round(value, 4)
    return domain[0] if len(domain) == 1 else trial.suggest_categorical(name, list(domain))


def suggest(trial: TrialLike, space: Space) -> EngineParams:
    """Draw one config, knob by knob in the table's order. Fixed (single-choice) parameters are set
    without asking the sampler; a knob with ``when`` is drawn only while the other knob allows it.

    ``max_num_batched_tokens`` is raised to what vLLM requires of the drawn config (at least
    ``max_num_seqs``, and at least ``max_model_len`` with chunked prefill off), as vLLM does for
    its own default: the space never proposes a config vLLM refuses on these rules, and every
    drawn value below the floor means the same config, a flat region the sampler learns quickly.
    The recorded trial param keeps the drawn value; the server gets the raised one.
    """
    v: dict[str, Any] = {}
    for k in knobs_of(space.params_type):
        if k.name in space.domains and (k.when is None or v.get(k.when[0]) in k.when[1]):
            v[k.name] = _draw(trial, k.name, space.domains[k.name], space.grids.get(k.name, ()))
    if v.get("max_num_batched_tokens") is not None:
        v["max_num_batched_tokens"] = max(v["max_num_batched_tokens"], v.get("max_num_seqs") or 0,
                                          0 if v.get("enable_chunked_prefill") is not False else v["max_model_len"])
    if v.get("ngram_lookup_max"):
        v["ngram_lookup_min"] = 1
    if v.get("speculative") == "draft":
        v["draft_model"] = space.draft_model
    return space.params_type(**v)


def baseline_params(cfg: Config) -> dict[str, Any]:
    """vLLM's defaults on this hardware as Optuna params: what the baseline trial records.

    The baseline server itself gets no tuning flag; these values only place it in the space so
    the sampler and the plots can use it. A categorical default is included only where the
    configured choices hold it (Optuna fails an enqueued trial whose value is not a choice), and
    keys the space does not sample are ignored by Optuna. Defaults come from hardware.vllm_defaults,
    then the knob table's (optimizer.settings.knobs)."""
    s, hw = cfg.search, cfg.hardware
    d = dict(hw.vllm_defaults)
    if hw.device == "cpu":
        d.setdefault("kv_cache_gib", hw.cpu_kvcache_gib)
    for k in knobs_of(EngineParams):
        default = cfg.model.max_model_len if k.name == "max_model_len" else k.default_on(hw.device)
        if k.kind == Kind.choice and default is not None and default in getattr(s, k.name):
            d.setdefault(k.name, default)
    return d


def _seed_value_error(space: Space, name: str, value: Any) -> Optional[str]:
    """Why ``name=value`` cannot be enqueued in ``space`` (None: it can)."""
    domain = space.domains.get(name)
    if isinstance(domain, tuple):
        choices = [c.value if hasattr(c, "value") else c for c in domain]
        if len(choices) < 2:
            return f"the space fixes {name} to {choices!r}: add choices to search.{name}"
        if str(value) not in [str(c) for c in choices]:
            return f"not one of search.{name}={choices!r}"
        return None
    if isinstance(domain, IntRange):
        grid = space.grids.get(name, ())
        if domain.low == domain.high:
            return f"the space fixes {name} to {domain.low}: widen search.{name}"
        if grid and value not in grid:
            return f"not on search.{name}'s grid {list(grid)}"
        if not (isinstance(value, int) and not isinstance(value, bool) and domain.low <= value <= domain.high):
            return f"not a whole number in search.{name} [{domain.low}, {domain.high}]"
        return None
    if isinstance(domain, FloatRange):
        if domain.low == domain.high:
            return f"the space fixes {name} to {domain.low}: widen search.{name}"
        if not (isinstance(value, (int, float)) and domain.low <= value <= domain.high):
            return f"not in search.{name} [{domain.low}, {domain.high}]"
        return None
    return f"not a search parameter; one of {', '.join(space.domains)}"


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


def _refused(params: EngineParams) -> list[str]:
    """The knob pairs of ``params`` that vLLM refuses (the table's ``refuses``)."""
    return [f"{k.name}={r.value} with {r.other}={getattr(params, r.other)}: {r.why} (vLLM refuses this)"
            for k in knobs_of(type(params)) for r in k.refuses
            if getattr(params, k.name) == r.value and getattr(params, r.other) in r.others]


def check(params: EngineParams, cfg: Config) -> tuple[list[str], MemoryEstimate]:
    """The rules ``params`` breaks on this hardware and model (empty: worth starting)."""
    hw, model = cfg.hardware, cfg.model
    defaults = defaults_as_params(cfg)
    est = estimate_memory(params, model, hw, defaults)
    broken: list[str] = []
    dtype = params.dtype if params.dtype not in (None, "auto") else None
    if dtype == "bfloat16" and not hw.supports_bf16:
        broken.append(f"dtype bfloat16 needs compute capability >= {BF16_MIN_CC} ({cc(hw)})")
    if params.quantization not in (None, "none") and (why := quant_problem(params.quantization, hw, model)):
        broken.append(why)
    if str(params.kv_cache_dtype or "").startswith("fp8") and not hw.supports_fp8_kv:
        broken.append(f"fp8 KV cache needs compute capability >= {FP8_KV_MIN_CC} ({cc(hw)})")
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
    if params.tensor_parallel_size and (why := tp_problem(params.tensor_parallel_size, hw, model)):
        broken.append(f"tensor_parallel_size={params.tensor_parallel_size}: {why}")
    broken += _refused(params)
    if hw.device != "cpu" and not est.weights_fit:
        broken.append(f"weights {est.weights_gib:.1f} GiB do not fit the memory share "
                      f"{est.budget_gib:.1f} GiB per GPU")
    elif not est.fits:
        broken.append(f"estimated KV cache {est.kv_tokens} tokens < max_model_len {est.max_model_len} "
                      f"(budget {est.budget_gib:.1f} GiB, weights {est.weights_gib:.1f} GiB, "
                      f"activations {est.activation_gib:.1f} GiB)")
    return broken, est
