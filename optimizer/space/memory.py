"""Memory estimate of a vLLM server: weights, activations and what is left for the KV cache.

Pure arithmetic from the model's architecture numbers and the hardware preset, mirroring how
vLLM 0.32 sizes its KV cache (``v1/worker/gpu_worker.py::determine_available_memory``,
``v1/core/kv_cache_utils.py``):

- GPU: ``gpu_memory_utilization x memory - weights - peak activation of the profiling run -
  non-torch memory - CUDA graphs`` is the KV space per GPU;
- CPU backend: exactly ``--kv-cache-memory-bytes`` (the CPU worker takes it as given).

The KV space is cut into blocks of ``block_size`` tokens (16 on CUDA, 128 on the CPU backend),
and vLLM reports ``num_blocks / blocks_per_request x max_model_len`` tokens; so does this module.

Calibration (GPU): vLLM 0.26 on an H100 80GB (79.1 GiB as CUDA reports it) serving
Llama-3-8B in bf16 with its defaults (gpu_memory_utilization 0.92, max_num_seqs 1024,
max_num_batched_tokens 8192) measured weights 14.96 GiB and KV cache 56.6 GiB = 463k tokens:
everything else took 0.92 x 79.1 - 14.96 - 56.6 = 1.21 GiB. The activation model below (the
larger of the forward pass over max_num_batched_tokens and the sampler's float32 logits for
max_num_seqs requests, plus a fixed 0.25 GiB for non-torch memory and CUDA graphs) gives 1.29 GiB
there, so the predicted KV cache is 56.52 GiB = 463.0k tokens, 0.2 % under the measured one
(tests/unit/test_memory_estimate.py pins it within 10 %). One measurement calibrates one constant:
other shapes are extrapolations of the same physics, good to the ~10 % a go/no-go rule needs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

from optimizer.settings.config import HardwareConfig, ModelConfig
from optimizer.settings.knobs import EngineParams, memory_inputs

__all__ = ["MemoryEstimate", "bytes_per_param", "estimate_memory", "kv_bytes_per_token", "weights_gib"]

GIB = 1024**3
_DTYPE_BYTES = {"float32": 4, "float": 4, "bfloat16": 2, "float16": 2, "half": 2, "fp8": 1, "fp8_e4m3": 1,
                "fp8_e5m2": 1, "int8": 1}
# Bytes per parameter of the quantized linear layers, scales and zero points included:
# 4-bit AWQ/GPTQ with group size 128 store 0.5 B + an fp16 scale and a 4-bit zero per 128 weights;
# fp8 stores 1 B + per-tensor or per-channel scales. Embeddings and lm_head stay 16-bit (below).
_QUANT_BYTES = {"awq": 0.52, "gptq": 0.52, "fp8": 1.0, "int8": 1.0}
# Non-torch memory (cuBLAS workspaces, NCCL buffers) plus the CUDA graph pool vLLM profiles since
# 0.21: the one constant calibrated on the H100 measurement in the module docstring.
_GPU_FIXED_OVERHEAD_GIB = 0.25
_BLOCK_SIZE = {"cuda": 16, "cpu": 128}


@dataclass(frozen=True)
class MemoryEstimate:
    budget_gib: float  # memory vLLM may use per device (share x memory, or the CPU KV space)
    weights_gib: float  # per device
    activation_gib: float  # per device: profiling peak + non-torch + CUDA graphs
    kv_gib: float  # left for the KV cache per device
    kv_bytes_per_token: float  # per device
    kv_tokens: int  # what vLLM reports as "KV cache size: N tokens"
    max_model_len: int

    @property
    def fits(self) -> bool:
        """Can the KV cache hold at least one request of max_model_len tokens?"""
        return self.kv_tokens >= self.max_model_len

    @property
    def weights_fit(self) -> bool:
        return self.weights_gib < self.budget_gib

    @property
    def max_concurrency(self) -> float:
        """Requests of max_model_len tokens the KV cache holds at once (vLLM prints the same)."""
        return self.kv_tokens / self.max_model_len if self.max_model_len else math.nan

    def concurrency_for(self, tokens_per_request: int) -> float:
        return self.kv_tokens / tokens_per_request if tokens_per_request > 0 else math.nan


def _resolved_dtype(params: EngineParams, model: ModelConfig, hw: HardwareConfig) -> str:
    dtype = params.dtype if params.dtype not in (None, "auto") else model.dtype
    if dtype == "bfloat16" and not hw.supports_bf16:
        return "float16"  # vLLM's auto dtype falls back to fp16 where bf16 is missing
    return dtype


def _quant(params: EngineParams) -> Optional[str]:
    return params.quantization if params.quantization not in (None, "none") else None


def bytes_per_param(params: EngineParams, model: ModelConfig, hw: HardwareConfig) -> float:
    """Bytes per parameter of the linear layers (quantized or in the compute dtype)."""
    quant = _quant(params)
    if quant is not None:
        return _QUANT_BYTES.get(quant, 1.0)
    return float(_DTYPE_BYTES.get(_resolved_dtype(params, model, hw), 2))


def weights_gib(params: EngineParams, model: ModelConfig, hw: HardwareConfig, tp: int = 1) -> float:
    """Weights per device. Embedding and lm_head (untied, vocab x hidden each) stay in the compute
    dtype under AWQ/GPTQ/fp8; everything is split over the tensor parallel ranks."""
    total = model.num_params_b * 1e9
    embed = min(total, 2.0 * model.vocab_size * model.hidden_size)
    dense = float(_DTYPE_BYTES.get(_resolved_dtype(params, model, hw), 2))
    if _quant(params) is None:
        return total * dense / GIB / tp
    return ((total - embed) * bytes_per_param(params, model, hw) + embed * dense) / GIB / tp


def kv_bytes_per_token(params: EngineParams, model: ModelConfig, hw: HardwareConfig) -> float:
    """K and V, every layer, per token, per device (KV heads split over tensor parallel ranks,
    replicated when there are more ranks than KV heads)."""
    kv_dtype = params.kv_cache_dtype if params.kv_cache_dtype not in (None, "auto") else _resolved_dtype(
        params, model, hw)
    tp = params.tensor_parallel_size or 1
    heads = max(1, model.num_kv_heads // tp) if model.num_kv_heads >= tp else 1
    return 2.0 * model.num_layers * heads * model.head_dim * _DTYPE_BYTES.get(kv_dtype, 2)


def _activation_gib(model: ModelConfig, mnbt: int, seqs: int, tp: int) -> float:
    """Peak of vLLM's profiling run per GPU, plus non-torch memory and CUDA graphs."""
    act = 2  # bytes: activations run in the 16-bit compute dtype
    # forward over max_num_batched_tokens: the MLP's gate_up output (2 x intermediate) and its
    # activation (1 x intermediate) live together with the hidden state and the residual
    forward = mnbt * (3 * model.intermediate_size / tp + 2 * model.hidden_size) * act
    # sampler warm-up: max_num_seqs rows of logits over the vocabulary, float32, plus the
    # probabilities computed from them, while the hidden states of the forward pass are alive
    # (gathered on the first rank whole, so not divided by tensor parallelism)
    sampler = seqs * model.vocab_size * 4 * 2 + mnbt * model.hidden_size * act
    return max(forward, sampler) / GIB + _GPU_FIXED_OVERHEAD_GIB


def _kv_tokens(kv_bytes: float, per_token: float, block: int, max_len: int) -> int:
    """vLLM's KV capacity: whole blocks, reported as num_blocks / blocks_per_request x max_len."""
    if per_token <= 0 or kv_bytes <= 0 or max_len <= 0:
        return 0
    num_blocks = int(kv_bytes // (per_token * block))
    blocks_per_request = math.ceil(max_len / block)
    return int(num_blocks / blocks_per_request * max_len)


def estimate_memory(params: EngineParams, model: ModelConfig, hw: HardwareConfig,
                    defaults: Optional[EngineParams] = None) -> MemoryEstimate:
    """Estimate memory per device for ``params`` (None fields take ``defaults``, then vLLM's).

    Speculative decoding with a draft model adds the draft's weights and KV cache, which are not
    modelled (the draft's architecture is not configured); n-gram speculation needs no memory.
    """
    params, d = memory_inputs(params), memory_inputs(defaults or EngineParams())  # the knobs marked memory only

    def pick(name: str, fallback: float) -> float:
        value = getattr(params, name)
        if value is None:
            value = getattr(d, name)
        return fallback if value is None else value

    max_len = int(pick("max_model_len", model.max_model_len))
    tp = int(pick("tensor_parallel_size", 1))
    per_token = kv_bytes_per_token(params, model, hw)
    weights = weights_gib(params, model, hw, tp)
    if hw.device == "cpu":
        budget = pick("kv_cache_gib", hw.cpu_kvcache_gib or 4.0)
        kv_gib = budget  # the CPU backend gives the KV cache exactly this much
        activation = 0.0
    else:
        budget = pick("gpu_memory_utilization", 0.92) * hw.gpu_mem_gib
        activation = _activation_gib(model, int(pick("max_num_batched_tokens", 2048)),
                                     int(pick("max_num_seqs", 256)), tp)
        kv_gib = budget - weights - activation
    tokens = _kv_tokens(kv_gib * GIB, per_token, _BLOCK_SIZE.get(hw.device, 16), max_len)
    return MemoryEstimate(budget_gib=budget, weights_gib=weights, activation_gib=activation, kv_gib=kv_gib,
                          kv_bytes_per_token=per_token, kv_tokens=tokens, max_model_len=max_len)
