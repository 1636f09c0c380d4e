"""A study meets another vLLM: said before anything starts, and kept apart from the old trials.

The engine installed for the server's interpreter (:func:`optimizer.server.engine.read_engine`) is
compared with the vLLM versions the study's trials recorded. On a change the log says so before
any server starts, names the flags of the study's servers that the installed vLLM's parser no longer
has (or marks deprecated, with its own note of what replaces them), and vLLM's defaults are measured
again on the new version (a new baseline trial). The ranking (:func:`optimizer.study.results.study_result`,
the confirmation's candidates and runs, the report) takes one version's trials; the old trials stay
in the study, where the sampler learns from them as a prior.

Every engine a study ran on is kept in the study's user attr ``engines`` (in order, with the first
trial that ran on it) and the latest in ``engine``.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Optional, Sequence

import optuna
from optuna.trial import FrozenTrial

from optimizer.server.engine import Engine, ServeFlags, removed_flags
from optimizer.study.coordination import advisory_lock
from optimizer.study.results import engine_versions, latest_version, trial_version

__all__ = ["ENGINE_ATTR", "ENGINES_ATTR", "VersionChange", "check_engine", "enqueue_baseline_for", "used_flags"]

log = logging.getLogger(__name__)

ENGINE_ATTR = "engine"
ENGINES_ATTR = "engines"

FlagReader = Callable[[str, Mapping[str, str]], Optional[ServeFlags]]


@dataclass(frozen=True)
class VersionChange:
    """The installed vLLM differs from the one the study's newest trials ran on."""

    before: tuple[str, ...]  # the versions the study's trials recorded, in order
    now: Engine
    n_other: int  # trials of other versions (set aside from the ranking)
    flags: Optional[tuple[str, ...]]  # flags removed/deprecated by the installed vLLM (None: not checked)

    def describe(self, name: str) -> str:
        lines = [f"study {name} was measured on vLLM {', '.join(self.before)}; the installed vLLM is "
                 f"{self.now.label()}. Its {self.n_other} trial(s) and confirmation run(s) of other versions stay "
                 f"in the study (the sampler's prior), but are not ranked with vLLM {self.now.vllm}'s: a search "
                 f"continued here measures vLLM's defaults again (a new baseline trial) and ranks the new trials "
                 f"among themselves; `python -m optimizer.revalidate study.name={name}` re-measures the study's "
                 f"answer on it."]
        if self.flags is None:
            lines.append("the study's flags could not be checked against the installed vLLM's parser.")
        elif self.flags:
            lines.append("flags of the study's servers that the installed vLLM's parser does not take as they were:")
            lines.extend(f"  {f}" for f in self.flags)
        else:
            lines.append("every flag the study's servers got is an option of the installed vLLM's parser.")
        return "\n".join(lines)


def used_flags(trials: Sequence[FrozenTrial]) -> set[str]:
    """The ``--flags`` of every recorded server command of ``trials``."""
    out: set[str] = set()
    for t in trials:
        try:
            argv = json.loads(t.user_attrs.get("server_argv") or "[]")
        except ValueError:
            continue
        out.update(a.split("=", 1)[0] for a in argv if isinstance(a, str) and a.startswith("--"))
    return out


def _remember(study: optuna.Study, engine: Engine, first_trial: int) -> None:
    engines: list[dict[str, Any]] = [dict(e) for e in study.user_attrs.get(ENGINES_ATTR, []) if isinstance(e, dict)]
    if not any(Engine.from_dict(e) == engine for e in engines):
        engines.append(engine.to_dict() | {"first_trial": first_trial, "since": time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                                                              time.gmtime())})
        study.set_user_attr(ENGINES_ATTR, engines)
    study.set_user_attr(ENGINE_ATTR, engine.to_dict())


def check_engine(study: optuna.Study, engine: Engine, python: str, env: Mapping[str, str],
                 read_flags: FlagReader) -> Optional[VersionChange]:
    """Compare the installed ``engine`` with the study's trials, before any server starts; log and
    return the change (None: the same version, a new study, or an engine that could not be read).
    The installed vLLM's parser (``read_flags``, run under ``python``) is read only on a change."""
    trials = study.get_trials(deepcopy=False)
    if not engine.known:
        log.warning("the vLLM installed for %s could not be read: the study cannot tell whether its trials ran on "
                    "the same version", python)
        return None
    _remember(study, engine, len(trials))
    before = engine_versions(trials)
    if not before or latest_version(trials) == engine.vllm:
        return None
    flags = read_flags(python, env)
    removed = tuple(removed_flags(used_flags(trials), flags)) if flags is not None else None
    change = VersionChange(tuple(before), engine, sum(1 for t in trials if trial_version(t) != engine.vllm), removed)
    log.warning("%s", change.describe(study.study_name))
    return change


def enqueue_baseline_for(study: optuna.Study, url: str, version: str, params: dict[str, Any]) -> bool:
    """Enqueue a baseline trial (vLLM's defaults) for ``version`` unless the study has one of it or
    has enqueued one for it; True if this call enqueued it."""
    key = f"baseline_enqueued:{version}"
    with advisory_lock(url, f"vllm-optimizer:baseline:{study.study_name}"):
        if study.user_attrs.get(key):
            return False
        study.set_user_attr(key, True)
        if any(t.user_attrs.get("kind") == "baseline" and trial_version(t) == version
               for t in study.get_trials(deepcopy=False)):
            return False
        study.enqueue_trial(params, user_attrs={"kind": "baseline"})
        return True
