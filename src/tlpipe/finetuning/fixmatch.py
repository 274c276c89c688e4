"""FixMatch (Sohn, Berthelot, Li, Zhang, Carlini, Cubuk, Kurakin, Zhang and Raffel, "FixMatch:
Simplifying Semi-Supervised Learning with Consistency and Confidence", NeurIPS 2020) on the target's
unlabeled images, next to the cross-entropy on its few labeled ones.

Each step takes B labeled images and mu * B unlabeled ones. An unlabeled image is seen twice: a weak
view (flip and a translation of up to 12.5 %) and a strong one (the same kind of flip and translation,
then RandAugment with two operations of random magnitude, then Cutout of a gray square of up to half
the side). The model's prediction on the weak view, when its top probability reaches the threshold
tau, is the hard label the strong view is trained towards:

    L_u = 1 / (mu B) * sum_b 1[max p(weak_b) >= tau] * CE(p(strong_b), argmax p(weak_b))

and the loss is L_s + lambda_u * L_u (no gradient through the weak view's prediction). The labeled
images take the weak view too. All views go through the model as one batch, so BatchNorm sees labeled
and unlabeled images together. The paper's values: tau 0.95, mu 7, lambda_u 1. It trains with SGD and
evaluates an exponential moving average of the weights over 2^20 steps; here the training loop's AdamW
and schedule are kept (a few hundred steps, where such an average would stay at the start).
"""

from __future__ import annotations

import itertools
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.transforms import v2

from tlpipe.data.decoded import image_seed
from tlpipe.data.encoding import stored_side
from tlpipe.data.recipes import _check_size  # the recipes' own check of a view's size

THRESHOLD, MU, LAMBDA_U = 0.95, 7, 1.0
TRANSLATE = 0.125  # of the side: the weak view's largest shift
CUTOUT = 0.5  # of the side: the largest Cutout square
GRAY = 127
MAGNITUDE_BINS = 31  # RandAugment's magnitudes 0..30 (torchvision's default scale)


class RandomMagnitudeRandAugment(nn.Module):
    """RandAugment as FixMatch uses it: `ops` operations one after the other, each chosen uniformly
    from torchvision's RandAugment operations at a magnitude drawn uniformly for it (the paper's
    "RA with random magnitude"); uint8 in, uint8 out, fill gray."""

    def __init__(self, ops: int = 2):
        super().__init__()
        self.ops = int(ops)
        self.by_magnitude = [v2.RandAugment(num_ops=1, magnitude=m, num_magnitude_bins=MAGNITUDE_BINS, fill=GRAY)
                             for m in range(MAGNITUDE_BINS)]

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        for _ in range(self.ops):
            image = self.by_magnitude[int(torch.randint(0, MAGNITUDE_BINS, ()))](image)
        return image


class Cutout(nn.Module):
    """A gray square of side uniform in [0, `fraction` * the image side], centred anywhere in the image
    (clipped at its edges), on uint8 [C, H, W]."""

    def __init__(self, fraction: float = CUTOUT, fill: int = GRAY):
        super().__init__()
        self.fraction, self.fill = float(fraction), int(fill)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        height, width = image.shape[-2:]
        side = int(float(torch.rand(())) * self.fraction * min(height, width))
        if side == 0:
            return image
        y, x = int(torch.randint(0, height, ())), int(torch.randint(0, width, ()))
        out = image.clone()
        out[..., max(0, y - side // 2) : y + (side + 1) // 2, max(0, x - side // 2) : x + (side + 1) // 2] = self.fill
        return out


def weak_view(size: int, *, flip: bool = True, encoded: bool = False) -> v2.Compose:
    """FixMatch's weak augmentation of a uint8 image: a horizontal flip (p 0.5, when `flip`) and a
    translation of up to 12.5 % of the side. Raw `size` x `size` pixels are padded by reflection and
    cropped back; a decoded photo (`encoded`) is resized to evaluation's side (size / 0.875) and a
    `size` crop taken anywhere in it."""
    _check_size(size)
    steps = [v2.RandomHorizontalFlip()] if flip else []
    if encoded:
        steps += [v2.Resize(stored_side(size), antialias=True), v2.RandomCrop(size)]
    else:
        steps += [v2.RandomCrop(size, padding=max(1, round(TRANSLATE * size)), padding_mode="reflect")]
    return v2.Compose(steps)


def strong_view(size: int, *, flip: bool = True, encoded: bool = False) -> v2.Compose:
    """FixMatch's strong augmentation: the weak view's steps, RandAugment (2 operations of random
    magnitude), Cutout."""
    return v2.Compose([*weak_view(size, flip=flip, encoded=encoded).transforms, RandomMagnitudeRandAugment(2), Cutout()])


def unlabeled_loss(logits_weak: torch.Tensor, logits_strong: torch.Tensor, threshold: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(L_u, how many weak predictions reached the threshold) of [M, K] logits of the same M images."""
    with torch.no_grad():
        confidence, pseudo = torch.softmax(logits_weak.float(), dim=1).max(1)
        mask = (confidence >= threshold).float()
    per_image = F.cross_entropy(logits_strong.float(), pseudo, reduction="none")
    return (per_image * mask).mean(), mask.sum()


class FixMatch:
    """The unlabeled half of FixMatch for the training loop (`train_classifier(unlabeled=...)`): the
    weak and strong views of `mu` unlabeled images per labeled one, drawn per (seed, epoch) so that a
    resumed epoch reads the same batches, and their loss.

    Args:
        images: the unlabeled uint8 images [U, C, S, S], a set read by index (`tlpipe.data.images`).
        threshold: tau, in (0, 1].
        mu: unlabeled images per labeled one in each step.
        lambda_u: the weight of L_u.
        flip: the views flip (the paper's CIFAR and ImageNet runs; not its SVHN digits).
    """

    def __init__(self, images, *, threshold: float = THRESHOLD, mu: int = MU, lambda_u: float = LAMBDA_U,
                 flip: bool = True):
        if not 0 < threshold <= 1:
            raise ValueError(f"threshold={threshold} must be in (0, 1]")
        if not isinstance(mu, int) or mu < 1:
            raise ValueError(f"mu={mu!r} must be an int >= 1")
        if lambda_u < 0:
            raise ValueError(f"lambda_u={lambda_u} must be >= 0")
        if not hasattr(images, "augmented"):
            raise ValueError("FixMatch needs the unlabeled images as a set read by index (tlpipe.data.images.Images)")
        if len(images) == 0:
            raise ValueError("FixMatch needs unlabeled images; the set is empty")
        self.images, self.threshold, self.mu, self.lambda_u = images, float(threshold), mu, float(lambda_u)
        size, encoded = images.shape[-1], bool(getattr(images, "encoded", False))
        self.weak, self.strong = weak_view(size, flip=flip, encoded=encoded), strong_view(size, flip=flip, encoded=encoded)

    def labeled_view(self) -> v2.Compose:
        """The labeled images' augmentation (the weak one, as in the paper)."""
        return self.weak

    def batches(self, *, seed: int, epoch: int, batch_size: int, skip: int, device: torch.device,
                shard: tuple[int, int], loaders: tuple) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """(weak, strong) float views [mu * batch_size / processes, C, S, S] for each step of `epoch`
        after the first `skip`: passes over the unlabeled images, each in an order drawn from (seed,
        epoch, pass), as many as the caller takes. `loaders`: two `runtime.Loader`s (weak, strong)."""
        from tlpipe.training.runtime import iter_batches

        size = min(self.mu * batch_size, len(self.images))
        per_pass = max(len(self.images) // size, 1)
        first, skip = divmod(skip, per_pass)
        for turn in itertools.count(first):
            order = torch.Generator().manual_seed(image_seed(seed, epoch, turn))
            views = []
            for which, (transform, loader) in enumerate(zip((self.weak, self.strong), loaders), start=1):
                generator = torch.Generator().set_state(order.get_state())  # the same order for both views
                views.append(iter_batches(self.images, batch_size=size, device=device, generator=generator,
                                          drop_last=True, skip=skip, shard=shard, augment=transform, loader=loader,
                                          salt=image_seed(seed, epoch, turn, which)))
            for (weak, _), (strong, _) in zip(*views):
                yield weak, strong
            skip = 0

    def loss(self, logits_weak: torch.Tensor, logits_strong: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(lambda_u * L_u, the count of confident weak predictions)."""
        value, confident = unlabeled_loss(logits_weak, logits_strong, self.threshold)
        return self.lambda_u * value, confident
