"""Re-analyse a committed capacity study with the capacity fitted over every probe.

Reads the study database (read-only: a copy in a temporary folder), and for every trial that ran a
capacity search (search trials and confirmation runs) puts the search's answer (the highest load
that passed) beside the fitted capacity, its interval and its flags
(:func:`optimizer.capacity.curve.fitted`; these probes predate the kept latency tails,
so each probe's P99 is resampled from its recorded distribution-free interval).

Usage: ``python benchmarks/capacity_reanalysis.py [DB] [--out NAME]`` (default: the committed H200
study, docs/results/h200-capacity-llama-3-8b/). Writes ``benchmarks/results/<NAME>.json``.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import _common as C  # noqa: E402

import optuna  # noqa: E402

from optimizer.capacity.curve import fitted  # noqa: E402
from optimizer.record import TrialRecord  # noqa: E402

DEFAULT = Path("docs/results/h200-capacity-llama-3-8b/h200-capacity-llama-3-8b.db")


def _f(v: float) -> Any:
    return v if v == v else None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("db", nargs="?", default=str(DEFAULT))
    ap.add_argument("--out", default="capacity_reanalysis-h200")
    a = ap.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "study.db"
        shutil.copy(a.db, db)
        url = f"sqlite:///{db}"
        for summary in optuna.get_all_study_summaries(url):
            study = optuna.load_study(study_name=summary.study_name, storage=url)
            for t in study.get_trials(deepcopy=False):
                rec = TrialRecord.from_trial(t)
                if rec.capacity is None:
                    continue
                r = rec.capacity.result
                f = fitted(r)
                conf = rec.confirmation
                rows.append({"trial": t.number, "state": t.state.name,
                             "confirms": None if conf is None else conf.of,
                             "round": None if conf is None else conf.repeat,
                             "search_value": _f(r.value), "limited_by": r.limited_by.value,
                             "probes": [(p.load, p.passed, round(p.p99_ms)) for p in r.probes if p.p99_ms == p.p99_ms],
                             "fitted": _f(f.estimate), "low": _f(f.low), "high": _f(f.high),
                             "flags": list(f.flags), "limit_ms": r.slo_p99_ms})
    rows.sort(key=lambda x: x["trial"])
    print(C.table(["trial", "confirms", "search", "fitted", "95% CI", "flags"],
                  [[x["trial"], x["confirms"] if x["confirms"] is not None else "", x["search_value"], x["fitted"],
                    f"{x['low']}-{x['high'] if x['high'] is not None else 'open'}", "; ".join(x["flags"])[:90]]
                   for x in rows]))
    path = C.write_result(a.out, {"study": Path(a.db).name, "trials": rows})
    print(f"wrote {path.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
