"""Inference in batches: logits, classes and pooled features of a model over an image set, on any device."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np
import torch
from torch import nn

from tlpipe.training.models import embed
from tlpipe.training.runtime import autocast, iter_batches, prepare_module


def iter_outputs(fn: Callable[[torch.Tensor], torch.Tensor], images, *, batch_size: int, device: torch.device,
                 batches_per_copy: int = 32) -> Iterator[np.ndarray]:
    """`fn` of the float pixels of every batch of `images`, in order, as float32 numpy chunks of up to
    `batches_per_copy` batches: what a caller reduces as it goes holds one chunk, never all the outputs.

    Outputs stay on the device and come back a chunk at a time: one host sync per chunk rather than per
    batch (which idled a GPU between batches), device memory bounded by a chunk.
    """
    # inference mode around each call, not the generator: the caller's code runs between the chunks
    pending = []
    for x, _ in iter_batches(images, batch_size=batch_size, device=device):
        with torch.inference_mode(), autocast(device):
            pending.append(fn(x))
        if len(pending) == batches_per_copy:
            yield _to_host(pending)
            pending = []
    if pending:
        yield _to_host(pending)


def _to_host(outputs: list[torch.Tensor]) -> np.ndarray:
    with torch.inference_mode():
        return torch.cat(outputs).float().cpu().numpy()


def _apply_batched(fn: Callable[[torch.Tensor], torch.Tensor], images, batch_size: int,
                   device: torch.device) -> np.ndarray:
    return np.concatenate(list(iter_outputs(fn, images, batch_size=batch_size, device=device)))


def predict_logits(model: nn.Module, images: np.ndarray, *, batch_size: int, device: torch.device) -> np.ndarray:
    """Logits float32 [N, K] of `model` in eval mode (the model is left in eval mode)."""
    model = prepare_module(model, device).eval()
    return _apply_batched(model, images, batch_size, device)


def predict_classes(model: nn.Module, images, *, batch_size: int, device: torch.device) -> np.ndarray:
    """The predicted class ids int64 [N] of `model` in eval mode: the argmax of each batch's logits, so
    the logits of a large set are never held at once."""
    model = prepare_module(model, device).eval()
    return _apply_batched(lambda x: model(x).argmax(1), images, batch_size, device).astype(np.int64)


def extract_features(backbone: nn.Module, images: np.ndarray, *, batch_size: int,
                     device: torch.device) -> np.ndarray:
    """Pooled backbone features float32 [N, D] in eval mode (the backbone is left in eval mode)."""
    return np.concatenate(list(iter_features(backbone, images, batch_size=batch_size, device=device)))


def iter_features(backbone: nn.Module, images, *, batch_size: int, device: torch.device) -> Iterator[np.ndarray]:
    """`extract_features` a chunk at a time (float32 [n, D] chunks, in order), for sets whose features
    are reduced as they come rather than held."""
    backbone = prepare_module(backbone, device).eval()
    return iter_outputs(lambda x: embed(backbone, x), images, batch_size=batch_size, device=device)
