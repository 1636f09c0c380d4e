"""Wall time of one trial budget with 1 and with 2 parallel workers on a PostgreSQL study.

    python benchmarks/parallel_workers.py [--trials 8] [--start-delay 3] [--workers 1 2]

Each run is the real CLI (``python -m optimizer.run``) on a fresh database of a throw-away
PostgreSQL server on loopback, with the fake vLLM server of the tests
(``optimizer/testing/fake_vllm.py``), which takes ``--start-delay`` seconds to start, as a model load
does, and then answers ~5 ms per token. Two simulated GPUs (``hardware.gpu_ids=[0,1]``, tensor
parallel 1) give two workers. What the numbers measure is the orchestration: how much of the
budget's time parallel workers take off when the server start dominates a trial. A real vLLM
trial is minutes, not seconds, so the fixed costs (process spawn, study open) weigh less there.
Prints one Markdown table row per worker count.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from optimizer.testing.postgres import PostgresServer, postgres_bin  # noqa: E402


def run_once(pg: PostgresServer, workers: int, trials: int, start_delay: float, root: Path) -> dict[str, float]:
    import optuna
    from optuna.trial import TrialState

    url = pg.create_db()
    name = f"bench-w{workers}"
    argv = [sys.executable, "-m", "optimizer.run", f"study.name={name}", f"study.storage={url}",
            f"study.runs_dir={root / 'runs'}", f"server.cache_dir={REPO / '.cache'}", "report=false",
            "server.module=optimizer.testing.fake_vllm", "hardware=h100", "hardware.gpu_ids=[0,1]", "search=gpu",
            "search.tensor_parallel_size=[1]", "study.confirm.top_k=0", f"study.workers={workers}", f"study.n_trials={trials}",
            "load.num_requests=24", "load.warmup_requests=4", "load.concurrency=4", "workload.prompt_tokens=64",
            "workload.output_tokens=16", "search.n_startup_trials=2"]
    env = dict(os.environ, PYTHONPATH=str(REPO), FAKE_VLLM_START_DELAY_S=str(start_delay))
    t0 = time.perf_counter()
    r = subprocess.run(argv, cwd=root, env=env, capture_output=True, text=True, timeout=1800)
    wall = time.perf_counter() - t0
    if r.returncode != 0:
        raise SystemExit(f"workers={workers}: exit {r.returncode}\n{r.stderr[-3000:]}")
    study = optuna.load_study(study_name=name, storage=url)
    done = [t for t in study.trials if t.state == TrialState.COMPLETE]
    busy = sum((t.datetime_complete - t.datetime_start).total_seconds() for t in done)
    return {"wall": wall, "trials": len(done), "trial_s": busy / max(len(done), 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--trials", type=int, default=8)
    ap.add_argument("--start-delay", type=float, default=3.0, help="seconds the fake server takes to start")
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    args = ap.parse_args()
    bin_dir = postgres_bin()
    if bin_dir is None:
        raise SystemExit("PostgreSQL server binaries not found: apt-get install postgresql")
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    pg = PostgresServer(bin_dir).start()
    try:
        from optimizer.model.tiny import write_tiny_model

        write_tiny_model(REPO / ".cache" / "models" / "tiny")
        print(f"{args.trials} trials, fake server start {args.start_delay:g} s, PostgreSQL {bin_dir.parent.name}, "
              f"{os.cpu_count()} CPU cores\n")
        print("| workers | wall time (s) | complete trials | mean trial (s) | speed-up |")
        print("|---|---|---|---|---|")
        base = None
        for w in args.workers:
            with tempfile.TemporaryDirectory(prefix=f"bench-w{w}-") as tmp:
                res = run_once(pg, w, args.trials, args.start_delay, Path(tmp))
            base = base or res["wall"]
            print(f"| {w} | {res['wall']:.1f} | {res['trials']} | {res['trial_s']:.1f} | "
                  f"{base / res['wall']:.2f}x |", flush=True)
    finally:
        pg.stop()


if __name__ == "__main__":
    main()
