"""GPU partitioning across parallel workers: pure functions, plain values."""

from __future__ import annotations

import pytest

from optimizer.core.errors import ConfigError
from optimizer.trial.gpus import gpu_inventory, partition_gpus, plan_workers, trial_gpus


@pytest.mark.parametrize("ids, per, workers, expected", [
    ([0, 1, 2, 3], 1, 0, [(0,), (1,), (2,), (3,)]),
    ([0, 1, 2, 3], 2, 0, [(0, 1), (2, 3)]),
    ([0, 1, 2, 3], 4, 0, [(0, 1, 2, 3)]),
    ([0, 1, 2, 3, 4], 2, 0, [(0, 1), (2, 3)]),  # GPU 4 stays idle
    ([0, 1, 2, 3], 1, 2, [(0,), (1,)]),
    ([4, 5, 6, 7], 2, 1, [(4, 5)]),
    ([3, 1, 2, 0], 2, 0, [(3, 1), (2, 0)]),  # the given order is kept (CUDA_VISIBLE_DEVICES order)
])
def test_partition_gives_disjoint_consecutive_groups(ids, per, workers, expected):
    groups = partition_gpus(ids, per, workers)
    assert groups == expected
    flat = [g for grp in groups for g in grp]
    assert len(flat) == len(set(flat))


@pytest.mark.parametrize("ids, per, workers", [([0, 1, 2], 2, 2), ([0], 2, 0), ([], 1, 0), ([0, 1], 1, 3)])
def test_partition_refuses_more_gpus_than_the_host_has(ids, per, workers):
    with pytest.raises(ConfigError, match="tensor_parallel_size"):
        partition_gpus(ids, per, workers)


def test_partition_refuses_a_gpu_listed_twice():
    with pytest.raises(ConfigError, match="twice"):
        partition_gpus([0, 0, 1], 1, 0)


@pytest.mark.parametrize("group, tp, expected", [
    ((2, 3), 1, (2,)), ((2, 3), 2, (2, 3)), ((2, 3), None, (2,)), ((), 2, ()), ((0, 1, 2, 3), 2, (0, 1)),
])
def test_a_trial_gets_as_many_gpus_as_its_tensor_parallel_size(group, tp, expected):
    assert trial_gpus(group, tp) == expected


def test_a_trial_never_gets_more_gpus_than_its_worker_owns():
    with pytest.raises(ValueError, match="tensor_parallel_size=4"):
        trial_gpus((0, 1), 4)


@pytest.mark.parametrize("configured, visible, detected, expected", [
    ([0, 1, 2, 3], None, [], (0, 1, 2, 3)),  # simulated inventory
    ([5], "0,1", [0, 1, 2], (5,)),  # configured wins
    ([], "2,3", [0, 1, 2, 3], (2, 3)),
    ([], None, [0, 1], (0, 1)),
    ([], "GPU-8f3c1e,GPU-77aa", [0, 1], ()),  # UUIDs: cannot pin by index
    ([], "", [0, 1], ()),
    ([], None, [], ()),
])
def test_inventory_sources_in_order_of_precedence(configured, visible, detected, expected):
    assert gpu_inventory(configured, visible, detected) == expected


def test_four_gpus_with_tp_up_to_two_make_two_workers_of_two():
    plan = plan_workers(device="cuda", workers=0, gpu_ids=[0, 1, 2, 3], tp_choices=[1, 2], single_writer=False)
    assert plan.groups == ((0, 1), (2, 3)) and plan.idle == () and plan.workers == 2


def test_the_largest_tensor_parallel_choice_sets_the_group_size():
    plan = plan_workers(device="cuda", workers=0, gpu_ids=range(8), tp_choices=[4, 1, 2], single_writer=False)
    assert plan.groups == ((0, 1, 2, 3), (4, 5, 6, 7))


def test_explicit_worker_count_leaves_the_rest_idle():
    plan = plan_workers(device="cuda", workers=1, gpu_ids=[0, 1, 2], tp_choices=[1], single_writer=False)
    assert plan.groups == ((0,),) and plan.idle == (1, 2)


def test_sqlite_refuses_explicit_parallel_workers_pointing_to_postgresql():
    with pytest.raises(ConfigError, match="postgresql://") as e:
        plan_workers(device="cuda", workers=2, gpu_ids=[0, 1], tp_choices=[1], single_writer=True,
                     storage="sqlite:///studies/x.db")
    assert "study.workers=2" in str(e.value) and "sqlite:///studies/x.db" in str(e.value)


def test_sqlite_with_auto_workers_runs_one_and_says_why():
    plan = plan_workers(device="cuda", workers=0, gpu_ids=[0, 1, 2, 3], tp_choices=[1], single_writer=True)
    assert plan.groups == ((0,),) and "PostgreSQL" in plan.note


def test_one_worker_on_sqlite_is_fine():
    plan = plan_workers(device="cuda", workers=1, gpu_ids=[0, 1], tp_choices=[2], single_writer=True)
    assert plan.groups == ((0, 1),)


@pytest.mark.parametrize("workers", [0, 1])
def test_cpu_backend_runs_one_unpinned_worker(workers):
    plan = plan_workers(device="cpu", workers=workers, gpu_ids=[], tp_choices=[1], single_writer=True)
    assert plan.groups == ((),)


def test_cpu_backend_refuses_parallel_workers():
    with pytest.raises(ConfigError, match="share the cores"):
        plan_workers(device="cpu", workers=2, gpu_ids=[], tp_choices=[1], single_writer=False)


def test_unknown_inventory_allows_one_unpinned_worker_only():
    assert plan_workers(device="cuda", workers=0, gpu_ids=[], tp_choices=[1], single_writer=False).groups == ((),)
    with pytest.raises(ConfigError, match="hardware.gpu_ids"):
        plan_workers(device="cuda", workers=2, gpu_ids=[], tp_choices=[1], single_writer=False)
