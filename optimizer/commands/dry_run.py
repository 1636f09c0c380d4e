"""``dry_run=true``: print the server command of each candidate with its verdict; start nothing.

Candidates are drawn at random (seeded by ``study.seed``) from the same space a study searches.
Each gets a comment line (verdict, memory estimate, predicted KV capacity and concurrency) and
then its full server command on a line of its own, exactly as a trial would launch it (model
folder per quantization included). Nothing is created, downloaded or checked on disk: model and
variant folders are printed as they will be used.
"""

from __future__ import annotations

import re
from collections import Counter
from typing import TextIO

import optuna

from optimizer.model.resolve import planned_model_dir, planned_target
from optimizer.settings.config import Config
from optimizer.space.engine_args import render
from optimizer.space.search_space import build_space, check, suggest

__all__ = ["dry_run"]


def _rule_kind(rule: str) -> str:
    return re.sub(r"\d[\d.,]*", "N", rule.split(" (")[0])


def dry_run(cfg: Config, out: TextIO) -> int:
    """Sample ``study.n_trials`` candidates; two lines each: ``# verdict | estimate`` and the command.

    Returns:
        How many candidates pass every rule of :func:`~optimizer.space.search_space.check`.
    """
    hw, model, w = cfg.hardware, cfg.model, cfg.workload
    space = build_space(cfg)
    base_dir = planned_model_dir(model, cfg.server.cache_dir)
    request_tokens = w.prompt_tokens + w.output_tokens
    out.write(f"# dry run: model {model.name} ({model.load_format} weights) on {hw.name} "
              f"({hw.gpu_count} x {hw.gpu_mem_gib:g} GiB, compute capability {hw.compute_capability}); "
              f"quantization {list(space.quantization)}, dtype {list(space.dtype)}, kv_cache_dtype "
              f"{list(space.kv_cache_dtype)}, tensor_parallel_size {list(space.tensor_parallel_size)}, "
              f"max_model_len {list(space.max_model_len)}, speculative {list(space.speculative)}\n")
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=cfg.study.seed))
    n_ok = 0
    reasons: Counter[str] = Counter()
    for i in range(cfg.study.n_trials):
        trial = study.ask()
        params = suggest(trial, space)
        broken, est = check(params, cfg)
        target = planned_target(model, base_dir, params.quantization)
        launch = render(params, target, host=cfg.server.host, port=8000, fixed_args=tuple(hw.fixed_args),
                        extra_args=tuple(cfg.server.extra_args))
        verdict = "infeasible: " + "; ".join(broken) if broken else "feasible"
        n_ok += not broken
        reasons.update(_rule_kind(b) for b in broken)
        out.write(f"# {i}: {verdict} | est. weights {est.weights_gib:.2f} GiB, activations "
                  f"{est.activation_gib:.2f} GiB, KV {est.kv_gib:.2f} GiB = {est.kv_tokens} tokens; max "
                  f"concurrency {est.max_concurrency:.1f} at {est.max_model_len} tokens, "
                  f"{est.concurrency_for(request_tokens):.1f} at this workload's {request_tokens}\n")
        out.write(launch.command("python") + "\n")
        study.tell(trial, 0.0)
    out.write(f"# {n_ok} of {cfg.study.n_trials} candidates feasible on {hw.name}\n")
    for kind, n in reasons.most_common():
        out.write(f"#   ruled out {n} x: {kind}\n")
    return n_ok
