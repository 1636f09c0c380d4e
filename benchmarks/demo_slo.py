"""The CPU demo's answer on different hosts: does ``slo.p99_ms=auto`` give a recommendation?

Runs a short demo study (the embedded defaults, ``study.n_trials=3``) under one condition and
prints one summary row per study, read back from its database:

    python benchmarks/demo_slo.py run plain  --out /tmp/demo-slo     # the host as it is
    python benchmarks/demo_slo.py run hog    --out /tmp/demo-slo     # + a busy loop on one core
    python benchmarks/demo_slo.py run avx2   --out /tmp/demo-slo     # vLLM's kernels limited to AVX2
    python benchmarks/demo_slo.py table      --out /tmp/demo-slo     # the markdown table of all runs

``avx2`` makes vLLM's CPU build behave as on a host without AVX-512: vLLM picks its kernel library
(``_C_AVX2``) and attention ISA from ``torch.cpu._is_avx512_supported()`` and friends, which a
``sitecustomize`` in the server's environment answers False; ``ATEN_CPU_CAPABILITY=avx2`` and
``ONEDNN_MAX_CPU_ISA=AVX2`` limit torch's own kernels. The load average is sampled every 10 s.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
_SITE = '''import os
if os.environ.get("FORCE_AVX2") == "1":
    import torch
    torch.cpu._is_avx512_supported = lambda: False
    torch.cpu._is_avx512_bf16_supported = lambda: False
    torch.cpu._is_amx_tile_supported = lambda: False
'''


def _hog() -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-c", "while True: pass"])


def run(condition: str, out: Path, n_trials: int) -> None:
    out.mkdir(parents=True, exist_ok=True)
    name = f"demo-slo-{condition}"
    overrides = [f"study.name={name}", f"study.storage=sqlite:///{out}/{name}.db", f"study.runs_dir={out}/runs",
                 f"reports_dir={out}/reports", f"study.n_trials={n_trials}"]
    if condition == "avx2":
        site = out / "avx2-site"
        site.mkdir(exist_ok=True)
        (site / "sitecustomize.py").write_text(_SITE)
        overrides += ["+server.env.FORCE_AVX2='1'", "+server.env.ATEN_CPU_CAPABILITY=avx2",
                      "+server.env.ONEDNN_MAX_CPU_ISA=AVX2", f"+server.env.PYTHONPATH='{site}'"]
    hog = _hog() if condition == "hog" else None
    loads: list[float] = []
    done = threading.Event()

    def sample() -> None:
        while not done.wait(10):
            loads.append(float(Path("/proc/loadavg").read_text().split()[0]))

    threading.Thread(target=sample, daemon=True).start()
    t0 = time.monotonic()
    try:
        rc = subprocess.call([sys.executable, "-m", "optimizer.run", *overrides], cwd=REPO)
    finally:
        done.set()
        if hog is not None:
            hog.kill()
            hog.wait()
    meta = {"condition": condition, "rc": rc, "wall_s": round(time.monotonic() - t0, 1),
            "load_avg_1m_mean": round(sum(loads) / len(loads), 2) if loads else None,
            "load_avg_1m_max": max(loads) if loads else None}
    (out / f"{name}.json").write_text(json.dumps(meta))
    print(json.dumps(meta))


def _rows(out: Path) -> list[str]:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    rows = []
    for meta_file in sorted(out.glob("demo-slo-*.json")):
        meta = json.loads(meta_file.read_text())
        name = meta.get("study", meta_file.stem)  # a run started by hand names its own study
        study = optuna.load_study(study_name=name, storage=f"sqlite:///{out}/{meta.get('db', name + '.db')}")
        cal = study.user_attrs.get("slo_calibration") or {}
        done = [t for t in study.trials if t.state.name == "COMPLETE"]
        feas = [t for t in done if t.user_attrs.get("feasible")]
        best = max(feas, key=lambda t: t.value or 0.0) if feas else None
        base = next((t for t in done if t.user_attrs.get("kind") == "baseline"), None)
        trials = "; ".join(f"#{t.number} seqs={t.params.get('max_num_seqs', 128)}: "
                           f"{t.user_attrs.get('output_tok_s') or 0:.0f} tok/s, P99 {t.user_attrs.get('e2e_p99') or 0:.0f}"
                           f" ms, {'ok' if t.user_attrs.get('feasible') else 'over'}" for t in done)
        old = sum(1 for t in done if (t.user_attrs.get("e2e_p99") or 1e18) <= 1500)  # the former absolute SLO
        load_s = [t.user_attrs.get("t_load_s") for t in done if t.user_attrs.get("t_load_s")]
        start_s = [t.user_attrs.get("t_start_s") for t in done if t.user_attrs.get("t_start_s")]
        rows.append(f"| {meta['condition']} | {meta['load_avg_1m_mean']} (max {meta['load_avg_1m_max']}) | "
                    f"{base.user_attrs.get('output_tok_s', 0):.0f} tok/s, P99 {cal.get('base_p99_ms', float('nan')):.0f} ms"
                    f" | {cal.get('slo_ms', float('nan')):.0f} ms | {len(feas)}/{len(done)} | {old}/{len(done)} | "
                    f"{'trial %d, %.0f tok/s' % (best.number, best.value) if best else 'none'} | "
                    f"{min(start_s, default=0):.0f}-{max(start_s, default=0):.0f} s | "
                    f"{min(load_s, default=0):.0f}-{max(load_s, default=0):.0f} s | {trials} |"
                    if base else f"| {meta['condition']} | no baseline measured (rc {meta['rc']}) |")
    return rows


def table(out: Path) -> str:
    head = ("| condition | load avg 1 min (mean, max) | baseline | calibrated SLO | feasible | feasible at the former "
            "1500 ms | best | server start | load phase (368 req) | trials |\n|---|---|---|---|---|---|---|---|---|---|")
    return "\n".join([head, *_rows(out)])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("what", choices=["run", "table"])
    ap.add_argument("condition", nargs="?", choices=["plain", "hog", "avx2"])
    ap.add_argument("--out", type=Path, default=Path("/tmp/demo-slo"))
    ap.add_argument("--n-trials", type=int, default=3)
    a = ap.parse_args()
    if a.what == "run":
        if not a.condition:
            ap.error("run needs a condition")
        run(a.condition, a.out.resolve(), a.n_trials)
    else:
        print(table(a.out.resolve()))


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
