"""Run the real optimizer CLI as a subprocess against a throw-away study, and read it back."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import time
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import optuna

REPO = Path(__file__).resolve().parents[2]

# small and quick, but a real vLLM server and a real load test; no confirmation stage (its own test
# turns it on: tests/e2e/test_confirm_e2e.py)
FAST = ["study.confirm.top_k=0", "load.num_requests=24", "load.warmup_requests=4", "load.concurrency=4", "workload.prompt_tokens=64",
        "workload.output_tokens=16", "search.n_startup_trials=2", "server.start_timeout_s=400"]


@dataclass
class StudyDir:
    root: Path
    name: str = "t"

    @property
    def db(self) -> Path:
        return self.root / "studies" / f"{self.name}.db"

    @property
    def url(self) -> str:
        return f"sqlite:///{self.db}"

    def overrides(self) -> list[str]:
        return [f"study.name={self.name}", f"study.storage={self.url}", f"study.runs_dir={self.root / 'runs'}",
                f"reports_dir={self.root / 'reports'}", f"server.cache_dir={REPO / '.cache'}"]

    def argv(self, *extra: str) -> list[str]:
        return [sys.executable, "-m", "optimizer.run", *self.overrides(), *FAST, *extra]

    def env(self, **extra: str) -> dict[str, str]:
        env = dict(os.environ)
        env["PYTHONPATH"] = str(REPO)
        env.update(extra)
        return env

    def run(self, *extra: str, timeout: float = 1200, env: Optional[dict[str, str]] = None
            ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(self.argv(*extra), cwd=self.root, capture_output=True, text=True, timeout=timeout,
                              env=env or self.env())

    def popen(self, *extra: str, env: Optional[dict[str, str]] = None) -> subprocess.Popen[str]:
        log = open(self.root / "optimizer.out", "w")
        return subprocess.Popen(self.argv(*extra), cwd=self.root, stdout=log, stderr=subprocess.STDOUT, text=True,
                                env=env or self.env())

    def output(self) -> str:
        p = self.root / "optimizer.out"
        return p.read_text() if p.exists() else ""

    def study(self) -> optuna.Study:
        return optuna.load_study(study_name=self.name, storage=self.url)

    def study_if_created(self) -> Optional[optuna.Study]:
        """The study once the optimizer process has created it, else None: for a test watching a running study.

        Opening the file with Optuna while the optimizer creates it races: each side creates and stamps the
        schema (alembic_version: "UNIQUE constraint failed", seen in CI-like runs; Optuna does this even with
        skip_table_creation). So the file is read with sqlite3 first, and Optuna opens it only once the study's
        row exists, which Optuna writes after the schema."""
        if not self.db.exists():
            return None
        try:
            with closing(sqlite3.connect(f"file:{self.db}?mode=ro", uri=True, timeout=10)) as con:
                row = con.execute("SELECT 1 FROM studies WHERE study_name = ?", (self.name,)).fetchone()
        except sqlite3.Error:  # no schema yet
            return None
        return self.study() if row else None
        try:
            return self.study()
        except (KeyError, optuna.exceptions.StorageInternalError):  # no study yet; no schema yet
            return None


def vllm_pids() -> list[int]:
    """Processes of this user running vLLM's API server or engine (any left would be orphans)."""
    out = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if "vllm.entrypoints.openai.api_server" in cmd or "VLLM::EngineCore" in cmd or "EngineCore" in cmd[:40]:
            out.append(int(d.name))
    return out


def server_groups(root: Path) -> list[int]:
    """Process groups of servers started for the study under ``root`` (from the pid files)."""
    import json

    groups = []
    for f in (REPO / ".cache" / "pids").glob("server-*.json"):
        try:
            data = json.loads(f.read_text())
        except (OSError, ValueError):
            continue
        if str(data.get("log", "")).startswith(str(root)):
            groups.append(int(data["pgid"]))
    return groups


def group_members(pgid: int) -> list[int]:
    members = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if os.getpgid(int(d.name)) == pgid:
                    members.append(int(d.name))
            except OSError:
                pass
    return members


def wait_for(pred, timeout: float, what: str, step: float = 0.5):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = pred()
        if value:
            return value
        time.sleep(step)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def live_groups(root: Path) -> list[int]:
    return [g for g in server_groups(root) if group_members(g)]


def orphans_after(root: Path, timeout: float = 40.0) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and live_groups(root):
        time.sleep(0.2)
    return sum(len(group_members(g)) for g in server_groups(root))


def engine_started(root: Path) -> bool:
    """A server of this study is up to its EngineCore (well into its start)."""
    for g in server_groups(root):
        for pid in group_members(g):
            try:
                if b"EngineCore" in Path(f"/proc/{pid}/cmdline").read_bytes():
                    return True
            except OSError:
                pass
    return False
