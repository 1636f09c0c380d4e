"""``search``: the search space as configured, and its checks, derived from the knob table.

The schema has a few fields of its own (the sampler, the draft model) and one field per knob
of :mod:`optimizer.settings.knobs`, typed by the knob's kind (``IntRange``, ``FloatRange`` or a list of
choices) with the knob's default domain as its default: each default is written once, in the
table. Hydra checks the types at compose time; :func:`validate_search` checks what types cannot
say (inverted ranges, empty choice lists, a grid with a step). Empty choice lists and degenerate
ranges fix a parameter.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Optional

from optimizer.core.errors import ConfigError
from optimizer.settings.choices import Sampler
from optimizer.settings.knobs import EngineParams, FloatRange, Frozen, IntRange, Kind, Knob, knobs_of

__all__ = ["SearchConfig", "search_config_type", "validate_search"]


@dataclass
class SearchBase(Frozen):
    """The fields of ``search`` that are not knobs."""

    version: int = 1
    sampler: Sampler = Sampler.tpe
    n_startup_trials: int = 4
    draft_model: str = ""  # speculative=draft: the draft model's local directory
    # memory the estimate must leave free for activations, as a fraction of the memory share
    activation_reserve: float = 0.08


def _field_type(k: Knob) -> Any:
    if k.kind == Kind.int:
        return IntRange
    if k.kind == Kind.float:
        return FloatRange
    return list[k.item]  # type: ignore[name-defined]


def search_config_type(params_type: type = EngineParams) -> type:
    """The ``search`` schema: :class:`SearchBase` plus one field per knob of ``params_type``."""
    fields = [(k.name, _field_type(k), dataclasses.field(default_factory=k.default_domain))
              for k in knobs_of(params_type)]
    return dataclasses.make_dataclass("SearchConfig", fields, bases=(SearchBase,))


if TYPE_CHECKING:
    class SearchConfig(SearchBase):
        """The knob fields are made from the table at import; to the type checker they are Any."""

        def __getattr__(self, name: str) -> Any: ...
else:
    SearchConfig = search_config_type()
    SearchConfig.__module__ = __name__
    SearchConfig.__doc__ = "The search space as configured: SearchBase's fields plus one per knob (settings.knobs)."


def _fail(key: str, value: object, what: str) -> None:
    raise ConfigError(f"{key}={value!r}: {what}")


def _check_int(key: str, r: IntRange) -> None:
    if r.low < 1:
        _fail(f"{key}.low", r.low, "must be >= 1")
    if r.low > r.high:
        _fail(key, f"[{r.low}, {r.high}]", "inverted range: low must be <= high")
    if r.step < 1 or (r.step > 1 and r.log):
        _fail(f"{key}.step", r.step, "must be >= 1, and 1 with log: true (Optuna cannot combine them)")
    if r.grid not in ("", "pow2"):
        _fail(f"{key}.grid", r.grid, "must be pow2 (powers of two between low and high) or empty")
    if r.grid and r.step > 1:
        _fail(f"{key}.grid", r.grid, f"a grid replaces step={r.step}: set one of them")


def _check_float(key: str, r: FloatRange, k: Knob) -> None:
    lo, hi = k.bounds
    if not (lo < r.low <= hi and lo < r.high <= hi):
        _fail(key, f"[{r.low}, {r.high}]", f"must lie in ({lo:g}, {hi:g}]")
    if r.low > r.high:
        _fail(key, f"[{r.low}, {r.high}]", "inverted range: low must be <= high")


def _check_choices(key: str, values: list[Any], k: Knob) -> None:
    if not values and not k.empty_ok:
        _fail(key, [], "the choice list is empty: give at least one choice")
    if k.item is not None and k.item is not Any:
        allowed = _allowed(k)
        bad = [v for v in values if allowed and v not in allowed]
        if bad:
            _fail(key, values, f"{bad[0]!r} is not a choice; valid choices: {', '.join(map(_yaml, allowed))} "
                  f"(null: vLLM's default)")


def _yaml(value: Any) -> str:
    """``value`` as YAML spells it (null, true, false)."""
    if value is None:
        return "null"
    return str(value).lower() if isinstance(value, bool) else str(value)


def _allowed(k: Knob) -> tuple[Any, ...]:
    """The closed set of a choice knob's values (empty: any value of its type)."""
    if k.item == Optional[bool]:
        return (None, True, False)
    if k.item is bool:
        return (True, False)
    return ()


def validate_search(s: Any, params_type: type = EngineParams) -> None:
    """Check ``search`` (a :data:`SearchConfig`) against the knob table. Raises ConfigError naming the key."""
    for k in knobs_of(params_type):
        key, value = f"search.{k.name}", getattr(s, k.name)
        if k.kind == Kind.int:
            _check_int(key, value)
        elif k.kind == Kind.float:
            _check_float(key, value, k)
        else:
            _check_choices(key, list(value), k)
    if "draft" in s.speculative and not s.draft_model:
        _fail("search.draft_model", "", "speculative 'draft' needs search.draft_model (a local directory)")
    if not 0 <= s.activation_reserve < 1:
        _fail("search.activation_reserve", s.activation_reserve, "a share of the memory in [0, 1), e.g. 0.08")
