"""FIFO queue of L2-normalised embeddings, the negative/anchor bank of SEED and MoCo-style losses."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class EmbeddingQueue(nn.Module):
    """Ring buffer of K unit-norm embeddings, oldest overwritten first.

    Stored as buffers (never parameters), so it follows `.to(device)`, appears in `state_dict`
    with its pointer for exact resumption, and never requires grad. Starts as normalised Gaussian
    rows, as in SEED (Fang et al., ICLR 2021) and MoCo (He et al., CVPR 2020).

    Args:
        size: K, the number of stored embeddings (>= 1).
        dim: d, the embedding dimension (>= 1).
        seed: seed of the torch.Generator that draws the initial rows.
        dtype: floating dtype of the stored embeddings.
    """

    def __init__(self, size: int, dim: int, *, seed: int = 0, dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        if int(size) != size or size < 1:
            raise ValueError(f"size must be a positive integer, got {size!r}")
        if int(dim) != dim or dim < 1:
            raise ValueError(f"dim must be a positive integer, got {dim!r}")
        if not dtype.is_floating_point:
            raise ValueError(f"dtype must be a floating dtype, got {dtype}")
        generator = torch.Generator().manual_seed(seed)
        init = torch.randn(int(size), int(dim), generator=generator, dtype=dtype)
        self.register_buffer("embeddings", F.normalize(init, dim=1))  # [K, d]
        self.register_buffer("ptr", torch.zeros((), dtype=torch.long))  # next slot to write

    @property
    def size(self) -> int:
        """K, the number of slots."""
        return self.embeddings.shape[0]

    @property
    def tensor(self) -> torch.Tensor:
        """The [K, d] stored embeddings (slot order, not age order)."""
        return self.embeddings

    @property
    def pointer(self) -> int:
        """Index of the slot the next enqueued row goes to."""
        return int(self.ptr)

    @torch.no_grad()
    def enqueue(self, emb: torch.Tensor) -> None:
        """Writes a batch at the pointer, wrapping around the end, and advances the pointer.

        Rows are L2-normalised (idempotent for already-normalised input) and detached. The
        result equals enqueueing the rows one by one: a batch longer than K leaves only its
        last K rows, and the pointer advances by the full batch length modulo K.

        Args:
            emb: [N, d] embeddings, N >= 1.
        """
        if emb.ndim != 2 or emb.shape[1] != self.embeddings.shape[1] or emb.shape[0] == 0:
            dim = self.embeddings.shape[1]
            raise ValueError(f"emb must be [N, {dim}] with N >= 1, got shape {tuple(emb.shape)}")
        n, k = emb.shape[0], self.size
        rows = F.normalize(emb.detach().to(self.embeddings), dim=1)
        slots = (self.ptr + torch.arange(n, device=self.embeddings.device)) % k
        # only the last K writes survive; keeping them makes the slots unique
        self.embeddings[slots[-k:]] = rows[-k:]
        self.ptr.copy_((self.ptr + n) % k)
