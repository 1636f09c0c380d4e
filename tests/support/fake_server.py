"""The fake vLLM server's pytest fixtures (``fake_server``, ``fake_server_factory``); the server
itself is :mod:`optimizer.testing.fake_server`, re-exported here for the tests."""

from __future__ import annotations

from typing import Any, Iterator

import pytest

from optimizer.testing.fake_server import *  # noqa: F401,F403
from optimizer.testing.fake_server import FakeConfig, FakeServer


@pytest.fixture
def fake_server() -> Iterator[FakeServer]:
    """A fresh fake server in a thread, model ``fake``, no faults; stopped after the test."""
    with FakeServer() as srv:
        yield srv


@pytest.fixture
def fake_server_factory() -> Iterator[Any]:
    """``make(**FakeConfig fields) -> FakeServer``; every server made is stopped after the test."""
    made: list[FakeServer] = []

    def make(**kw: Any) -> FakeServer:
        srv = FakeServer(FakeConfig(**kw)).start()
        made.append(srv)
        return srv

    yield make
    for s in made:
        s.stop()
