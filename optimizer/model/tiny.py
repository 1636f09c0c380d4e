"""A tiny Llama-architecture model, generated deterministically on the spot.

No model hub is reachable, and none is needed: :func:`write_tiny_model` writes a Hugging Face
folder (config, random weights, a byte-level BPE tokenizer trained locally on a seeded synthetic
corpus) that vLLM serves on its CPU build. :func:`write_config_only` writes the same folder
without weights for ``--load-format dummy`` studies of big architectures; its tokenizer is a
synthetic byte-level BPE whose vocabulary is exactly the model's (a dummy-weight model emits any
token id below ``vocab_size``, and an id the tokenizer lacks breaks vLLM's detokenizer), and a
quantized variant's folder carries the ``quantization_config`` vLLM needs to build AWQ/GPTQ/FP8
layers. Same inputs, same bytes: the folder carries a ``.complete`` stamp with its fingerprint
and is rebuilt only when the recipe changes.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator, Optional

import numpy as np

__all__ = ["QUANT_CONFIGS", "TINY_ARCH", "ensure_model_dir", "generated_dir", "write_config_only",
           "write_tiny_model"]

RECIPE_VERSION = 2
CONFIG_RECIPE_VERSION = 3  # config-only folders: full-vocabulary synthetic tokenizer, quantization configs
TINY_ARCH: dict[str, Any] = {
    "hidden_size": 256, "intermediate_size": 512, "num_hidden_layers": 4, "num_attention_heads": 4,
    "num_key_value_heads": 2, "head_dim": 64, "vocab_size": 4096, "max_position_embeddings": 4096,
}
_SPECIALS = ["<unk>", "<s>", "</s>"]
_CHAT_TEMPLATE = ("{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}{{ eos_token }}"
                  "{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}")


def _corpus(seed: int, n_lines: int = 4000) -> list[str]:
    rng = random.Random(seed)
    syll = [c + v for c in "bcdfghjklmnprstvwz" for v in "aeiou"] + ["th", "sh", "qu", "str", "ng"]
    words = ["".join(rng.choice(syll) for _ in range(rng.randint(1, 4))) for _ in range(3000)]
    lines = []
    for _ in range(n_lines):
        n = rng.randint(5, 25)
        lines.append(" ".join(rng.choice(words) for _ in range(n)) + rng.choice([".", "!", "?", ","]))
    return lines


def _train_tokenizer(out: Path, vocab_size: int, seed: int) -> None:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=_SPECIALS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(_corpus(seed), trainer=trainer)
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B",
                                                       special_tokens=[("<s>", tok.token_to_id("<s>"))])
    tok.save(str(out / "tokenizer.json"))
    _tokenizer_files(out, TINY_ARCH["max_position_embeddings"])


def _tokenizer_files(out: Path, max_len: int) -> None:
    (out / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<s>", "eos_token": "</s>",
        "unk_token": "<unk>", "model_max_length": max_len,
        "clean_up_tokenization_spaces": False, "chat_template": _CHAT_TEMPLATE}, indent=1, sort_keys=True))
    (out / "special_tokens_map.json").write_text(json.dumps(
        {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}, indent=1, sort_keys=True))


def _synthetic_tokens(alphabet: list[str]) -> Iterator[tuple[str, str]]:
    """Merges in a fixed order: every pair of byte symbols, then pair + byte triples."""
    for a in alphabet:
        for b in alphabet:
            yield a, b
    for a in alphabet:
        for b in alphabet:
            for c in alphabet:
                yield a + b, c


def _synthetic_tokenizer(out: Path, vocab_size: int, max_len: int) -> None:
    """A byte-level BPE with exactly ``vocab_size`` tokens, built without training (seconds even
    for Llama-3's 128k): the three specials at ids 0-2 (bos 1, eos 2, as in the config), the 256
    byte symbols, then pairs and triples of them, each with the merge that forms it."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    if vocab_size < len(_SPECIALS) + len(alphabet):
        raise ValueError(f"vocab_size={vocab_size}: a byte-level tokenizer needs at least "
                         f"{len(_SPECIALS) + len(alphabet)} tokens")
    vocab = {t: i for i, t in enumerate(_SPECIALS)}
    for c in alphabet:
        vocab[c] = len(vocab)
    merges: list[tuple[str, str]] = []
    for left, right in _synthetic_tokens(alphabet):
        if len(vocab) >= vocab_size:
            break
        if left + right not in vocab:
            vocab[left + right] = len(vocab)
            merges.append((left, right))
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", fuse_unk=False))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in _SPECIALS])
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B",
                                                       special_tokens=[("<s>", vocab["<s>"])])
    if tok.get_vocab_size() != vocab_size:
        raise AssertionError(f"synthetic tokenizer has {tok.get_vocab_size()} tokens, wanted {vocab_size}")
    tok.save(str(out / "tokenizer.json"))
    _tokenizer_files(out, max_len)


# quantization_config of each quantized variant, as the usual checkpoints carry it (4-bit, group 128)
QUANT_CONFIGS: dict[str, dict[str, Any]] = {
    "awq": {"quant_method": "awq", "bits": 4, "group_size": 128, "zero_point": True, "version": "gemm"},
    "gptq": {"quant_method": "gptq", "bits": 4, "group_size": 128, "desc_act": False, "sym": True},
    "fp8": {"quant_method": "fp8", "activation_scheme": "dynamic"},
}


def _hf_config(arch: dict[str, Any], dtype: str) -> dict[str, Any]:
    return {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "attention_bias": False,
            "attention_dropout": 0.0, "bos_token_id": 1, "eos_token_id": 2, "hidden_act": "silu",
            "initializer_range": 0.02, "mlp_bias": False, "pretraining_tp": 1, "rms_norm_eps": 1e-5,
            "rope_theta": 10000.0, "tie_word_embeddings": False, "torch_dtype": dtype, "use_cache": True,
            **arch}


def _weights(arch: dict[str, Any], seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    h, i, v = arch["hidden_size"], arch["intermediate_size"], arch["vocab_size"]
    q = arch["num_attention_heads"] * arch["head_dim"]
    kv = arch["num_key_value_heads"] * arch["head_dim"]

    def w(*shape: int) -> np.ndarray:
        return rng.standard_normal(shape, dtype=np.float32) * 0.02

    def ones(n: int) -> np.ndarray:
        return np.ones(n, np.float32)

    t = {"model.embed_tokens.weight": w(v, h), "model.norm.weight": ones(h), "lm_head.weight": w(v, h)}
    for n in range(arch["num_hidden_layers"]):
        p = f"model.layers.{n}."
        t.update({p + "self_attn.q_proj.weight": w(q, h), p + "self_attn.k_proj.weight": w(kv, h),
                  p + "self_attn.v_proj.weight": w(kv, h), p + "self_attn.o_proj.weight": w(h, q),
                  p + "mlp.gate_proj.weight": w(i, h), p + "mlp.up_proj.weight": w(i, h),
                  p + "mlp.down_proj.weight": w(h, i), p + "input_layernorm.weight": ones(h),
                  p + "post_attention_layernorm.weight": ones(h)})
    return t


def _save_bf16(tensors: dict[str, np.ndarray], path: Path) -> None:
    """Write float32 arrays as a bf16 safetensors file (numpy has no bf16; the format is simple:
    an 8-byte header length, a JSON header, then the raw little-endian data)."""
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    blobs, offset = [], 0
    for name in sorted(tensors):
        a = np.ascontiguousarray(tensors[name], dtype="<f4")
        bf16 = ((a.view("<u4") + 0x7FFF + ((a.view("<u4") >> 16) & 1)) >> 16).astype("<u2")  # round to nearest even
        data = bf16.tobytes()
        header[name] = {"dtype": "BF16", "shape": list(a.shape), "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    head = json.dumps(header, separators=(",", ":")).encode()
    head += b" " * (-len(head) % 8)
    with open(path, "wb") as f:
        f.write(len(head).to_bytes(8, "little"))
        f.write(head)
        for data in blobs:
            f.write(data)


def _fingerprint(kind: str, arch: dict[str, Any], dtype: str, seed: int, quantization: Optional[str] = None) -> str:
    recipe: dict[str, Any] = {"kind": kind, "arch": arch, "dtype": dtype, "seed": seed, "v": RECIPE_VERSION}
    if kind != "weights":
        recipe |= {"config_v": CONFIG_RECIPE_VERSION, "quantization": quantization}
    blob = json.dumps(recipe, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _build(out: Path, kind: str, arch: dict[str, Any], dtype: str, seed: int,
           quantization: Optional[str] = None) -> Path:
    stamp = _fingerprint(kind, arch, dtype, seed, quantization)
    if (out / ".complete").is_file() and (out / ".complete").read_text().strip() == stamp:
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=out.name + ".", dir=out.parent))
    try:
        config = _hf_config(arch, dtype)
        if kind != "weights":
            # without it, transformers suspects a Mistral tokenizer with the broken regex and warns
            config["transformers_version"] = "4.57.0"
        if quantization is not None:
            config["quantization_config"] = QUANT_CONFIGS[quantization]
        (tmp / "config.json").write_text(json.dumps(config, indent=1, sort_keys=True))
        (tmp / "generation_config.json").write_text(json.dumps(
            {"bos_token_id": 1, "eos_token_id": 2, "do_sample": False}, indent=1, sort_keys=True))
        if kind == "weights":
            _train_tokenizer(tmp, min(arch["vocab_size"], 4096), seed)
            _save_bf16(_weights(arch, seed), tmp / "model.safetensors")
        else:
            _synthetic_tokenizer(tmp, arch["vocab_size"], arch.get("max_position_embeddings", 2048))
        (tmp / ".complete").write_text(stamp + "\n")
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)  # atomic: a half-written model is never used
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def write_tiny_model(out: str | os.PathLike[str], seed: int = 0) -> Path:
    """Write (or reuse) the tiny random-weight Llama model folder at ``out``."""
    return _build(Path(out), "weights", TINY_ARCH, "bfloat16", seed)


def write_config_only(out: str | os.PathLike[str], arch: dict[str, Any], dtype: str = "bfloat16",
                      quantization: Optional[str] = None) -> Path:
    """Write a weightless model folder (config + tokenizer) to serve with ``--load-format dummy``.

    Args:
        out: the folder (replaced atomically when its recipe changed, reused otherwise).
        arch: Hugging Face config keys (hidden_size, num_hidden_layers, vocab_size, ...).
        dtype: the checkpoint dtype written as ``torch_dtype``.
        quantization: ``awq``, ``gptq`` or ``fp8`` to write that method's ``quantization_config``
            (a dummy stand-in for a quantized checkpoint); None for the 16-bit model.

    The tokenizer covers exactly ``arch["vocab_size"]`` tokens."""
    if quantization is not None and quantization not in QUANT_CONFIGS:
        raise ValueError(f"quantization={quantization!r}: valid choices are {', '.join(QUANT_CONFIGS)}")
    return _build(Path(out), "config", arch, dtype, 0, quantization)


def generated_dir(cache_dir: str | os.PathLike[str], name: str, quantization: Optional[str] = None) -> Path:
    """Where :func:`ensure_model_dir` puts model ``name`` (and its quantized stand-ins)."""
    return Path(cache_dir) / "models" / (f"{name}-{quantization}" if quantization else name)


def ensure_model_dir(generate: str, cache_dir: str | os.PathLike[str], name: str,
                     arch: Optional[dict[str, Any]] = None, dtype: str = "bfloat16",
                     quantization: Optional[str] = None) -> Path:
    """The model folder for ``model.generate``: ``tiny`` or ``config`` (for dummy weights)."""
    if generate == "tiny":
        return write_tiny_model(generated_dir(cache_dir, name))
    if generate == "config":
        if not arch:
            raise ValueError("model.generate=config needs the architecture numbers in the model config")
        return write_config_only(generated_dir(cache_dir, name, quantization), arch, dtype, quantization)
    raise ValueError(f"model.generate={generate!r}: valid choices are tiny, smollm2, config (or empty with model.path)")
