"""A live OpenAI-compatible server seen from outside, around a load test: which model it serves,
its ``/metrics`` counters before and after (through :mod:`optimizer.server.telemetry`'s parser),
emptying its prefix cache, and the client's token count checked against the server's.

HTTP only; nothing here starts or stops a server (that is :mod:`optimizer.server.process`).
"""

from __future__ import annotations

import logging
from typing import Any, Optional

import httpx

from optimizer.core.errors import ConfigError, OptimizerError
from optimizer.loadgen.runner import LoadRun
from optimizer.server.telemetry import scrape_metrics

__all__ = ["counters", "reset_prefix_cache", "served_model", "token_check"]

log = logging.getLogger(__name__)


def served_model(base_url: str, wanted: str, headers: Optional[dict[str, str]] = None,
                 timeout_s: float = 10.0) -> str:
    """The model name to send: ``wanted`` if the server lists it, else its only model.

    Raises OptimizerError when the server cannot be reached, ConfigError when it serves several
    models and none is ``wanted``."""
    try:
        r = httpx.get(base_url.rstrip("/") + "/v1/models", timeout=timeout_s, headers=headers)
        r.raise_for_status()
        ids = [m["id"] for m in r.json().get("data", [])]
    except (httpx.HTTPError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise OptimizerError(f"GET {base_url}/v1/models failed: {type(exc).__name__}: {exc}. Is the server "
                             f"running at endpoint={base_url}?") from None
    if wanted in ids:
        return wanted
    if len(ids) == 1:
        if wanted:
            log.info("the server serves %r, not %r: sending %r", ids[0], wanted, ids[0])
        return str(ids[0])
    raise ConfigError(f"the server serves {ids}, none of them {wanted!r}: choose one with model_name=NAME")


def counters(base_url: str, headers: Optional[dict[str, str]] = None) -> dict[str, float]:
    """The server's vLLM counters now (empty when ``/metrics`` cannot be read)."""
    snap = scrape_metrics(base_url, headers)
    return snap.counters if snap is not None else {}


def reset_prefix_cache(base_url: str, headers: Optional[dict[str, str]]) -> bool:
    """Empty the server's prefix cache, if it lets us (vLLM: only with VLLM_SERVER_DEV_MODE=1)."""
    try:
        return httpx.post(base_url + "/reset_prefix_cache", timeout=10.0, headers=headers).status_code == 200
    except httpx.HTTPError:
        return False


def token_check(run: LoadRun, before: dict[str, float], after: dict[str, float]) -> dict[str, Any]:
    """The tokens the client counted against the server's counter deltas (``before``/``after``:
    :func:`counters`); ``match`` only where both were read."""
    every = run.warmup + run.results
    out: dict[str, Any] = {
        "client_prompt_tokens": sum(r.prompt_tokens for r in every if r.ok),
        "client_output_tokens": sum(r.output_tokens for r in every if r.ok),
        "all_requests_ok": all(r.ok for r in every),
    }
    if before and after:
        out["server_counters"] = {k.removeprefix("vllm:"): after.get(k, 0.0) - before.get(k, 0.0)
                                  for k in sorted(set(before) | set(after))}
        out["server_prompt_tokens"] = after.get("vllm:prompt_tokens", 0.0) - before.get("vllm:prompt_tokens", 0.0)
        out["server_output_tokens"] = (after.get("vllm:generation_tokens", 0.0)
                                       - before.get("vllm:generation_tokens", 0.0))
        out["match"] = (out["server_prompt_tokens"] == out["client_prompt_tokens"]
                        and out["server_output_tokens"] == out["client_output_tokens"])
    return out
