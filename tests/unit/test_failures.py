import pytest

from optimizer.server.failures import classify

CASES = [
    ("ValueError: No available memory for the cache blocks. Try increasing `gpu_memory_utilization`",
     "kv_cache_too_small", True),
    ("ValueError: To serve at least one request with the model's max seq len (8192), (1.0 GiB KV cache is "
     "needed, which is larger than the available KV cache memory (0.5 GiB).", "kv_cache_too_small", True),
    ("torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB", "out_of_memory", True),
    ("ValueError: Free memory on device cuda:0 (3.2/79.1 GiB) on startup is less than desired GPU memory "
     "utilization (0.92, 72.8 GiB).", "gpu_busy", False),
    ("OSError: [Errno 98] Address already in use", "port_in_use", False),
    ("api_server.py: error: unrecognized arguments: --cuda-graph-sizes 8", "invalid_config", True),
    ("pydantic_core._pydantic_core.ValidationError: 1 validation error for SpeculativeConfig", "invalid_config",
     True),
    ("OSError: Can't load the configuration of '/nope'", "model_missing", True),
]


@pytest.mark.parametrize("line,reason,deterministic", CASES)
def test_known_vllm_messages_are_classified(line, reason, deterministic):
    log = f"INFO starting\n{line}\nRuntimeError: Engine core initialization failed. See root cause above.\n"
    d = classify(log, 1)
    assert (d.reason, d.deterministic) == (reason, deterministic)
    assert line.strip()[:40] in d.evidence


def test_unknown_failure_is_not_blamed_on_the_config():
    d = classify("something odd happened\n", 1)
    assert d.reason == "other" and not d.deterministic and "odd" in d.evidence


def test_killed_by_signal():
    assert classify("", -9).reason == "killed"
