"""Checkpoints of training loops: everything a loop needs to go on where it stopped, so that a run
interrupted and resumed ends with the weights an uninterrupted run ends with.

A checkpoint is one safetensors file: the tensors (model weights, optimizer moments, queues, the
states of the random generators) and, in its metadata, a JSON document of everything else (epoch,
batch, scheduler, counters, the epochs' metrics). No pickle. It is written to a temporary file and
renamed, so a reader finds the last complete checkpoint or none.

A loop resumes mid-epoch by drawing the epoch's order from the data generator's state at the start
of the epoch (kept in the checkpoint) and skipping the batches already done (`runtime.iter_batches`'
`skip`).
"""

from __future__ import annotations

import json
import os
import random
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from tlpipe.training import distributed
from tlpipe.training.distributed import Ranks

FILE = "checkpoint.safetensors"


class Checkpoint:
    """Where a loop keeps its checkpoint, and how often it saves one within an epoch.

    Args:
        folder: the checkpoint's folder (created on the first save).
        every_minutes: also save within an epoch once this many minutes passed since the last save;
            None saves at the ends of epochs only.
        clock: seconds, for the interval (tests pass their own).
        on_resume: told (epoch, batches of it done) when a loop takes this checkpoint up, before the
            epochs it holds are reported again.
    """

    def __init__(self, folder: str | os.PathLike, every_minutes: float | None = None,
                 clock: Callable[[], float] = time.monotonic, file: str = FILE,
                 on_resume: Callable[[int, int], None] | None = None):
        self.folder, self.every_minutes, self.clock, self.file = Path(folder), every_minutes, clock, file
        self.on_resume = on_resume
        self._last = clock()

    @property
    def path(self) -> Path:
        return self.folder / self.file

    def of_rank(self, rank: int) -> "Checkpoint":
        """The file of process `rank` of a process group (rank 0's is this one): the others keep what is
        their own (their random generators, their share of the running sums)."""
        return self if rank == 0 else Checkpoint(self.folder, self.every_minutes, self.clock, f"rank-{rank}.{FILE}")

    def due(self) -> bool:
        """Whether a save within the epoch is due."""
        return self.every_minutes is not None and self.clock() - self._last >= 60.0 * self.every_minutes

    def save(self, tensors: dict[str, torch.Tensor], document: dict) -> None:
        """Writes the checkpoint atomically (tensors are copied to the CPU)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        temporary = self.folder / f".{self.file}.tmp-{os.getpid()}"
        save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(temporary),
                  metadata={"document": json.dumps(document)})
        os.replace(temporary, self.path)
        self._last = self.clock()

    def load(self) -> tuple[dict[str, torch.Tensor], dict] | None:
        """(tensors, document) of the last checkpoint, or None when there is none."""
        if not self.path.is_file():
            return None
        with safe_open(str(self.path), framework="pt") as f:
            document = json.loads(f.metadata()["document"])
        return load_file(str(self.path)), document


class LoopState:
    """A training loop's resumable state: its modules (their buffers hold queues and BatchNorm
    statistics), optimizer, scheduler, generators and `values` (accumulators: tensors or JSON-able
    numbers), with the epoch and batch reached.

    The loop calls `resume()` once before its first epoch, `begin_epoch()` at the start of each epoch,
    `step_done(batch)` after each optimizer step (it saves when the checkpoint's interval is due) and
    `end_epoch(metrics)` after each epoch (it saves). Without a checkpoint every call is cheap.

    In a process group (`ranks`), every rank saves at the same step (rank 0's clock decides): rank 0
    the whole state, the others what is theirs (generators, running sums: `Checkpoint.of_rank`). A
    rank resumes from rank 0's file and its own; files of different steps (a crash between two
    writes) are not resumed from.
    """

    def __init__(self, checkpoint: Checkpoint | None, *, modules: dict[str, nn.Module],
                 optimizer: torch.optim.Optimizer, schedule, data_generator: torch.Generator,
                 generators: dict[str, torch.Generator] | None = None, values: dict | None = None,
                 ranks: Ranks = Ranks()):
        self.checkpoint, self.modules, self.optimizer, self.schedule = checkpoint, modules, optimizer, schedule
        self.ranks = ranks
        self.data_generator, self.generators = data_generator, generators or {}
        self.values = values if values is not None else {}
        self.epoch, self.batch, self.history = 1, 0, []
        self._resumed_at: tuple[int, int] | None = None
        self._epoch_start_data = data_generator.get_state()

    def resume(self, on_metrics: Callable[[int, dict], None] | None = None) -> tuple[int, int]:
        """Loads the checkpoint, if any, into the loop's objects; the epochs it holds are told to
        `on_metrics` again (a resumed run's history is complete). Returns (first epoch, batches of it
        already done)."""
        found = self._load()
        if found is None:
            return 1, 0
        (tensors, document), (own, own_document) = found
        for name, module in self.modules.items():
            module.load_state_dict(_prefixed(tensors, f"module.{name}."))
        self.optimizer.load_state_dict(_optimizer_state(tensors, document["optimizer"]))
        self.schedule.load_state_dict(document["schedule"])
        for name, value in own_document["values"].items():
            if isinstance(self.values.get(name), torch.Tensor):
                self.values[name].copy_(own[f"value.{name}"])  # in place: the loop holds it
            else:
                self.values[name] = value
        for name, generator in self.generators.items():
            generator.set_state(own[f"generator.{name}"])
        _set_global_rng(own, own_document["rng"])
        self._epoch_start_data = tensors["generator.data_at_epoch_start"]
        self.data_generator.set_state(self._epoch_start_data)  # the epoch's order is drawn again
        self.epoch, self.batch, self.history = document["epoch"], document["batch"], document["history"]
        self._resumed_at = (self.epoch, self.batch)
        if self.checkpoint.on_resume is not None and self.ranks.writer:
            self.checkpoint.on_resume(self.epoch, self.batch)
        if on_metrics is not None and self.ranks.writer:
            for row in self.history:
                on_metrics(row["epoch"], {k: v for k, v in row.items() if k != "epoch"})
        return self.epoch, self.batch

    def _load(self):
        """((tensors, document) of rank 0, those of this rank), or None: no checkpoint, files of different
        steps, or a rank that cannot see them all (the ranks agree before any resumes)."""
        if self.checkpoint is None:
            return None
        found = [self.checkpoint.of_rank(rank).load() for rank in range(self.ranks.world)]
        usable = all(f is not None for f in found) and len({(d["epoch"], d["batch"]) for _, d in found}) == 1
        # on several hosts without a shared folder some ranks do not see the files: then all start afresh
        if not distributed.agree(usable, every=True):
            return None
        return found[0], found[self.ranks.rank]

    def resumed(self) -> dict:
        """{"resumed_from_epoch", "resumed_from_batch"} (batches of that epoch already done) when the
        loop resumed from a checkpoint, else {}."""
        return {} if self._resumed_at is None else \
            {"resumed_from_epoch": self._resumed_at[0], "resumed_from_batch": self._resumed_at[1]}

    def last_metrics(self) -> dict:
        """The metrics of the last epoch done (restored ones included), without the epoch number."""
        return {k: v for k, v in self.history[-1].items() if k != "epoch"} if self.history else {}

    def begin_epoch(self, epoch: int) -> None:
        if epoch != self.epoch or not self.batch:  # not the epoch resumed mid-way
            self._epoch_start_data = self.data_generator.get_state()
        self.epoch = epoch

    def step_done(self, batch: int) -> None:
        """After batch `batch` (counted from 1) of the current epoch."""
        self.batch = batch
        if self.checkpoint is not None and distributed.agree(self.ranks.main and self.checkpoint.due()):
            self.save()

    def end_epoch(self, metrics: dict) -> None:
        self.history.append({"epoch": self.epoch, **metrics})
        self.epoch, self.batch = self.epoch + 1, 0
        self._epoch_start_data = self.data_generator.get_state()
        if self.checkpoint is not None:
            self.save()

    def save(self) -> None:
        tensors = {f"generator.{name}": g.get_state() for name, g in self.generators.items()}
        rng = _global_rng(tensors)
        values = {}
        for name, value in self.values.items():
            if isinstance(value, torch.Tensor):
                tensors[f"value.{name}"] = value
                values[name] = None
            else:
                values[name] = value
        document = {"epoch": self.epoch, "batch": self.batch, "values": values, "rng": rng}
        if not self.ranks.main:  # the rest is the same on every rank: rank 0 keeps it
            self.checkpoint.of_rank(self.ranks.rank).save(tensors, document)
            return
        tensors.update({f"module.{name}.{k}": v for name, module in self.modules.items()
                        for k, v in module.state_dict().items()})
        optimizer = self.optimizer.state_dict()
        for index, state in optimizer["state"].items():
            tensors.update({f"optimizer.{index}.{k}": v for k, v in state.items() if isinstance(v, torch.Tensor)})
        tensors["generator.data_at_epoch_start"] = self._epoch_start_data
        self.checkpoint.save(tensors, {
            **document, "history": self.history, "schedule": self.schedule.state_dict(),
            "optimizer": {"param_groups": optimizer["param_groups"],
                          "state": {str(i): {k: v for k, v in s.items() if not isinstance(v, torch.Tensor)}
                                    for i, s in optimizer["state"].items()}},
        })


def _prefixed(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}


def _optimizer_state(tensors: dict[str, torch.Tensor], document: dict) -> dict:
    state = {}
    for index, numbers in document["state"].items():
        state[int(index)] = {**numbers, **_prefixed(tensors, f"optimizer.{index}.")}
    return {"state": state, "param_groups": document["param_groups"]}


def _global_rng(tensors: dict[str, torch.Tensor]) -> dict:
    """Puts torch's generator states into `tensors`; returns numpy's and python's as JSON."""
    tensors["rng.torch"] = torch.get_rng_state()
    if torch.cuda.is_available():
        for i, state in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = state
    kind, keys, position, has_gauss, gauss = np.random.get_state()
    tensors["rng.numpy"] = torch.from_numpy(keys.astype(np.int64))
    version, python_state, python_gauss = random.getstate()
    return {"numpy": [kind, int(position), int(has_gauss), float(gauss)],
            "python": [version, list(python_state), python_gauss]}


def _set_global_rng(tensors: dict[str, torch.Tensor], document: dict) -> None:
    torch.set_rng_state(tensors["rng.torch"])
    cuda = sorted((int(k.rsplit(".", 1)[1]), v) for k, v in tensors.items() if k.startswith("rng.cuda."))
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([state for _, state in cuda])
    kind, position, has_gauss, gauss = document["numpy"]
    np.random.set_state((kind, tensors["rng.numpy"].numpy().astype(np.uint32), position, has_gauss, gauss))
    version, python_state, python_gauss = document["python"]
    random.setstate((version, tuple(python_state), python_gauss))
