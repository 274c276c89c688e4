"""The short trainings behind EL2N and GraNd (Paul et al., "Deep Learning on a Data Diet", NeurIPS
2021): fresh copies of an architecture trained a few epochs from different seeds, then asked for
each source image's error norm (EL2N) or loss-gradient norm (GraNd)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from tlpipe.pruning.scores import el2n_norms, per_sample_grad_norms
from tlpipe.training import inference, loops, models, runtime
from tlpipe.training.checkpoints import Checkpoint

SCORED = {"el2n": "el2n_norms", "grand": "grad_norms"}  # what each method reads from a trained model
_CHUNK = 4096  # images turned into float pixels at a time for the gradient norms


def early_training_scores(architecture: nn.Module, images, labels: np.ndarray, *, method: str,
                          num_classes: int, runs: int, epochs: int, batch_size: int, lr: float, seed: int,
                          device: torch.device, checkpoints: Callable[[int], Checkpoint] | None = None) -> np.ndarray:
    """One score array per run, stacked [runs, N]: error norms (`el2n_norms`) for "el2n", gradient norms
    for "grand". Run r trains `type(architecture)(architecture.config)` plus a linear head, drawn and
    shuffled from seed `seed + r`. `images`: uint8 [N, C, H, W], an array or a set read by index
    (`tlpipe.data.images`). `checkpoints(r)`, given, is where run r's training saves and resumes."""
    if method not in SCORED:
        raise ValueError(f"method={method!r} has no early-training scores; valid options: {', '.join(SCORED)}")
    per_run = []
    for run in range(runs):
        run_seed = seed + run
        runtime.seed_everything(run_seed)  # fresh weights of the architecture, drawn from the seed
        model = models.Classifier(type(architecture)(architecture.config), num_classes)
        loops.train_classifier(model, images, labels, epochs=epochs, batch_size=batch_size, lr=lr,
                               weight_decay=0.0005, seed=run_seed, device=device, label_smoothing=0.0,
                               checkpoint=None if checkpoints is None else checkpoints(run))
        if SCORED[method] == "el2n_norms":  # a chunk of logits at a time: N x C of them would not fit
            model, norms = loops.prepare_module(model, device).eval(), []
            for logits in inference.iter_outputs(model, images, batch_size=256, device=device):
                done = sum(map(len, norms))
                norms.append(el2n_norms(logits, labels[done : done + len(logits)]))
            per_run.append(np.concatenate(norms))
        else:
            per_run.append(np.concatenate([  # a chunk of float pixels at a time (a sample's norm is its own)
                per_sample_grad_norms(model.eval(), runtime.to_float(torch.from_numpy(images[chunk])), labels[chunk],
                                      batch_size=128)
                for chunk in (slice(s, s + _CHUNK) for s in range(0, len(labels), _CHUNK))]))
    return np.stack(per_run)
