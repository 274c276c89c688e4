"""GPU agents: work pools and one concurrency slot per GPU, on Prefect's test harness (real API)."""

import contextlib
import threading
import time

import pytest

from flows import deploy
from flows.stages import accelerator_slot
from runner.spec import StageSpec

pytestmark = pytest.mark.integration

TRAIN = StageSpec("pretrain", "python -m tasks.pretrain", (), {}, (), meta={"accelerator": "gpu"})
PREPARE = StageSpec("prepare", "python -m tasks.prepare", (), {}, (), meta={"accelerator": "cpu"})


def test_pools_and_gpu_limits_are_created_once(prefect_harness):
    from prefect.client.orchestration import get_client

    first = deploy.ensure_pools_and_limits(2)
    again = deploy.ensure_pools_and_limits(2)
    assert again == {"pools": [], "limits": []}
    with get_client(sync_client=True) as client:
        pools = {p.name: p.type for p in client.read_work_pools()}
        limits = {limit.name: limit.limit for limit in client.read_global_concurrency_limits()}
    assert {pools[p] for p in deploy.POOLS} == {"process"}
    assert {name: limits[name] for name in ("tlpipe-gpu-0", "tlpipe-gpu-1")} == {"tlpipe-gpu-0": 1, "tlpipe-gpu-1": 1}
    assert set(first["limits"]) <= {"tlpipe-gpu-0", "tlpipe-gpu-1"}


def test_training_stages_on_one_gpu_take_turns(prefect_harness, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")  # a worker pinned to the second GPU: cuda:0 is GPU 1
    deploy.ensure_pools_and_limits(2)
    spans = []

    def stage():
        with accelerator_slot(TRAIN, "cuda:0"):
            start = time.monotonic()
            time.sleep(0.5)
            spans.append((start, time.monotonic()))

    threads = [threading.Thread(target=stage) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    (a_start, a_end), (b_start, b_end) = sorted(spans)
    assert b_start >= a_end  # the second waited for the slot


@pytest.mark.parametrize("spec, device", [(PREPARE, "cuda:0"), (TRAIN, "cpu"), (TRAIN, "mps")])
def test_cpu_stages_and_devices_take_no_slot(spec, device):
    assert isinstance(accelerator_slot(spec, device), contextlib.nullcontext)


def test_a_stage_of_two_processes_holds_both_gpus(prefect_harness, monkeypatch):
    """`nproc: 2` trains on the worker's first two GPUs: a one-process stage on the second waits for it."""
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    deploy.ensure_pools_and_limits(2)
    spans = {}

    def stage(name, device, processes, delay):
        time.sleep(delay)
        with accelerator_slot(TRAIN, device, processes):
            start = time.monotonic()
            time.sleep(0.5)
            spans[name] = (start, time.monotonic())

    threads = [threading.Thread(target=stage, args=("two", "cuda", 2, 0.0)),
               threading.Thread(target=stage, args=("one", "cuda:1", 1, 0.2))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert spans["one"][0] >= spans["two"][1]  # GPU 1 was held by the two-process stage
