"""Data-parallel training over several processes, devices and hosts with `torch.distributed`.

The processes are started by PyTorch's elastic launcher (`python -m torch.distributed.run`), which
sets RANK, WORLD_SIZE, LOCAL_RANK and the rendezvous; `start` joins the process group (NCCL on CUDA,
gloo elsewhere). Every rank reads the same data and draws the same order; each takes its share of
every global batch (`runtime.iter_batches`' `shard`), and `DistributedDataParallel` averages the
gradients, so a step sees the declared global batch. The first process of each host validates,
reports and writes the outputs; rank 0 keeps the checkpoint.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn


@dataclass(frozen=True)
class Ranks:
    """This process's place: `rank` of `world` processes, `local` on its host."""

    rank: int = 0
    world: int = 1
    local: int = 0

    @property
    def main(self) -> bool:
        """Whether this process keeps the group's checkpoint (rank 0)."""
        return self.rank == 0

    @property
    def writer(self) -> bool:
        """Whether this process validates, reports and writes the outputs: the first of its host, so that
        every host of the group ends with the outputs (the ranks hold the same weights)."""
        return self.local == 0


def rank_seed(seed: int, ranks: Ranks) -> int:
    """The seed of a generator each rank draws from on its own (augmentations): `seed` on rank 0."""
    return seed + 7919 * ranks.rank


def current() -> Ranks:
    """This process's ranks: those of the joined process group, else a single process."""
    if not (dist.is_available() and dist.is_initialized()):
        return Ranks()
    return Ranks(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))


def start(device_type: str) -> tuple[Ranks, torch.device]:
    """Joins the process group the launcher describes (environment), on NCCL for CUDA and gloo
    otherwise; returns the ranks and this process's device (its GPU, by local rank, on CUDA)."""
    local = int(os.environ.get("LOCAL_RANK", 0))
    if device_type == "cuda":
        torch.cuda.set_device(local)
        device = torch.device("cuda", local)
    else:
        device = torch.device(device_type)
    dist.init_process_group(backend="nccl" if device_type == "cuda" else "gloo")
    return current(), device


def stop() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def wrap(model: nn.Module, device: torch.device, ranks: Ranks) -> nn.Module:
    """`model` for the training forward: itself in one process, else in `DistributedDataParallel`
    (which starts from rank 0's weights and averages gradients over the ranks). On CUDA, BatchNorm
    layers become SyncBatchNorm (statistics of the global batch); gloo has no SyncBatchNorm, so on CPU
    each rank normalises its share of the batch."""
    if ranks.world == 1:
        return model
    if device.type == "cuda":
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    index = device.index if device.index is not None else torch.cuda.current_device() if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=None if index is None else [index])


def agree(flag: bool, every: bool = False) -> bool:
    """Whether any rank (`every`: every rank) says so; every rank calls it at the same point. The flag
    itself in one process."""
    if current().world == 1:
        return flag
    decided = torch.tensor([int(flag)], device="cuda" if dist.get_backend() == "nccl" else "cpu")
    dist.all_reduce(decided, op=dist.ReduceOp.MIN if every else dist.ReduceOp.MAX)
    return bool(decided.item())


def sum_over_ranks(*values: torch.Tensor) -> list[torch.Tensor]:
    """Each tensor summed over the ranks (a copy; the inputs are left as they are)."""
    out = [v.detach().clone() for v in values]
    if current().world > 1:
        for v in out:
            dist.all_reduce(v)
    return out


def join(model: nn.Module, device: torch.device, batch_size: int) -> tuple[Ranks, nn.Module]:
    """What a training loop needs in a process group (or alone): this process's ranks and the module
    its training forward calls (`wrap`), after checking that the batch splits evenly over the ranks."""
    ranks = current()
    check_batch(batch_size, ranks.world)
    return ranks, wrap(model, device, ranks)


def share_buffers(module: nn.Module) -> None:
    """Rank 0's buffers (BatchNorm's running statistics) on every rank. DDP sends them before each
    forward, but each rank's own batch then moves them again: shared after an epoch, every rank
    validates and saves the same model."""
    if current().world == 1:
        return
    for buffer in module.buffers():
        dist.broadcast(buffer.data, src=0)


def gather(tensor: torch.Tensor) -> torch.Tensor:
    """Every rank's `tensor` [n, ...] joined in rank order [world * n, ...] (the global batch, as one
    process would hold it). Gradients flow back to each rank's own part (every rank's loss over the
    whole adds to it, which DDP's averaging then divides again)."""
    if current().world == 1:
        return tensor
    if tensor.requires_grad:
        from torch.distributed.nn.functional import all_gather

        return torch.cat(all_gather(tensor))
    parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, tensor.contiguous())
    return torch.cat(parts)


def check_batch(batch_size: int, world: int) -> int:
    """The per-rank batch: the global batch divided evenly over the ranks (ValueError otherwise)."""
    if batch_size % world:
        raise ValueError(f"batch_size={batch_size} must be a multiple of the {world} processes (nproc x nnodes)")
    return batch_size // world
