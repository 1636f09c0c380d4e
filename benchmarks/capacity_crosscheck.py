"""A study's capacities, checked by ``vllm bench serve``: the found load and a load above it.

For each chosen trial (default: the baseline and the search's best), the server is started again
exactly as the trial recorded it (``server_argv``: the same flags, model folder and served name;
another port), then both clients, ours and ``vllm bench serve``, run closed loop on identical
token-id requests with greedy sampling (``benchmarks/fidelity.py``, A B B A) at the trial's
capacity ``C`` users and at ``ceil(factor x C)``. The question each answers: does the config meet
the SLO (P99 E2E <= ``--slo-ms``) at ``C``, and miss it above, by the reference client too.

Usage (a GPU host with vLLM importable; one GPU)::

    python benchmarks/capacity_crosscheck.py --storage postgresql://... --study NAME --slo-ms 2000 \\
        --gpu 3 --out results/capacity-crosscheck.json [--trial 0 --trial 12] [--factor 1.25]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from optimizer.server.process import VllmServer, free_port  # noqa: E402


def _arg(argv: list[str], flag: str) -> str:
    return argv[argv.index(flag) + 1]


def _with_port(argv: list[str], port: int) -> list[str]:
    out = list(argv)
    out[out.index("--port") + 1] = str(port)
    return out


def _trials(storage: str, study: str, numbers: list[int]) -> list[tuple[str, Any]]:
    import optuna

    from optimizer.study.results import study_result

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    trials = optuna.load_study(study_name=study, storage=storage).get_trials(deepcopy=False)
    if numbers:
        by_number = {t.number: t for t in trials}
        missing = [n for n in numbers if n not in by_number]
        if missing:
            raise SystemExit(f"--trial {missing}: no such trial in study {study!r}")
        return [(f"trial {n}", by_number[n]) for n in numbers]
    res = study_result(trials)
    if res.baseline is None or res.best is None:
        raise SystemExit(f"study {study!r} has no completed baseline or no feasible best trial")
    return [("baseline", res.baseline), ("best", res.best)]


def _check(label: str, t: Any, a: argparse.Namespace) -> dict[str, Any]:
    argv = json.loads(t.user_attrs["server_argv"])
    users = int(round(float(t.user_attrs["cap_value"])))
    above = int(math.ceil(users * a.factor))
    port = free_port()
    env = dict(os.environ, VLLM_SERVER_DEV_MODE="1")  # the benchmark empties the prefix cache between runs
    if a.gpu is not None:
        env["CUDA_VISIBLE_DEVICES"] = str(a.gpu)
    logs = Path(a.logs)
    logs.mkdir(parents=True, exist_ok=True)
    # the product's server: its own process group, killed whole on the way out
    with VllmServer(_with_port(argv, port), python=a.python, host="127.0.0.1", port=port,
                    log_path=logs / f"server-{t.number}.log", env=env, pid_dir=logs / "pids") as srv:
        start_s = srv.wait_ready(a.start_timeout_s)
        url = srv.url
        out = logs / f"fidelity-{t.number}.json"
        cases = [f"closed:{c}:{a.prompt}:{a.output}:{max(a.min_requests, a.requests_per_user * c)}"
                 for c in (users, above)]
        cmd = [a.python, str(REPO / "benchmarks" / "fidelity.py"), "--server", url,
               "--served-model", _arg(argv, "--served-model-name"), "--tokenizer", _arg(argv, "--model"),
               "--bench-python", a.python, "--reps", str(a.reps), "--warmup", str(a.warmup), "--out", str(out)]
        for c in cases:
            cmd += ["--case", c]
        subprocess.run(cmd, check=True, env=env)
        doc = json.loads(out.read_text())
    verdicts = []
    for name, users_at in zip(cases, (users, above)):
        med = doc["cases"][name.replace(":", "-")]["summary"]["median"]
        verdicts.append({"users": users_at, "case": name,
                         "ours_e2e_p99_ms": med["ours"]["e2e_p99"], "bench_e2e_p99_ms": med["bench"]["e2e_p99"],
                         "ours_tok_s": med["ours"]["tok_s"], "bench_tok_s": med["bench"]["tok_s"],
                         "ours_meets_slo": med["ours"]["e2e_p99"] <= a.slo_ms,
                         "bench_meets_slo": med["bench"]["e2e_p99"] <= a.slo_ms})
    return {"label": label, "trial": t.number, "capacity_users": users, "above_users": above,
            "study_p99_ms_at_capacity": t.user_attrs.get("cap_p99_ms"), "start_s": round(start_s, 1),
            "flags": argv[argv.index("--served-model-name") + 3:], "checks": verdicts, "fidelity": doc}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--storage", required=True)
    ap.add_argument("--study", required=True)
    ap.add_argument("--trial", type=int, action="append", default=[], help="trial number (default: baseline, best)")
    ap.add_argument("--slo-ms", type=float, required=True, help="the study's P99 E2E limit")
    ap.add_argument("--factor", type=float, default=1.25, help="the load above the capacity, as a multiple")
    ap.add_argument("--prompt", type=int, default=512)
    ap.add_argument("--output", type=int, default=128)
    ap.add_argument("--requests-per-user", type=int, default=4)
    ap.add_argument("--min-requests", type=int, default=256)
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--warmup", type=int, default=16)
    ap.add_argument("--gpu", default=None, help="CUDA_VISIBLE_DEVICES for the servers")
    ap.add_argument("--python", default=sys.executable)
    ap.add_argument("--start-timeout-s", type=float, default=900)
    ap.add_argument("--logs", default="/tmp/capacity-crosscheck")
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    results = [_check(label, t, a) for label, t in _trials(a.storage, a.study, a.trial)]
    doc = {"study": a.study, "slo_ms": a.slo_ms, "factor": a.factor, "workload": f"{a.prompt}/{a.output}",
           "configs": results}
    Path(a.out).write_text(json.dumps(doc, indent=1, default=float).replace(str(REPO) + "/", ""))
    for r in results:
        for c in r["checks"]:
            print(f"{r['label']} (trial {r['trial']}) at {c['users']} users: P99 E2E ours {c['ours_e2e_p99_ms']:.0f} ms, "
                  f"vllm bench serve {c['bench_e2e_p99_ms']:.0f} ms (SLO {a.slo_ms:.0f}): "
                  f"{'meets' if c['bench_meets_slo'] else 'misses'} by the reference client")
    return 0


if __name__ == "__main__":
    sys.exit(main())
