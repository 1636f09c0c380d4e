"""``python -m tests.support.fake_vllm``: kept for old command lines; the fake is
:mod:`optimizer.testing.fake_vllm`."""

from optimizer.testing.fake_vllm import *  # noqa: F401,F403
from optimizer.testing.fake_vllm import main

if __name__ == "__main__":
    main()
