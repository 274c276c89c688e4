"""Supervised training and fine-tuning of backbones with a linear head (batched inference: `inference`;
optimisers and schedules: `optim`).

Images are uint8 numpy arrays [N, C, H, W], labels int64 [N]. Functions never modify the
models they are given unless they say so; progress leaves through `on_metrics(step, dict)`.
"""

import copy
import importlib
import time
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from tlpipe import registry
from tlpipe.data import storage
from tlpipe.training import distributed
from tlpipe.training.checkpoints import Checkpoint, LoopState
from tlpipe.training.inference import extract_features, predict_classes
from tlpipe.training.models import Classifier
from tlpipe.training.optim import make_optimizer, param_groups, steps_per_epoch
from tlpipe.training.runtime import Loader, autocast, iter_batches, prepare_module, seed_everything

MetricsCallback = Callable[[int, dict], None]


class LossLog:
    """Loss accounting of an unsupervised epoch loop (distillation, SSL pretraining).

    Sums the loss on the device (no sync per step), reports each epoch's mean through
    `on_metrics(epoch, {"loss", "lr", "elapsed_s"})` and ends with the loop's metrics dict.
    The clock starts at construction. Its running totals are `totals`, which a `LoopState` saves
    and restores in place.
    """

    def __init__(self, device: torch.device, on_metrics: MetricsCallback | None = None):
        self.device, self.on_metrics = device, on_metrics
        self.totals = {"sum": torch.zeros((), device=device), "seen": 0, "images_seen": 0, "history": []}
        self.start, self._attempt_seen, self._world = time.perf_counter(), 0, distributed.current().world

    @property
    def history(self) -> list[float]:
        return self.totals["history"]

    def add(self, loss: torch.Tensor, n: int) -> None:
        """Counts one step: `loss` is the mean over its `n` images."""
        self.totals["sum"] += loss.detach() * n
        self.totals["seen"] += n
        self._attempt_seen += n * self._world  # every rank takes an equal share of the batch

    def end_epoch(self, epoch: int, lr: float) -> dict:
        """Closes an epoch (numbered from 1): records its mean loss, calls `on_metrics` and returns
        the epoch's {"loss", "lr"}."""
        totals = self.totals
        loss_sum, seen = distributed.sum_over_ranks(  # every rank's share of the epoch
            totals["sum"], torch.tensor(totals["seen"], device=self.device))
        totals["images_seen"] += int(seen)
        totals["history"].append(loss_sum.item() / int(seen))
        totals["sum"].zero_()
        totals["seen"] = 0
        metrics = {"loss": totals["history"][-1], "lr": lr}
        if self.on_metrics is not None and distributed.current().writer:
            self.on_metrics(epoch, {**metrics, "elapsed_s": time.perf_counter() - self.start})
        return metrics

    def metrics(self) -> dict:
        """wall_time_s (= train_time_s: these loops do not validate), images_seen, images_per_s (this
        attempt's, when resumed), loss (last epoch's mean) and loss_history."""
        wall = time.perf_counter() - self.start
        return {"wall_time_s": wall, "train_time_s": wall, "images_seen": self.totals["images_seen"],
                "images_per_s": self._attempt_seen / wall,
                "loss": self.history[-1], "loss_history": list(self.history)}


def train_classifier(
    model: nn.Module,
    images: np.ndarray,
    labels: np.ndarray,
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    weight_decay: float,
    seed: int,
    device: torch.device,
    val_images: np.ndarray | None = None,
    val_labels: np.ndarray | None = None,
    label_smoothing: float = 0.1,
    backbone_lr_scale: float = 1.0,
    on_metrics: MetricsCallback | None = None,
    checkpoint: Checkpoint | None = None,
    augment=None,
    regularizer: nn.Module | None = None,
    unlabeled=None,
) -> dict:
    """Trains `model` in place with AdamW, warmup-cosine lr and cross-entropy.

    Deterministic on CPU: the same model, data and seed give bit-identical weights. In a process group
    (`tlpipe.training.distributed`), each rank trains on its share of every batch and the gradients are averaged
    (DDP); the first rank of each host validates and reports, rank 0 checkpoints.

    Args:
        model: maps float pixels [B, C, H, W] to logits [B, K]; trained in place, moved to `device`.
        images: uint8 [N, C, H, W].
        labels: int64 [N] in 0..K-1.
        epochs: passes over the data.
        batch_size: images per step.
        lr: peak learning rate.
        weight_decay: AdamW decay on weight matrices/kernels (not on biases and norms).
        seed: data order (and dropout, if any).
        device: where to train.
        val_images, val_labels: optional held-out set, scored after every epoch.
        label_smoothing: cross-entropy label smoothing.
        backbone_lr_scale: lr multiplier for parameters under `model.backbone`.
        on_metrics: called as on_metrics(epoch, {...}) after each epoch (epochs count from 1).
        checkpoint: saves the loop's state there at the end of every epoch (and as its interval says
            within one) and resumes from what it holds: the weights are those of an uninterrupted run.
        augment: a random uint8 transform of the training images (e.g. `recipes.crop_flip`; `images`
            then a set read by index), drawn per image and epoch (`runtime.iter_batches`); validation
            reads the images as they are.
        regularizer: a penalty added to the loss, `regularizer(model, features)` (`tlpipe.finetuning`);
            `model` then a `Classifier`, and the features its backbone's of the batch when the penalty
            `needs_features`.
        unlabeled: a semi-supervised objective on unlabeled images (`tlpipe.finetuning.fixmatch.FixMatch`):
            each step also takes its views of unlabeled images (`unlabeled.batches`), one forward pass
            of labeled and unlabeled images together, and adds `unlabeled.loss`; the epoch's metrics
            gain unlabeled_loss and confident_fraction (of its weak predictions over the threshold).

    Returns:
        dict with wall_time_s (the whole loop), train_time_s (without the validation passes),
        val_time_s, images_seen, images_per_s (training only), train_loss and train_accuracy (last
        epoch), and val_accuracy when a validation set is given; resumed_from_epoch and
        resumed_from_batch when it resumed (time and images per second are this attempt's).
    """

    generator = seed_everything(seed)
    model = prepare_module(model, device)
    ranks, forward = distributed.join(model, device, batch_size)
    steps = epochs * steps_per_epoch(len(images), batch_size)
    optimizer, schedule = make_optimizer(param_groups(model, lr, weight_decay, backbone_lr_scale), steps)
    # summed on the device (no sync per step); kept in the loop's state, so a resumed epoch sums on
    state = LoopState(checkpoint, ranks=ranks, modules={"model": model}, optimizer=optimizer, schedule=schedule,
                      data_generator=generator, values={
                          "loss_sum": torch.zeros((), device=device),
                          "correct": torch.zeros((), device=device, dtype=torch.int64),
                          "epoch_seen": 0, "images_seen": 0,
                          **({} if unlabeled is None else {"unlabeled_sum": torch.zeros((), device=device),
                                                           "confident": torch.zeros((), device=device),
                                                           "unlabeled_seen": 0})})
    first_epoch, skip = state.resume(on_metrics)
    totals, metrics = state.values, state.last_metrics()
    start, val_s, attempt_seen = time.perf_counter(), 0.0, 0  # this attempt's clock and images
    # loader workers (on CUDA, or as TLPIPE_LOADER_WORKERS says) kept from epoch to epoch
    with Loader() as loader, Loader() as weak_loader, Loader() as strong_loader:
        for epoch in range(first_epoch, epochs + 1):
            state.begin_epoch(epoch)
            model.train()
            if not skip:
                totals["loss_sum"].zero_(), totals["correct"].zero_()
                totals["epoch_seen"] = 0
                if unlabeled is not None:
                    totals["unlabeled_sum"].zero_(), totals["confident"].zero_()
                    totals["unlabeled_seen"] = 0
            batches = iter_batches(images, labels, batch_size=batch_size, device=device,
                                   generator=generator, drop_last=True, skip=skip, shard=(ranks.rank, ranks.world),
                                   augment=augment, loader=loader)
            views = None if unlabeled is None else unlabeled.batches(
                seed=seed, epoch=epoch, batch_size=batch_size, skip=skip, device=device,
                shard=(ranks.rank, ranks.world), loaders=(weak_loader, strong_loader))
            for batch, (x, y) in enumerate(batches, start=skip + 1):
                if views is not None:  # one pass over labeled, weak and strong: BatchNorm sees them together
                    weak, strong = next(views)
                    x = torch.cat([x, weak, strong])
                with autocast(device):
                    if regularizer is not None and regularizer.needs_features:
                        logits, features = forward(x, with_features=True)
                        features = features[: len(y)]
                    else:
                        logits, features = forward(x), None
                if views is not None:
                    logits, logits_weak, logits_strong = logits.split([len(y), len(weak), len(strong)])
                loss = F.cross_entropy(logits.float(), y, label_smoothing=label_smoothing)
                if regularizer is not None:
                    loss = loss + regularizer(model, None if features is None else features.float())
                if views is not None:
                    unlabeled_term, confident = unlabeled.loss(logits_weak, logits_strong)
                    loss = loss + unlabeled_term
                    totals["unlabeled_sum"] += unlabeled_term.detach() * len(weak)
                    totals["confident"] += confident
                    totals["unlabeled_seen"] += len(weak)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                schedule.step()
                totals["loss_sum"] += loss.detach() * len(y)
                totals["correct"] += (logits.argmax(1) == y).sum()
                totals["epoch_seen"] += len(y)
                attempt_seen += len(y) * ranks.world  # every rank takes an equal share of the batch
                state.step_done(batch)
            skip = 0
            distributed.share_buffers(model)
            loss_sum, correct, seen = distributed.sum_over_ranks(  # every rank's share of the epoch
                totals["loss_sum"], totals["correct"], torch.tensor(totals["epoch_seen"], device=device))
            epoch_seen = int(seen)
            totals["images_seen"] += epoch_seen
            metrics = {"train_loss": loss_sum.item() / epoch_seen, "train_accuracy": correct.item() / epoch_seen,
                       "lr": schedule.get_last_lr()[0]}
            if unlabeled is not None:
                unlabeled_sum, confident, unlabeled_seen = distributed.sum_over_ranks(
                    totals["unlabeled_sum"], totals["confident"], torch.tensor(totals["unlabeled_seen"], device=device))
                metrics["unlabeled_loss"] = unlabeled_sum.item() / max(int(unlabeled_seen), 1)
                metrics["confident_fraction"] = confident.item() / max(int(unlabeled_seen), 1)
            if val_images is not None and val_labels is not None and ranks.writer:
                val_start = time.perf_counter()
                predicted = predict_classes(model, val_images, batch_size=batch_size, device=device)
                metrics["val_accuracy"] = float((predicted == np.asarray(val_labels)).mean())
                val_s += time.perf_counter() - val_start
            if on_metrics is not None and ranks.writer:
                on_metrics(epoch, {**metrics, "elapsed_s": time.perf_counter() - start})
            state.end_epoch(metrics)
    wall = time.perf_counter() - start
    metrics.pop("lr", None)
    # The validation set does not shrink with a sample-level selection, so the training cost of a pruned
    # source is train_time_s; wall_time_s adds the per-epoch validation passes.
    train_s = wall - val_s
    return {"wall_time_s": wall, "train_time_s": train_s, "val_time_s": val_s, "images_seen": totals["images_seen"],
            "images_per_s": attempt_seen / train_s, **metrics, **state.resumed()}


def fit_linear_head(features: torch.Tensor, labels: torch.Tensor, *, num_classes: int, epochs: int,
                    batch_size: int, lr: float, weight_decay: float, generator: torch.Generator) -> nn.Linear:
    """Trains a linear layer on fixed features [N, D] and returns it acting on the raw features.

    Features are standardised for training (well-conditioned for AdamW); the mean and std are
    folded into the layer afterwards: W' = W / std, b' = b - W' @ mean.
    """
    mean, std = features.mean(0), features.std(0, unbiased=False) + 1e-6
    z = (features - mean) / std
    head = nn.Linear(features.shape[1], num_classes)
    steps = epochs * steps_per_epoch(len(z), batch_size)
    optimizer, schedule = make_optimizer(param_groups(head, lr, weight_decay), steps)
    for _ in range(epochs):
        order = torch.randperm(len(z), generator=generator)
        for start in range(0, steps_per_epoch(len(z), batch_size) * batch_size, batch_size):
            index = order[start : start + batch_size]
            loss = F.cross_entropy(head(z[index]), labels[index])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
    with torch.no_grad():
        head.weight.div_(std)
        head.bias.sub_(head.weight @ mean)
    return head


def finetune(
    backbone: nn.Module,
    images: np.ndarray,
    labels: np.ndarray,
    *,
    num_classes: int,
    method: str,
    epochs: int,
    batch_size: int,
    lr: float,
    weight_decay: float,
    seed: int,
    device: torch.device,
    backbone_lr_scale: float = 1.0,
    on_metrics: MetricsCallback | None = None,
    checkpoint: Checkpoint | None = None,
    augment=None,
    method_params: dict | None = None,
    unlabeled=None,
) -> tuple[Classifier, dict]:
    """Fits a classifier on labelled target images, starting from a copy of `backbone`.

    Args:
        backbone: pretrained backbone; it is copied, never modified.
        images: uint8 [N, C, H, W].
        labels: int64 [N] in 0..num_classes-1.
        num_classes: width of the head.
        method: a name of `registry.FINETUNING`: "linear" (frozen backbone; its features are computed
            once and a linear head is trained on them), "full" (backbone and head trained together),
            "l2sp" or "bss" (as "full", with the method's penalty: `tlpipe.finetuning.regularizers`),
            "fixmatch" (as "full", with the target's `unlabeled` images: `tlpipe.finetuning.fixmatch`),
            "lora" (adapters on the frozen backbone, merged after training: `tlpipe.finetuning.lora`).
        epochs, batch_size, lr, weight_decay, seed: as in `train_classifier` (l2sp: its penalty takes
            the place of weight decay, which is then 0).
        device: where to train.
        backbone_lr_scale: methods that train the backbone: backbone lr = lr * backbone_lr_scale (1.0
            and 0.3 tied on 10-shot digits, 0.1 was 3 points worse).
        on_metrics: methods that train the backbone: per-epoch metrics, see `train_classifier`.
        checkpoint: methods that train the backbone: the loop saves its state there and resumes from it
            (a linear head on fixed features takes seconds and starts afresh).
        augment: methods that train the backbone: the training images' random transform, see
            `train_classifier` (a linear head is fitted on the features of the images as they are;
            fixmatch's labeled images take its weak view instead, as in the paper).
        method_params: the method's own params (l2sp: alpha, beta; bss: eta, k; fixmatch: threshold,
            mu, lambda_u, flip; lora: r, alpha, dropout); missing ones take the paper's values.
        unlabeled: fixmatch: the target's unlabeled images, a set read by index (`tlpipe.data.images`);
            their labels, if any, are never read.

    Returns:
        (classifier, metrics): metrics has wall_time_s, images_seen, images_per_s, train_accuracy.

    Raises:
        ValueError: unknown `method`, params it does not take or out of range, no unlabeled images
            for a method that needs them, a backbone lora cannot adapt.
    """
    if method not in registry.FINETUNING:
        raise ValueError(f"method={method!r} is not one of {', '.join(registry.FINETUNING)}")
    entry, method_params = registry.FINETUNING[method], dict(method_params or {})
    if set(method_params) - set(entry.params):
        raise ValueError(f"method {method} takes {', '.join(entry.params) or 'no params'}, not "
                         f"{', '.join(sorted(set(method_params) - set(entry.params)))}")
    if entry.unlabeled is not None and (unlabeled is None or len(unlabeled) == 0):
        raise ValueError(f"method {method} trains on the target's unlabeled images; there are none")
    if entry.unlabeled is not None:  # its views are drawn per image as a set is read (arrays: held as one)
        images, unlabeled = (storage.image_set(x, y) if isinstance(x, np.ndarray) else x
                             for x, y in ((images, labels), (unlabeled, None)))
    objective = None if entry.unlabeled is None else registry.load(entry.unlabeled)(unlabeled, **method_params)
    seed_everything(seed)  # the head's initial weights come from the seed, not from what ran before
    classifier = Classifier(copy.deepcopy(backbone), num_classes)
    if entry.trains_backbone:
        regularizer = None if entry.regularizer is None else registry.load(entry.regularizer)(classifier, **method_params)
        adapter = None if entry.adapter is None else importlib.import_module(entry.adapter)
        if adapter is not None:
            adapter.add(classifier, **method_params)
        metrics = train_classifier(classifier, images, labels, epochs=epochs, batch_size=batch_size, lr=lr,
                                   weight_decay=0.0 if method == "l2sp" else weight_decay, seed=seed, device=device,
                                   backbone_lr_scale=backbone_lr_scale, on_metrics=on_metrics,
                                   checkpoint=checkpoint, augment=augment if objective is None else objective.labeled_view(),
                                   regularizer=regularizer, unlabeled=objective)
        if adapter is not None:
            metrics["trained_parameters"] = sum(p.numel() for p in classifier.parameters() if p.requires_grad)
            adapter.merge(classifier)
        return classifier.eval(), metrics
    generator = seed_everything(seed)
    start = time.perf_counter()
    classifier.backbone.requires_grad_(False)
    features = torch.from_numpy(extract_features(classifier.backbone, images, batch_size=batch_size, device=device))
    targets = torch.as_tensor(labels, dtype=torch.int64)
    head = fit_linear_head(features, targets, num_classes=num_classes, epochs=epochs, batch_size=batch_size,
                           lr=lr, weight_decay=weight_decay, generator=generator)
    classifier.head.load_state_dict(head.state_dict())
    wall = time.perf_counter() - start
    with torch.no_grad():
        accuracy = (head(features).argmax(1) == targets).float().mean().item()
    seen = epochs * steps_per_epoch(len(images), batch_size) * min(batch_size, len(images))
    metrics = {"wall_time_s": wall, "images_seen": seen, "images_per_s": seen / wall, "train_accuracy": accuracy}
    return prepare_module(classifier, device).eval(), metrics
