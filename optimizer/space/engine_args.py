"""Engine parameters rendered to a server command in exactly one place.

``EngineParams`` (the knob table, :mod:`optimizer.settings.knobs`) holds what a trial changes; ``None``
means "leave vLLM's default". The baseline trial is ``EngineParams()``: no tuning flag at all.
:func:`render` turns parameters plus the fixed parts (model, host, port, hardware flags) into
``Launch``: the argv after ``python`` and the ``vllm serve`` YAML that reproduces it. Nothing
parses argv back.
"""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass, field
from typing import Any, Optional

from optimizer.settings.knobs import EngineParams, Knob, knobs_of

__all__ = ["EngineParams", "Launch", "ModelTarget", "engine_options", "render", "SERVER_MODULE"]

SERVER_MODULE = "vllm.entrypoints.openai.api_server"


@dataclass(frozen=True)
class ModelTarget:
    """The model a server loads: the directory for the chosen quantization, how to load it."""

    path: str
    served_name: str = ""
    load_format: str = "auto"
    quantization_flag: Optional[str] = None  # --quantization value, when the checkpoint needs one
    # the folder is a quantized checkpoint (AWQ/GPTQ/FP8 variant) whose config.json names its method:
    # no --quantization flag, so vLLM reads the method from the checkpoint (llm-compressor FP8 ones
    # say compressed-tensors, and an explicit "fp8" would be refused as a mismatch)
    quantized_checkpoint: bool = False


@dataclass(frozen=True)
class Launch:
    argv: list[str]  # after the interpreter: ["-m", module, ...] (SERVER_MODULE unless configured)
    serve_config: dict[str, Any] = field(default_factory=dict)  # `vllm serve --config` YAML content

    def command(self, python: str = "python") -> str:
        return shlex.join([python, *self.argv])


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def render(params: EngineParams, model: ModelTarget, *, host: str, port: int,
           fixed_args: tuple[str, ...] = (), extra_args: tuple[str, ...] = (),
           module: str = SERVER_MODULE, identity: str = "") -> Launch:
    """The one place where engine parameters become flags.
    ``module`` is what ``python -m`` runs: vLLM's OpenAI server, or a stand-in that takes its flags.
    ``identity`` (a name unique to one server start) is served as a second model name, after the
    model's own, so that ``/v1/models`` proves which process answers on the port; it is on argv
    only, never in ``serve_config`` (the ``vllm serve`` YAML a user runs)."""
    cfg: dict[str, Any] = {"model": model.path, "host": host, "port": port}
    if model.served_name:
        cfg["served_model_name"] = model.served_name
    if model.load_format and model.load_format != "auto":
        cfg["load_format"] = model.load_format
    if model.quantization_flag:
        cfg["quantization"] = model.quantization_flag
    cfg.update(engine_options(params, model))

    argv = ["-m", module]
    if identity:  # vLLM answers to every name; responses carry the first, the model's own
        cfg_argv = dict(cfg, served_model_name=[cfg.get("served_model_name") or model.path, identity])
    else:
        cfg_argv = cfg
    for key, value in cfg_argv.items():
        if isinstance(value, list):
            argv += [_flag(key), *(str(v) for v in value)]
        elif isinstance(value, bool):
            argv.append(_flag(key) if value else "--no-" + key.replace("_", "-"))
        elif isinstance(value, dict):
            argv += [_flag(key), json.dumps(value, sort_keys=True, separators=(",", ":"))]
        else:
            argv += [_flag(key), str(value)]
    argv += list(fixed_args) + list(extra_args)
    serve_cfg = {k: v for k, v in cfg.items() if k not in ("host", "port")}
    return Launch(argv=argv, serve_config=serve_cfg)


def engine_options(p: EngineParams, model: ModelTarget) -> dict[str, Any]:
    """The `vllm serve` options of ``p``'s knobs, in the table's order: a knob with a ``flag``
    renders its value (a bool as --x / --no-x) unless the value leaves vLLM's default; the
    others are written by :data:`_OWN`."""
    out: dict[str, Any] = {}
    for k in knobs_of(type(p)):
        value = getattr(p, k.name)
        if k.name in _OWN:
            out.update(_OWN[k.name](p, model))
        elif k.flag and not _neutral(k, value):
            out[k.flag] = bool(value) if isinstance(value, bool) else value
    return out


def _neutral(k: Knob, value: Any) -> bool:
    return any(value is n or (n is not None and value == n) for n in k.neutral)


def _kv_bytes(p: EngineParams, model: ModelTarget) -> dict[str, Any]:
    return {} if p.kv_cache_gib is None else {"kv_cache_memory_bytes": int(round(p.kv_cache_gib * 1024**3))}


def _quantization(p: EngineParams, model: ModelTarget) -> dict[str, Any]:
    if p.quantization not in (None, "none") and not model.quantization_flag and not model.quantized_checkpoint:
        return {"quantization": p.quantization}  # online quantization of the base checkpoint (fp8)
    return {}  # the checkpoint's own method (ModelTarget.quantization_flag, or read from its config.json)


def _speculative(p: EngineParams, model: ModelTarget) -> dict[str, Any]:
    spec = _speculative_config(p)
    return {"speculative_config": spec} if spec else {}


# the knobs rendered by code of their own (a knob's other values: its flag)
_OWN = {"kv_cache_gib": _kv_bytes, "quantization": _quantization, "speculative": _speculative}


def _speculative_config(p: EngineParams) -> dict[str, Any]:
    if p.speculative in (None, "off"):
        return {}
    n = p.num_speculative_tokens or 3
    if p.speculative == "ngram":
        hi = p.ngram_lookup_max or 4
        lo = max(1, min(p.ngram_lookup_min or 1, hi))
        return {"method": "ngram", "num_speculative_tokens": n, "prompt_lookup_max": hi, "prompt_lookup_min": lo}
    if p.speculative == "draft":
        return {"method": "draft_model", "model": p.draft_model, "num_speculative_tokens": n}
    raise ValueError(f"speculative={p.speculative!r}: valid choices are off, ngram, draft")
