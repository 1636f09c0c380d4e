"""Hardware presets and ``hardware=auto``: detection from nvidia-smi's GPU list, the GPU search
default, and each preset's vLLM defaults checked against vLLM's own rule."""

from __future__ import annotations

import dataclasses
import importlib.util
from pathlib import Path

import pytest

from optimizer.commands.hardware_auto import detect_preset, resolve_auto_hardware, resolve_hardware_overrides
from optimizer.core.errors import ConfigError
from optimizer.server.gpu import Gpu

GPU_PRESETS = ["t4", "l4", "a10g", "a100-40gb", "a100-80gb", "h100", "h200"]
CONF = Path(__file__).resolve().parents[2] / "conf"


def _gpus(name: str, mib: int, cc: float, n: int = 1) -> list[Gpu]:
    return [Gpu(i, name, mib, 0, cc) for i in range(n)]


@pytest.mark.parametrize("name,mib,cc,preset", [
    ("Tesla T4", 15360, 7.5, "t4"),
    ("NVIDIA L4", 23034, 8.9, "l4"),
    ("NVIDIA A10G", 23028, 8.6, "a10g"),
    ("NVIDIA A100-SXM4-40GB", 40960, 8.0, "a100-40gb"),
    ("NVIDIA A100 80GB PCIe", 81920, 8.0, "a100-80gb"),
    ("NVIDIA H100 80GB HBM3", 81559, 9.0, "h100"),
    ("NVIDIA H200", 143771, 9.0, "h200"),
])
def test_nvidia_smi_names_map_to_their_preset(name, mib, cc, preset):
    assert detect_preset(_gpus(name, mib, cc, 2)) == (preset, 2, mib / 1024)


def test_no_gpu_means_cpu_and_hidden_gpus_are_not_counted():
    h100s = _gpus("NVIDIA H100 80GB HBM3", 81559, 9.0, 8)
    assert detect_preset([])[0] == "cpu"
    assert detect_preset(h100s, visible_devices="")[0] == "cpu"
    assert detect_preset(h100s, visible_devices="2,5")[:2] == ("h100", 2)


def test_an_unknown_gpu_is_refused_with_the_presets_listed():
    with pytest.raises(ConfigError) as e:
        detect_preset(_gpus("NVIDIA L40S", 46068, 8.9))  # "L40S" must not read as "L4"
    assert "L40S" in str(e.value) and "h100" in str(e.value) and "hardware.gpu_mem_gib" in str(e.value)


def test_auto_becomes_the_preset_with_its_gpu_count():
    gpus = _gpus("NVIDIA H100 80GB HBM3", 81559, 9.0, 4)
    assert resolve_auto_hardware(["hardware=auto", "study.n_trials=3"], gpus=gpus) == [
        "hardware=h100", "hardware.gpu_count=4", "study.n_trials=3"]
    # an explicit count wins; a card whose memory differs from the preset's gets it overridden
    nvl = _gpus("NVIDIA H100 NVL", 95830, 9.0, 2)
    assert resolve_auto_hardware(["hardware.gpu_count=1", "hardware=auto"], gpus=nvl) == [
        "hardware=h100", "hardware.gpu_mem_gib=93.58", "hardware.gpu_count=1"]
    assert resolve_auto_hardware(["hardware=auto"], gpus=[]) == ["hardware=cpu"]
    assert resolve_auto_hardware(["hardware=t4"], gpus=[]) == ["hardware=t4"]


def test_gpu_presets_select_the_gpu_search_space_unless_one_is_given():
    assert resolve_hardware_overrides(["hardware=t4"]) == ["hardware=t4", "search=gpu"]
    assert resolve_hardware_overrides(["hardware=t4", "search=default"]) == ["hardware=t4", "search=default"]
    assert resolve_hardware_overrides([]) == []  # the default, cpu, keeps the CPU demo space
    assert resolve_hardware_overrides(["hardware=nonexistent"]) == ["hardware=nonexistent"]  # Hydra says why
    assert resolve_hardware_overrides(["hardware=auto"], gpus=_gpus("Tesla T4", 15360, 7.5)) == [
        "hardware=t4", "hardware.gpu_count=1", "search=gpu"]


def test_compose_resolves_auto_through_nvidia_smi(compose, monkeypatch):
    import optimizer.commands.hardware_auto as hardware

    monkeypatch.setattr(hardware, "list_gpus", lambda: _gpus("NVIDIA H100 80GB HBM3", 81559, 9.0, 2))
    cfg = compose("hardware=auto", "model=llama-3-8b-instruct")
    assert (cfg.hardware.name, cfg.hardware.gpu_count) == ("h100", 2)
    assert "fp8" in cfg.search.quantization and cfg.study.name == "llama-3-8b-instruct__h100__chat-short"
    monkeypatch.setattr(hardware, "list_gpus", lambda: [])
    assert compose("hardware=auto").hardware.name == "cpu"


def test_an_unresolved_auto_is_refused_by_the_space(compose):
    from optimizer.space.search_space import build_space

    cfg = compose()
    cfg = dataclasses.replace(cfg, hardware=dataclasses.replace(cfg.hardware, name="auto"))
    with pytest.raises(ConfigError, match="hardware=auto"):
        build_space(cfg)


@pytest.mark.parametrize("preset", GPU_PRESETS)
def test_preset_capabilities_follow_compute_capability(compose, preset):
    hw = compose(f"hardware={preset}").hardware
    assert hw.device == "cuda" and hw.gpu_mem_gib > 10 and hw.mem_bandwidth_gbs > 0
    assert hw.supports_bf16 == (hw.compute_capability >= 8.0)
    assert hw.supports_fp8 == (hw.compute_capability >= 8.9)
    assert hw.supports_fp8_kv == (hw.compute_capability >= 8.9)
    assert hw.vllm_defaults["gpu_memory_utilization"] == 0.92
    assert hw.vllm_defaults["enable_chunked_prefill"] and hw.vllm_defaults["enable_prefix_caching"]


@pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="vLLM is not installed")
@pytest.mark.parametrize("preset", GPU_PRESETS)
def test_preset_batch_defaults_are_the_ones_vllm_picks_for_that_gpu(compose, monkeypatch, preset):
    """Ask vLLM's own EngineArgs.get_batch_defaults, with the platform reporting this GPU."""
    from vllm.engine import arg_utils
    from vllm.usage.usage_lib import UsageContext

    hw = compose(f"hardware={preset}").hardware

    class _Gpu:
        @staticmethod
        def get_device_total_memory(device_id: int = 0) -> int:
            return int(hw.gpu_mem_gib * 1024**3)

        @staticmethod
        def get_device_name(device_id: int = 0) -> str:
            return hw.gpu_name

        @staticmethod
        def is_tpu() -> bool:
            return False

        @staticmethod
        def is_cpu() -> bool:
            return False

    monkeypatch.setattr(arg_utils, "current_platform", _Gpu())
    tokens, seqs = arg_utils.EngineArgs.get_batch_defaults(world_size=1)
    assert hw.vllm_defaults["max_num_batched_tokens"] == tokens[UsageContext.OPENAI_API_SERVER]
    assert hw.vllm_defaults["max_num_seqs"] == seqs[UsageContext.OPENAI_API_SERVER]
