import json

from optimizer.space.engine_args import SERVER_MODULE, EngineParams, ModelTarget, render

MODEL = ModelTarget("/m/tiny", "tiny")


def _argv(p: EngineParams) -> list[str]:
    return render(p, MODEL, host="127.0.0.1", port=8123).argv


def test_baseline_renders_no_tuning_flag():
    argv = _argv(EngineParams())
    assert argv[:2] == ["-m", SERVER_MODULE]
    assert argv[2:] == ["--model", "/m/tiny", "--host", "127.0.0.1", "--port", "8123", "--served-model-name", "tiny"]


def test_typed_values_become_flags_once():
    p = EngineParams(max_num_seqs=64, max_num_batched_tokens=4096, gpu_memory_utilization=0.9,
                     enable_chunked_prefill=False, enable_prefix_caching=True, kv_cache_dtype="fp8",
                     quantization="fp8", dtype="auto")
    argv = _argv(p)
    flags = [a for a in argv if a.startswith("--")]
    assert len(flags) == len(set(flags))
    i = argv.index("--max-num-seqs")
    assert argv[i + 1] == "64"
    assert "--no-enable-chunked-prefill" in argv and "--enable-prefix-caching" in argv
    assert argv[argv.index("--kv-cache-dtype") + 1] == "fp8"
    assert argv[argv.index("--quantization") + 1] == "fp8"
    assert "--dtype" not in argv  # auto is vLLM's default: not emitted


def test_kv_cache_gib_is_exact_bytes():
    argv = _argv(EngineParams(kv_cache_gib=2.5))
    assert argv[argv.index("--kv-cache-memory-bytes") + 1] == str(int(2.5 * 1024**3))


def test_speculative_ngram_uses_speculative_config_json_with_min_le_max():
    argv = _argv(EngineParams(speculative="ngram", num_speculative_tokens=4, ngram_lookup_max=3, ngram_lookup_min=5))
    spec = json.loads(argv[argv.index("--speculative-config") + 1])
    assert spec == {"method": "ngram", "num_speculative_tokens": 4, "prompt_lookup_max": 3, "prompt_lookup_min": 3}
    assert "--speculative-model" not in argv


def test_speculative_off_renders_nothing():
    assert "--speculative-config" not in _argv(EngineParams(speculative="off", num_speculative_tokens=3))


def test_serve_config_reproduces_argv_without_host_and_port():
    launch = render(EngineParams(max_num_seqs=8), MODEL, host="127.0.0.1", port=9)
    assert launch.serve_config == {"model": "/m/tiny", "served_model_name": "tiny", "max_num_seqs": 8}
    assert launch.command("py").startswith("py -m " + SERVER_MODULE)


def test_params_round_trip_through_dict():
    p = EngineParams(max_num_seqs=3, enable_prefix_caching=False)
    assert EngineParams.from_dict({**p.as_dict(), "unknown": 1}) == p


def test_identity_is_a_second_served_name_on_argv_and_never_in_the_serve_config():
    launch = render(EngineParams(), MODEL, host="127.0.0.1", port=9, identity="vllm-opt-t3-abcd")
    i = launch.argv.index("--served-model-name")
    assert launch.argv[i + 1:i + 3] == ["tiny", "vllm-opt-t3-abcd"]
    assert launch.argv.count("--served-model-name") == 1
    assert launch.serve_config["served_model_name"] == "tiny"
