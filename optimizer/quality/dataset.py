"""The fixed, versioned quality set: reference passages (teacher-forced distributions), prompts
(greedy answers: the exactness check of speculative decoding) and tasks (exactly checkable answers).

The set ships in the package (``optimizer/quality/data/<name>.json``), was written for this
project (public domain), and is never edited once released: a change is a new file, a new name.
Its sha256 travels with every score, so two scores are compared only when they were measured on
the same bytes.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from optimizer.core.errors import ConfigError

__all__ = ["DATA_DIR", "QualityPrompt", "QualitySet", "QualityTask", "QualityText", "available_sets", "load_set"]

DATA_DIR = Path(__file__).with_name("data")


@dataclass(frozen=True)
class QualityText:
    """A reference passage, scored by teacher-forced log-likelihood."""

    id: str
    text: str


@dataclass(frozen=True)
class QualityPrompt:
    """A prompt whose greedy continuation is compared token by token with the reference's.
    ``kind`` is ``copy`` (the answer repeats the prompt: where n-gram speculation accepts) or
    ``open``."""

    id: str
    kind: str
    prompt: str


@dataclass(frozen=True)
class QualityTask:
    """A few-shot completion prompt whose greedy answer's first line must equal ``answer``."""

    id: str
    kind: str  # arithmetic | copy | format | lookup
    prompt: str
    answer: str


@dataclass(frozen=True)
class QualitySet:
    name: str
    version: int
    sha256: str  # of the file's bytes
    texts: tuple[QualityText, ...]
    prompts: tuple[QualityPrompt, ...]
    tasks: tuple[QualityTask, ...] = ()  # none in quality-v1


def available_sets() -> list[str]:
    return sorted(p.stem for p in DATA_DIR.glob("*.json"))


def load_set(name: str = "quality-v2") -> QualitySet:
    """The quality set ``name`` shipped with the package.

    Raises:
        ConfigError: no such set (the message lists the ones there are), or the file is malformed.
    """
    path = DATA_DIR / f"{name}.json"
    if not path.is_file():
        raise ConfigError(f"quality.dataset={name!r}: no such quality set; available: {', '.join(available_sets())}")
    raw = path.read_bytes()
    try:
        data = json.loads(raw)
        texts = tuple(QualityText(str(t["id"]), str(t["text"])) for t in data["texts"])
        prompts = tuple(QualityPrompt(str(p["id"]), str(p["kind"]), str(p["prompt"])) for p in data["prompts"])
        tasks = tuple(QualityTask(str(t["id"]), str(t["kind"]), str(t["prompt"]), str(t["answer"]))
                      for t in data.get("tasks", ()))
        qset = QualitySet(str(data["name"]), int(data["version"]), hashlib.sha256(raw).hexdigest(), texts, prompts,
                          tasks)
    except (KeyError, TypeError, ValueError) as exc:
        raise ConfigError(f"{path}: not a quality set ({exc!r})") from exc
    ids = [t.id for t in texts] + [p.id for p in prompts] + [t.id for t in tasks]
    if qset.name != name or not texts or not prompts or len(set(ids)) != len(ids):
        raise ConfigError(f"{path}: name must be {name!r}, with texts and prompts and unique ids")
    return qset
