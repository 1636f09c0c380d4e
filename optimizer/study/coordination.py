"""Several workers on one study, coordinated through the study's storage and nothing else.

Optuna's RDB storage hands out the trials: ``SELECT ... FOR UPDATE`` pops each enqueued trial
for exactly one worker, and the heartbeat fails a trial whose worker went silent (a dead host, a
SIGKILL) so that the next worker to look retries it (:class:`~optimizer.study.storage.RetryStaleTrial`).
What this module adds on top, each race-free:

- :func:`advisory_lock`: a database-wide lock; opening a study holds it, so that hosts starting
  together on a fresh database do not both create Optuna's tables (which fails on PostgreSQL);

- :func:`enqueue_baseline_once`: the vLLM-defaults trial exists once, even when several hosts
  start at the same moment (a PostgreSQL advisory lock around the check and the enqueue; SQLite
  needs none, its file lock admits one process);
- :func:`in_flight` and :func:`fail_stale`: the budget counts finished trials plus the ones other
  live workers are running, so the workers stop together near ``study.n_trials``;
- :class:`WorkerLock`: one process per worker name on a host, so a restarted worker may fail the
  trials its killed predecessor left RUNNING at once instead of waiting for the grace period.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import re
import warnings
from pathlib import Path
from typing import Any, Iterator

import optuna
from optuna.trial import TrialState

from optimizer.study.filelock import ExclusiveFileLock

__all__ = ["WorkerLock", "advisory_lock", "enqueue_baseline_once", "enqueue_seeds_once", "fail_stale", "in_flight"]

log = logging.getLogger(__name__)


def _lock_key(name: str) -> int:
    """A signed 64-bit key for ``pg_advisory_xact_lock``, stable across hosts and runs."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)


@contextlib.contextmanager
def advisory_lock(url: str, name: str) -> Iterator[bool]:
    """Hold a database-wide lock named ``name`` for the block, where the database has one.

    PostgreSQL: ``pg_advisory_xact_lock`` in a transaction of a connection of its own, released
    at the end of the block (also when the block raises, or when this process dies). SQLite:
    nothing to do (the study file is locked for the run). Other databases: no lock; yields False.
    """
    import sqlalchemy
    from sqlalchemy.pool import NullPool

    backend = sqlalchemy.engine.make_url(url).get_backend_name()
    if backend == "sqlite":
        yield True
        return
    if backend != "postgresql":
        log.warning("study.storage is %s: no advisory lock there; hosts starting at the same moment might both "
                    "do '%s'", backend, name)
        yield False
        return
    engine = sqlalchemy.create_engine(url, poolclass=NullPool)
    try:
        with engine.begin() as conn:
            conn.execute(sqlalchemy.text("SELECT pg_advisory_xact_lock(:k)"), {"k": _lock_key(name)})
            yield True
    finally:
        engine.dispose()


def enqueue_baseline_once(study: optuna.Study, url: str, params: dict[str, Any]) -> bool:
    """Enqueue the baseline trial unless the study has (or had) one. Returns True if this call
    enqueued it. Safe when several processes call it at once on one PostgreSQL study."""
    with advisory_lock(url, f"vllm-optimizer:baseline:{study.study_name}"):
        if study.user_attrs.get("baseline_enqueued"):
            return False
        if any(t.user_attrs.get("kind") == "baseline" for t in study.get_trials(deepcopy=False)):
            study.set_user_attr("baseline_enqueued", True)
            return False
        study.enqueue_trial(params, user_attrs={"kind": "baseline"})
        study.set_user_attr("baseline_enqueued", True)
        return True


SEEDS_ATTR = "seeds_enqueued"


def enqueue_seeds_once(study: optuna.Study, url: str, seeds: list[dict[str, Any]]) -> int:
    """Enqueue each ``study.enqueue`` config (as params) that this study has not enqueued before,
    after the baseline; returns how many this call enqueued. A seed added to the command of a
    resumed study is enqueued then; one already measured is not measured again."""
    with advisory_lock(url, f"vllm-optimizer:seeds:{study.study_name}"):
        done = [dict(d) for d in study.user_attrs.get(SEEDS_ATTR, [])]
        new = [p for p in seeds if p not in done]
        for p in new:
            study.enqueue_trial(p, user_attrs={"kind": "seed"}, skip_if_exists=True)
        if new:
            study.set_user_attr(SEEDS_ATTR, done + new)
        return len(new)


def fail_stale(study: optuna.Study) -> None:
    """Fail trials whose worker stopped beating longer than the grace period ago and enqueue
    their retries (what ``study.optimize`` does before each trial; safe to race)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)


def in_flight(study: optuna.Study) -> int:
    """Trials running now (call :func:`fail_stale` first, or dead workers' trials count too)."""
    return len(study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)))


class WorkerLock(ExclusiveFileLock):
    """An exclusive lock that one process holds while it runs as worker ``worker`` of a study.

    The file lives in this host's pid directory; the kernel releases the lock when the holder
    dies, however it dies.
    """

    def __init__(self, directory: Path, study_name: str, worker: str) -> None:
        safe = re.sub(r"[^A-Za-z0-9_.-]", "_", f"{study_name}--{worker}")
        super().__init__(Path(directory) / f"worker-{safe}.lock")
        self.worker = worker

    def busy_message(self, holder: str) -> str:
        return (f"worker {self.worker} of this study is already running on this host ({holder}, lock "
                f"{self.path}). Wait for it, or start this one under another name (study.host=<name>).")

