"""Shared fixtures. Tests marked ``vllm`` start real vLLM (CPU build) servers and take minutes."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import pytest

REPO = Path(__file__).resolve().parent.parent
CACHE = REPO / ".cache"  # generated models and vLLM compile caches persist here between runs

sys.path.insert(0, str(REPO))

from optimizer.testing.fake_server import FakeConfig, FakeServer  # noqa: E402


def vllm_installed() -> bool:
    return importlib.util.find_spec("vllm") is not None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    from tests.support.shared_server import group_shared_server_tests

    group_shared_server_tests(items)  # one start of the shared server for all its tests
    if vllm_installed():
        return
    skip = pytest.mark.skip(reason="vLLM is not installed in this environment (run `make test`)")
    for item in items:
        if "vllm" in item.keywords:
            item.add_marker(skip)


def pytest_runtest_teardown(item: pytest.Item, nextitem: Optional[pytest.Item]) -> None:
    from tests.support.shared_server import release_after

    release_after(item, nextitem)


@pytest.fixture(scope="session")
def repo() -> Path:
    return REPO


@pytest.fixture(scope="session")
def tiny_model() -> Path:
    from optimizer.model.tiny import write_tiny_model

    return write_tiny_model(CACHE / "models" / "tiny")


@pytest.fixture
def compose():
    """compose(*overrides) -> Config, with the study's files redirected by the caller."""
    from optimizer.commands.cli import compose as _compose

    def make(*overrides: str):
        return _compose(list(overrides))

    return make


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return dict(os.environ)


# one warm real vLLM server for the tests that only need "a server": `shared_server`
from tests.support.shared_server import shared_server  # noqa: E402,F401



@pytest.fixture
def fake_server() -> Iterator[FakeServer]:
    """The fault-injecting fake vLLM server (optimizer.testing.fake_server) in a thread, model ``fake``,
    no faults; fresh per test, stopped after it."""
    with FakeServer() as srv:
        yield srv


@pytest.fixture
def fake_server_factory() -> Iterator[Callable[..., FakeServer]]:
    """``make(**FakeConfig fields) -> FakeServer``; every server made is stopped after the test."""
    made: list[FakeServer] = []

    def make(**kw: Any) -> FakeServer:
        srv = FakeServer(FakeConfig(**kw)).start()
        made.append(srv)
        return srv

    yield make
    for s in made:
        s.stop()


@pytest.fixture
def fault_ledger():
    from tests.support.fault_ledger import LEDGER

    return LEDGER


def pytest_sessionfinish(session, exitstatus):  # noqa: ARG001
    from tests.support.shared_server import release

    release()


def pytest_terminal_summary(terminalreporter, exitstatus, config):  # noqa: ARG001
    from tests.support.fault_ledger import LEDGER

    table = LEDGER.table()
    if table:
        terminalreporter.section("fault suite summary")
        terminalreporter.write_line(table)


# a throw-away PostgreSQL server (session) and a fresh database per test: `postgres`, `pg_url`
from tests.support.postgres import pg_url, postgres  # noqa: E402,F401
