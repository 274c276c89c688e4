"""The deployments of prefect.yaml: served from one process (`tlpipe serve`) or registered for the
`cpu` and `gpu` work pools (`tlpipe deploy`). prefect.yaml is the one declaration of both.

Schedules need a Prefect server (the ephemeral API never schedules anything): both commands use
PREFECT_API_URL; `tlpipe serve` starts a server of its own on 127.0.0.1 when none is set.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tlpipe import io

DEPLOYMENT_FILE = "prefect.yaml"
POOLS = ("cpu", "gpu")  # process work pools; GPU workers start with CUDA_VISIBLE_DEVICES=<one GPU>
FLOWS = {"flows/retrain.py:retrain": "flows.retrain:retrain", "flows/pipeline.py:pipeline": "flows.pipeline:pipeline",
         "flows/agents.py:stage": "flows.agents:stage"}


def gpu_slot(index: int) -> str:
    """The global concurrency limit (1 slot) that keeps one training stage on GPU `index` at a time."""
    return f"tlpipe-gpu-{index}"


def load_deployments(project: Path, names: list[str] | None = None) -> list[dict]:
    """The deployments declared in the project's prefect.yaml (those named in `names`, if given)."""
    path = Path(project) / DEPLOYMENT_FILE
    if not path.is_file():
        raise ValueError(f"{path} not found: it declares the deployments (see the README, 'Run on a schedule')")
    declared = (io.read_yaml(path) or {}).get("deployments") or []
    for d in declared:
        if d.get("entrypoint") not in FLOWS:
            raise ValueError(f"{path}: deployment {d.get('name')!r} has entrypoint {d.get('entrypoint')!r}; "
                             f"tlpipe flows are {', '.join(FLOWS)}")
    known = [d["name"] for d in declared]
    unknown = sorted(set(names or ()) - set(known))
    if unknown:
        raise ValueError(f"no deployment {', '.join(unknown)} in {path}; deployments: {', '.join(known)}")
    return [d for d in declared if not names or d["name"] in names]


def schedules_of(declared: dict, interval: float | None = None) -> list:
    """Prefect schedules of a declared deployment; `interval` (seconds) replaces them all (a
    deployment without schedules, such as a stage for agents, stays without)."""
    from prefect.schedules import Cron, Interval

    if interval is not None:
        return [Interval(interval)] if declared.get("schedules") else []
    made = []
    for s in declared.get("schedules") or []:
        common = {"timezone": s.get("timezone"), "active": s.get("active", True)}
        if "cron" in s:
            made.append(Cron(s["cron"], **common))
        elif "interval" in s:
            made.append(Interval(s["interval"], **common))
        else:
            raise ValueError(f"deployment {declared['name']!r}: a schedule needs `cron` or `interval`, got {s}")
    return made


def _flow(entrypoint: str):
    import importlib

    module, name = FLOWS[entrypoint].split(":")
    return getattr(importlib.import_module(module), name)


def runner_deployments(project: Path, names: list[str] | None = None, interval: float | None = None) -> list:
    """Deployments to serve from this process, with the project folder made absolute."""
    made = []
    for d in load_deployments(project, names):
        parameters = {**(d.get("parameters") or {}), "project": str(Path(project).resolve())}
        made.append(_flow(d["entrypoint"]).to_deployment(
            name=d["name"], description=d.get("description"), tags=d.get("tags"), parameters=parameters,
            schedules=schedules_of(d, interval), concurrency_limit=d.get("concurrency_limit")))
    return made


def serve(project: Path, names: list[str] | None = None, interval: float | None = None) -> None:
    """Serves the deployments until interrupted (SIGTERM/SIGINT pause them and return)."""
    from prefect import serve as prefect_serve

    # One run at a time: runs of one project take turns anyway (the pipeline's project lock).
    prefect_serve(*runner_deployments(project, names, interval), limit=1)


def ensure_pools_and_limits(gpus: int) -> dict:
    """Creates the `cpu` and `gpu` process work pools and one 1-slot concurrency limit per GPU,
    leaving existing ones as they are; returns what was created."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate, WorkPoolCreate
    from prefect.exceptions import ObjectAlreadyExists

    created = {"pools": [], "limits": []}
    with get_client(sync_client=True) as client:
        for pool in POOLS:
            try:
                client.create_work_pool(WorkPoolCreate(name=pool, type="process"))
                created["pools"].append(pool)
            except ObjectAlreadyExists:
                pass
        for index in range(gpus):
            try:
                client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=gpu_slot(index), limit=1))
                created["limits"].append(gpu_slot(index))
            except ObjectAlreadyExists:
                pass
    return created


def deploy(project: Path, names: list[str] | None = None) -> subprocess.CompletedProcess:
    """`prefect deploy` of the declared deployments, run in the project with TLPIPE_PROJECT set."""
    selected = load_deployments(project, names)
    prefect = Path(sys.executable).with_name("prefect")
    command = [str(prefect) if prefect.exists() else "prefect", "--no-prompt", "deploy"]
    for d in selected:
        command += ["--name", d["name"]]
    env = {**os.environ, "TLPIPE_PROJECT": str(Path(project).resolve())}
    return subprocess.run(command, cwd=project, env=env, capture_output=True, text=True)
