"""A stage trained by several processes (its params `nproc` per host x `nnodes` hosts).

The runner starts PyTorch's elastic launcher (`python -m torch.distributed.run`) on this module; every
rank runs the stage's own code (`tasks.<stage>.run`) in a context like the runner's, joins the process
group and trains its share of every batch (`tlpipe.training.distributed`). The first rank of each host writes
the outputs where the runner expects them and reports through a file of events, which the runner
passes on to its observers as they come; the stage's metrics come back in a file.

Several hosts: each runs the same `tlpipe run` with TLPIPE_RDZV_ENDPOINT (host:port of the host with
node rank 0, reachable from the others) and its own TLPIPE_NODE_RANK (0 on that host, 1.. elsewhere);
every host ends with the same outputs.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterator

from runner.context import StageContext
from runner.events import Events, StageRun
from runner.spec import StageSpec, stage_folders

ENDPOINT_VARIABLE = "TLPIPE_RDZV_ENDPOINT"
NODE_VARIABLE = "TLPIPE_NODE_RANK"


def shape(params: dict) -> tuple[int, int]:
    """(processes per host, hosts) of a stage's params (1, 1 when it has none)."""
    return int(params.get("nproc", 1)), int(params.get("nnodes", 1))


def launcher_arguments(nproc: int, nnodes: int) -> list[str]:
    """torch.distributed.run's arguments: a standalone group on one host; on several, a static
    rendezvous at TLPIPE_RDZV_ENDPOINT as node TLPIPE_NODE_RANK (ValueError when they are missing or bad)."""
    if nnodes == 1:
        return ["--standalone", f"--nproc_per_node={nproc}"]
    endpoint, node = os.environ.get(ENDPOINT_VARIABLE, ""), os.environ.get(NODE_VARIABLE, "0")
    host, _, port = endpoint.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"nnodes={nnodes} needs {ENDPOINT_VARIABLE}=host:port (the host of node rank 0), "
                         f"got {endpoint!r}")
    if not node.isdigit() or int(node) >= nnodes:
        raise ValueError(f"{NODE_VARIABLE}={node!r} must be a node rank in 0..{nnodes - 1}")
    return [f"--nnodes={nnodes}", f"--nproc_per_node={nproc}", f"--node_rank={node}",
            f"--master_addr={host}", f"--master_port={port}"]


def check(stages, params: dict[str, dict], device: str) -> None:
    """Before any stage runs: every stage that trains on several processes can start them (its
    rendezvous variables; on CUDA, a GPU for each process of this host)."""
    for spec in stages:
        nproc, nnodes = shape(params.get(spec.name, {}))
        if nproc * nnodes == 1:
            continue
        try:
            launcher_arguments(nproc, nnodes)
        except ValueError as exc:
            raise ValueError(f"params/{spec.name}.yaml: {exc}") from None
        if device.startswith("cuda"):
            import torch

            if nproc > torch.cuda.device_count():
                raise ValueError(f"params/{spec.name}.yaml: nproc={nproc} processes on CUDA, one per GPU, but torch "
                                 f"sees {torch.cuda.device_count()} GPU(s) here")


def run_stage(module, ctx: StageContext, run: StageRun, workspace, events: Events) -> dict:
    """`module.run(ctx)`, in this process or, when the params ask for several, in the launcher's."""
    nproc, nnodes = shape(run.params)
    if nproc * nnodes == 1:
        return module.run(ctx)
    arguments = launcher_arguments(nproc, nnodes)
    with tempfile.TemporaryDirectory(prefix=f"tlpipe-{run.spec.name}-ranks-") as scratch:
        job = Path(scratch) / "job.json"
        job.write_text(json.dumps({
            "stage": run.spec.name, "module": run.spec.module, "params": run.params, "device": run.device,
            "key": run.key, "project": str(workspace.project), "store": str(workspace.store), "out": str(ctx.out),
            "upstream": {stage: str(workspace.upstream(stage)) for stage in stage_folders(workspace.project)},
            "checkpoints": str(workspace.checkpoints(run.spec.name, run.key)),
            "events": str(Path(scratch) / "events.jsonl"), "metrics": str(Path(scratch) / "metrics.json"),
        }))
        log = Path(scratch) / "ranks.log"
        with open(log, "w") as output, _launched(
                [sys.executable, "-m", "torch.distributed.run", *arguments, "-m", "runner.ranks", str(job)],
                output) as process:
            _follow(Path(scratch) / "events.jsonl", process, run, events)
        if process.returncode:
            lines = [line for line in log.read_text().splitlines() if line.strip()]
            cause = next((line for line in reversed(lines) if "Error" in line), lines[-1] if lines else "")
            raise RuntimeError(f"{run.spec.name}: its {nproc * nnodes} training processes failed "
                               f"(exit {process.returncode}): {cause.strip()}")
        return json.loads((Path(scratch) / "metrics.json").read_text())


@contextlib.contextmanager
def _launched(command: list[str], output) -> Iterator[subprocess.Popen]:
    """The launcher, stopped with this process: SIGTERM on an exception or interrupt here, and by the
    kernel when this process dies (the launcher then stops its workers)."""
    from runner.processes import die_with_parent

    process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT, preexec_fn=die_with_parent)
    try:
        yield process
    except BaseException:
        process.send_signal(signal.SIGTERM)
        process.wait()
        raise


def _follow(path: Path, process: subprocess.Popen, run: StageRun, events: Events) -> None:
    """Passes the ranks' events on as they are written, until the launcher exits."""
    done = 0
    while True:
        finished = process.poll() is not None
        if path.is_file():
            lines = path.read_text().splitlines()
            complete = lines if finished else lines[:-1]  # the last line may be half written
            for line in complete[done:]:
                kind, arguments = json.loads(line)
                events.emit(kind, run, *arguments)
            done = max(done, len(complete))
        if finished:
            return
        time.sleep(0.2)


class _EventFile(Events):
    """What a rank's stage reports, as JSON lines for the runner of its host (written by the host's first rank)."""

    def __init__(self, path: str | None):
        super().__init__()
        self.path = path

    def emit(self, hook: str, run, *arguments) -> None:
        if self.path is not None:
            with open(self.path, "a") as fh:
                fh.write(json.dumps([hook, list(arguments)], default=str) + "\n")


class _Workspace:
    """The runner's workspace as the job describes it: the same upstream folders, store and checkpoints."""

    def __init__(self, job: dict):
        self.project, self.store, self.job = Path(job["project"]), Path(job["store"]), job
        self.outcomes: dict = {}

    def upstream(self, stage: str) -> Path:
        return Path(self.job["upstream"][stage])

    def locate(self, rel: str) -> Path:
        return self.project / rel

    def checkpoints(self, stage: str, key: str) -> Path:
        return Path(self.job["checkpoints"])


def _rank_main(job_path: str) -> None:
    """In each rank: joins the group, runs the stage's code; the first rank of each host writes the
    outputs, the events and the metrics for its host's runner (the others write to a folder of their own)."""
    import importlib

    import torch

    from tlpipe.training import distributed
    from tlpipe import io
    from runner.processes import die_with_parent

    die_with_parent()  # the launcher's agent: a rank never outlives it (nor, through it, the stage's run)
    job = json.loads(Path(job_path).read_text())
    device_type = torch.device(job["device"]).type
    ranks, _ = distributed.start(device_type)
    try:
        with tempfile.TemporaryDirectory(prefix="tlpipe-rank-") as own:
            out = Path(job["out"]) if ranks.writer else Path(own)
            spec = StageSpec(job["stage"], "", (), {}, ())
            run = StageRun(spec, job["params"], key=job["key"], deps={}, device=job["device"])
            ctx = StageContext(run, out, _Workspace(job), _EventFile(job["events"] if ranks.writer else None))
            metrics = importlib.import_module(job["module"]).run(ctx)
            if ranks.writer:
                io.write_json(Path(job["metrics"]), metrics)
    finally:
        distributed.stop()


if __name__ == "__main__":
    _rank_main(sys.argv[1])
