"""Opening the study: storage URL, exclusive use of a SQLite file, identity checks, baseline.

A study is identified by its name; its fingerprint (search space, objective, workload, model,
hardware) is stored in ``study.user_attrs`` when it is created, and a later run with a different
fingerprint is refused rather than mixed into it. SQLite studies are held with an exclusive lock
for the run, so a second optimizer on the same file refuses at once instead of crashing on
"database is locked"; several workers need PostgreSQL (:mod:`optimizer.study.coordination`).
Every storage beats a heartbeat during a trial: a trial whose worker stops beating for
``study.heartbeat_grace_s`` is failed by the next worker to look and retried (:class:`RetryStaleTrial`).
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import re
import time
import warnings
from dataclasses import asdict
from pathlib import Path
from typing import Any, Optional

import optuna
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.trial import TrialState

from optimizer.core.errors import ConfigError, StudyError
from optimizer.record import Confirmation, Failure, Lineage, Setup
from optimizer.settings.config import Config, LoadConfig, WorkloadConfig
from optimizer.settings.knobs import KNOBS, predates_ok
from optimizer.study.coordination import advisory_lock
from optimizer.study.filelock import ExclusiveFileLock
from optimizer.trial import calibrate

__all__ = ["METRIC_NAME", "RetryStaleTrial", "StudyLock", "finished_count", "fingerprint", "load_study", "make_storage", "open_study",
           "reap_interrupted", "redact_url", "retry_trial", "sqlite_path"]

log = logging.getLogger(__name__)

# the objective's name in the study (optuna-dashboard labels the value with it, not "Objective 0")
METRIC_NAME = "output tokens/s"
# tries at opening a SQLite study file whose tables another process is creating (_schema_race)
SCHEMA_TRIES = 5


def sqlite_path(url: str) -> Optional[Path]:
    if not url.startswith("sqlite:///"):
        return None
    return Path(url[len("sqlite:///"):])


def _absolute_url(url: str) -> str:
    p = sqlite_path(url)
    if p is None:
        return url
    return "sqlite:///" + str(p.resolve())


def _normal(value: Any) -> Any:
    """JSON round trip: what the database gives back (tuples become lists, and so on)."""
    return json.loads(json.dumps(value, sort_keys=True, default=str))


def fingerprint(cfg: Config, space: Any) -> dict[str, Any]:
    """What must not change within one study (values the sampler and the comparison rely on)."""
    objective: dict[str, Any] = {"metric": cfg.slo.metric, "p99_ms": cfg.slo.p99_ms,
                                 "max_error_rate": cfg.slo.max_error_rate, "use_upper_bound": cfg.slo.use_upper_bound}
    if cfg.slo.is_auto:  # only then: studies made before the key existed keep their fingerprint
        objective["auto_factor"] = cfg.slo.auto_factor
    return _normal({
        "space": space.identity() if hasattr(space, "identity") else space,
        "search_version": cfg.search.version,
        "objective": objective,
        "workload": asdict(cfg.workload),
        "load": _load_identity(cfg.load),
        "model": cfg.model.name,
        "hardware": cfg.hardware.name,
    })


def _load_identity(load: LoadConfig) -> dict[str, Any]:
    """The load settings that define what a trial's value means; load.capacity.early_stop only
    decides how long a trial that cannot beat the incumbent keeps measuring (the record says so)."""
    d = asdict(load)
    d["capacity"].pop("early_stop", None)
    return d


_DEFAULTS = {"workload": _normal(asdict(WorkloadConfig(name=""))), "load": _normal(_load_identity(LoadConfig()))}


def fingerprint_diff(stored: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """Keys whose values differ. A key the stored study lacks (a setting added in a later version
    of this tool) differs only if its current value is that setting's default; in the space, a
    knob the study predates, only if its domain is not the knob's default (vLLM's own value)."""
    changed: list[str] = []
    for section, now in current.items():
        defaults = _DEFAULTS.get(section, {})
        if section == "space" and isinstance(now, dict):
            defaults = {k: v for k, v in now.items() if predates_ok(k, v, str(now.get("device", "")))}
        _diff(section, stored.get(section), now, defaults, changed)
    return changed


# settings added inside the search space's ranges after studies already existed
_RANGE_DEFAULTS: dict[str, tuple[Any, ...]] = {"step": (1, None), "grid": ("",), "grids": ({},)}


def _diff(path: str, before: Any, now: Any, defaults: dict[str, Any], out: list[str]) -> None:
    if isinstance(now, dict) and isinstance(before, dict):
        for key, value in now.items():
            if key in before:  # a nested section (load.capacity) tolerates its own new settings the same way
                nested = defaults.get(key)
                _diff(f"{path}.{key}", before[key], value, nested if isinstance(nested, dict) else {}, out)
            elif not (key in defaults and defaults[key] == value) and value not in _RANGE_DEFAULTS.get(key, ()):
                hint = _predates_hint(key) if path == "space" else ""
                out.append(f"{path}.{key} (new: {value!r}{hint})")
    elif before != now:
        out.append(f"{path} ({before!r} -> {now!r})")


def _predates_hint(name: str) -> str:
    for k in KNOBS:
        if k.name == name:
            default = json.dumps(_normal(k.default_domain()))
            return f"; the study predates this knob: search.{name}={default} runs it as it ran"
    return ""


class StudyLock(ExclusiveFileLock):
    """An exclusive, non-blocking lock beside a SQLite study file, held for the run."""

    def __init__(self, db: Path) -> None:
        super().__init__(db.with_name(db.name + ".lock"))

    def busy_message(self, holder: str) -> str:
        return (f"the study file {self.path.with_suffix('')} is in use by {holder}. SQLite holds one "
                f"optimizer at a time: wait for it to finish, or run parallel workers on PostgreSQL "
                f"(study.storage=postgresql://...).")


def _check_sqlite_file(db: Path) -> None:
    if not db.exists():
        return
    with open(db, "rb") as f:
        head = f.read(16)
    if head and head != b"SQLite format 3\x00":
        raise ConfigError(f"study.storage=sqlite:///{db}: this file is not a SQLite database. Point study.storage "
                          f"at a study database, or at a new file name to start a new study.")


class RetryStaleTrial(RetryHeartbeatStaleTrialCallback):
    """Optuna's heartbeat retry (system attrs ``failed_trial`` and ``retry_history``), plus this
    tool's retry user attrs (``attempt``, ``retry_of``, ``retry_reason``) and its retry limit
    (``study.max_retries``, counted in ``attempt`` like every other retry)."""

    def __init__(self, max_retries: int) -> None:
        super().__init__(max_retry=None)
        self.max_retries = max_retries

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        who = Setup.from_attrs(trial.user_attrs).worker or "its worker"
        lineage = Lineage.from_attrs(trial.user_attrs)
        tries = lineage.attempt
        if tries >= self.max_retries:
            log.warning("trial %d: %s stopped beating; failed, not retried (%d retries done, study.max_retries=%d)",
                        trial.number, who, tries, self.max_retries)
            return
        retry = copy.deepcopy(trial)
        retry.user_attrs = lineage.retry(trial.number,
                                             f"heartbeat: {who} stopped beating (host or worker died)").to_attrs()
        super().__call__(study, retry)
        log.warning("trial %d: %s stopped beating; failed and enqueued again", trial.number, who)


def make_storage(url: str, *, heartbeat: bool, interval_s: int = 30, grace_s: int = 180,
                 max_retries: int = 1) -> RDBStorage:
    """The RDB storage of ``url``; with ``heartbeat``, trials beat every ``interval_s`` and one
    silent for ``grace_s`` is failed and retried up to ``max_retries`` times."""
    url = _absolute_url(url)
    db = sqlite_path(url)
    if db is not None:
        db.parent.mkdir(parents=True, exist_ok=True)
        _check_sqlite_file(db)
    kwargs: dict[str, Any] = {"engine_kwargs": {"connect_args": {"timeout": 30}} if db is not None else {}}
    if heartbeat:
        # trial start can take minutes; the heartbeat thread beats during it, so the grace only has
        # to cover a stalled host
        kwargs.update(heartbeat_interval=interval_s, grace_period=grace_s,
                      heartbeat_stale_trial_callback=RetryStaleTrial(max_retries))
    for attempt in range(1, SCHEMA_TRIES + 1):
        try:
            return RDBStorage(url, **kwargs)
        except Exception as exc:  # sqlalchemy/alembic raise many types; the user needs one message
            if attempt < SCHEMA_TRIES and db is not None and _schema_race(exc):
                log.debug("study.storage: the schema was being created by another process (%s); again", exc)
                time.sleep(0.2 * attempt)
                continue
            raise ConfigError(f"study.storage={redact_url(url)!r} cannot be opened: {type(exc).__name__}: {exc}. "
                              f"Use sqlite:///path/to/file.db or postgresql://user:pass@host/db.") from exc
    raise AssertionError("unreachable")


def _schema_race(exc: Exception) -> bool:
    """Whether opening a SQLite study file failed because another process was creating its tables
    at that moment: Optuna's RDBStorage creates them (and stamps the alembic version) without a
    lock, so a reader such as ``optimizer.report`` or optuna-dashboard opening a study file while
    ``create_study`` runs fails one side or the other ("table ... already exists", a duplicate
    ``alembic_version`` row, "database is locked") in 6-15 of 30 tries (measured); the second try
    finds the tables made."""
    import sqlalchemy.exc

    return isinstance(exc, (sqlalchemy.exc.OperationalError, sqlalchemy.exc.IntegrityError)) or \
        "alembic" in type(exc).__module__ or "already exists" in str(exc)


def open_study(cfg: Config, space: Any, sampler: optuna.samplers.BaseSampler) -> optuna.Study:
    """Create or load the study and refuse one whose identity differs from ``cfg``."""
    st = cfg.study
    fp = fingerprint(cfg, space)
    # one process at a time creates the tables of a fresh database and the study's identity
    with _lock_or_config_error(st.storage, "vllm-optimizer:open-study"):
        storage = make_storage(st.storage, heartbeat=True, interval_s=st.heartbeat_interval_s,
                               grace_s=st.heartbeat_grace_s, max_retries=st.max_retries)
        try:
            study = optuna.create_study(study_name=cfg.study.name, storage=storage, direction="maximize",
                                        sampler=sampler, load_if_exists=True)
        except Exception as exc:
            raise ConfigError(f"study.storage={cfg.study.storage!r}: cannot open study {cfg.study.name!r}: "
                              f"{type(exc).__name__}: {exc}. Is it a study database of this tool?") from exc
        _check_identity(study, cfg, fp)
        if study.metric_names != [METRIC_NAME]:  # a new study, or one made before the name was set
            with warnings.catch_warnings():  # experimental since Optuna 3.2, and unchanged since
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                study.set_metric_names([METRIC_NAME])
    return study


def _lock_or_config_error(url: str, name: str) -> contextlib.ExitStack:
    """:func:`advisory_lock`, entered; a database that cannot be reached is a ConfigError."""
    import sqlalchemy.exc

    stack = contextlib.ExitStack()
    try:
        stack.enter_context(advisory_lock(_absolute_url(url), name))
    except (sqlalchemy.exc.SQLAlchemyError, ImportError) as exc:
        raise ConfigError(f"study.storage={redact_url(url)!r} cannot be opened: {type(exc).__name__}: {exc}. Check the "
                          f"host, port, user and database of the URL (postgresql://user:password@host:5432/db) "
                          f"and that the database server runs, or use sqlite:///path/to/file.db.") from exc
    return stack


def load_study(storage_url: str, name: str) -> optuna.Study:
    """Open an existing study read-only in spirit: a missing SQLite file is not created."""
    db = sqlite_path(storage_url)
    if db is not None and not db.exists():
        raise StudyError(f"no study database at {db}: run `python -m optimizer.run study.name={name}` first, "
                         f"or point study.storage at the database.")
    storage = make_storage(storage_url, heartbeat=False)
    try:
        return optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        names = optuna.get_all_study_names(storage)
        raise StudyError(f"no study named {name!r} in {storage_url}; it holds: "
                         f"{', '.join(names) or 'no studies'}. Pass study.name=<one of them>.") from None


def redact_url(url: str) -> str:
    """The storage URL without its password, for messages and logs."""
    return re.sub(r"(://[^:/@]+):[^@]*@", r"\1:***@", url)


def _check_identity(study: optuna.Study, cfg: Config, fp: dict[str, Any]) -> None:
    if study.direction != optuna.study.StudyDirection.MAXIMIZE:
        raise StudyError(f"study {cfg.study.name!r} minimizes; this tool maximizes throughput. Use another study.name.")
    stored = study.user_attrs.get("fingerprint")
    if stored is None:
        if study.trials:
            raise StudyError(f"study {cfg.study.name!r} in {cfg.study.storage} was not made by this tool "
                             f"(no fingerprint). Use another study.name.")
        study.set_user_attr("fingerprint", fp)
        snapshot = _normal(asdict(cfg))
        snapshot["study"]["storage"] = redact_url(cfg.study.storage)  # no database password in the record
        study.set_user_attr("config", snapshot)
    else:
        changed = _former_rule(study, fingerprint_diff(stored, fp))
        if changed:
            raise StudyError(
                f"study {cfg.study.name!r} was run with other settings: {'; '.join(changed)[:800]}. Mixing them "
                f"would compare unlike trials. Start a new version with study.name={cfg.study.name}-v2, or "
                f"restore the old settings.")


def _former_rule(study: optuna.Study, changed: list[str]) -> list[str]:
    """``changed`` without ``objective.auto_factor`` for a study calibrated by the former rule (the
    factor x the P99, before 2026-12-07): its stored limit governs it on resume, and today's factor (a
    multiple of the median) is another quantity, so the two do not compare; the log says so."""
    cal = calibrate.stored(study.user_attrs)
    factor = [c for c in changed if c.startswith("objective.auto_factor ")]
    if cal is None or cal.basis != "p99" or not factor:
        return changed
    log.warning("study %r was calibrated by the former rule (slo.auto_factor %g x the P99 of vLLM's defaults): its "
                "stored limit, %.0f ms, judges every trial on resume; slo.auto_factor (today a multiple of the median) "
                "does not apply to it. Start a new study.name for the new rule.", study.study_name, cal.factor,
                cal.slo_ms)
    return [c for c in changed if c not in factor]


def finished_count(study: optuna.Study) -> int:
    """Trials that count toward study.n_trials: complete ones that were measured or started
    (confirmation runs are not study trials)."""
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    failures = (Failure.from_attrs(t.user_attrs) for t in complete if Confirmation.from_attrs(t.user_attrs) is None)
    return sum(1 for f in failures if f is None or not f.ruled_out)


def reap_interrupted(study: optuna.Study, max_retries: int, worker: Optional[str] = None) -> int:
    """Fail trials left RUNNING by a killed run and retry each once.

    Without ``worker``, every RUNNING trial (the caller holds the study alone: SQLite). With it,
    only the trials that worker started (the caller holds that worker's lock, so they are
    leftovers of a killed process); other workers' trials are left to the heartbeat."""
    n = 0
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if worker is not None and Setup.from_attrs(t.user_attrs).worker != worker:
            continue
        try:
            study.tell(t.number, state=TrialState.FAIL)
        except (RuntimeError, ValueError):
            continue  # finished meanwhile (another worker's heartbeat check failed it first)
        _retry(study, t, "interrupted: the optimizer died during this trial", max_retries)
        n += 1
    return n


def _retry(study: optuna.Study, t: optuna.trial.FrozenTrial, why: str, max_retries: int) -> bool:
    lineage = Lineage.from_attrs(t.user_attrs)
    if lineage.attempt >= max_retries:
        return False
    study.enqueue_trial(t.params, user_attrs=lineage.retry(t.number, why).to_attrs())
    log.info("trial %d will be retried (%s)", t.number, why)
    return True


retry_trial = _retry
