"""Which GPUs each parallel worker of this host owns, and which of them a trial's server gets.

Pure: the entry point gathers the inventory (``hardware.gpu_ids``, ``CUDA_VISIBLE_DEVICES``,
``nvidia-smi``) and hands it in. Workers own disjoint, consecutive groups of GPUs (neighbours
usually share the fastest links), as many per worker as the largest tensor-parallel size in the
search space, so every config the sampler proposes fits the worker that runs it and no two
servers ever share a GPU. A trial's server sees the first ``tensor_parallel_size`` GPUs of its
worker's group; the others stay idle for that trial.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

from optimizer.core.errors import ConfigError

__all__ = ["WorkerPlan", "gpu_inventory", "partition_gpus", "plan_workers", "trial_gpus"]


def gpu_inventory(configured: Sequence[int], visible_devices: Optional[str],
                  detected: Sequence[int]) -> tuple[int, ...]:
    """The GPU indexes this host lends the study; empty when unknown (no pinning possible).

    Args:
        configured: ``hardware.gpu_ids``; wins when given (it also simulates GPUs in tests).
        visible_devices: ``CUDA_VISIBLE_DEVICES`` as the optimizer was started with (None: unset).
            Numeric entries are taken as the inventory; UUIDs or MIG names cannot be pinned by
            index and give an empty inventory.
        detected: the indexes ``nvidia-smi`` lists.
    """
    if configured:
        return tuple(configured)
    if visible_devices is not None:
        entries = [e.strip() for e in visible_devices.split(",") if e.strip()]
        if entries and all(e.isdigit() for e in entries):
            return tuple(int(e) for e in entries)
        return ()
    return tuple(detected)


def partition_gpus(gpu_ids: Sequence[int], per_worker: int, workers: int) -> list[tuple[int, ...]]:
    """Split ``gpu_ids`` into consecutive disjoint groups of ``per_worker``, in the given order.

    Args:
        gpu_ids: the inventory.
        per_worker: GPUs each worker owns (>= 1).
        workers: groups wanted; 0 means as many as fit.

    Raises:
        ConfigError: fewer GPUs than ``workers * per_worker`` (or than one group, for 0).
    """
    if per_worker < 1:
        raise ValueError(f"per_worker={per_worker}: must be >= 1")
    if len(set(gpu_ids)) != len(gpu_ids):
        raise ConfigError(f"GPU inventory {list(gpu_ids)} names a GPU twice: list each index once "
                          f"(hardware.gpu_ids or CUDA_VISIBLE_DEVICES)")
    fit = len(gpu_ids) // per_worker
    n = fit if workers == 0 else workers
    if n < 1 or n > fit:
        wanted = f"study.workers={workers} needs {max(n, 1)} x {per_worker}" if workers else \
            f"one worker needs {per_worker}"
        raise ConfigError(
            f"{wanted} GPU(s) (the largest search.tensor_parallel_size choice is {per_worker}), but this host "
            f"offers {len(gpu_ids)}: {list(gpu_ids)} (from hardware.gpu_ids, CUDA_VISIBLE_DEVICES or nvidia-smi). "
            f"Lower study.workers (0: as many as fit), or drop the larger search.tensor_parallel_size choices.")
    return [tuple(gpu_ids[i * per_worker:(i + 1) * per_worker]) for i in range(n)]


def trial_gpus(worker_gpus: Sequence[int], tensor_parallel_size: Optional[int]) -> tuple[int, ...]:
    """The GPUs one server gets: the first ``tensor_parallel_size`` (None: 1) of its worker's.
    An empty group (nothing to pin: CPU, or an unknown inventory) gives an empty tuple."""
    if not worker_gpus:
        return ()
    tp = tensor_parallel_size or 1
    if tp > len(worker_gpus):
        raise ValueError(f"tensor_parallel_size={tp} needs more GPUs than this worker owns: {list(worker_gpus)}")
    return tuple(worker_gpus[:tp])


@dataclass(frozen=True)
class WorkerPlan:
    """The workers of this host: one GPU group each (empty groups: unpinned), the GPUs left idle,
    and a line for the log saying why the count is what it is."""

    groups: tuple[tuple[int, ...], ...]
    idle: tuple[int, ...]
    note: str

    @property
    def workers(self) -> int:
        return len(self.groups)


def plan_workers(*, device: str, workers: int, gpu_ids: Sequence[int], tp_choices: Sequence[int],
                 single_writer: bool, storage: str = "") -> WorkerPlan:
    """Decide the workers of this host.

    Args:
        device: ``hardware.device`` (cuda | cpu).
        workers: ``study.workers`` (0: as many as the GPUs allow).
        gpu_ids: the inventory (:func:`gpu_inventory`); empty: unknown.
        tp_choices: the search space's tensor-parallel sizes; the largest sets a worker's GPU count.
        single_writer: the storage holds one writer at a time (SQLite).
        storage: the storage URL, for messages.

    Raises:
        ConfigError: more than one worker asked for where that cannot work (CPU backend, SQLite,
            no GPU inventory, not enough GPUs).
    """
    if device != "cuda":
        if workers > 1:
            raise ConfigError(f"study.workers={workers} with hardware.device={device}: parallel CPU servers would "
                              f"share the cores and distort each other's measurements. Run one worker per host "
                              f"(study.workers=1) and more hosts on one PostgreSQL study (docs/fleet.md).")
        return WorkerPlan(((),), (), "one worker (CPU backend)")
    per = max(tp_choices) if tp_choices else 1
    if not gpu_ids:
        if workers > 1:
            raise ConfigError(f"study.workers={workers}: no GPU inventory to split (nvidia-smi listed none, and "
                              f"CUDA_VISIBLE_DEVICES holds no GPU indexes). Name the GPUs: hardware.gpu_ids=[0,1,2,3].")
        return WorkerPlan(((),), (), "one worker; GPUs not pinned (no GPU inventory)")
    groups = partition_gpus(gpu_ids, per, workers)
    note = f"{len(groups)} worker(s) x {per} GPU(s) (largest tensor_parallel_size {per})"
    if len(groups) > 1 and single_writer:
        if workers > 1:
            raise ConfigError(
                f"study.workers={workers} runs {workers} trials at once, but study.storage={storage or 'sqlite'} "
                f"is a SQLite file, which holds one writer at a time. Put the study in PostgreSQL "
                f"(study.storage=postgresql://user:password@host:5432/db; see docs/fleet.md), or set "
                f"study.workers=1.")
        groups = groups[:1]
        note = (f"1 worker x {per} GPU(s): study.workers=0 would run {len(partition_gpus(gpu_ids, per, 0))} here, but "
                f"SQLite holds one writer; use PostgreSQL for parallel trials (docs/fleet.md)")
    used = {g for grp in groups for g in grp}
    return WorkerPlan(tuple(groups), tuple(g for g in gpu_ids if g not in used), note)
