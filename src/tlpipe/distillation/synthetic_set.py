"""KRR-ST's synthetic set: learnable images with learned target representations, saved as a small data set of its own."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from tlpipe import io
from tlpipe.distillation import SYNTHETIC_FILE, SYNTHETIC_META


class SyntheticSet(nn.Module):
    """The learnable synthetic images [n_s, C, H, W] (input space, [-1, 1] at the start) and targets [n_s, d]."""

    def __init__(self, images: torch.Tensor, targets: torch.Tensor):
        super().__init__()
        self.images = nn.Parameter(images.detach().clone().float())
        self.targets = nn.Parameter(targets.detach().clone().float())


def save_synthetic(synthetic: SyntheticSet, folder: Path, meta: dict) -> None:
    """The set as a small data set of its own: `synthetic.safetensors` (images [n_s, C, H, W] float32
    in [-1, 1] input space, targets [n_s, d]) and `synthetic.json` (meta: how it was made)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_file({"images": synthetic.images.detach().cpu().contiguous(),
               "targets": synthetic.targets.detach().cpu().contiguous()}, str(folder / SYNTHETIC_FILE))
    io.write_json(folder / SYNTHETIC_META, {**meta, "size": len(synthetic.images),
                                             "image_shape": list(synthetic.images.shape[1:]),
                                             "target_dim": int(synthetic.targets.shape[1])})


def load_synthetic(folder: Path) -> tuple[SyntheticSet, dict]:
    """(set, meta) saved by `save_synthetic`; ValueError naming the folder when it holds none."""
    folder = Path(folder)
    if not (folder / SYNTHETIC_FILE).is_file():
        raise ValueError(f"{folder} holds no synthetic set ({SYNTHETIC_FILE}); a distill output with "
                         f"method krr_st has one in synthetic/")
    tensors = load_file(str(folder / SYNTHETIC_FILE))
    meta = io.read_json(folder / SYNTHETIC_META) if (folder / SYNTHETIC_META).is_file() else {}
    return SyntheticSet(tensors["images"], tensors["targets"]), meta
