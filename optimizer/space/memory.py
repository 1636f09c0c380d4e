"""Memory estimate of a vLLM server: weights, activations and what is left for the KV cache.

Pure arithmetic from the model's architecture numbers and the hardware preset. It mirrors how
vLLM sizes its KV cache: on a GPU, ``gpu_memory_utilization x memory - weights - peak activation
of the profiling run - CUDA graphs``; on the CPU backend, exactly ``VLLM_CPU_KVCACHE_SPACE``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from optimizer.config import HardwareConfig, ModelConfig
from optimizer.space.engine_args import EngineParams

__all__ = ["MemoryEstimate", "bytes_per_param", "estimate_memory", "kv_bytes_per_token"]

GIB = 1024**3
_DTYPE_BYTES = {"float32": 4, "float": 4, "bfloat16": 2, "float16": 2, "half": 2, "fp8": 1, "fp8_e4m3": 1,
                "fp8_e5m2": 1, "int8": 1}
# bytes per parameter of a quantized checkpoint, scales and zero points included
_QUANT_BYTES = {"awq": 0.56, "gptq": 0.56, "fp8": 1.02, "int8": 1.02}
# CUDA context, NCCL buffers, CUDA graphs, allocator slack: measured 1-2 GiB on an H100 with an 8B
_GPU_FIXED_OVERHEAD_GIB = 1.5


@dataclass(frozen=True)
class MemoryEstimate:
    budget_gib: float  # memory vLLM may use per device (share x memory, or the CPU KV space)
    weights_gib: float  # per device
    activation_gib: float  # per device
    kv_gib: float  # left for the KV cache per device
    kv_bytes_per_token: float  # per device
    kv_tokens: int
    max_model_len: int

    @property
    def fits(self) -> bool:
        """Can the KV cache hold at least one request of max_model_len tokens?"""
        return self.kv_tokens >= self.max_model_len

    @property
    def max_concurrency(self) -> float:
        """Requests of max_model_len tokens the KV cache holds at once (vLLM prints the same)."""
        return self.kv_tokens / self.max_model_len if self.max_model_len else math.nan

    def concurrency_for(self, tokens_per_request: int) -> float:
        return self.kv_tokens / tokens_per_request if tokens_per_request > 0 else math.nan

    def as_attrs(self) -> dict[str, float]:
        return {"mem_budget_gib": round(self.budget_gib, 3), "mem_weights_gib": round(self.weights_gib, 3),
                "mem_activation_gib": round(self.activation_gib, 3), "mem_kv_gib": round(self.kv_gib, 3),
                "pred_kv_tokens": self.kv_tokens, "pred_max_concurrency": round(self.max_concurrency, 2)}


def _resolved_dtype(params: EngineParams, model: ModelConfig, hw: HardwareConfig) -> str:
    dtype = params.dtype if params.dtype not in (None, "auto") else model.dtype
    if dtype == "bfloat16" and not hw.supports_bf16:
        return "float16"  # vLLM's auto dtype falls back to fp16 where bf16 is missing
    return dtype


def bytes_per_param(params: EngineParams, model: ModelConfig, hw: HardwareConfig) -> float:
    quant = params.quantization if params.quantization not in (None, "none") else None
    if quant is not None:
        return _QUANT_BYTES.get(quant, 1.0)
    return float(_DTYPE_BYTES.get(_resolved_dtype(params, model, hw), 2))


def kv_bytes_per_token(params: EngineParams, model: ModelConfig, hw: HardwareConfig) -> float:
    """K and V, every layer, per token, per device (KV heads split over tensor parallel ranks)."""
    kv_dtype = params.kv_cache_dtype if params.kv_cache_dtype not in (None, "auto") else _resolved_dtype(
        params, model, hw)
    tp = params.tensor_parallel_size or 1
    heads = max(1, model.num_kv_heads // tp) if model.num_kv_heads >= tp else 1
    return 2.0 * model.num_layers * heads * model.head_dim * _DTYPE_BYTES.get(kv_dtype, 2)


def estimate_memory(params: EngineParams, model: ModelConfig, hw: HardwareConfig,
                    defaults: EngineParams | None = None) -> MemoryEstimate:
    """Estimate memory per device for ``params`` (None fields take ``defaults``, then vLLM's)."""
    d = defaults or EngineParams()

    def pick(name: str, fallback: float) -> float:
        value = getattr(params, name)
        if value is None:
            value = getattr(d, name)
        return fallback if value is None else value

    max_len = int(pick("max_model_len", model.max_model_len))
    tp = int(pick("tensor_parallel_size", 1))
    per_token = kv_bytes_per_token(params, model, hw)
    if hw.device == "cpu":
        budget = pick("kv_cache_gib", hw.cpu_kvcache_gib or 4.0)
        weights = model.num_params_b * 1e9 * bytes_per_param(params, model, hw) / GIB
        kv_gib = budget  # the CPU backend gives the KV cache exactly this much
        activation = 0.0
    else:
        share = pick("gpu_memory_utilization", 0.92)
        budget = share * hw.gpu_mem_gib
        weights = model.num_params_b * 1e9 * bytes_per_param(params, model, hw) / GIB / tp
        mnbt = pick("max_num_batched_tokens", 2048)
        seqs = pick("max_num_seqs", 256)
        act_dtype = 2
        # profiling forward pass of max_num_batched_tokens tokens: MLP intermediates dominate
        per_tok = (2 * model.intermediate_size + 4 * model.hidden_size) * act_dtype / tp
        # sampler warm-up: float32 logits for max_num_seqs requests
        logits = seqs * model.vocab_size * 4
        activation = (mnbt * per_tok + logits) / GIB + _GPU_FIXED_OVERHEAD_GIB
        kv_gib = budget - weights - activation
    tokens = int(max(0.0, kv_gib) * GIB // per_token) if per_token > 0 else 0
    return MemoryEstimate(budget_gib=budget, weights_gib=weights, activation_gib=activation, kv_gib=kv_gib,
                          kv_bytes_per_token=per_token, kv_tokens=tokens, max_model_len=max_len)
