"""``python -m optimizer.quality endpoint=URL reference=URL2|FILE.json [overrides]``: the study's
quality gate, for a deployment that is already running, against a reference deployment (or the
reference's stored scores).

Probes ``endpoint`` with the configured quality set (teacher-forced passages, greedy prompts,
tasks), probes or reads the reference, and prints the distances (mean and P99 KL divergence,
same-top-1 share, perplexity ratio), the noise floor (when the reference is a live server: its
passages again all at once, another batch composition), both task accuracies with McNemar's p and
the Wilson bound, the limits and the verdict. An entry point, like ``optimizer.loadtest``.

Examples::

    python -m optimizer.quality endpoint=http://127.0.0.1:8001 reference=http://127.0.0.1:8000
    python -m optimizer.quality endpoint=http://127.0.0.1:8000 save_reference=ref.json
    python -m optimizer.quality endpoint=http://127.0.0.1:8001 reference=ref.json out=q.json
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
import time
from pathlib import Path
from typing import Any, Optional

from optimizer.commands.cli import compose
from optimizer.core.auth import bearer
from optimizer.core.entry import main_wrapper, setup_logging
from optimizer.core.errors import ConfigError
from optimizer.commands.loadtest_output import to_json
from optimizer.commands.live_server import served_model
from optimizer.quality.dataset import load_set
from optimizer.quality.distribution import summarize
from optimizer.quality.gate import Floor, evaluate
from optimizer.quality.server_probe import ProbeError, probe_distributions, run_probe
from optimizer.quality.scoring import QualityScores, compare
from optimizer.record.quality import scores_from_json, scores_to_json

__all__ = ["main"]

log = logging.getLogger("optimizer")

USAGE = (__doc__ or "") + """
Keys of this command (besides quality.* of the study's config):
  endpoint=URL          the deployment to judge (required)
  reference=URL|FILE    the reference deployment, or scores saved by save_reference= (required unless
                        save_reference= is given)
  save_reference=FILE   write endpoint's scores as a reference file (and judge nothing when no reference=)
  floor=true|false      with a reference URL: measure its noise floor (default true)
  speculative=true      apply speculative decoding's exactness check (the endpoint drafts tokens)
  model_name=NAME       the model name to send (default: the one model GET /v1/models lists)
  out=FILE.json         write every figure as JSON
Exit codes: 0 passed (or reference saved), 3 rejected by the gate, 1 a server unreachable or the probe
failed, 2 bad input, 130 Ctrl-C.
"""

EXIT_REJECTED = 3
_OWN_KEYS = ("endpoint", "reference", "save_reference", "floor", "speculative", "model_name", "out")


def _split_own(overrides: list[str]) -> tuple[dict[str, str], list[str]]:
    own: dict[str, str] = {}
    rest: list[str] = []
    for o in overrides:
        key, sep, value = o.partition("=")
        if sep and key in _OWN_KEYS:
            own[key] = value
        else:
            rest.append(o)
    return own, rest


def _bool(own: dict[str, str], key: str, default: bool) -> bool:
    v = own.get(key, "true" if default else "false").lower()
    if v not in ("true", "false", "1", "0", "yes", "no"):
        raise ConfigError(f"{key}={own[key]!r}: use true or false")
    return v in ("true", "1", "yes")


def _url(value: str, key: str) -> str:
    if not value.startswith(("http://", "https://")):
        raise ConfigError(f"{key}={value!r}: give a URL such as http://127.0.0.1:8000")
    return value.rstrip("/")


def _fmt(x: float, spec: str) -> str:
    return "-" if not math.isfinite(x) else format(x, spec)


def _body(overrides: list[str], debug: bool) -> int:
    own, rest = _split_own(overrides)
    setup_logging(None, debug)
    if not own.get("endpoint"):
        raise ConfigError("endpoint=URL is required, e.g. endpoint=http://127.0.0.1:8000 (see --help)")
    if not own.get("reference") and not own.get("save_reference"):
        raise ConfigError("reference=URL or reference=FILE.json is required (or save_reference=FILE.json to "
                          "store this endpoint's scores as a reference)")
    cfg = compose(rest)
    q = cfg.quality
    qset = load_set(q.dataset)
    api_key = os.environ.get(cfg.server.api_key_env) if cfg.server.api_key_env else None
    headers = bearer(api_key) or None
    endpoint = _url(own["endpoint"], "endpoint")
    speculative = _bool(own, "speculative", False)
    ref_arg = own.get("reference", "")
    ref_url = _url(ref_arg, "reference") if ref_arg.startswith(("http://", "https://")) else ""
    stored: Optional[QualityScores] = None
    if ref_arg and not ref_url:
        path = Path(ref_arg)
        if not path.is_file():
            raise ConfigError(f"reference={ref_arg!r}: neither a URL nor a file")
        try:
            stored = scores_from_json(path.read_text())
        except (ValueError, KeyError, TypeError) as exc:
            raise ConfigError(f"reference={ref_arg!r}: not a saved reference ({exc!r})") from exc

    def probe(url: str) -> QualityScores:
        model = own.get("model_name") or served_model(url, cfg.model.served_name or cfg.model.name, headers)
        log.info("quality probe of %s (model %s): %d passages, %d prompts, %d tasks", url, model, len(qset.texts),
                 len(qset.prompts), len(qset.tasks))
        return run_probe(url, model, qset, max_tokens=q.max_tokens, top_k=q.top_k, spec_top_n=q.spec_top_n,
                         task_max_tokens=q.task_max_tokens, headers=headers)

    t0 = time.perf_counter()
    try:
        scores = probe(endpoint)
        if own.get("save_reference"):
            Path(own["save_reference"]).write_text(scores_to_json(scores))
            print(f"reference scores of {endpoint} written to {own['save_reference']}")
            if not ref_arg:
                return 0
        floor = Floor()
        if ref_url:
            reference = probe(ref_url)
            if _bool(own, "floor", True):
                model = own.get("model_name") or served_model(ref_url, cfg.model.served_name or cfg.model.name,
                                                              headers)
                batched = probe_distributions(ref_url, model, qset, top_k=q.top_k, concurrency=len(qset.texts),
                                              headers=headers)
                floor = Floor.of([summarize(batched, reference.dists)])
        else:
            assert stored is not None
            reference = stored
        graded = evaluate(compare(scores, reference), q, floor, speculative=speculative)
    except ProbeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except ValueError as exc:  # measured on another set, tokenizer or max_tokens
        raise ConfigError(f"the endpoint's scores cannot be compared with the reference's: {exc}") from exc
    _print(graded.as_dict(), floor, scores, reference)
    if own.get("out"):
        doc: dict[str, Any] = {
            "endpoint": endpoint, "reference": ref_arg, "quality_set": qset.name, "quality_set_sha256": qset.sha256,
            "seconds": time.perf_counter() - t0, "floor": floor.as_dict(), "speculative_check": speculative,
            "endpoint_ppl": scores.ppl, "reference_ppl": reference.ppl, **graded.as_dict(),
            "passed": graded.passed, "reasons": list(graded.reasons)}
        Path(own["out"]).write_text(to_json(doc))
        print(f"wrote {own['out']}")
    return 0 if graded.passed else EXIT_REJECTED


def _print(g: dict[str, Any], floor: Floor, scores: QualityScores, reference: QualityScores) -> None:
    lim = g["limits"]
    print(f"positions compared: {g.get('n_positions', 0)} (teacher-forced, top-{len(scores.dists) and scores.dists[0].k}"
          f" + rest: a KLD lower bound)")
    print(f"mean KLD   {_fmt(g.get('mean_kld', math.nan), '.5f')}  (limit {lim['mean_kld']:.4g})")
    print(f"P99 KLD    {_fmt(g.get('p99_kld', math.nan), '.4f')}  (limit {lim['p99_kld']:.4g})")
    print(f"same top-1 {_fmt(100 * g.get('same_top1', math.nan), '.2f')} %  (limit {100 * lim['same_top1']:.2f} %)")
    print(f"perplexity ratio {_fmt(g.get('ppl_ratio', math.nan), '.4f')} (endpoint {scores.ppl:.4f}, "
          f"reference {reference.ppl:.4f}; information)")
    print("noise floor: " + ("not measured (a stored reference)" if not floor.views else
                             f"mean KLD {floor.mean_kld:.2g}, P99 {floor.p99_kld:.2g}, same top-1 "
                             f"{100 * floor.same_top1:.2f} % (the reference against itself, another batch "
                             f"composition)"))
    if "task_accuracy" in g:
        print(f"tasks: endpoint {100 * g['task_accuracy']:.1f} % (95 % lower bound {100 * g['task_wilson_low']:.1f} %),"
              f" reference {100 * g['reference_task_accuracy']:.1f} %; lost {g['tasks_lost']}, won {g['tasks_won']}, "
              f"McNemar p {g['mcnemar_p']:.3g}")
    print(f"greedy answers differing: {g['greedy_diverged']} ({g['greedy_not_near_tie']} not at a near-tie)")
    print(f"verdict: {g['verdict']}")


def main(argv: Optional[list[str]] = None) -> int:
    return main_wrapper(_body, USAGE, argv)


if __name__ == "__main__":
    sys.exit(main())
