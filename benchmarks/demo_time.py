"""``make demo`` timed as a whole command on a fresh clone: where its seconds go (issue 28).

How the runs were made (under ``flock /tmp/vllm-cpu.lock``, one at a time; a loop sampled
``/proc/loadavg`` every 10 s into LOADAVG, lines ``HH:MM:SS l1 l5 l15``)::

    git clone <this branch> /tmp/demo-clone-N && cd /tmp/demo-clone-N
    /usr/bin/time -f "TIME user %U sys %S wall %e" make demo 2>&1 | <prefix each line with HH:MM:SS (UTC)> > LOG

then::

    python benchmarks/demo_time.py add LOG --clone /tmp/demo-clone-N --loadavg LOADAVG --label clone-N \\
        [--wall S] [--base] [--out benchmarks/results/demo-time-cpu.json]

reads the stamped log (the install: ``python3 -m venv`` to the ``-m optimizer.run`` line; the end:
the last line) and the clone's study database (every run's start, warm-up, load and stop seconds
as the trial recorded them, and its start and end), and adds one entry. ``--base``: a run of the
former defaults (6 trials, top 3 x 3 rounds, the plain launcher), made with an existing venv
(``python -m optimizer.run`` directly, so without its install) and possibly stopped early by
``timeout``; its entry says how many runs it reached.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Optional

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks._common import machine  # noqa: E402

_STAMP = re.compile(r"^(\d\d):(\d\d):(\d\d) ")


def _secs(line: str) -> Optional[int]:
    m = _STAMP.match(line)
    return int(m[1]) * 3600 + int(m[2]) * 60 + int(m[3]) if m else None


def _day_s(dt: datetime) -> float:
    dt = dt.replace(tzinfo=timezone.utc) if dt.tzinfo is None else dt.astimezone(timezone.utc)
    return dt.hour * 3600 + dt.minute * 60 + dt.second + dt.microsecond / 1e6


def _log_marks(log: Path) -> dict[str, Any]:
    lines = log.read_text(errors="replace").splitlines()
    stamped = [(s, ln) for ln in lines if (s := _secs(ln)) is not None]
    first, last = stamped[0][0], stamped[-1][0]
    venv = next((s for s, ln in stamped if "-m venv" in ln), None)
    run = next((s for s, ln in stamped if "-m optimizer.run" in ln), first)
    m = re.search(r"TIME user [\d.]+ sys [\d.]+ wall ([\d.]+)", "\n".join(lines))
    closing = [re.sub(r"^(\d\d:\d\d:\d\d )+", "", ln) for ln in lines
               if "RECOMMENDATION (confirmed" in ln or "TO KNOW MORE" in ln]
    return {"first": first, "last": last, "install_s": None if venv is None else run - venv, "run": run,
            "time_wall_s": float(m[1]) if m else None, "closing": closing[-2:]}


def _runs(db: Path) -> list[dict[str, Any]]:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    out = []
    for name in optuna.get_all_study_names(f"sqlite:///{db}"):
        study = optuna.load_study(study_name=name, storage=f"sqlite:///{db}")
        for t in study.get_trials(deepcopy=False):
            if t.datetime_start is None or t.datetime_complete is None:
                continue
            a = t.user_attrs
            end = _day_s(t.datetime_complete)  # a confirmation run is stored after it ran: its span is t_total_s
            begin = end - a["t_total_s"] if isinstance(a.get("t_total_s"), (int, float)) else _day_s(t.datetime_start)
            out.append({"number": t.number, "confirmation": "confirms" in a, "baseline": a.get("kind") == "baseline",
                        "state": t.state.name, "begin": round(begin, 1), "end": round(end, 1),
                        **{k: a.get(f"t_{k}") for k in ("start_s", "warmup_s", "load_s", "stop_s")},
                        "compile_cache_hit": a.get("compile_cache_hit"), "output_tok_s": a.get("output_tok_s"),
                        "max_num_seqs": t.params.get("max_num_seqs")})
    return sorted(out, key=lambda r: r["begin"])


def _load(path: Path, lo: float, hi: float) -> dict[str, float]:
    vals = [float(p[1]) for ln in path.read_text().splitlines()
            if (s := _secs(ln)) is not None and lo <= s <= hi and len(p := ln.split()) >= 2]
    return {"mean": round(statistics.fmean(vals), 2), "max": max(vals), "samples": len(vals)} if vals else {}


def _phase(runs: list[dict[str, Any]]) -> dict[str, Any]:
    if not runs:
        return {"runs": 0}
    med = {k: round(statistics.median(r[k] for r in runs if r[k] is not None), 1)
           for k in ("start_s", "warmup_s", "load_s", "stop_s") if any(r[k] is not None for r in runs)}
    return {"runs": len(runs), "wall_s": round(runs[-1]["end"] - runs[0]["begin"], 1),
            "per_run_s": [round(r["end"] - r["begin"], 1) for r in runs],
            "start_s": [r["start_s"] for r in runs], "median": med}


def entry(log: Path, clone: Path, loadavg: Path, label: str, wall: Optional[float], base: bool) -> dict[str, Any]:
    marks = _log_marks(log)
    runs = [r for r in _runs(next((clone / "studies").glob("*.db"))) if r["state"] in ("COMPLETE", "PRUNED")]
    search, confirm = [r for r in runs if not r["confirmation"]], [r for r in runs if r["confirmation"]]
    end = marks["last"]
    total = wall if wall is not None else marks["time_wall_s"] or end - marks["first"]
    first_run = runs[0]["begin"] if runs else end
    return {
        "label": label, "defaults": "former (6 trials, top 3 x 3 rounds, plain launcher)" if base else "this branch",
        "wall_s": round(total, 1), "install_s": marks["install_s"],
        "before_first_run_s": round(first_run - marks["run"], 1),
        "search": _phase(search), "confirmation": _phase(confirm),
        "after_last_run_s": round(end - runs[-1]["end"], 1) if runs else None,
        "loadavg1": _load(loadavg, marks["first"], end), "closing": marks["closing"],
        "runs": runs,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("add")
    a.add_argument("log", type=Path)
    a.add_argument("--clone", type=Path, required=True)
    a.add_argument("--loadavg", type=Path, required=True)
    a.add_argument("--label", required=True)
    a.add_argument("--wall", type=float, default=None, help="the whole command's wall seconds, if timed outside")
    a.add_argument("--base", action="store_true")
    a.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results" / "demo-time-cpu.json")
    args = ap.parse_args()
    doc = json.loads(args.out.read_text()) if args.out.exists() else {
        "benchmark": "demo-time-cpu", "what": "make demo timed as a whole command on a fresh clone (benchmarks/"
        "demo_time.py); per-run seconds as each trial recorded them; loadavg1 sampled every 10 s", "runs": []}
    doc["machine"] = {k: v for k, v in machine().items() if k != "loadavg"}
    doc["runs"] = [r for r in doc["runs"] if r["label"] != args.label]
    doc["runs"].append(entry(args.log, args.clone, args.loadavg, args.label, args.wall, args.base))
    args.out.write_text(json.dumps(doc, indent=1) + "\n")
    print(json.dumps({k: v for k, v in doc["runs"][-1].items() if k != "runs"}, indent=1))


if __name__ == "__main__":
    main()
