"""Replaying a study against the measured grid: the study's sampler proposes, the table answers.

:func:`replay` runs one study in memory the way optimizer.study.loop runs it: its sampler (made by
:func:`~optimizer.study.loop.make_sampler` for the study's configs, or another), the baseline trial
enqueued first (vLLM's defaults, which calibrate the ``auto`` SLO: ``slo.auto_factor`` x the median of
the repeat it drew), the study's own :func:`~optimizer.space.search_space.suggest` turning params into a server,
its score (:func:`optimizer.measures.objective.score`) setting the constraints, its ranking
(:func:`optimizer.study.results.study_result`) naming the best. Each trial is answered by one of
its server's measured repeats, drawn at random, so a config proposed twice may get another one.

:func:`confirm` then answers the confirmation stage from the table the same way: the baseline and
the ``study.confirm.top_k`` best distinct feasible configs, ``study.confirm.repeats`` rounds, one
drawn repeat each, and the project's decision rule (:func:`optimizer.confirmation.uplift.recommend`)
picks the confirmed recommendation.
"""

from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence

import optuna
from optuna.trial import FrozenTrial, TrialState

from _grid import Rep, Table, outcome, server_key

from optimizer.confirmation.plan import config_key, flags_changed
from optimizer.confirmation.uplift import ConfigRuns, recommend
from optimizer.settings.config import Config
from optimizer.space.engine_args import EngineParams
from optimizer.space.search_space import Space, baseline_params, seed_params, suggest
from optimizer.study.results import is_feasible, study_result
from optimizer.trial import calibrate

__all__ = ["Replayed", "SamplerMaker", "confirm", "replay"]

optuna.logging.set_verbosity(optuna.logging.ERROR)

SamplerMaker = Callable[[Config], optuna.samplers.BaseSampler]


@dataclass
class Replayed:
    """One replayed study: its trials in order, the server each ran, and its calibrated SLO."""

    trials: list[FrozenTrial]
    servers: list[str]  # per trial number
    slo_ms: float
    baseline: Optional[int]  # the baseline trial's number (None: no baseline was enqueued)

    def best(self, n: int) -> Optional[int]:
        """The study's best trial after its first ``n`` trials (its own ranking); None: none feasible."""
        best = study_result(self.trials[:n]).best
        return best.number if best is not None else None


def replay(table: Table, space: Space, cfg: Config, make: SamplerMaker, n_trials: int, rng: random.Random,
           baseline: bool = True) -> Replayed:
    """One study of ``n_trials`` trials against ``table`` (see the module docstring). ``baseline``:
    the baseline trial and ``study.enqueue``'s seeds are enqueued, as the study does; without it
    the SLO is still calibrated on one drawn repeat of the defaults (a study needs its limit)."""
    study = optuna.create_study(direction="maximize", sampler=make(cfg))
    if baseline:
        study.enqueue_trial(baseline_params(cfg), user_attrs={"kind": "baseline"})
        for p in seed_params(cfg, space):
            study.enqueue_trial(p, user_attrs={"kind": "seed"}, skip_if_exists=True)
        slo_ms = float("nan")
    else:
        slo_ms = calibrate.calibrated_limit(rng.choice(table.reps[table.defaults]).p50_ms, cfg.slo.auto_factor)
    servers: list[str] = []
    base_no: Optional[int] = None
    for _ in range(n_trials):
        trial = study.ask()
        is_base = trial.user_attrs.get("kind") == "baseline"
        suggested = suggest(trial, space)  # the baseline too: its params place it in the space, as in the loop
        server = table.defaults if is_base else server_key(suggested)
        rep = rng.choice(table.reps[server])
        if is_base and slo_ms != slo_ms:  # [calibrate] the baseline's own repeat sets the study's SLO
            slo_ms = calibrate.calibrated_limit(rep.p50_ms, cfg.slo.auto_factor)
            base_no = trial.number
        out = outcome(rep, cfg, slo_ms)
        for key, value in out.constraints.items():
            trial.set_constraint(key, float(value))
        study.tell(trial, out.value)
        servers.append(server)
    return Replayed(study.get_trials(deepcopy=True), servers, slo_ms, base_no)


def _candidates(rep: Replayed, n: int, space: Space, cfg: Config, top_k: int) -> list[tuple[int, str, int]]:
    """(trial, server, flags changed) of the baseline and the ``top_k`` best feasible distinct configs
    among the first ``n`` trials, as optimizer.confirmation.plan.candidates picks them."""
    done = [t for t in rep.trials[:n] if t.state == TrialState.COMPLETE]
    defaults = baseline_params(cfg)
    out: list[tuple[int, str, int]] = []
    seen: set[str] = set()
    if rep.baseline is not None and rep.baseline < n:
        out.append((rep.baseline, rep.servers[rep.baseline], 0))
        # the baseline runs no tuning flag but the CPU build's KV size (optimizer.study.loop._baseline_engine_params)
        seen.add(config_key(EngineParams(kv_cache_gib=cfg.hardware.cpu_kvcache_gib).as_dict()
                            if cfg.hardware.device == "cpu" else EngineParams().as_dict()))
    for t in sorted((t for t in done if is_feasible(t) and t.number != rep.baseline),
                    key=lambda t: (-(t.value or 0.0), t.number)):
        if len(out) - (rep.baseline is not None) >= top_k:
            break
        engine = suggest(optuna.trial.FixedTrial(t.params), space).as_dict()
        key = config_key(engine)
        if key not in seen:
            seen.add(key)
            out.append((t.number, rep.servers[t.number], flags_changed(engine, defaults)))
    return out


def confirm(rep: Replayed, n: int, table: Table, space: Space, cfg: Config, rng: random.Random) -> Optional[str]:
    """The server of the confirmed recommendation after the first ``n`` trials (None: the rule
    recommends nothing), each round of each candidate answered by a drawn repeat."""
    c = cfg.study.confirm
    cands = _candidates(rep, n, space, cfg, c.top_k)
    if not cands:
        return None
    runs: list[ConfigRuns] = []
    for number, server, changed in cands:
        draws: Sequence[Rep] = [rng.choice(table.reps[server]) for _ in range(c.repeats)]
        outs = [outcome(d, cfg, rep.slo_ms) for d in draws]
        is_base = number == rep.baseline
        runs.append(ConfigRuns("baseline" if is_base else f"trial {number}", number, is_base, changed,
                               tuple(o.value for o in outs), tuple(o.feasible for o in outs)))
    chosen = recommend(runs, c.confidence, c.margin).chosen
    return None if chosen is None else dict((num, srv) for num, srv, _ in cands)[chosen.of]


def with_seed(cfg: Config, seed: int, **study: Any) -> Config:
    """``cfg`` with ``study.seed`` (and other study keys) replaced."""
    return dataclasses.replace(cfg, study=dataclasses.replace(cfg.study, seed=seed, **study))
