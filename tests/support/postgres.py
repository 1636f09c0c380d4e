"""The PostgreSQL fixtures of the parallel-worker tests: ``postgres`` (one throw-away server per
test session, :class:`optimizer.testing.postgres.PostgresServer`) and ``pg_url`` (a fresh
database per test). Both skip, saying why, where the binaries (Debian package ``postgresql``) or
``psycopg`` (the driver SQLAlchemy 2.1 uses for ``postgresql://``) are missing.
"""

from __future__ import annotations

import os
import pwd
from typing import Iterator

import pytest

from optimizer.testing.postgres import PostgresServer, postgres_bin

__all__ = ["PostgresServer", "pg_url", "postgres", "postgres_bin"]


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    bin_dir = postgres_bin()
    if bin_dir is None:
        pytest.skip("PostgreSQL server binaries not found (/usr/lib/postgresql/<ver>/bin): install the Debian "
                    "package postgresql (`make test` does, as root)")
    try:
        import psycopg  # noqa: F401
    except ImportError:
        pytest.skip("psycopg is not installed (pip install 'psycopg[binary]'; a dependency in pyproject.toml)")
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root, and there is no `postgres` user to run the server as (initdb refuses "
                        "root; the Debian package postgresql creates that user)")
    server = PostgresServer(bin_dir).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def pg_url(postgres: PostgresServer) -> str:
    """The URL of a fresh, empty database on the session's PostgreSQL server."""
    return postgres.create_db()
