"""Do the client's token counts equal the server's?

For each workload shipped in conf/workload/ (and a few variants), run ``python -m
optimizer.loadtest`` against one real vLLM CPU server and compare the tokens the client counted
from the streams' usage (warm-up and measured requests) with the difference of the server's
``vllm:prompt_tokens_total`` and ``vllm:generation_tokens_total`` counters over the run. They
must be equal. One deliberate exception shows what breaks the equality: requests the client
gives up on (here ``load.request_timeout_s`` shorter than the answer) carry no usage, while
the server counts what it generated before it noticed the disconnect.

Also checked: the synthetic prompt lengths the request set promises (``prompt_tokens`` of each
request, exact for token-id prompts and for chat prompts built with the model's tokenizer) equal
what the server counted. Usage: ``python benchmarks/token_accounting.py``.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402
from optimizer.commands.cli import compose  # noqa: E402
from optimizer.loadgen.workload import RequestSet  # noqa: E402
from optimizer.server.process import free_port  # noqa: E402

TMP = Path(tempfile.mkdtemp(prefix="tokens-"))
BASE = ["load.num_requests=40", "load.concurrency=8", "load.warmup_requests=4", "load.p99_sizing=off",
        "model_name=tiny"]
CASES: list[tuple[str, list[str], bool]] = [  # (name, overrides, expect a match)
    ("chat-short (study default)", ["workload=chat-short"], True),
    ("fixed-256-64", ["workload=fixed-256-64"], True),
    ("mixed-lengths", ["workload=mixed-lengths"], True),
    ("shared-prefix (prefix cache hits)", ["workload=shared-prefix"], True),
    ("chat, exact lengths (tokenizer)", ["workload=chat", f"workload.tokenizer={C.TINY}"], True),
    ("chat, approximate (no tokenizer)", ["workload=chat", "workload.prompt_tokens=64"], True),
    ("jsonl-prompts", ["workload=jsonl-prompts"], True),
    ("sharegpt-chat", ["workload=sharegpt-chat"], True),
    ("open loop, Poisson 20/s", ["workload=fixed-256-64", "load.mode=rate", "load.request_rate=20"], True),
    ("client timeouts (no usage)", ["workload=mixed-lengths", "workload.output_tokens=256",
                                    "load.request_timeout_s=1.5", "load.concurrency=16"], False),
]


def main() -> int:
    port = free_port()
    rows, data = [], []
    with C.vllm_server(port) as srv:
        for name, ov, expect in CASES:
            if name.startswith("chat, approximate"):
                # no tokenizer at all: neither workload.tokenizer nor the generated model's folder
                ov = ov + ["model.generate=", f"model.path={TMP}"]
            out = TMP / f"{time.monotonic_ns()}.json"
            print(f"{name} ...", flush=True)
            try:
                doc = C.loadtest(srv.url, BASE + ov + ["records=true"], out, timeout=300)
            except RuntimeError as exc:
                print(f"   failed: {exc}")
                data.append({"case": name, "error": str(exc)})
                continue
            t, s = doc["tokens"], doc["summary"]
            # the lengths the request set promised, against what the server counted per request
            cfg = compose([o for o in BASE + ov if not o.startswith("model_name=")])
            rs = RequestSet.build(cfg.workload, cfg.model)
            promised = [(rs.spec(rec["index"]).prompt_tokens, rec["prompt_tokens"]) for rec in doc["records"]
                        if rec["ok"]]
            known = [(p, got) for p, got in promised if p is not None]
            lengths = "n/a" if not known else f"{sum(p == got for p, got in known)}/{len(known)}"
            sc = t.get("server_counters", {})
            hits = sc.get("prefix_cache_hits", 0.0) / sc["prefix_cache_queries"] if sc.get("prefix_cache_queries") else 0.0
            r = {"case": name, "overrides": ov, **t, "prefix_cache_hit_rate": hits, "n_ok": s["n_ok"],
                 "n_requests": s["n_requests"],
                 "errors": s["errors"], "exact_prompt_lengths": doc["exact_prompt_lengths"],
                 "promised_lengths_equal": lengths, "mean_prompt_tokens": s["prompt_tokens"] / max(1, s["n_ok"]),
                 "expect_match": expect, "as_expected": t.get("match") == expect}
            data.append(r)
            rows.append([name, t["client_prompt_tokens"], t.get("server_prompt_tokens", float("nan")),
                         t["client_output_tokens"], t.get("server_output_tokens", float("nan")),
                         "yes" if t.get("match") else "NO", lengths, f"{hits:.0%}",
                         "" if r["as_expected"] else "UNEXPECTED"])
    print("\nClient usage (warm-up + measured) against the server's /metrics counters")
    print(C.table(["workload", "client prompt", "server prompt", "client output", "server output", "equal",
                   "promised prompt lengths met", "prefix cache hits", ""], rows))
    path = C.write_result("token_accounting", {"cases": data})
    print(f"\nwrote {path}")
    return 0 if all(d.get("as_expected") for d in data) else 1


if __name__ == "__main__":
    sys.exit(main())
