"""The grids that keep vLLM's compile cache warm. Pure.

vLLM keys its compiled model on every setting that shapes the compiled graph (0.32:
``VllmConfig.compute_hash`` over the scheduler's ``max_num_batched_tokens`` and ``max_num_seqs``,
the model's ``max_model_len``, dtype and quantization, the KV-cache dtype, tensor parallelism,
speculative decoding, and the compilation config, whose CUDA-graph capture sizes follow
``max_num_seqs``: ``min(2 x max_num_seqs x (1 + speculative tokens), 512)``). A start whose key is
new compiles (tens of seconds on a GPU, minutes on a loaded CPU host); one whose key was seen
loads the compiled model from the cache. Drawing the two integer shape parameters from a few
values that repeat (``grid: pow2``) turns most trial starts into cache hits; the other shape
parameters are already choices from short lists. ``benchmarks/compile_keys.py`` lists which
parameters change the key on the installed vLLM.
"""

from __future__ import annotations

from typing import Iterable, Optional

from optimizer.settings.config import IntRange

__all__ = ["grid_values"]


def grid_values(r: IntRange, include: Iterable[Optional[int]] = ()) -> tuple[int, ...]:
    """The values ``r`` may take when drawn on its grid, ascending; empty when ``r`` has none.

    ``pow2``: ``low``, every power of two strictly between, ``high``, and each value of
    ``include`` (vLLM's defaults: the baseline trial records them) that lies in the range, so
    the grid can express what vLLM would run by itself.
    """
    if not r.grid or r.low == r.high:
        return ()
    values = {r.low, r.high}
    p = 1
    while p < r.high:
        if p > r.low:
            values.add(p)
        p *= 2
    values.update(v for v in include if v is not None and r.low <= v <= r.high)
    return tuple(sorted(values))
