"""User-attr values and the Python values they stand for: the one place that knows NaN is
stored as ``None`` (JSON has no NaN), and how a damaged or older attr reads (absent, None, a
bool or a string where a number belongs: NaN or the default, never an exception)."""

from __future__ import annotations

import json
import math
from typing import Any, Mapping, Optional

Attrs = Mapping[str, Any]


def attr_value(v: Any, digits: Optional[int] = None) -> Any:
    """A Python value as a user attr: non-finite floats become None (JSON has no NaN)."""
    if isinstance(v, float):
        if not math.isfinite(v):
            return None
        return round(v, digits) if digits is not None else v
    return v


def num(a: Attrs, key: str) -> float:
    """A numeric attr; NaN when absent, None, a bool or not a number."""
    v = a.get(key)
    if isinstance(v, bool) or v is None:
        return math.nan
    try:
        return float(v)
    except (TypeError, ValueError):
        return math.nan


def integer(a: Attrs, key: str, default: int = 0) -> int:
    v = a.get(key)
    return int(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else default


def text(a: Attrs, key: str) -> str:
    v = a.get(key)
    return "" if v is None else str(v)


def json_value(a: Attrs, key: str, default: Any) -> Any:
    """A JSON-string attr; ``default`` when absent, unreadable or of another type."""
    raw = a.get(key)
    try:
        v = json.loads(raw) if isinstance(raw, str) else raw
    except ValueError:
        return default
    return v if isinstance(v, type(default)) else default


def has_any(a: Attrs, keys: Any) -> bool:
    return any(k in a for k in keys)
