"""The environment every vLLM server of a study starts with: offline, unbuffered, no usage
reports, and one compile cache for the whole host.

The compile cache (``VLLM_CACHE_ROOT``) is shared by every trial of a study and by every study on
the host, so a config shape compiled once (by any trial, or by a plain ``vllm serve``, which uses
the same default place) is loaded by every later start with that shape. Sharing is safe under
parallel workers: vLLM 0.32 writes each compiled artifact to a temporary file and renames it into
place (``compilation/decorators.py::save_aot_compiled_function``), and inductor's cache under it
writes atomically too, so a reader sees a whole artifact or none; two workers compiling the same
key at once both compile, and the last rename wins with an identical file.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping

from optimizer.core.errors import ConfigError
from optimizer.settings.config import ServerConfig

__all__ = ["compile_cache_root", "server_env"]


def compile_cache_root(server: ServerConfig, environ: Mapping[str, str]) -> Path:
    """Where vLLM keeps its compile cache: ``server.compile_cache_dir``, else vLLM's own default
    (``$VLLM_CACHE_ROOT``, else ``$XDG_CACHE_HOME/vllm``, else ``~/.cache/vllm``)."""
    if server.compile_cache_dir:
        return Path(server.compile_cache_dir).expanduser().resolve()
    if environ.get("VLLM_CACHE_ROOT"):
        return Path(environ["VLLM_CACHE_ROOT"]).expanduser().resolve()
    base = environ.get("XDG_CACHE_HOME") or os.path.join(environ.get("HOME") or str(Path.home()), ".cache")
    return (Path(base).expanduser() / "vllm").resolve()


def server_env(server: ServerConfig, environ: Mapping[str, str]) -> dict[str, str]:
    """``environ`` plus what every server of the study needs; ``server.env`` is applied by the
    caller after the API key.

    Raises:
        ConfigError: ``server.env`` sets ``VLLM_CACHE_ROOT``, which ``server.compile_cache_dir``
            owns (two settings for one place: one would be ignored).
    """
    if "VLLM_CACHE_ROOT" in server.env:
        raise ConfigError(f"server.env.VLLM_CACHE_ROOT={server.env['VLLM_CACHE_ROOT']!r}: the compile cache's place "
                          f"is set with server.compile_cache_dir=<dir> (every study on the host shares it by "
                          f"default). Remove it from server.env.")
    env = dict(environ)
    env.update({"HF_HUB_OFFLINE": "1", "VLLM_CACHE_ROOT": str(compile_cache_root(server, environ)),
                "PYTHONUNBUFFERED": "1", "VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1"})
    return env
