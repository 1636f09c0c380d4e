"""Which hardware preset a command means: ``hardware=auto`` detection and the GPU search default.

The entry point calls :func:`resolve_hardware_overrides` on the Hydra overrides before composing:

- ``hardware=auto`` becomes the preset of the GPUs this host has (``nvidia-smi``, through
  :func:`optimizer.server.gpu.list_gpus`) plus ``hardware.gpu_count=N``, and
  ``hardware.gpu_mem_gib=X`` when the card's memory differs from the preset's by more than 5 %
  (an H100 NVL is an ``h100`` with 94 GB). No GPU: ``cpu``. A GPU no preset describes is refused
  with the list of presets. Explicit ``hardware.*`` overrides always win.
- A GPU preset selects the ``gpu`` search space unless ``search=...`` is given; the CPU preset
  keeps ``search: default`` (the CPU demo).

The only I/O is reading the preset YAML files and, for ``hardware=auto`` alone, asking
``nvidia-smi``; tests pass the GPU list in.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Optional, Sequence

import yaml

from optimizer.core.errors import ConfigError
from optimizer.server.gpu import Gpu, list_gpus

__all__ = ["detect_preset", "resolve_auto_hardware", "resolve_hardware_overrides"]

log = logging.getLogger(__name__)

_CONF_DIR = Path(__file__).resolve().parents[2] / "conf"
# nvidia-smi names -> preset; first match wins. Word boundaries keep "L40S" from reading as "L4"
# and "GH200" from reading as "H200".
_NAME_TO_PRESET: tuple[tuple[str, str], ...] = (
    (r"\bH200\b", "h200"),
    (r"\bH100\b", "h100"),
    (r"\bA100\b", "a100"),  # 40 or 80 GB: decided by memory below
    (r"\bA10G?\b", "a10g"),  # the A10 has the A10G's memory and compute capability
    (r"\bL4\b", "l4"),
    (r"\bT4\b", "t4"),
)
_MEM_TOLERANCE = 0.05


def _preset_names(conf_dir: Path) -> list[str]:
    return sorted(p.stem for p in (conf_dir / "hardware").glob("*.yaml") if p.stem != "auto")


def _preset(conf_dir: Path, name: str) -> dict[str, object]:
    path = conf_dir / "hardware" / f"{name}.yaml"
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        return {}
    return data if isinstance(data, dict) else {}


def _visible(gpus: list[Gpu], visible_devices: Optional[str]) -> list[Gpu]:
    """The GPUs a server would see under ``CUDA_VISIBLE_DEVICES`` (None: all of them)."""
    if visible_devices is None:
        return gpus
    entries = [e.strip() for e in visible_devices.split(",") if e.strip()]
    if not entries or entries == ["-1"]:
        return []
    if all(e.isdigit() for e in entries):
        wanted = [int(e) for e in entries]
        return [g for g in gpus if g.index in wanted]
    return gpus[: len(entries)]  # UUIDs or MIG ids: the count is what matters here


def detect_preset(gpus: list[Gpu], visible_devices: Optional[str] = None,
                  conf_dir: Path = _CONF_DIR) -> tuple[str, int, float]:
    """(preset name, GPU count, GiB per GPU as nvidia-smi reports it) for these GPUs.

    Counts the GPUs of the first visible GPU's model; no GPU gives ``("cpu", 1, 0.0)``.

    Raises:
        ConfigError: the GPU matches no preset; the message lists the presets to choose from.
    """
    seen = _visible(gpus, visible_devices)
    if not seen:
        return "cpu", 1, 0.0
    first = seen[0]
    same = [g for g in seen if g.name == first.name]
    if len(same) < len(seen):
        log.warning("hardware=auto: mixed GPUs %s; tuning for the %d x %s only",
                    sorted({g.name for g in seen}), len(same), first.name)
    mem_gib = first.memory_mib / 1024
    for pattern, preset in _NAME_TO_PRESET:
        if re.search(pattern, first.name, re.IGNORECASE):
            if preset == "a100":
                preset = "a100-80gb" if mem_gib > 60 else "a100-40gb"
            return preset, len(same), mem_gib
    raise ConfigError(
        f"hardware=auto: no preset describes the {first.name!r} (compute capability "
        f"{first.compute_capability}, {mem_gib:.1f} GiB). Choose the closest of "
        f"{', '.join(_preset_names(conf_dir))} and correct it on the command line, e.g. hardware=a10g "
        f"hardware.gpu_mem_gib={mem_gib:.1f} hardware.compute_capability={first.compute_capability} "
        f"hardware.gpu_count={len(same)}")


def _last(overrides: Sequence[str], key: str) -> Optional[str]:
    value = None
    for o in overrides:
        k, sep, v = o.partition("=")
        if sep and k.lstrip("+~") == key:
            value = v
    return value


def _default_hardware(conf_dir: Path) -> str:
    """The hardware option conf/config.yaml's defaults list selects."""
    try:
        data = yaml.safe_load((conf_dir / "config.yaml").read_text()) or {}
    except FileNotFoundError:
        return ""
    for entry in data.get("defaults", []):
        if isinstance(entry, dict) and "hardware" in entry:
            return str(entry["hardware"])
    return ""


def resolve_auto_hardware(overrides: list[str], *, gpus: Optional[list[Gpu]] = None,
                          visible_devices: Optional[str] = None, conf_dir: Path = _CONF_DIR) -> list[str]:
    """Replace ``hardware=auto`` by the detected preset and its GPU count.

    Args:
        overrides: Hydra overrides as given on the command line.
        gpus: the host's GPUs; None asks ``nvidia-smi``.
        visible_devices: ``CUDA_VISIBLE_DEVICES`` as the servers will get it (None: all GPUs).
        conf_dir: the ``conf/`` folder whose presets are matched.

    Returns:
        The overrides, unchanged unless ``hardware=auto`` was selected (on the command line or
        as conf/config.yaml's default). ``hardware.gpu_count`` / ``hardware.gpu_mem_gib`` given
        on the command line are kept as they are.
    """
    chosen = _last(overrides, "hardware")
    if (chosen or _default_hardware(conf_dir)) != "auto":
        return list(overrides)
    preset, count, mem_gib = detect_preset(list_gpus() if gpus is None else gpus, visible_devices, conf_dir)
    out = [o for o in overrides if o.partition("=")[0].lstrip("+~") != "hardware"]
    out.insert(0, f"hardware={preset}")
    added = []
    if preset != "cpu" and _last(overrides, "hardware.gpu_count") is None:
        added.append(f"hardware.gpu_count={count}")
    preset_mem = _preset(conf_dir, preset).get("gpu_mem_gib")
    if (preset != "cpu" and isinstance(preset_mem, (int, float)) and preset_mem > 0
            and abs(mem_gib - preset_mem) / preset_mem > _MEM_TOLERANCE
            and _last(overrides, "hardware.gpu_mem_gib") is None):
        added.append(f"hardware.gpu_mem_gib={mem_gib:.2f}")
    log.info("hardware=auto: %s%s", f"{count} x {preset}" if preset != "cpu" else "no GPU, cpu",
             f" ({' '.join(added)})" if added else "")
    return out[:1] + added + out[1:]


def resolve_hardware_overrides(overrides: list[str], *, gpus: Optional[list[Gpu]] = None,
                               visible_devices: Optional[str] = None, conf_dir: Path = _CONF_DIR) -> list[str]:
    """:func:`resolve_auto_hardware`, then ``search=gpu`` for a GPU preset unless a search is given.

    This is what the entry point calls before composing the config.
    """
    out = resolve_auto_hardware(overrides, gpus=gpus, visible_devices=visible_devices, conf_dir=conf_dir)
    hardware = _last(out, "hardware") or _default_hardware(conf_dir)
    if _last(out, "search") is not None or not hardware:
        return out
    preset = _preset(conf_dir, hardware)  # {} for an unknown option: Hydra reports it when composing
    if preset and preset.get("device", "cuda") == "cuda" and (conf_dir / "search" / "gpu.yaml").is_file():
        out.append("search=gpu")  # "cuda" is the schema's default device
    return out
