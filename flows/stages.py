"""A stage of a flow run as a Prefect task: the stage runner inside, the GPU's slot around it."""

from __future__ import annotations

import contextlib
import os

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.client.schemas.objects import State
from prefect.states import Completed

from runner import ranks
from runner.core import run_stage
from runner.events import RAN
from runner.spec import StageSpec


@task(cache_policy=NO_CACHE, persist_result=False)
def stage_task(spec: StageSpec, params: dict, workspace, *, device: str, observers: list, refresh: bool):
    """One stage through the runner; a reused stage ends in Prefect's `Cached` state, as the UI shows it."""
    outcome = run_stage(spec, params, workspace, device=device, observers=observers, refresh=refresh)
    if outcome.status == RAN:
        return outcome.summary()
    return Completed(name="Cached", data=outcome.summary(),
                     message=f"{outcome.status}: outputs of run {outcome.produced_by}, key {outcome.key[:12]}")


def gpu_index(device: str) -> int | None:
    """The physical GPU a CUDA device name means (through CUDA_VISIBLE_DEVICES); None off CUDA."""
    kind, _, index = device.partition(":")
    if kind != "cuda":
        return None
    visible = [v.strip() for v in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if v.strip()]
    local = int(index or 0)
    return int(visible[local]) if local < len(visible) and visible[local].isdigit() else local


def accelerator_slot(spec: StageSpec, device: str, processes: int = 1):
    """The 1-slot global concurrency limits of the GPUs a stage marked `meta.accelerator: gpu` trains
    on with CUDA, held while it runs (two workers on one GPU take turns): its device's, or with
    `processes` training processes (`nproc`) the first `processes` GPUs this worker sees, all at once.
    Nothing for CPU stages or devices."""
    from prefect.concurrency.sync import concurrency

    from flows.deploy import gpu_slot

    kind, _, first = device.partition(":")
    if gpu_index(device) is None or spec.meta.get("accelerator") != "gpu":
        return contextlib.nullcontext()
    devices = [device] if processes == 1 else [f"{kind}:{int(first or 0) + k}" for k in range(processes)]
    return concurrency([gpu_slot(gpu_index(d)) for d in devices], occupy=1)


def run_one(spec: StageSpec, params: dict, workspace, *, device: str, observers: list, refresh: bool,
            slot: bool = True, after: list[State] = ()) -> State:
    """The stage as a Prefect task named after it, holding its GPU slot when it trains on CUDA; returns
    its final state (`.result()` is the stage's summary, and raises when the stage failed). `after`
    holds the states of its upstream stages: Prefect records them as the task run's inputs, which the
    UI draws as the edges of the run graph."""
    configured = stage_task.with_options(name=spec.name, task_run_name=spec.name)
    with accelerator_slot(spec, device, ranks.shape(params)[0]) if slot else contextlib.nullcontext():
        state = configured(spec, params, workspace, device=device, observers=observers, refresh=refresh,
                           return_state=True, wait_for=list(after) or None)
    state.result()  # a failed stage ends the run here
    return state
