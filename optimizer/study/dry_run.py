"""``dry_run=true``: print the server command of each candidate with its verdict; start nothing."""

from __future__ import annotations

from typing import TextIO

import optuna

from optimizer.config import Config
from optimizer.model.resolve import resolve_model_dir
from optimizer.space.engine_args import ModelTarget, render
from optimizer.space.search_space import build_space, check, suggest

__all__ = ["dry_run"]


def dry_run(cfg: Config, out: TextIO) -> int:
    """Sample ``study.n_trials`` candidates; one line each: verdict, estimate, command."""
    space = build_space(cfg)
    try:
        model_dir = str(resolve_model_dir(cfg.model, cfg.server.cache_dir))
    except Exception:
        model_dir = cfg.model.path or f"<{cfg.model.name}>"
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=cfg.study.seed))
    n_ok = 0
    for i in range(cfg.study.n_trials):
        trial = study.ask()
        params = suggest(trial, space)
        broken, est = check(params, cfg)
        target = ModelTarget(model_dir, cfg.model.served_name or cfg.model.name, cfg.model.load_format)
        launch = render(params, target, host=cfg.server.host, port=8000, fixed_args=tuple(cfg.hardware.fixed_args))
        verdict = "infeasible: " + "; ".join(broken) if broken else "feasible"
        n_ok += not broken
        out.write(f"# {i}: {verdict} | est. weights {est.weights_gib:.2f} GiB, KV {est.kv_gib:.2f} GiB = "
                  f"{est.kv_tokens} tokens, max concurrency {est.max_concurrency:.1f}\n")
        out.write(launch.command("python") + "\n")
        study.tell(trial, 0.0)
    out.write(f"# {n_ok} of {cfg.study.n_trials} candidates feasible on {cfg.hardware.name}\n")
    return n_ok
