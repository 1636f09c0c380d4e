import math

from optimizer.record import Setup, TrialRecord
from optimizer.server.startlog import parse_start_log


def _stored(text: str) -> dict:
    """The start-log attrs a trial stores for this log."""
    attrs = TrialRecord(Setup("h", "m", "w", {}), start_log=parse_start_log(text)).to_attrs()
    return {k: v for k, v in attrs.items() if k.startswith("log_")}

VLLM_026_H100 = """\
(EngineCore pid=3802) INFO 11-27 16:13:20 [model_runner.py:305] Model loading took 8.49 GiB and 2.740927 seconds
(EngineCore pid=3802) INFO 11-27 16:13:56 [monitor.py:53] torch.compile took 35.02 s in total
(EngineCore pid=3802) INFO 11-27 16:13:58 [gpu_worker.py:560] Available KV cache memory: 65.39 GiB
(EngineCore pid=3802) INFO 11-27 16:13:58 [kv_cache_utils.py:2177] GPU KV cache size: 1,071,328 tokens
(EngineCore pid=3802) INFO 11-27 16:13:58 [kv_cache_utils.py:2178] Maximum concurrency for 4,096 tokens per request: 261.55x
(EngineCore pid=3802) INFO 11-27 16:13:59 [model_runner.py:747] Graph capturing finished in 1 secs, took 0.16 GiB
(EngineCore pid=3802) INFO 11-27 16:14:18 [core.py:340] init engine (profile, create kv cache, warmup model) took 57.64 s (compilation: 35.02 s)
"""

VLLM_032_CPU = ("(EngineCore pid=2896) INFO 11-27 15:25:06 [kv_cache_utils.py:2327] CPU KV cache size: 524,288 tokens, "
                "Maximum concurrency for 2,048 tokens per request: 256.00x\n"
                "(EngineCore pid=2896) INFO 11-27 15:25:06 [core.py:402] init engine (profile, create kv cache, "
                "warmup model) took 40.09 s\n")


def test_vllm_0_26_gpu_log_two_line_kv_report_and_start_phases():
    got = _stored(VLLM_026_H100)
    assert got["log_kv_tokens"] == 1071328 and got["log_max_concurrency"] == 261.55
    assert got["log_kv_gib"] == 65.39 and got["log_weights_gib"] == 8.49
    assert got["log_compile_s"] == 35.02 and got["log_engine_init_s"] == 57.64
    assert got["log_graph_capture_s"] == 1.0 and got["log_model_load_s"] == 2.740927
    assert got["log_compile_cache_hit"] is False


def test_vllm_0_32_cpu_log_one_line_kv_report():
    got = _stored(VLLM_032_CPU)
    assert got == {"log_kv_tokens": 524288, "log_max_concurrency": 256.0, "log_engine_init_s": 40.09}


def test_nothing_known_gives_nothing():
    assert parse_start_log("hello\n").empty and _stored("hello\n") == {}
    assert math.isnan(parse_start_log("hello\n").kv_gib)
