"""best.yaml for the serving host (optimizer.reporting.serving): the model as the user named it,
the flags that make the variant, and no path of the machine the study ran on."""

from __future__ import annotations

import yaml

from optimizer.reporting.serving import portable_command, serving_config, serving_yaml

HERE = "/work/main/.cache/models/llama-3-8b-instruct"  # where this machine's servers loaded the model
TUNED = {"max_num_seqs": 67, "gpu_memory_utilization": 0.95, "enable_prefix_caching": False,
         "served_model_name": "llama-3-8b-instruct"}
LLAMA = {"name": "llama-3-8b-instruct", "path": "/models/llama-3-8b-instruct", "generate": "config",
         "load_format": "dummy", "variants": {"fp8": "/models/llama-3-8b-instruct-fp8", "awq": ""}}


def _yaml(serve, model, params):
    text = serving_yaml(["head"], serve, model, params)
    return text, yaml.safe_load(text)


def test_a_generated_fp8_stand_in_becomes_the_fp8_checkpoint_the_config_names_without_dummy_weights():
    text, flags = _yaml({"model": HERE + "-fp8", "load_format": "dummy", **TUNED}, LLAMA, {"quantization": "fp8"})
    assert list(flags)[0] == "model" and flags["model"] == "/models/llama-3-8b-instruct-fp8"
    assert "load-format" not in flags and "quantization" not in flags  # the checkpoint names its method
    assert flags["no-enable-prefix-caching"] is True and flags["gpu-memory-utilization"] == 0.95
    assert "/work/" not in text and "random weights (load-format dummy)" in text and "generated" in text
    assert "quantization: fp8 (vLLM's online fp8)" in text


def test_without_a_variant_folder_the_generated_fp8_checkpoint_becomes_online_fp8_of_the_named_model():
    model = dict(LLAMA, variants={}, hub_id="meta-llama/Meta-Llama-3-8B-Instruct")
    _, flags = _yaml({"model": HERE + "-fp8", "load_format": "dummy", **TUNED}, model, {"quantization": "fp8"})
    assert flags["model"] == "meta-llama/Meta-Llama-3-8B-Instruct" and flags["quantization"] == "fp8"


def test_a_method_with_no_online_form_and_no_checkpoint_asks_for_one():
    text, flags = _yaml({"model": HERE + "-awq", **TUNED}, dict(LLAMA, path=""), {"quantization": "awq"})
    assert flags["model"] == "llama-3-8b-instruct" and "quantization" not in flags
    assert "point model at a awq checkpoint" in text


def test_a_user_folder_is_kept_as_typed_and_online_fp8_stays_a_flag():
    model = {"name": "m", "path": "~/models/m", "generate": "", "load_format": "auto", "variants": {}}
    sc = serving_config({"model": "/home/u/models/m", "quantization": "fp8", **TUNED}, model,
                        {"quantization": "fp8"})
    assert sc.flags["model"] == "~/models/m" and sc.flags["quantization"] == "fp8" and sc.notes == []


def test_the_command_shown_has_no_interpreter_path_nor_cache_path_of_this_machine():
    argv = ["-m", "vllm.entrypoints.openai.api_server", "--model", HERE + "-fp8", "--max-num-seqs", "67"]
    assert portable_command(argv, LLAMA, ".cache") == ("python -m vllm.entrypoints.openai.api_server --model "
                                                       ".cache/models/llama-3-8b-instruct-fp8 --max-num-seqs 67")
    own = ["-m", "vllm.entrypoints.openai.api_server", "--model", "/data/m"]
    assert portable_command(own, {"generate": ""}, ".cache").endswith("--model /data/m")


def test_a_model_the_package_prepared_is_named_by_its_hub_id():
    model = {"name": "smollm2-135m-instruct", "generate": "smollm2", "hub_id": "HuggingFaceTB/SmolLM2-135M-Instruct"}
    text, flags = _yaml({"model": "/work/main/.cache/models/smollm2-135m-instruct", **TUNED}, model, {})
    assert flags["model"] == "HuggingFaceTB/SmolLM2-135M-Instruct" and "/work/" not in text
    assert "generated for smollm2-135m-instruct (model.generate=smollm2)" in text
