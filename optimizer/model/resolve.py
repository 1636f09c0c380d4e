"""From ``model`` config to the directory a server loads, per quantization choice."""

from __future__ import annotations

from pathlib import Path

from optimizer.config import ModelConfig
from optimizer.errors import ConfigError
from optimizer.model.tiny import ensure_model_dir
from optimizer.space.engine_args import ModelTarget

__all__ = ["hf_arch", "resolve_model_dir", "target_for"]


def hf_arch(model: ModelConfig) -> dict[str, int]:
    """Architecture numbers as Hugging Face config keys (for a generated config-only folder)."""
    return {"hidden_size": model.hidden_size, "intermediate_size": model.intermediate_size,
            "num_hidden_layers": model.num_layers, "num_attention_heads": model.num_attention_heads,
            "num_key_value_heads": model.num_kv_heads, "head_dim": model.head_dim, "vocab_size": model.vocab_size,
            "max_position_embeddings": max(model.max_model_len, 2048)}


def resolve_model_dir(model: ModelConfig, cache_dir: str) -> Path:
    """The model's local folder: ``model.path``, or the one the package generates."""
    if model.path:
        p = Path(model.path).expanduser()
        if not p.is_dir():
            raise ConfigError(f"model.path={model.path!r}: no such directory. Point it at a local model folder "
                              f"(config.json, tokenizer, weights), or use model.load_format=dummy with "
                              f"model.generate=config to tune without weights.")
        if not (p / "config.json").is_file():
            raise ConfigError(f"model.path={model.path!r} has no config.json: not a Hugging Face model folder.")
        return p.resolve()
    if model.generate:
        return ensure_model_dir(model.generate, cache_dir, model.name, hf_arch(model), model.dtype).resolve()
    raise ConfigError(f"model {model.name!r}: set model.path to a local folder (no model hub is used), "
                      f"or model.generate=tiny|config.")


def target_for(model: ModelConfig, base_dir: Path, quantization: str | None) -> ModelTarget:
    """Which folder and flags a server needs for ``quantization`` (``none`` = the base checkpoint).

    A variant listed in ``model.variants`` is a separate checkpoint carrying its own quantization
    config; ``fp8`` without a variant is vLLM's online fp8 quantization of the base checkpoint."""
    served = model.served_name or model.name
    q = None if quantization in (None, "none") else quantization
    if q is not None and model.variants.get(q):
        path = Path(model.variants[q]).expanduser()
        if not path.is_dir():
            raise ConfigError(f"model.variants.{q}={model.variants[q]!r}: no such directory")
        return ModelTarget(str(path.resolve()), served, model.load_format, None)
    return ModelTarget(str(base_dir), served, model.load_format, None)
