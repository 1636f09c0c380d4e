"""The measured grid of the CPU demo's space: its levels, its configs, and the table of repeats.

Shared by benchmarks/measure_grid.py (which measures it) and benchmarks/search_replay.py (which
replays searches against it). A config is a set of Optuna params (the study's names and values);
the server it runs is what the study's own :func:`~optimizer.space.search_space.suggest` makes of
them, so two configs the study raises to the same flags (chunked prefill off with
max_num_batched_tokens below max_model_len) share one server and its repeats.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import statistics
from dataclasses import dataclass, field
from typing import Any, Sequence

import optuna

from optimizer.measures.metrics import Dist, LoadSummary
from optimizer.measures.objective import score
from optimizer.settings.config import Config
from optimizer.space.engine_args import EngineParams
from optimizer.space.search_space import Space, suggest
from optimizer.trial import calibrate

# every knob the CPU demo tunes, at two or more levels; vLLM's defaults (128 / 2048 / chunked on / prefix on,
# KV hardware.cpu_kvcache_gib=2 as the baseline gets) are a grid point. gpu_memory_utilization is no knob of
# the CPU space: search_space.suggest draws kv_cache_gib instead on device=cpu (the CPU build sizes its KV
# cache from --kv-cache-memory-bytes), so it has no level here.
LEVELS: dict[str, list[Any]] = {
    "max_num_seqs": [8, 128],
    "max_num_batched_tokens": [512, 1024, 2048],
    "kv_cache_gib": [1.0, 2.0],
    "enable_chunked_prefill": [True, False],
    "enable_prefix_caching": [True, False],
}
# the grid is measured in stages, each a full factorial holding the one before, so that whatever the host's
# time allows is a complete grid: the two-level core with the KV size at the defaults' 2 GiB, then the KV size
# at two levels, then a third max_num_batched_tokens level (LEVELS)
STAGES: list[dict[str, list[Any]]] = [
    {**LEVELS, "max_num_batched_tokens": [512, 2048], "kv_cache_gib": [2.0]},
    {**LEVELS, "max_num_batched_tokens": [512, 2048]},
    LEVELS,
]
DEFAULTS: dict[str, Any] = {"max_num_seqs": 128, "max_num_batched_tokens": 2048, "kv_cache_gib": 2.0,
                            "enable_chunked_prefill": True, "enable_prefix_caching": True}


def grid_points(levels: dict[str, list[Any]] = LEVELS) -> list[dict[str, Any]]:
    """Every config of the full factorial, as Optuna params."""
    keys = list(levels)
    return [dict(zip(keys, values)) for values in itertools.product(*(levels[k] for k in keys))]


def complete_stage(counts: dict[str, int], space: Space, repeats: int = 2) -> dict[str, list[Any]]:
    """The levels of the largest stage (STAGES) whose every server has ``repeats`` measured repeats
    (``counts``: server key -> measured repeats).

    Raises:
        ValueError: not even the first stage is complete.
    """
    done = [levels for levels in STAGES
            if all(counts.get(server_key(server_params(space, p)), 0) >= repeats for p in grid_points(levels))]
    if not done:
        raise ValueError(f"no stage of the grid has {repeats} repeats of every server yet: measure on "
                         f"(benchmarks/measure_grid.py run)")
    return done[-1]


def space_overrides(levels: dict[str, list[Any]]) -> list[str]:
    """Hydra overrides that restrict the study's space to ``levels`` (the integer knobs' grids are then
    narrowed to exactly the levels by :func:`restrict`)."""
    out = []
    for name in ("max_num_seqs", "max_num_batched_tokens"):
        out += [f"search.{name}.low={min(levels[name])}", f"search.{name}.high={max(levels[name])}"]
    kv = sorted(levels["kv_cache_gib"])
    out += [f"search.kv_cache_gib.low={kv[0]}", f"search.kv_cache_gib.high={kv[-1]}"]
    if len(kv) > 1:
        out.append(f"search.kv_cache_gib.step={kv[1] - kv[0]}")
    for name in ("enable_chunked_prefill", "enable_prefix_caching"):
        out.append(f"search.{name}=[{','.join(str(v).lower() for v in levels[name])}]")
    return out


def restrict(space: Space, levels: dict[str, list[Any]]) -> Space:
    """``space`` (built with :func:`space_overrides`) with its integer grids narrowed to ``levels``."""
    return dataclasses.replace(space, grids={**space.grids, "max_num_seqs": tuple(levels["max_num_seqs"]),
                                             "max_num_batched_tokens": tuple(levels["max_num_batched_tokens"])})


def key_of(params: dict[str, Any]) -> str:
    """A config's name: its params in the grid's order."""
    return ";".join(f"{k}={params[k]}" for k in LEVELS)


def server_params(space: Space, params: dict[str, Any]) -> EngineParams:
    """What the study starts for these Optuna params (its own suggest, on a fixed trial)."""
    return suggest(optuna.trial.FixedTrial(params), space)


def server_key(engine: EngineParams) -> str:
    """The server a config runs, named by the grid's knobs as the server gets them."""
    d = engine.as_dict()
    return ";".join(f"{k}={d.get(k)}" for k in LEVELS)


@dataclass(frozen=True)
class Rep:
    """One measured repeat of a server: what the study's score reads (E2E latency, the SLO metric)."""

    tok_s: float
    p99_ms: float
    p99_high_ms: float = math.nan
    p99_max_ms: float = math.nan
    error_rate: float = 0.0
    n_ok: int = 0
    n_requests: int = 0
    p50_ms: float = math.nan  # the median: what slo.p99_ms=auto multiplies (optimizer.trial.calibrate)

    @classmethod
    def of_run(cls, row: dict[str, Any]) -> "Rep":
        """A measured run of measure_grid (a run whose server did not start serves nothing)."""
        nan = math.nan
        return cls(row.get("output_tok_s", 0.0), row.get("p99_ms", nan), row.get("p99_high_ms", nan),
                   row.get("p99_max_ms", nan), row.get("error_rate", 1.0), row.get("n_ok", 0),
                   row.get("n_requests", 0), row.get("p50_ms", nan))

    def summary(self) -> LoadSummary:
        d = dataclasses.replace(Dist.of([]), p99=self.p99_ms, p99_high=self.p99_high_ms, max=self.p99_max_ms)
        return LoadSummary(n_requests=self.n_requests, n_ok=self.n_ok, error_rate=self.error_rate,
                           output_tok_s=self.tok_s, e2e=d)


def judged(cfg: Config, slo_ms: float) -> Config:
    """``cfg`` with its ``auto`` SLO resolved to ``slo_ms`` (as a calibrated study has it)."""
    return calibrate.resolved(cfg, calibrate.Calibration(cfg.slo.metric, 0.0, 0.0, 0, cfg.slo.auto_factor, slo_ms))


def outcome(rep: Rep, cfg: Config, slo_ms: float) -> Any:
    """The study's score of one repeat (objective.score) under the limit ``slo_ms``."""
    return score(rep.summary(), judged(cfg, slo_ms).slo)


@dataclass
class Table:
    """The measured repeats of every server of the grid, and the grid's own verdict on them."""

    configs: list[dict[str, Any]]  # the grid's configs (Optuna params)
    server_of: dict[str, str]  # config key -> server key
    reps: dict[str, list[Rep]]  # server key -> its repeats
    defaults: str  # the server key of vLLM's defaults (the baseline)
    cfg: Config
    _slo: float = field(default=math.nan, init=False)

    @classmethod
    def build(cls, cfg: Config, space: Space, reps: dict[str, list[Rep]],
              configs: Sequence[dict[str, Any]] = ()) -> "Table":
        """The table of ``configs`` (default: every grid point) from the repeats of their servers
        (servers outside them are left out)."""
        configs = list(configs) or grid_points()
        server_of = {key_of(p): server_key(server_params(space, p)) for p in configs}
        missing = sorted({s for s in server_of.values() if not reps.get(s)})
        if missing:
            raise ValueError(f"the grid table has no repeat of {len(missing)} server(s), e.g. {missing[0]}: measure "
                             f"them first (benchmarks/measure_grid.py run)")
        used = set(server_of.values())
        return cls(configs, server_of, {s: r for s, r in reps.items() if s in used}, server_of[key_of(DEFAULTS)], cfg)

    @property
    def slo_ms(self) -> float:
        """The grid's SLO: the study's rule on the defaults' median latency (the median over their repeats)."""
        if self._slo != self._slo:
            p50 = statistics.median(r.p50_ms for r in self.reps[self.defaults])
            self._slo = calibrate.calibrated_limit(p50, self.cfg.slo.auto_factor)
        return self._slo

    def mean(self, server: str) -> float:
        return statistics.fmean(r.tok_s for r in self.reps[server])

    def feasible(self, server: str) -> bool:
        """Feasible in every repeat under the grid's SLO (the confirmation's rule)."""
        return all(outcome(r, self.cfg, self.slo_ms).feasible for r in self.reps[server])

    @property
    def best(self) -> str:
        """The server with the best mean among the feasible ones."""
        ok = [s for s in self.reps if self.feasible(s)]
        if not ok:
            raise ValueError("no server of the grid is feasible in every repeat: there is no grid best")
        return max(ok, key=self.mean)

    def share(self, server: str) -> float:
        """A server's mean as a share of the grid's best (0 for one the grid finds infeasible)."""
        return self.mean(server) / self.mean(self.best) if self.feasible(server) else 0.0

    @property
    def noise(self) -> float:
        """The typical distance between two repeats of one server, relative to its mean: the median
        over servers of (max - min) / mean of its repeats."""
        spreads = [(max(v) - min(v)) / statistics.fmean(v) for s in self.reps
                   if len(v := [r.tok_s for r in self.reps[s]]) > 1 and statistics.fmean(v) > 0]
        return statistics.median(spreads) if spreads else 0.0

    def within_noise(self, server: str) -> bool:
        """The grid's best itself, or a feasible server whose mean is within :attr:`noise` of it."""
        return server == self.best or (self.feasible(server) and self.share(server) >= 1.0 - self.noise)
