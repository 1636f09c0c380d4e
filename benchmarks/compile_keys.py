"""Which engine parameters change vLLM's compile-cache key, read from real server logs.

Each variant starts the tiny model's vLLM CPU server (the plain ``api_server`` with the flags
shown, in the environment the product gives its servers: ``optimizer.server.environment``) in one
compile cache of its own, one after the other, and reads back from the log the key the start
compiled under (``torch_compile_cache/torch_aot_compile/<key>``) and whether it found the key in
the cache. A variant whose key equals the base's does not cost a compile; one with a new key does.
The search space draws every key-changing integer on a grid (``optimizer/space/grid.py``).

    python benchmarks/compile_keys.py            # -> benchmarks/results/compile_keys-cpu.json
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import PY, REPO, TINY, table, write_result  # noqa: E402

from optimizer.model.tiny import write_tiny_model  # noqa: E402
from optimizer.server.environment import server_env  # noqa: E402
from optimizer.server.process import VllmServer  # noqa: E402
from optimizer.server.startlog import parse_start_log  # noqa: E402
from optimizer.settings.config import ServerConfig  # noqa: E402

# (name, flags, extra environment): the base is vLLM's CPU defaults with the tiny model's length
VARIANTS: list[tuple[str, list[str], dict[str, str]]] = [
    ("base", [], {}),
    ("base-again", [], {}),
    ("max_num_seqs=64", ["--max-num-seqs", "64"], {}),
    ("max_num_batched_tokens=1024", ["--max-num-batched-tokens", "1024"], {}),
    ("no-prefix-caching", ["--no-enable-prefix-caching"], {}),
    ("no-chunked-prefill", ["--no-enable-chunked-prefill"], {}),
    ("kv_cache_gib=3", ["--kv-cache-memory-bytes", str(3 * 2**30)], {}),
    ("no-prefix-caching+kv_cache_gib=3", ["--no-enable-prefix-caching", "--kv-cache-memory-bytes", str(3 * 2**30)], {}),
    ("defaults-as-flags", ["--max-num-seqs", "128", "--max-num-batched-tokens", "2048", "--enable-chunked-prefill",
                           "--enable-prefix-caching"], {}),
]


def start(name: str, flags: list[str], extra: dict[str, str], cache: Path, work: Path, port: int) -> dict[str, Any]:
    env = server_env(ServerConfig(compile_cache_dir=str(cache)), os.environ) | {"VLLM_CPU_KVCACHE_SPACE": "2"} | extra
    argv = ["-m", "vllm.entrypoints.openai.api_server", "--model", str(TINY), "--served-model-name", "tiny",
            "--host", "127.0.0.1", "--port", str(port), "--max-model-len", "2048", *flags]
    log = work / f"{name}.log"
    with VllmServer(argv, python=PY, host="127.0.0.1", port=port, log_path=log, env=env,
                    pid_dir=work / "pids", stop_timeout_s=30) as srv:
        start_s = srv.wait_ready(900)
    s = parse_start_log(log.read_text(errors="replace"))
    return {"variant": name, "flags": " ".join(flags), "env": extra, "compile_key": s.compile_key[:16],
            "cache_hit": s.compile_cache_hit, "compile_s": s.compile_s, "start_s": round(start_s, 1)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", nargs="*", help="variant names to run (default: all)")
    ap.add_argument("--port", type=int, default=18471)
    ap.add_argument("--name", default="compile_keys-cpu")
    a = ap.parse_args()
    write_tiny_model(TINY)
    rows = []
    with tempfile.TemporaryDirectory(prefix="compile-keys-", dir=REPO / ".cache") as tmp:
        work = Path(tmp)
        for name, flags, extra in VARIANTS:
            if a.only and name not in a.only:
                continue
            rows.append(start(name, flags, extra, work / "compile-cache", work, a.port))
            r = rows[-1]
            print(f"{name}: key {r['compile_key']} hit {r['cache_hit']} compile {r['compile_s']} s "
                  f"start {r['start_s']} s", flush=True)
    base = next((r["compile_key"] for r in rows if r["variant"] == "base"), "")
    for r in rows:
        r["changes_key"] = bool(base) and r["compile_key"] != base
    cols = ["variant", "flags", "compile_key", "changes_key", "cache_hit", "compile_s", "start_s"]
    print(table(cols, [[r[c] for c in cols] for r in rows]))
    doc = {"what": "vLLM 0.32 CPU build, tiny model: the compile-cache key each start compiled under (first 16 hex "
                   "digits of torch_compile_cache/torch_aot_compile/<key>), read from its log; variants run in order "
                   "in one fresh compile cache, so cache_hit says whether an earlier variant had the same key.",
           "rows": rows}
    print("wrote", write_result(a.name, doc))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
