"""The search knobs: one table, from which everything else about a knob is derived.

A knob is a vLLM engine option the study tunes. It is declared once, as a field of
:class:`EngineParams` (the typed config of one server) whose metadata is a :class:`Knob`:
its kind, its default search domain, the vLLM option it renders to, whether it changes the
numbers the model computes, whether the memory estimate reads it, vLLM's own default, and
the values vLLM refuses with other knobs. Derived from the table, never written again:

- ``search.<knob>`` in the Hydra schema and its default (:mod:`optimizer.settings.search_config`), and
  the checks of its domain (``validate_search`` there);
- the study's space, the draw of one config, the seeds' checks and the rules a config breaks
  (:mod:`optimizer.space.search_space`), the command line (:func:`optimizer.space.engine_args.render`);
- the quality gate's list of numerics parameters (:data:`NUMERICS_PARAMS`), the memory
  estimate's inputs (:func:`memory_inputs`);
- the resume fingerprint: a knob a stored study lacks is the same study when the current
  domain is the knob's default, which leaves vLLM's default (:func:`predates_ok`).

A new knob's default domain must therefore be vLLM's own (a single neutral choice such as
``None``): studies made before it existed ran without its flag. Pure; no I/O.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Optional

from optimizer.settings.choices import SpecMethod

__all__ = ["EngineParams", "FloatRange", "Frozen", "IntRange", "KNOBS", "Kind", "Knob", "NUMERICS_PARAMS",
           "Refusal", "knob", "knobs_of", "memory_inputs", "predates_ok"]


class Frozen:
    """Assignment after construction raises, as for ``@dataclass(frozen=True)``.

    The config schemas use this instead of ``frozen=True``: OmegaConf marks the node of a
    frozen dataclass read-only, and Hydra then cannot merge the YAML files and overrides into
    it. Build a changed copy with ``dataclasses.replace``."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "_sealed", True)

    def __setattr__(self, name: str, value: Any) -> None:
        if getattr(self, "_sealed", False):
            raise dataclasses.FrozenInstanceError(
                f"cannot assign to field {name!r} of {type(self).__name__}: the config is frozen; "
                f"build a changed copy with dataclasses.replace")
        object.__setattr__(self, name, value)

    def __delattr__(self, name: str) -> None:
        raise dataclasses.FrozenInstanceError(f"cannot delete field {name!r} of {type(self).__name__}")


@dataclass
class IntRange(Frozen):
    low: int = 1
    high: int = 1
    log: bool = True
    step: int = 1  # > 1: only low, low + step, ... (no log scale); fewer distinct values, e.g.
    # fewer torch.compile cache keys: vLLM compiles anew for each max_num_batched_tokens
    # "pow2": only low, the powers of two between, high (and vLLM's default where it lies in the
    # range), drawn as choices: the values repeat, so the compile cache answers most starts
    # (optimizer/space/grid.py); "": every integer (or every step)
    grid: str = ""


@dataclass
class FloatRange(Frozen):
    low: float = 0.5
    high: float = 0.5
    step: Optional[float] = None


class Kind(str, Enum):
    int = "int"  # an IntRange (log scale, a step or a pow2 grid)
    float = "float"  # a FloatRange
    choice = "choice"  # a list of values (bool, str, int, or None for "vLLM's default")


@dataclass(frozen=True)
class Refusal:
    """vLLM refuses ``knob=value`` together with ``other`` in ``others`` (``check`` says so before a start)."""

    value: Any
    other: str
    others: tuple[Any, ...]
    why: str


@dataclass(frozen=True)
class Knob:
    kind: Kind
    search: Any  # the default domain: IntRange, FloatRange, or a tuple of choices
    item: Any = None  # Kind.choice: the type of one choice (the schema's list[item])
    # the option in the `vllm serve` YAML (and as --flag); "" where render writes it with code of its own
    flag: str = ""
    neutral: tuple[Any, ...] = (None,)  # values that leave vLLM's default: no flag
    numerics: bool = False  # changes the numbers the model computes: the quality gate probes it
    memory: bool = False  # the memory estimate reads it
    vllm_default: Any = None  # vLLM's value without the flag; a dict: per device; None: hardware.vllm_defaults
    devices: tuple[str, ...] = ("cuda", "cpu")  # where it is searched (elsewhere: left to vLLM)
    when: Optional[tuple[str, tuple[Any, ...]]] = None  # drawn only while another knob takes one of these
    refuses: tuple[Refusal, ...] = ()
    bounds: tuple[float, float] = (0.0, float("inf"))  # Kind.float: low > bounds[0] and high <= bounds[1]
    empty_ok: bool = False  # Kind.choice: an empty list is allowed (max_model_len: the model's)
    identity: str = ""  # its key in the resume fingerprint; "": its name
    name: str = ""  # the field's name (filled in by knobs_of)

    def default_on(self, device: str) -> Any:
        return self.vllm_default.get(device) if isinstance(self.vllm_default, dict) else self.vllm_default

    def default_domain(self) -> Any:
        """The schema's default for ``search.<name>`` (a fresh object: lists are mutable)."""
        return list(self.search) if self.kind == Kind.choice else dataclasses.replace(self.search)


def knob(kind: Kind, search: Any, **kw: Any) -> Any:
    """An :class:`EngineParams` field that is a search knob (default None: vLLM's default)."""
    return field(default=None, metadata={"knob": Knob(kind, search, **kw)})


_SPEC = ("ngram", "draft")
_MEM_SHARE = "memory_share"  # one axis of the space: the GPU memory share, or the CPU backend's KV GiB


@dataclass(frozen=True)
class EngineParams:
    """One server's engine parameters and, in the fields' metadata, the table of search knobs.
    ``None`` means "leave vLLM's default"; the baseline trial is ``EngineParams()``. The field
    order is the order knobs are drawn and rendered."""

    gpu_memory_utilization: Optional[float] = knob(
        Kind.float, FloatRange(0.80, 0.95, 0.01), flag="gpu_memory_utilization", memory=True, devices=("cuda",),
        bounds=(0.0, 1.0), identity=_MEM_SHARE)
    # explicit KV cache size (the CPU backend's memory share), rendered as kv_cache_memory_bytes
    kv_cache_gib: Optional[float] = knob(Kind.float, FloatRange(1.0, 4.0, 0.5), memory=True, devices=("cpu",),
                                         identity=_MEM_SHARE)
    speculative: Optional[str] = knob(Kind.choice, (SpecMethod.off,), item=SpecMethod, neutral=(None, "off"),
                                      numerics=True, vllm_default="off")  # off | ngram | draft (spec_config)
    num_speculative_tokens: Optional[int] = knob(Kind.int, IntRange(1, 6, False), numerics=True,
                                                 when=("speculative", _SPEC))
    ngram_lookup_max: Optional[int] = knob(Kind.int, IntRange(2, 6, False), numerics=True,
                                           when=("speculative", ("ngram",)))
    max_num_seqs: Optional[int] = knob(Kind.int, IntRange(4, 256, True, grid="pow2"), flag="max_num_seqs",
                                       memory=True)
    max_num_batched_tokens: Optional[int] = knob(Kind.int, IntRange(256, 8192, True, grid="pow2"),
                                                 flag="max_num_batched_tokens", memory=True)
    enable_chunked_prefill: Optional[bool] = knob(Kind.choice, (True, False), item=bool,
                                                  flag="enable_chunked_prefill")
    max_model_len: Optional[int] = knob(Kind.choice, (), item=int, flag="max_model_len", memory=True,
                                        empty_ok=True)  # empty: the model's max_model_len
    enable_prefix_caching: Optional[bool] = knob(Kind.choice, (True, False), item=bool,
                                                 flag="enable_prefix_caching")
    # None/"none": the checkpoint as it is; the flag comes from the model's folder (render)
    quantization: Optional[str] = knob(Kind.choice, ("none",), item=str, neutral=(None, "none"), numerics=True,
                                       memory=True, vllm_default="none")
    dtype: Optional[str] = knob(Kind.choice, ("auto",), item=str, flag="dtype", neutral=(None, "auto"),
                                numerics=True, memory=True, vllm_default="auto")
    kv_cache_dtype: Optional[str] = knob(Kind.choice, ("auto",), item=str, flag="kv_cache_dtype",
                                         neutral=(None, "auto"), numerics=True, memory=True, vllm_default="auto")
    tensor_parallel_size: Optional[int] = knob(Kind.choice, (1,), item=int, flag="tensor_parallel_size",
                                               memory=True, vllm_default=1)
    # the engine core schedules step n+1 while the GPU runs step n (vLLM 0.26/0.32 --async-scheduling).
    # vLLM's default (None) turns it on where it can: on GPUs unless speculative decoding other than
    # EAGLE/MTP/draft/ngram_gpu is on; the CPU platform always turns it off (0.32: the flag is taken, and
    # resolved to False). Not drawn with the n-gram proposer, which vLLM refuses with it on
    async_scheduling: Optional[bool] = knob(
        Kind.choice, (None,), item=Optional[bool], flag="async_scheduling", vllm_default={"cuda": True, "cpu": False},
        when=("speculative", (None, "off", "draft")),
        refuses=(Refusal(True, "speculative", ("ngram",), "async scheduling runs with EAGLE/MTP/draft-model "
                                                            "speculation only, not the n-gram proposer"),))
    # not searched: set with the knobs above
    ngram_lookup_min: Optional[int] = None
    draft_model: Optional[str] = None

    def as_dict(self) -> dict[str, Any]:
        """The parameters that are set (not None)."""
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "EngineParams":
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in names})


def knobs_of(params_type: type = EngineParams) -> tuple[Knob, ...]:
    """The knob table of ``params_type`` (EngineParams or a subclass that adds knobs), in field order."""
    return tuple(dataclasses.replace(f.metadata["knob"], name=f.name) for f in dataclasses.fields(params_type)
                 if "knob" in f.metadata)


KNOBS = knobs_of(EngineParams)

# engine parameters that change the numbers a model computes; the last two come with speculative
NUMERICS_PARAMS = tuple(k.name for k in KNOBS if k.numerics) + ("ngram_lookup_min", "draft_model")


def memory_inputs(params: EngineParams) -> EngineParams:
    """``params`` with only the knobs the memory estimate reads (the rest: vLLM's default)."""
    keep = {k.name for k in knobs_of(type(params)) if k.memory}
    return dataclasses.replace(params, **{f.name: None for f in dataclasses.fields(params)
                                          if f.name not in keep and getattr(params, f.name) is not None})


def predates_ok(name: str, value: Any, device: str, params_type: type = EngineParams) -> bool:
    """Whether a stored study without knob ``name`` in its space's fingerprint is the same study as
    one whose domain for it is ``value`` (JSON form): yes when that is the knob's default domain,
    since a new knob's default leaves vLLM's default, as the study did before the knob existed."""
    for k in knobs_of(params_type):
        if (k.identity or k.name) == name and device in k.devices:
            default = k.default_domain()
            as_json = list(default) if k.kind == Kind.choice else dataclasses.asdict(default)
            return bool(as_json == value)
    return False
