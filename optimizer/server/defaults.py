"""vLLM's defaults as the installed vLLM resolves them for one server command: not a table.

vLLM picks several scheduler and cache defaults at start-up from the model, the hardware and its own
version (``max_num_seqs`` and ``max_num_batched_tokens`` by usage context and device memory, the
memory share, chunked prefill and prefix caching by model and platform), and those picks move from
release to release. Two sources, recorded with the baseline trial:

- :func:`resolve_defaults`: the server's own argv parsed by the installed vLLM's server parser and
  resolved with ``EngineArgs.create_engine_config`` (the call the API server makes) in a subprocess of
  the server's interpreter. It is the only source with every value: vLLM 0.32 logs ``max_num_seqs``
  only at debug level and the memory share not at all. It reads the model's config, not its weights,
  and starts no engine (about 10-40 s, mostly importing vLLM, on a loaded 2-core host); ``None`` where
  that vLLM cannot resolve it this way (an API it does not have).
- :func:`defaults_from_log`: what the server itself logged as it started (the engine's config line and
  the chunked-prefill line), free, and a check on the first: the server had the last word.
"""

from __future__ import annotations

import json
import re
import subprocess
from typing import Any, Mapping, Optional, Sequence

from optimizer.server.engine import PARSER_PRELUDE

__all__ = ["DEFAULT_KEYS", "defaults_from_log", "differences", "resolve_defaults"]

# what the baseline records, in vLLM's own names (EngineParams' where they are the same)
DEFAULT_KEYS = ("max_num_seqs", "max_num_batched_tokens", "gpu_memory_utilization", "kv_cache_memory_bytes",
                "enable_chunked_prefill", "enable_prefix_caching", "max_model_len", "dtype", "kv_cache_dtype",
                "block_size", "tensor_parallel_size")

_SCRIPT = PARSER_PRELUDE + r"""
from vllm.engine.arg_utils import AsyncEngineArgs
from vllm.usage.usage_lib import UsageContext
args = parser().parse_args(sys.argv[1:])
c = AsyncEngineArgs.from_cli_args(args).create_engine_config(usage_context=UsageContext.OPENAI_API_SERVER)
s, k, m, p = c.scheduler_config, c.cache_config, c.model_config, c.parallel_config
out = {"max_num_seqs": s.max_num_seqs, "max_num_batched_tokens": s.max_num_batched_tokens,
       "enable_chunked_prefill": s.enable_chunked_prefill, "gpu_memory_utilization": k.gpu_memory_utilization,
       "kv_cache_memory_bytes": getattr(k, "kv_cache_memory_bytes", None),
       "enable_prefix_caching": k.enable_prefix_caching, "block_size": k.block_size,
       "kv_cache_dtype": str(k.cache_dtype), "max_model_len": m.max_model_len,
       "dtype": str(m.dtype).replace("torch.", ""), "tensor_parallel_size": p.tensor_parallel_size}
print("DEFAULTS " + json.dumps(out))
"""


def resolve_defaults(python: str, argv: Sequence[str], env: Optional[Mapping[str, str]] = None,
                     timeout_s: float = 300.0) -> Optional[dict[str, Any]]:
    """The engine config the installed vLLM resolves for the server ``argv`` (after ``-m <module>``:
    the flags), or None where it cannot."""
    flags = list(argv)
    if len(flags) >= 2 and flags[0] == "-m":
        flags = flags[2:]
    try:
        p = subprocess.run([python, "-c", _SCRIPT, *flags], capture_output=True, text=True, timeout=timeout_s,
                           env=dict(env) if env is not None else None, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    for line in reversed(p.stdout.splitlines()):
        if line.startswith("DEFAULTS "):
            try:
                d = json.loads(line[len("DEFAULTS "):])
            except ValueError:
                return None
            return {k: d[k] for k in DEFAULT_KEYS if d.get(k) is not None} if isinstance(d, dict) else None
    return None


_CONFIG_LINE = re.compile(r"with config: (.*)$", re.M)
_FIELDS = {"max_seq_len": "max_model_len", "dtype": "dtype", "kv_cache_dtype": "kv_cache_dtype",
           "tensor_parallel_size": "tensor_parallel_size", "enable_prefix_caching": "enable_prefix_caching",
           "enable_chunked_prefill": "enable_chunked_prefill"}
_CHUNKED = re.compile(r"Chunked prefill is enabled with max_num_batched_tokens=(\d+)")


def _value(raw: str) -> Any:
    raw = raw.strip()
    if raw in ("True", "False"):
        return raw == "True"
    if re.fullmatch(r"-?\d+", raw):
        return int(raw)
    return raw.replace("torch.", "")


def defaults_from_log(text: str) -> dict[str, Any]:
    """The engine settings a vLLM server logged as it started (empty: none found)."""
    out: dict[str, Any] = {}
    if m := _CONFIG_LINE.search(text):
        for part in m.group(1).split(", "):
            key, sep, raw = part.partition("=")
            if sep and key.strip() in _FIELDS:
                out[_FIELDS[key.strip()]] = _value(raw)
    if m := _CHUNKED.search(text):
        out["max_num_batched_tokens"] = int(m.group(1))
    return out


def differences(assumed: Mapping[str, Any], resolved: Mapping[str, Any]) -> list[str]:
    """``key: assumed X, resolved Y`` for each key both hold with different values."""
    return [f"{k}: assumed {assumed[k]!r}, resolved {resolved[k]!r}" for k in sorted(assumed)
            if k in resolved and assumed[k] != resolved[k]]
