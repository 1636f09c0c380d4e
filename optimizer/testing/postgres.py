"""A throw-away PostgreSQL server on loopback, for the tests and benchmarks of parallel workers.

:class:`PostgresServer` runs ``initdb`` into a fresh directory and starts ``postgres`` on
127.0.0.1 and a free port (Unix socket in the same directory), as the ``postgres`` user when
running as root (``initdb`` refuses root). The server gets SIGTERM if the process that started
it dies. The test fixtures (``postgres``, ``pg_url``) are in ``tests/support/postgres.py``.

The binaries come from the Debian package (``/usr/lib/postgresql/<v>/bin``), PATH, or the PyPI
wheel ``pgserver`` (which ships PostgreSQL 16 under ``pgserver/pginstall``; found without
importing it, so its own dependencies need not be installed): a GPU host with no package index
gets a study database for one-host parallel workers from two wheels (``pgserver``, ``psycopg``).

``python -m optimizer.testing.postgres --url-file F [--db NAME]`` runs one until SIGTERM/SIGINT
and writes its URL to ``F`` once it accepts connections (``study.storage=$(cat F)``).
"""

from __future__ import annotations

import ctypes
import glob
import importlib.util
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Optional

__all__ = ["PostgresServer", "postgres_bin"]


def postgres_bin() -> Optional[Path]:
    """The newest ``/usr/lib/postgresql/<version>/bin`` holding initdb and postgres, else PATH's,
    else the ``pgserver`` wheel's."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"), key=lambda p: int(p.split("/")[4]))
    if found:
        return Path(found[-1]).parent
    exe = shutil.which("postgres")
    if exe and shutil.which("initdb"):
        return Path(exe).parent
    spec = importlib.util.find_spec("pgserver")
    if spec is not None and spec.origin:
        wheel_bin = Path(spec.origin).parent / "pginstall" / "bin"
        if (wheel_bin / "postgres").exists() and (wheel_bin / "initdb").exists():
            return wheel_bin
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _die_with_parent() -> None:
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class PostgresServer:
    def __init__(self, bin_dir: Path, user: str = "opt") -> None:
        self.bin = bin_dir
        self.user = user
        self.port = _free_port()
        self.root = Path(tempfile.mkdtemp(prefix="optimizer-pg-"))
        self.data = self.root / "data"
        self.run_as = "postgres" if os.geteuid() == 0 else None
        self._proc: Optional[subprocess.Popen[bytes]] = None

    def _popen_kw(self) -> dict:
        return {"user": self.run_as, "group": pwd.getpwnam(self.run_as).pw_gid} if self.run_as else {}

    def start(self, timeout_s: float = 60) -> "PostgresServer":
        if self.run_as:
            pw = pwd.getpwnam(self.run_as)
            os.chown(self.root, pw.pw_uid, pw.pw_gid)
        subprocess.run([str(self.bin / "initdb"), "-D", str(self.data), "-U", self.user, "--auth=trust", "-E", "UTF8",
                        "--no-sync"], check=True, capture_output=True, cwd=self.root, **self._popen_kw())
        with open(self.root / "postgres.log", "wb") as log:
            self._proc = subprocess.Popen(
                [str(self.bin / "postgres"), "-D", str(self.data), "-k", str(self.root), "-p", str(self.port),
                 "-h", "127.0.0.1", "-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off",
                 "-c", "max_connections=200"],
                stdout=log, stderr=subprocess.STDOUT, cwd=self.root, start_new_session=True,
                preexec_fn=_die_with_parent, **self._popen_kw())
        deadline = time.monotonic() + timeout_s
        import psycopg

        while True:
            if self._proc.poll() is not None:
                raise RuntimeError(f"postgres exited with {self._proc.returncode}: {self.log_tail()}")
            try:
                psycopg.connect(self.url("postgres")).close()
                return self
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"postgres not ready in {timeout_s:.0f} s: {self.log_tail()}") from None
                time.sleep(0.2)

    def log_tail(self) -> str:
        p = self.root / "postgres.log"
        return p.read_text(errors="replace")[-2000:] if p.exists() else ""

    def url(self, db: str) -> str:
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/{db}"

    def create_db(self, name: Optional[str] = None) -> str:
        """A new empty database; returns its URL."""
        import psycopg

        name = name or f"t_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self.url("postgres"), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.send_signal(signal.SIGINT)  # "fast" shutdown: disconnect clients, exit
            try:
                self._proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        shutil.rmtree(self.root, ignore_errors=True)


def main(argv: Optional[list[str]] = None) -> int:
    """Run one server until SIGTERM/SIGINT; its URL goes to ``--url-file`` once it is ready."""
    import argparse

    ap = argparse.ArgumentParser(prog="python -m optimizer.testing.postgres", description=main.__doc__)
    ap.add_argument("--url-file", required=True, help="where to write the database URL")
    ap.add_argument("--db", default="studies", help="the database to create (default: studies)")
    a = ap.parse_args(argv)
    bin_dir = postgres_bin()
    if bin_dir is None:
        print("no PostgreSQL binaries: install the Debian package postgresql, or the wheel pgserver "
              "(pip install --no-deps pgserver)", file=sys.stderr)
        return 1
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            print("running as root, PostgreSQL needs an ordinary user to run as: `useradd -r -M postgres`, "
                  "then run this again", file=sys.stderr)
            return 1
        shut = [str(p) for p in (bin_dir, *bin_dir.parents) if not os.stat(p).st_mode & 0o001]
        if shut:
            print(f"the postgres user cannot reach {bin_dir}: {', '.join(shut)} not searchable by others "
                  f"(e.g. a wheel installed under /root); run `chmod o+x {' '.join(shut)}`, or install the "
                  f"binaries elsewhere", file=sys.stderr)
            return 1
    server = PostgresServer(bin_dir).start()
    stop: list[int] = []
    for s in (signal.SIGTERM, signal.SIGINT):
        signal.signal(s, lambda signum, frame: stop.append(signum))
    try:
        url = server.create_db(a.db)
        tmp = Path(a.url_file + ".tmp")
        tmp.write_text(url + "\n")
        tmp.replace(a.url_file)
        print(f"PostgreSQL {bin_dir} serving {url} (data in {server.root}); SIGTERM stops it", flush=True)
        while not stop:
            time.sleep(0.5)
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
