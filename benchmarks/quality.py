"""What does the quality gate see, and what does it cost? Teacher-forced distribution distances
(KLD lower bound, same-top-1, perplexity ratio), task accuracy and the speculative exactness check
per engine config on real SmolLM2-135M-Instruct weights, on vLLM's CPU build.

Each config gets a freshly started server (the project's VllmServer, argv from
``space.engine_args.render``, 1 GiB KV cache, max_model_len 4096 so quality-v2's ~3.9k-token
passage fits), then the probe (``optimizer.quality.run_probe``: 32 passages teacher-forced with
``prompt_logprobs=k``, 8 greedy prompts, 64 tasks), then the server stops. The first config is the
reference (the study's baseline). On its warm server the probe runs twice more: once again one
request at a time (warm repeat) and once with every passage in flight at once (another batch
composition): the noise floor a study measures. The baseline config is also started again (restart
noise). Each probe's raw scores go to ``--raw`` (outside the repository: ~1 MB each) as soon as
they are measured, so an interrupted run keeps what it measured and ``--regrade`` grades them again
with the current gate (no server) into ``benchmarks/results/<out>.json``.

Usage: ``python benchmarks/quality.py [--eager] [--only NAME ...] [--out quality-v2] [--regrade]``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402
import httpx  # noqa: E402

from optimizer.commands.cli import compose  # noqa: E402
from optimizer.core.errors import TrialError  # noqa: E402
from optimizer.model.resolve import resolve_model_dir  # noqa: E402
from optimizer.quality import ProbeError, QualityScores, compare, load_set, needs_probe, run_probe  # noqa: E402
from optimizer.record.quality import scores_from_json, scores_to_json  # noqa: E402
from optimizer.server.process import VllmServer, free_port  # noqa: E402
from optimizer.server.telemetry import parse_metrics  # noqa: E402
from optimizer.settings.config import QualityConfig  # noqa: E402
from optimizer.space.engine_args import EngineParams, ModelTarget, render  # noqa: E402

BASE = dict(kv_cache_gib=1.0, max_model_len=4096)
# in order of what the issue needs most, so that a run cut short still has the decisive rows
CONFIGS: list[tuple[str, EngineParams]] = [
    ("baseline", EngineParams(**BASE)),
    ("kv-fp8_e4m3", EngineParams(**BASE, kv_cache_dtype="fp8")),
    ("kv-fp8_e5m2", EngineParams(**BASE, kv_cache_dtype="fp8_e5m2")),
    ("dtype-float32", EngineParams(**BASE, dtype="float32")),
    ("dtype-float16", EngineParams(**BASE, dtype="float16")),
    ("scheduler-small", EngineParams(**BASE, max_num_seqs=4, max_num_batched_tokens=512)),
    ("ngram-k3", EngineParams(**BASE, speculative="ngram", num_speculative_tokens=3, ngram_lookup_max=4)),
    ("baseline-restart", EngineParams(**BASE)),
    # does the prefill path hide an fp8 KV cache? the same cache with every passage split in 512-token chunks
    ("kv-fp8_e5m2-chunk512", EngineParams(**BASE, kv_cache_dtype="fp8_e5m2", max_num_batched_tokens=512)),
]
SPEC = ("vllm:spec_decode_num_draft_tokens", "vllm:spec_decode_num_accepted_tokens")
RAW = Path("/tmp/quality-v2-raw")


def _counters(url: str) -> dict[str, float]:
    try:
        c = parse_metrics(httpx.get(url + "/metrics", timeout=10).text).counters
    except httpx.HTTPError:
        return {}
    return {k: float(c.get(k, math.nan)) for k in SPEC}


def _save(raw: Path, name: str, s: QualityScores, meta: dict[str, Any]) -> None:
    raw.mkdir(parents=True, exist_ok=True)
    (raw / f"{name}.json").write_text(json.dumps({"meta": meta, "scores": scores_to_json(s)}))


def measure(a: argparse.Namespace) -> int:
    cfg = compose(["model=smollm2-135m-instruct"])
    qcfg, qset = cfg.quality, load_set(cfg.quality.dataset)
    cache = C.REPO / ".cache"
    model_dir = resolve_model_dir(cfg.model, str(cache))
    env = dict(os.environ, HF_HUB_OFFLINE="1", VLLM_CACHE_ROOT=str(cache / "vllm"), PYTHONUNBUFFERED="1",
               VLLM_NO_USAGE_STATS="1", DO_NOT_TRACK="1")
    fixed = tuple(cfg.hardware.fixed_args) + (("--enforce-eager",) if a.eager else ())
    chosen = [c for c in CONFIGS if a.only is None or c[0] == "baseline" or c[0] in a.only]
    kw = dict(max_tokens=qcfg.max_tokens, top_k=qcfg.top_k, spec_top_n=qcfg.spec_top_n)
    for name, params in chosen:
        port = free_port()
        launch = render(params, ModelTarget(str(model_dir), "smollm2"), host="127.0.0.1", port=port,
                        fixed_args=fixed)
        log = Path(f"/tmp/quality-bench-{name}.log")
        log.unlink(missing_ok=True)
        meta: dict[str, Any] = {"config": name, "params": params.as_dict(), "fixed_args": list(fixed),
                                "argv_flags": [x for x in launch.argv if x.startswith("--")]}
        srv = VllmServer(launch.argv, python=C.PY, host="127.0.0.1", port=port, log_path=log, env=env,
                         pid_dir=cache / "pids", stop_timeout_s=30)
        try:
            with srv:
                meta["start_seconds"] = round(srv.wait_ready(900), 1)
                before = _counters(srv.url)
                s = run_probe(srv.url, "smollm2", qset, **kw)  # type: ignore[arg-type]
                after = _counters(srv.url)
                drafts = after.get(SPEC[0], math.nan) - before.get(SPEC[0], math.nan)
                if drafts == drafts and drafts > 0:
                    meta["spec_draft_tokens"] = drafts
                    meta["spec_acceptance"] = (after[SPEC[1]] - before[SPEC[1]]) / drafts
                _save(a.raw, name, s, meta)
                print(f"{name}: start {meta['start_seconds']} s, probe {s.seconds:.1f} s "
                      f"({s.ppl_seconds:.1f} + {s.gen_seconds:.1f} + {s.task_seconds:.1f}), tasks "
                      f"{s.task_accuracy:.3f}, ppl {s.ppl:.4f}", flush=True)
                if name == "baseline":
                    again = run_probe(srv.url, "smollm2", qset, **kw)  # type: ignore[arg-type]
                    _save(a.raw, "baseline-warm-repeat", again, dict(meta, config="baseline-warm-repeat"))
                    batch = run_probe(srv.url, "smollm2", qset, concurrency=len(qset.texts), **kw)  # type: ignore[arg-type]
                    _save(a.raw, "baseline-batched", batch, dict(meta, config="baseline-batched",
                                                                 note="every passage in flight at once"))
                    print(f"baseline again: probe {again.seconds:.1f} s; batched {batch.seconds:.1f} s", flush=True)
        except (TrialError, ProbeError) as exc:
            meta["error"] = f"{type(exc).__name__}: {str(exc)[:400]}"
            a.raw.mkdir(parents=True, exist_ok=True)
            (a.raw / f"{name}.error.json").write_text(json.dumps({"meta": meta}))
            print(f"{name}: {meta['error']}", flush=True)
            if name == "baseline":
                return 1
    return regrade(a)


def regrade(a: argparse.Namespace) -> int:
    """Grade every stored probe against the baseline's with the current gate (no server)."""
    from dataclasses import replace

    from optimizer.quality.gate import evaluate, noise_floor
    from optimizer.quality.tasks import is_correct

    qcfg = QualityConfig()
    qset = load_set(qcfg.dataset)
    loaded: dict[str, tuple[dict[str, Any], QualityScores | None]] = {}
    for path in sorted(a.raw.glob("*.json")):
        doc = json.loads(path.read_text())
        loaded[doc["meta"]["config"]] = (doc["meta"], scores_from_json(doc["scores"]) if "scores" in doc else None)
    answers = {t.id: t.answer for t in qset.tasks}
    for key, (meta, sc) in list(loaded.items()):  # correctness by the current rule, from the stored answers
        if sc is not None:
            loaded[key] = (meta, replace(sc, tasks=tuple(replace(t, correct=is_correct(t.text, answers[t.id]))
                                                          for t in sc.tasks)))
    ref = loaded["baseline"][1]
    assert ref is not None
    floor_views = [s for k in ("baseline-batched",) if (s := loaded.get(k, ({}, None))[1]) is not None]
    floor = noise_floor(ref, floor_views)
    order = ["baseline-warm-repeat", "baseline-batched"] + [n for n, _ in CONFIGS[1:]]
    rows: list[dict[str, Any]] = []
    for name in order:
        if name not in loaded:
            continue
        meta, s = loaded[name]
        row: dict[str, Any] = {"config": name, "params": meta.get("params"),
                               "start_seconds": meta.get("start_seconds")}
        if meta.get("spec_acceptance") is not None:
            row["spec_acceptance"] = round(meta["spec_acceptance"], 3)
        if s is None:
            row["error"] = meta.get("error")
            rows.append(row)
            continue
        params = meta.get("params") or {}
        row["needs_probe"] = needs_probe(params, CONFIGS[0][1].as_dict(), qcfg.numerics_params)
        ev = evaluate(compare(s, ref), qcfg, floor, speculative=params.get("speculative") not in (None, "off"))
        row.update(ev.as_dict())
        row["probe_seconds"] = round(s.seconds, 1)
        rows.append(row)
    def f(r: dict[str, Any], key: str, spec: str) -> str:
        v = r.get(key)
        return "-" if not isinstance(v, (int, float)) or v != v else format(v, spec)

    print(C.table(["config", "mean KLD", "P99 KLD", "far KLD", "same top-1", "ppl ratio", "tasks (ref)", "lost/won",
                   "McNemar p", "verdict"],
                  [[r["config"], f(r, "mean_kld", ".2e"), f(r, "p99_kld", ".2e"), f(r, "far_mean_kld", ".2e"),
                    f(r, "same_top1", ".4f"), f(r, "ppl_ratio", ".4f"),
                    f"{f(r, 'task_accuracy', '.3f')} ({f(r, 'reference_task_accuracy', '.3f')})",
                    f"{r.get('tasks_lost', '-')}/{r.get('tasks_won', '-')}", f(r, "mcnemar_p", ".2f"),
                    r.get("verdict", r.get("error", ""))] for r in rows]))
    print(f"floor (baseline-batched): {floor.as_dict()}")
    path = C.write_result(a.out, {
        "model": "smollm2-135m-instruct", "quality_set": qset.name, "quality_set_sha256": qset.sha256,
        "reference": {"ppl": ref.ppl, "n_positions": sum(d.n for d in ref.dists), "task_accuracy": ref.task_accuracy,
                      "probe_seconds": round(ref.seconds, 1),
                      "start_seconds": loaded["baseline"][0].get("start_seconds")},
        "floor": floor.as_dict(), "gate": qcfg.__dict__ | {"numerics_params": list(qcfg.numerics_params)},
        "fixed_args": loaded["baseline"][0].get("fixed_args"), "configs": rows})
    print(f"wrote {path.relative_to(C.REPO)}")
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--eager", action="store_true", help="--enforce-eager on every server (a loaded host)")
    ap.add_argument("--only", nargs="*", default=None, help="config names (the reference always runs first)")
    ap.add_argument("--out", default="quality-v2")
    ap.add_argument("--raw", type=Path, default=RAW, help="where each probe's raw scores go")
    ap.add_argument("--regrade", action="store_true", help="grade the stored raw scores with the current gate")
    a = ap.parse_args()
    return regrade(a) if a.regrade else measure(a)


if __name__ == "__main__":
    sys.exit(main())
