"""Input a user typed is used or refused: the checks that need more than one key, or the disk.

:func:`refuse_ignored` compares the keys typed on the command line with the rest of the
config: a key that another setting makes irrelevant (``model.path`` while ``model.generate``
writes its own model, ``load.request_rate`` in closed-loop mode, ...) is refused with a message
naming both keys and what to do, instead of being silently ignored. The rules are one table,
:data:`IGNORED_WHEN`, so that a new setting adds one row. Search choices the hardware or model
cannot run are dropped from the space built for a preset; a choice the user typed is refused.

:func:`ensure_writable_dirs` creates the folders the run writes to (SQLite study file, trial
folders, caches, reports) and turns a folder that cannot be created or written (a read-only or
virtual file system, e.g. ``/proc/x``) into a :class:`~optimizer.core.errors.ConfigError`.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from optimizer.core.errors import ConfigError
from optimizer.settings.config import Config

__all__ = ["IGNORED_WHEN", "Ignored", "ensure_writable_dirs", "refuse_ignored", "typed_keys"]


@dataclass(frozen=True)
class Ignored:
    """``key`` has no effect when ``when(cfg)``; ``because`` names the deciding key and its value,
    ``fix`` says what to do."""

    key: str
    when: Callable[[Config], bool]
    because: Callable[[Config], str]
    fix: str


def _closed(c: Config) -> bool:
    return c.load.mode == "concurrency"


def _timed(c: Config) -> bool:
    return c.load.duration_s > 0


IGNORED_WHEN: tuple[Ignored, ...] = (
    Ignored("model.path", lambda c: bool(c.model.generate),
            lambda c: f"model.generate={c.model.generate!r} writes its own model folder",
            "to load your folder add model.generate= (empty); to use the generated model drop model.path"),
    *(Ignored(k, _closed, lambda c: f"load.mode={str(c.load.mode)!r} (closed loop) sends no timed arrivals",
              "add load.mode=rate, or drop it")
      for k in ("load.request_rate", "load.arrival", "load.max_inflight")),
    Ignored("load.num_requests", _timed, lambda c: f"load.duration_s={c.load.duration_s:g} bounds the run by time",
            "drop one of the two (load.duration_s=0 runs exactly load.num_requests)"),
    Ignored("load.p99_sizing", lambda c: _timed(c) and c.load.p99_sizing == "auto",
            lambda c: f"load.duration_s={c.load.duration_s:g} cannot be sized by request count",
            "drop load.p99_sizing=auto, or size the run with load.num_requests (load.duration_s=0)"),
    Ignored("slo.auto_factor", lambda c: not c.slo.is_auto,
            lambda c: f"slo.p99_ms={c.slo.p99_ms!r} is an absolute limit",
            "add slo.p99_ms=auto to calibrate the limit on this host, or drop slo.auto_factor"),
    Ignored("search.gpu_memory_utilization", lambda c: c.hardware.device == "cpu",
            lambda c: f"hardware={c.hardware.name!r} is the CPU backend, whose memory share is search.kv_cache_gib",
            "tune search.kv_cache_gib instead"),
    *(Ignored(k, lambda c: c.hardware.device != "cpu",
              lambda c: f"hardware={c.hardware.name!r} is a GPU, whose memory share is search.gpu_memory_utilization",
              "tune search.gpu_memory_utilization instead")
      for k in ("search.kv_cache_gib", "hardware.cpu_kvcache_gib")),
    Ignored("search.num_speculative_tokens", lambda c: set(c.search.speculative) <= {"off"},
            lambda c: f"search.speculative={list(c.search.speculative)} never speculates",
            "add search.speculative=[off,ngram] (GPU), or drop it"),
    Ignored("search.ngram_lookup_max", lambda c: "ngram" not in c.search.speculative,
            lambda c: f"search.speculative={list(c.search.speculative)} has no ngram",
            "add ngram to search.speculative, or drop it"),
    Ignored("search.draft_model", lambda c: "draft" not in c.search.speculative,
            lambda c: f"search.speculative={list(c.search.speculative)} has no draft",
            "add draft to search.speculative, or drop it"),
    Ignored("search.n_startup_trials", lambda c: c.search.sampler == "random",
            lambda c: "search.sampler='random' samples every trial at random", "drop one of the two"),
    Ignored("workload.num_prefixes", lambda c: c.workload.shared_prefix_tokens == 0 and not c.workload.dataset,
            lambda c: "workload.shared_prefix_tokens=0 gives prompts no shared prefix",
            "set workload.shared_prefix_tokens, or drop it"),
    *(Ignored(k, lambda c: bool(c.workload.dataset),
              lambda c: f"workload.dataset={c.workload.dataset!r} supplies the prompts",
              "drop it, or add workload.dataset= (empty) for synthetic prompts")
      for k in ("workload.prompt_tokens", "workload.prompt_tokens_spread", "workload.shared_prefix_tokens")),
)

# search choices the space drops where the hardware or model cannot run them: Space field per key
_FILTERED_CHOICES = ("quantization", "kv_cache_dtype", "tensor_parallel_size", "speculative", "max_model_len")


def typed_keys(overrides: Sequence[str]) -> set[str]:
    """The config keys of command-line overrides (``a.b=1``, ``+a.b=1``, ``~a.b``); a group choice
    (``model=tiny``) is its group name."""
    keys = set()
    for o in overrides:
        key = o.split("=", 1)[0].lstrip("+~").strip()
        if key:
            keys.add(key)
    return keys


def _typed(key: str, typed: set[str]) -> bool:
    return any(t == key or t.startswith(key + ".") for t in typed)


def refuse_ignored(cfg: Config, overrides: Sequence[str]) -> None:
    """Raise :class:`ConfigError` for the first typed key the config would ignore.

    Also builds the search space, so that a typed search choice this hardware or model cannot
    run (and which the space would drop with a log line) is refused."""
    typed = typed_keys(overrides)
    for rule in IGNORED_WHEN:
        if _typed(rule.key, typed) and rule.when(cfg):
            raise ConfigError(f"{rule.key} was set, but {rule.because(cfg)}, so {rule.key} would be ignored: "
                              f"{rule.fix}.")
    wanted = [k for k in _FILTERED_CHOICES if _typed(f"search.{k}", typed)]
    if not wanted:
        return
    from optimizer.space.search_space import build_space

    space = build_space(cfg)
    for key in wanted:
        dropped = [_plain(v) for v in getattr(cfg.search, key) if v not in getattr(space, key)]
        if key == "max_model_len" and not cfg.search.max_model_len:
            dropped = []
        if dropped:
            raise ConfigError(f"search.{key}={[_plain(v) for v in getattr(cfg.search, key)]}: {dropped} cannot run with "
                              f"hardware={cfg.hardware.name!r} and model={cfg.model.name!r} (the log line above "
                              f"says why), so the study would drop them: remove them from search.{key}.")


def _writable(key: str, value: str, folder: Path, hint: str = "") -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-test-"):
            pass
    except OSError as exc:
        raise ConfigError(f"{key}={value!r}: the folder {str(folder)!r} cannot be created or written to "
                          f"({exc.strerror or exc}). Point {key} at a writable folder{hint}.") from None


def ensure_writable_dirs(cfg: Config) -> None:
    """Create (and test-write) every folder the run writes to; refuse one that cannot be."""
    from optimizer.study.storage import redact_url, sqlite_path

    db = sqlite_path(cfg.study.storage)
    if db is not None:
        _writable("study.storage", redact_url(cfg.study.storage), db.expanduser().resolve().parent,
                  " (the default is sqlite:///studies/<study.name>.db), or use postgresql://user:pass@host/db")
    _writable("study.runs_dir", cfg.study.runs_dir, Path(cfg.study.runs_dir).expanduser())
    _writable("server.cache_dir", cfg.server.cache_dir, Path(cfg.server.cache_dir).expanduser())
    if cfg.server.compile_cache_dir:
        _writable("server.compile_cache_dir", cfg.server.compile_cache_dir,
                  Path(cfg.server.compile_cache_dir).expanduser())
    if cfg.report:
        _writable("reports_dir", cfg.reports_dir, Path(cfg.reports_dir).expanduser())


def _plain(v: object) -> object:
    """A choice as the user typed it (an enum member prints as its value)."""
    return getattr(v, "value", v)
