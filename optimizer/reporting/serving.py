"""best.yaml for the user's serving host: the model as the user named it, the flags that make the variant.

A trial's ``serve_config`` holds what its server got on this machine: a model folder the package
may have generated under its cache (``model.generate``), resolved to an absolute path, and
``load-format: dummy`` when the study ran without weights. Neither means anything on the host
that will serve the config. :func:`serving_config` replaces them with what the study's own config
names (``model.variants.<method>`` for a quantized checkpoint, else ``model.hub_id`` or
``model.path``), keeps the flags that make the variant (``quantization: fp8`` for vLLM's online
quantization), and says in comment lines what the study actually loaded. Pure.

The YAML is in the form vLLM's ``--config`` reads (``vllm/utils/argparse_utils.py::load_config_file``, 0.32):

- keys are written with dashes. The loader turns ``key: false`` into ``--no-key`` only when that
  exact option string exists, and the parser registers the dashed spelling, so an underscored
  ``enable_prefix_caching: false`` would be dropped without a word;
- ``false`` is written as ``no-<key>: true``: under ``vllm serve`` the loader looks the
  ``--no-`` option up on the top-level parser, which does not have it, and drops it too;
- ``model`` stays in the file: both ``vllm serve --config best.yaml`` (the loader sees
  ``--model`` in the file) and ``python -m vllm.entrypoints.openai.api_server --config best.yaml``
  accept it;
- nested dicts (``speculative_config``) stay mappings; the loader JSON-encodes them.
"""

from __future__ import annotations

import json
import shlex
from pathlib import PurePosixPath
from typing import Any, NamedTuple, Optional, Sequence

import yaml

__all__ = ["ServingConfig", "portable_attrs", "portable_command", "serve_yaml_dict", "serving_config", "serving_yaml"]


_ONLINE = "fp8"  # the method vLLM can apply to a bf16 checkpoint at load time (--quantization fp8)


class ServingConfig(NamedTuple):
    flags: dict[str, Any]  # serve_config keys (underscored), ``model`` first
    notes: list[str]  # comment lines, without the leading '#'


def serve_yaml_dict(serve_config: dict[str, Any]) -> dict[str, Any]:
    """``serve_config`` in the dashed form vLLM's ``--config`` reads (``false`` as ``no-<key>: true``)."""
    out: dict[str, Any] = {}
    for key, value in serve_config.items():
        flag = str(key).replace("_", "-")
        if value is False:
            out[f"no-{flag}"] = True
        elif value is not None:
            out[flag] = value
    return out


def _method(engine_params: dict[str, Any]) -> Optional[str]:
    q = engine_params.get("quantization")
    return None if q in (None, "", "none") else str(q)


def serving_config(serve_config: dict[str, Any], model: dict[str, Any], engine_params: dict[str, Any]
                   ) -> ServingConfig:
    """What to serve on another host. ``model`` is the study's stored ``model`` config section,
    ``engine_params`` the trial's (``Setup.engine_params``)."""
    flags = {k: v for k, v in serve_config.items() if k not in ("model", "load_format")}
    name = str(model.get("name") or "")
    generate = str(model.get("generate") or "")
    path, hub = str(model.get("path") or ""), str(model.get("hub_id") or "")
    q = _method(engine_params)
    variant = str((model.get("variants") or {}).get(q) or "") if q else ""
    base = (hub or path) if generate else (path or hub)
    notes: list[str] = []
    if variant:
        target = variant
        notes.append(f"model: the {q} checkpoint (model.variants.{q}); vLLM reads its quantization method from it"
                     + (f". Without one: model: {base or name} with quantization: fp8 (vLLM's online fp8)"
                        if q == _ONLINE else ""))
    elif q and generate == "config" and q == _ONLINE:
        # the study served a generated fp8 stand-in checkpoint; without one, vLLM's online quantization
        target = base
        flags["quantization"] = q
        notes.append(f"the study served a generated {q} checkpoint of {name}; with a {q} checkpoint of your own, "
                     f"point model at it and drop quantization (vLLM reads the method from the checkpoint)")
    elif q and generate == "config":
        target = ""  # no online form of this method: only a checkpoint of it reproduces the trial
        notes.append(f"the study served a generated {q} checkpoint of {name}: point model at a {q} checkpoint")
    else:
        target = base
    if not target:
        target = name
        notes.append(f"model: set it to the folder or hub id of your {name} checkpoint")
    if generate:
        what = "config and tokenizer only" if generate == "config" else f"model.generate={generate}"
        notes.append(f"the study's servers loaded a folder this tool generated for {name} ({what}), "
                     f"not this model path")
    if serve_config.get("load_format") == "dummy":
        notes.append("the study measured random weights (load-format dummy), dropped here: serve real weights")
    elif serve_config.get("load_format"):
        flags["load_format"] = serve_config["load_format"]
    return ServingConfig({"model": target, **flags}, notes)


def serving_yaml(head: list[str], serve_config: dict[str, Any], model: dict[str, Any],
                 engine_params: dict[str, Any]) -> str:
    """best.yaml's text: ``head`` and the serving notes as comments, then the flags."""
    sc = serving_config(serve_config, model, engine_params)
    comments = "".join(f"# {' '.join(line.split())}\n" for line in [*head, *sc.notes])  # each one line
    return comments + yaml.safe_dump(serve_yaml_dict(sc.flags), sort_keys=False, default_flow_style=False)


def portable_command(argv: Sequence[str], model: dict[str, Any], cache_dir: str) -> str:
    """The command a trial's server ran, as the report shows it: ``python`` for this machine's
    interpreter, and a generated model folder under the configured ``server.cache_dir``
    (``.cache/models/<name>``) rather than its absolute path here."""
    out = ["python"]
    for prev, arg in zip(["", *argv], argv):
        if prev == "--model":
            arg = _portable_model(arg, model, cache_dir)
        out.append(arg)
    return shlex.join(out)


def _portable_model(path: str, model: dict[str, Any], cache_dir: str) -> str:
    if not model.get("generate"):
        return path
    return str(PurePosixPath(cache_dir or ".cache") / "models" / PurePosixPath(path).name)


def portable_attrs(attrs: dict[str, Any], config: dict[str, Any]) -> dict[str, Any]:
    """A trial's user attrs for a table that leaves the machine (trials.csv): ``server_command``
    as :func:`portable_command` shows it, a generated model folder in ``serve_config`` under
    ``server.cache_dir``, and ``server_log`` under ``study.runs_dir`` as configured. The study
    database keeps them as they were."""
    model = config.get("model") or {}
    cache_dir = str((config.get("server") or {}).get("cache_dir") or "")
    runs_dir = str((config.get("study") or {}).get("runs_dir") or "runs")
    out = dict(attrs)
    if isinstance(out.get("server_command"), str) and out["server_command"]:
        out["server_command"] = portable_command(shlex.split(out["server_command"])[1:], model, cache_dir)
    if isinstance(out.get("serve_config"), str):
        try:
            sc = json.loads(out["serve_config"])
        except ValueError:
            sc = None
        if isinstance(sc, dict) and isinstance(sc.get("model"), str):
            sc["model"] = _portable_model(sc["model"], model, cache_dir)
            out["serve_config"] = json.dumps(sc, sort_keys=True)
    if isinstance(out.get("server_log"), str) and out["server_log"]:
        parts = PurePosixPath(out["server_log"]).parts
        out["server_log"] = str(PurePosixPath(runs_dir, *parts[-3:]))  # <runs_dir>/<study>/trial-NNNN/server.log
    return out
