"""What does the quality probe see, and what does it cost? Perplexity and greedy agreement per
engine config on real SmolLM2-135M-Instruct weights, on vLLM's CPU build.

Each config gets a freshly started server (the project's VllmServer, argv from
``space.engine_args.render``, 1 GiB KV cache, max_model_len 2048), then the probe
(``optimizer.quality.run_probe``: the 30 reference texts of quality-v1 teacher-forced, then the 8
prompts greedy with max_tokens 48), then the server stops. The first config is the reference (the
study's baseline); every other config is compared with it (``optimizer.quality.compare``) and
graded with the default QualityConfig (``optimizer.quality.grade``). The reference server is
probed twice (warm-server repeat), and the reference config is started again (restart noise).
Speculative configs report the acceptance over the probe from /metrics (accepted / draft tokens).

Usage: ``python benchmarks/quality.py [--eager] [--only NAME ...] [--out quality] [--regrade]``.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402
import httpx  # noqa: E402

from optimizer.cli import compose  # noqa: E402
from optimizer.config import QualityConfig  # noqa: E402
from optimizer.errors import TrialError  # noqa: E402
from optimizer.model.resolve import resolve_model_dir  # noqa: E402
from optimizer.quality import ProbeError, QualityScores, compare, grade, load_set, needs_probe, run_probe  # noqa: E402
from optimizer.server.process import VllmServer, free_port  # noqa: E402
from optimizer.server.telemetry import parse_metrics  # noqa: E402
from optimizer.space.engine_args import EngineParams, ModelTarget, render  # noqa: E402

BASE = dict(kv_cache_gib=1.0, max_model_len=2048)
CONFIGS: list[tuple[str, EngineParams]] = [
    ("baseline", EngineParams(**BASE)),
    ("baseline-restart", EngineParams(**BASE)),
    ("scheduler-small", EngineParams(**BASE, max_num_seqs=4, max_num_batched_tokens=512)),
    ("dtype-float32", EngineParams(**BASE, dtype="float32")),
    ("dtype-float16", EngineParams(**BASE, dtype="float16")),
    ("kv-fp8", EngineParams(**BASE, kv_cache_dtype="fp8")),
    ("kv-fp8_e5m2", EngineParams(**BASE, kv_cache_dtype="fp8_e5m2")),
    ("ngram-k3", EngineParams(**BASE, speculative="ngram", num_speculative_tokens=3, ngram_lookup_max=4)),
    ("quant-fp8_per_channel", EngineParams(**BASE, quantization="fp8_per_channel")),
]
SPEC = ("vllm:spec_decode_num_draft_tokens", "vllm:spec_decode_num_accepted_tokens")


def _counters(url: str) -> dict[str, float]:
    try:
        c = parse_metrics(httpx.get(url + "/metrics", timeout=10).text).counters
    except httpx.HTTPError:
        return {}
    return {k: float(c.get(k, math.nan)) for k in SPEC}


def _scores_doc(s: QualityScores) -> dict[str, Any]:
    return {"ppl": s.ppl, "n_tokens": s.n_tokens, "ppl_seconds": round(s.ppl_seconds, 2),
            "gen_seconds": round(s.gen_seconds, 2), "probe_seconds": round(s.seconds, 2),
            "generated_tokens": sum(len(g.token_ids) for g in s.generations),
            "texts_ppl": {t.id: round(t.ppl, 3) for t in s.texts},
            "generations": {g.id: list(g.token_ids) for g in s.generations},
            "sample": {g.id: g.text for g in s.generations[-3:]}}


def _verdict_doc(s: QualityScores, ref: QualityScores, qcfg: QualityConfig) -> dict[str, Any]:
    v = compare(s, ref)
    return {"ppl_increase": v.ppl_increase, "agreement": v.agreement, "exact_match_rate": v.exact_match_rate,
            "mean_first_divergence": v.mean_first_divergence,
            "first_divergence": {i.id: i.first_divergence for i in v.items}, "grade": grade(v, qcfg)}


def regrade(name: str) -> int:
    """Grade the stored results again with the current QualityConfig defaults (no server)."""
    import json

    from optimizer.quality import ItemAgreement, QualityVerdict, first_divergence

    path = C.RESULTS / f"{name}.json"
    doc = json.loads(path.read_text())
    qcfg = QualityConfig()
    ref = doc["configs"][0]
    for r in doc["configs"][1:]:
        if "ppl" not in r:
            continue
        items = tuple(ItemAgreement(k, first_divergence(g, ref["generations"][k]), len(g), len(ref["generations"][k]))
                      for k, g in r["generations"].items())
        v = QualityVerdict(r["ppl"], ref["ppl"], r["n_tokens"], items)
        r["vs_baseline"]["grade"] = grade(v, qcfg)
        print(f"{r['config']}: ppl {v.ppl_increase:+.4%} agreement {v.agreement:.3f} grade {grade(v, qcfg):.3f}")
    doc["gate"] = {"max_ppl_increase": qcfg.max_ppl_increase, "min_agreement": qcfg.min_agreement}
    path.write_text(json.dumps(doc, indent=1, default=float, allow_nan=True) + "\n")
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--eager", action="store_true", help="--enforce-eager on every server (a loaded host)")
    ap.add_argument("--only", nargs="*", default=None, help="config names (the reference always runs first)")
    ap.add_argument("--out", default="quality")
    ap.add_argument("--regrade", action="store_true", help="grade the stored results with the current defaults")
    a = ap.parse_args()
    if a.regrade:
        return regrade(a.out)
    cfg = compose(["model=smollm2-135m-instruct"])
    qcfg, qset = cfg.quality, load_set(cfg.quality.dataset)
    cache = C.REPO / ".cache"
    t0 = time.perf_counter()
    model_dir = resolve_model_dir(cfg.model, str(cache))
    prepare_s = time.perf_counter() - t0
    env = dict(os.environ, HF_HUB_OFFLINE="1", VLLM_CACHE_ROOT=str(cache / "vllm"), PYTHONUNBUFFERED="1",
               VLLM_NO_USAGE_STATS="1", DO_NOT_TRACK="1")
    fixed = tuple(cfg.hardware.fixed_args) + (("--enforce-eager",) if a.eager else ())
    chosen = [c for c in CONFIGS if a.only is None or c[0] == "baseline" or c[0] in a.only]
    ref: QualityScores | None = None
    rows: list[dict[str, Any]] = []
    for name, params in chosen:
        port = free_port()
        launch = render(params, ModelTarget(str(model_dir), "smollm2"), host="127.0.0.1", port=port,
                        fixed_args=fixed)
        log = Path(f"/tmp/quality-bench-{name}.log")
        log.unlink(missing_ok=True)
        row: dict[str, Any] = {"config": name, "params": params.as_dict(),
                               "needs_probe": needs_probe(params.as_dict(), CONFIGS[0][1].as_dict(),
                                                          qcfg.numerics_params)}
        srv = VllmServer(launch.argv, python=C.PY, host="127.0.0.1", port=port, log_path=log, env=env,
                         pid_dir=cache / "pids", stop_timeout_s=30)
        try:
            with srv:
                row["start_seconds"] = round(srv.wait_ready(900), 1)
                before = _counters(srv.url)
                s = run_probe(srv.url, "smollm2", qset, max_tokens=qcfg.max_tokens)
                after = _counters(srv.url)
                row.update(_scores_doc(s))
                drafts = after.get(SPEC[0], math.nan) - before.get(SPEC[0], math.nan)
                if drafts == drafts and drafts > 0:
                    row["spec_draft_tokens"] = drafts
                    row["spec_acceptance"] = (after[SPEC[1]] - before[SPEC[1]]) / drafts
                if ref is None:
                    ref = s
                    again = run_probe(srv.url, "smollm2", qset, max_tokens=qcfg.max_tokens)
                    row["repeat_on_warm_server"] = {**_verdict_doc(again, ref, qcfg),
                                                    "probe_seconds": round(again.seconds, 2)}
                else:
                    row["vs_baseline"] = _verdict_doc(s, ref, qcfg)
        except (TrialError, ProbeError) as exc:
            row["error"] = f"{type(exc).__name__}: {str(exc)[:400]}"
            if ref is None:
                print(f"the reference config failed: {exc}", file=sys.stderr)
                return 1
        rows.append(row)
        vs = row.get("vs_baseline") or row.get("repeat_on_warm_server") or {}
        print(f"{name}: ppl {row.get('ppl', math.nan):.4f} increase {vs.get('ppl_increase', math.nan):+.4%} "
              f"agreement {vs.get('agreement', math.nan):.3f} exact {vs.get('exact_match_rate', math.nan):.3f} "
              f"grade {vs.get('grade', math.nan):.2f} probe {row.get('probe_seconds', math.nan)} s "
              f"start {row.get('start_seconds', math.nan)} s {row.get('error', '')}", flush=True)
    print(C.table(["config", "ppl", "ppl +%", "agreement", "exact", "grade", "accept", "probe s", "start s"],
                  [[r["config"], r.get("ppl", math.nan),
                    100 * (r.get("vs_baseline") or r.get("repeat_on_warm_server") or {}).get("ppl_increase", math.nan),
                    (r.get("vs_baseline") or r.get("repeat_on_warm_server") or {}).get("agreement", math.nan),
                    (r.get("vs_baseline") or r.get("repeat_on_warm_server") or {}).get("exact_match_rate", math.nan),
                    (r.get("vs_baseline") or r.get("repeat_on_warm_server") or {}).get("grade", math.nan),
                    r.get("spec_acceptance", math.nan), r.get("probe_seconds", math.nan),
                    r.get("start_seconds", math.nan)] for r in rows]))
    path = C.write_result(a.out, {
        "model": cfg.model.name, "quality_set": qset.name, "quality_set_sha256": qset.sha256,
        "max_tokens": qcfg.max_tokens, "gate": {"max_ppl_increase": qcfg.max_ppl_increase,
                                                "min_agreement": qcfg.min_agreement},
        "fixed_args": list(fixed), "model_prepare_seconds": round(prepare_s, 1), "configs": rows})
    print(f"wrote {path.relative_to(C.REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
