"""One warm real vLLM (CPU build) server for the tests that only need "a server": the session's
``shared_server`` fixture, started once instead of once per test module (each start costs a minute
or more on a 2-core CI machine).

The model is the tiny architecture with 2 layers and a 32000-token vocabulary, generated from its
config (``model.generate=config``) and served with ``--load-format dummy`` (random weights, any token
id below the vocabulary size). The server runs with ``--max-num-seqs 2`` (from three users on,
requests queue: the capacity search has a bracket to find) and ``--enforce-eager`` (what its users
test is neither compiled nor timed). tests/conftest.py runs the tests that use it one after the
other and stops the server after the last of them, so that it is not held while the rest of the
suite runs (a later test that asks again gets a fresh one).
"""

from __future__ import annotations

import os
import sys
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Optional

import pytest

from optimizer.space.engine_args import EngineParams

FIXTURE = "shared_server"
PARAMS = EngineParams(kv_cache_gib=0.25, max_model_len=2048, max_num_seqs=2, max_num_batched_tokens=2048)
MODEL = ["model.name=tiny-vocab32k", "model.generate=config", "model.load_format=dummy", "model.num_layers=2",
         "model.vocab_size=32000", "model.num_params_b=0.0174"]


@dataclass(frozen=True)
class SharedServer:
    cfg: Any  # optimizer.settings.config.Config, composed with MODEL
    server: Any  # optimizer.server.process.VllmServer, ready
    params: EngineParams
    name: str  # the served model name

    @property
    def url(self) -> str:
        return self.server.url


class _Shared:
    """The one server: started by the first test that asks, stopped after the last of a run of them."""

    def __init__(self) -> None:
        self.value: Optional[SharedServer] = None
        self.stack = ExitStack()

    def get(self, repo: Path, tmp_path_factory: pytest.TempPathFactory) -> SharedServer:
        if self.value is None or self.value.server.poll() is not None:
            self.close()
            self.value = self.stack.enter_context(_serve(repo, tmp_path_factory))
        return self.value

    def close(self) -> None:
        self.value = None
        self.stack.close()


_SHARED = _Shared()


@contextmanager
def _serve(repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SharedServer]:
    from optimizer.commands.cli import compose
    from optimizer.model.resolve import resolve_model_dir
    from optimizer.server.process import VllmServer, free_port
    from optimizer.space.engine_args import ModelTarget, render

    cache = repo / ".cache"
    cfg = compose(MODEL)
    model_dir = resolve_model_dir(cfg.model, str(cache))
    port = free_port()
    launch = render(PARAMS, ModelTarget(str(model_dir), "m", "dummy"), host="127.0.0.1", port=port,
                    fixed_args=(*cfg.hardware.fixed_args, "--enforce-eager"))
    env = dict(os.environ) | {"HF_HUB_OFFLINE": "1", "VLLM_CACHE_ROOT": str(cache / "vllm"),
                              "PYTHONUNBUFFERED": "1", "VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1"}
    log = tmp_path_factory.mktemp("shared-server") / "server.log"
    server = VllmServer(launch.argv, python=sys.executable, host="127.0.0.1", port=port, log_path=log, env=env,
                        pid_dir=cache / "pids", stop_timeout_s=30)
    with server:
        server.wait_ready(600)
        yield SharedServer(cfg, server, PARAMS, "m")


@pytest.fixture
def shared_server(repo: Path, tmp_path_factory: pytest.TempPathFactory) -> SharedServer:
    return _SHARED.get(repo, tmp_path_factory)


def uses_shared_server(item: Optional[pytest.Item]) -> bool:
    return item is not None and FIXTURE in getattr(item, "fixturenames", ())


def release_after(item: pytest.Item, nextitem: Optional[pytest.Item]) -> None:
    """After the last test of a run of them that use the shared server: stop it."""
    if uses_shared_server(item) and not uses_shared_server(nextitem):
        _SHARED.close()


def release() -> None:
    """At the end of the session, whatever happened: stop it if it still runs."""
    _SHARED.close()


def group_shared_server_tests(items: list[pytest.Item]) -> None:
    """Move the tests that use the shared server next to the first of them (collection order kept
    otherwise), so that it is started once and held only while they run."""
    users = [i for i in items if uses_shared_server(i)]
    if len(users) < 2:
        return
    ids = {id(i) for i in users}
    rest = [i for i in items if id(i) not in ids]
    first = items.index(users[0])  # == the number of other tests before it
    items[:] = rest[:first] + users + rest[first:]
