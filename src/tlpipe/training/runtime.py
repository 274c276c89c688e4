"""Device, precision, seeding and batching: the few things every training loop shares.

Nothing here keeps state between calls. On CUDA the loops use bf16 autocast, pinned host
memory, non-blocking copies and channels_last conv nets; elsewhere plain fp32 NCHW.
"""

import contextlib
import os
from collections.abc import Iterator

import numpy as np
import torch

from tlpipe.training.devices import PRECISION

DEVICE_NAMES = ("auto", "cpu", "cuda", "cuda:<index>", "mps")


def _mps_available() -> bool:
    return getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()


def resolve_device(name: str = "auto") -> torch.device:
    """Turns a device name into a `torch.device` that exists on this machine.

    Args:
        name: "auto" (cuda > mps > cpu), "cpu", "cuda", "cuda:<index>" or "mps".

    Returns:
        The device.

    Raises:
        ValueError: the name is not one of the options, or names a device this machine lacks.
    """
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps") if _mps_available() else torch.device("cpu")
    kind, _, index = name.partition(":")
    if kind not in ("cpu", "cuda", "mps") or (index and (kind != "cuda" or not index.isdigit())):
        raise ValueError(f"device={name!r} is not one of {', '.join(DEVICE_NAMES)}")
    if kind == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={name!r} is unavailable: torch sees no CUDA device")
    if kind == "cuda" and index and int(index) >= torch.cuda.device_count():
        raise ValueError(f"device={name!r} is unavailable: only {torch.cuda.device_count()} CUDA device(s)")
    if kind == "mps" and not _mps_available():
        raise ValueError(f"device={name!r} is unavailable: torch sees no MPS device")
    return torch.device(name)


def device_settings(device_type: str) -> dict:
    """The performance settings the loops use on a device type ("cpu", "cuda" or "mps").

    Returns:
        dict with `autocast_dtype` (torch dtype or None), `precision` ("bf16"/"fp32"),
        `channels_last`, `pin_memory` and `non_blocking` (bools), `loader_workers` (int).
    """
    cuda = device_type == "cuda"
    return {
        "autocast_dtype": torch.bfloat16 if cuda else None,
        "precision": PRECISION[device_type],
        # NHWC: cuDNN picks tensor-core kernels. Not on CPU: oneDNN trains the tiny ResNets
        # 1.6-1.9x faster in NHWC, but (torch 2.13) its results then vary from run to run and a
        # single-thread run corrupted the heap; reproducible outputs matter more here.
        "channels_last": device_type == "cuda",
        "pin_memory": cuda,
        "non_blocking": cuda,
        # Processes that read batches of a mapped data set ahead of the loop (torch's DataLoader);
        # TLPIPE_LOADER_WORKERS sets the number. On CPU they compete with the training threads for
        # the same cores (bench/scale.py measures it).
        "loader_workers": int(os.environ.get("TLPIPE_LOADER_WORKERS")
                              or (min(4, max((os.cpu_count() or 1) - 1, 0)) if cuda else 0)),
    }


def autocast(device: torch.device) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA (no grad scaler needed for bf16); a no-op context elsewhere."""
    dtype = device_settings(device.type)["autocast_dtype"]
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def seed_everything(seed: int) -> torch.Generator:
    """Seeds torch's global generators (weight init, dropout) on every device.

    Returns:
        A fresh CPU generator seeded with `seed`, for the data order.
    """
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def to_float(pixels: torch.Tensor) -> torch.Tensor:
    """uint8 pixels [..] in 0..255 -> float32 in [-1, 1] (black -> -1, white -> 1)."""
    # always a copy: a float input (or a batch that is a view of the caller's array) is never scaled in place
    return pixels.to(torch.float32, copy=True).mul_(2.0 / 255.0).sub_(1.0)


def prepare_module(module: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """Moves a module to `device` (in place), in channels_last format where that pays (CUDA)."""
    module = module.to(device)
    if device_settings(device.type)["channels_last"]:
        module = module.to(memory_format=torch.channels_last)
    return module


def iter_batches(
    images,
    labels: np.ndarray | torch.Tensor | None = None,
    *,
    batch_size: int,
    device: torch.device,
    generator: torch.Generator | None = None,
    drop_last: bool = False,
    workers: int | None = None,
    skip: int = 0,
    shard: tuple[int, int] = (0, 1),
    augment=None,
    loader: "Loader | None" = None,
    salt: int | None = None,
) -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
    """Yields (float pixels [B, C, H, W] in [-1, 1] on `device`, int64 labels [B] or None).

    Args:
        images: uint8 [N, C, H, W]: an array, or a set read by index (`tlpipe.data.images`), of which only
            the rows of each batch are read.
        labels: int64 [N], or None.
        batch_size: images per batch.
        device: where batches go; uint8 is copied (4x fewer bytes) and scaled there.
        generator: CPU generator; given, the order is shuffled with it (one permutation drawn when
            the iteration starts), else kept.
        drop_last: drop the incomplete last batch (keeps BatchNorm off 1-image batches);
            a set smaller than one batch still yields one batch.
        workers: processes reading batches of a set read by index ahead of the loop (torch's
            DataLoader; the order is the same for any number); None: the device's default.
        skip: batches of this epoch already done: the permutation is drawn as usual (the generator
            ends in the same state) and the iteration starts after them, reading nothing before.
        shard: (rank, processes): this process's share of every batch, for data-parallel training
            (`tlpipe.training.distributed`): every process draws the same order and takes the rank-th of
            `processes` equal parts of each batch of `batch_size` (which they divide); drop_last only.
        augment: a random uint8 transform of each image (torchvision v2, e.g. `recipes.crop_flip`), for a
            set read by index (`tlpipe.data.images.Images.augmented`): its draws are seeded from a salt
            drawn from `generator` after the permutation and the image's row, so they do not depend on
            the number of workers, and a resumed epoch (`skip`) draws the same.
        loader: keeps the worker processes alive from one epoch's call to the next (`Loader`); None:
            they start and end with each call.
        salt: the augmentation's salt; None: drawn from `generator` as above (two calls with generators
            in the same state and their own salts read the same rows through independent draws).
    """
    n = len(images)
    rank, processes = shard
    if processes > 1 and (not drop_last or batch_size % processes or n < batch_size):
        raise ValueError(f"a batch of {batch_size} is shared by {processes} processes only in whole batches "
                         f"(drop_last, a multiple of {processes}, at most the {n} images)")
    order = torch.randperm(n, generator=generator) if generator is not None else None
    if augment is not None:
        if not hasattr(images, "augmented"):
            raise ValueError("augment needs an image set read by index (tlpipe.data.images.Images), not an array")
        drawn = int(torch.randint(0, 2**62, (), generator=generator)) if generator is not None else 0
        salt = drawn if salt is None else int(salt)
    stop = max(n // batch_size, 1) * batch_size if drop_last else n
    part = batch_size // processes
    starts = [s + rank * part for s in range(0, min(stop, n), batch_size)][skip:]
    # in order: slices (a view of an array, a zero-copy read of a mapped table); shuffled: the batch's indices
    index = [slice(s, min(s + part, n)) if order is None else order[s : s + part].numpy() for s in starts]
    if augment is not None:  # each batch read under the epoch's salt
        index = [(i, salt) for i in index]
    settings = device_settings(device.type)
    workers = settings["loader_workers"] if workers is None else workers
    targets = None if labels is None else torch.as_tensor(labels, dtype=torch.int64)
    if isinstance(images, (np.ndarray, torch.Tensor)):
        pixels = torch.as_tensor(images)
        batches = ((pixels[i], i) for i in index)
    else:
        reader = _BatchReader(images, augment)
        if not workers:
            batches = map(reader.__getitem__, index)
        elif loader is not None:
            batches = loader.batches(reader, index, workers, settings["pin_memory"])
        else:
            batches = torch.utils.data.DataLoader(reader, **_loader_options(index, workers, settings["pin_memory"]))
    for x, i in batches:
        if settings["pin_memory"] and not x.is_pinned():
            x = x.pin_memory()  # page-locked, so the copy below can overlap compute
        x = to_float(x.to(device, non_blocking=settings["non_blocking"]))
        if settings["channels_last"]:
            x = x.contiguous(memory_format=torch.channels_last)
        y = None if targets is None else targets[i].to(device, non_blocking=settings["non_blocking"])
        yield x, y


def _loader_options(sampler, workers: int, pin_memory: bool) -> dict:
    # four batches ahead per worker: decoding photos takes as long as a small model's step
    return {"batch_size": None, "sampler": sampler, "num_workers": workers, "pin_memory": pin_memory,
            "prefetch_factor": 4}


class _BatchReader(torch.utils.data.Dataset):
    """One batch per item, read in a DataLoader worker: (uint8 pixels of the rows `index`, `index`);
    with an augmentation, items are (index, salt) and the rows are read through it under the salt."""

    def __init__(self, images, augment=None):
        self.images, self.augment = images, augment

    def __getitem__(self, item):
        if self.augment is None:
            return torch.from_numpy(self.images[item]), item
        index, salt = item
        return torch.from_numpy(self.images.augmented(self.augment, salt)[index]), index


class _Items(torch.utils.data.Sampler):
    """A sampler whose items are set before each epoch (a persistent DataLoader keeps its sampler)."""

    def __init__(self):
        self.items: list = []

    def __iter__(self):
        return iter(self.items)

    def __len__(self) -> int:
        return len(self.items)


class Loader:
    """DataLoader workers kept alive between the epochs of a loop (torch's persistent workers): pass the
    same Loader to each epoch's `iter_batches`. The workers end with `close` (or when it is dropped);
    another image set, augmentation or worker count starts new ones."""

    def __init__(self):
        self._loader, self._key, self._items = None, None, _Items()

    def batches(self, reader: _BatchReader, index: list, workers: int, pin_memory: bool):
        key = (id(reader.images), id(reader.augment), workers, pin_memory)
        if self._loader is None or key != self._key:
            self.close()
            options = _loader_options(self._items, workers, pin_memory)
            self._loader, self._key = torch.utils.data.DataLoader(reader, persistent_workers=True, **options), key
        self._items.items = index
        return self._loader

    def close(self) -> None:
        self._loader = None  # its iterator shuts the workers down as it goes

    def __enter__(self) -> "Loader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
