"""Re-validation: a study's answer re-measured on the vLLM installed now (the confirmation stage on
the installed vLLM; the comparison is :mod:`optimizer.confirmation.revalidation_result`'s)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional

import optuna

from optimizer.settings.config import Config
from optimizer.space.search_space import build_space
from optimizer.confirmation.stage import run_confirmation
from optimizer.confirmation.plan import search_trials
from optimizer.trial.gpus import WorkerPlan
from optimizer.study.loop import Runtime, make_context
from optimizer.study.results import latest_version
from optimizer.confirmation.revalidation_result import Revalidation, describe_revalidation, revalidation
from optimizer.study.storage import open_study
from optimizer.trial.trial import TrialRunner, run_trial
from optimizer.study.versions import check_engine

__all__ = ["run_revalidation"]

log = logging.getLogger(__name__)


def run_revalidation(cfg: Config, rt: Runtime, runner: TrialRunner = run_trial, *,
                     plan: Optional[WorkerPlan] = None, log_file: Optional[Path] = None,
                     debug: bool = False) -> Optional[Revalidation]:
    """Re-measure the study's answer on the installed vLLM (module docstring); its comparison, or
    None when the installed vLLM is the study's own (``python -m optimizer.confirm`` adds rounds
    there) or there is nothing to confirm. Raises as :func:`run_confirmation`."""
    space = build_space(cfg)
    ctx = make_context(cfg, rt, space)
    study = open_study(cfg, space, optuna.samplers.RandomSampler())
    trials = study.get_trials(deepcopy=False)
    then_v = latest_version(search_trials(trials))
    if ctx.engine.vllm and then_v == ctx.engine.vllm:
        log.warning("the installed vLLM (%s) is the one study %s was measured on: nothing to revalidate "
                    "(`python -m optimizer.confirm study.name=%s` adds confirmation rounds)", ctx.engine.label(),
                    cfg.study.name, cfg.study.name)
        return None
    check_engine(study, ctx.engine, ctx.python, ctx.server_env, rt.flags_reader)
    log.info("revalidating study %s (measured on vLLM %s) on %s: the baseline (this version's defaults) and the "
             "study's %d best configs, %d rounds on fresh servers", cfg.study.name, then_v or "?",
             ctx.engine.label(), cfg.study.confirm.top_k, cfg.study.confirm.repeats)
    run_confirmation(cfg, rt, runner, plan=plan, log_file=log_file, debug=debug)
    res = revalidation(study.get_trials(deepcopy=False), cfg.study.confirm.confidence)
    if res is not None:
        log.info("%s", describe_revalidation(res))
    return res
