"""Resuming a training loop from its checkpoint ends with the weights of an uninterrupted run."""

import json

import numpy as np
import pytest
import torch
from safetensors import safe_open

from tlpipe.distillation import representation
from tlpipe.pretraining import selfsup
from tlpipe.training.checkpoints import Checkpoint, FILE
from tlpipe.training.loops import train_classifier
from tlpipe.training.models import Classifier, build_backbone

CPU = torch.device("cpu")


class Crash(Exception):
    pass


class FailingImages:
    """An image set read by index (like `tlpipe.data.images.Images`) that fails on its `fail_at`-th read."""

    def __init__(self, images: np.ndarray, fail_at: int | None = None):
        self.images, self.fail_at, self.reads = images, fail_at, 0
        self.shape, self.dtype, self.ndim = images.shape, images.dtype, images.ndim

    def __len__(self):
        return len(self.images)

    def __getitem__(self, index):
        self.reads += 1
        if self.reads == self.fail_at:
            raise Crash(f"read {self.reads}")
        return self.images[index]


def data(n=72, seed=0):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 255, size=(n, 1, 12, 12), dtype=np.uint8)
    return images, (images[:, 0, :6].mean((1, 2)) > images[:, 0, 6:].mean((1, 2))).astype(np.int64)


def fit(images, labels, checkpoint=None, history=None):
    torch.manual_seed(7)
    model = Classifier(build_backbone(embedding_size=4, hidden_sizes=[4, 8], depths=[1, 1]), 2)
    record = (lambda epoch, m: history.append((epoch, {k: v for k, v in m.items() if k != "elapsed_s"}))) \
        if history is not None else None
    val_images, val_labels = data(20, seed=1)
    metrics = train_classifier(model, images, labels, epochs=3, batch_size=16, lr=1e-2, weight_decay=0.01, seed=3,
                               device=CPU, val_images=val_images, val_labels=val_labels, on_metrics=record,
                               checkpoint=checkpoint)
    return model.state_dict(), metrics


@pytest.mark.parametrize("fail_at", [2, 4, 6, 7, 12])  # 4 batches an epoch: mid-epoch and at its edges
@pytest.mark.parametrize("every_minutes", [0.0, None])
def test_a_crashed_classifier_resumes_to_the_uninterrupted_weights(tmp_path, fail_at, every_minutes):
    images, labels = data()
    expected_history = []
    expected, expected_metrics = fit(FailingImages(images), labels, history=expected_history)
    checkpoint = Checkpoint(tmp_path / "ck", every_minutes=every_minutes)
    with pytest.raises(Crash):
        fit(FailingImages(images, fail_at), labels, checkpoint)
    saved = None if not (tmp_path / "ck" / FILE).exists() else json.loads(
        safe_open(str(tmp_path / "ck" / FILE), framework="pt").metadata()["document"])
    history = []
    resumed = FailingImages(images)
    got, metrics = fit(resumed, labels, Checkpoint(tmp_path / "ck", every_minutes=every_minutes), history)
    assert all(torch.equal(got[k], expected[k]) for k in expected)
    assert history == expected_history  # epochs done before the crash are told again
    for key in ("train_loss", "train_accuracy", "val_accuracy", "images_seen"):
        assert metrics[key] == expected_metrics[key]
    if saved is None:  # crashed in the first epoch with saves at epoch ends only: a fresh start
        assert "resumed_from_epoch" not in metrics and resumed.reads == 12
    else:
        done = (saved["epoch"] - 1) * 4 + saved["batch"]
        assert (metrics["resumed_from_epoch"], metrics["resumed_from_batch"]) == (saved["epoch"], saved["batch"])
        assert resumed.reads == 12 - done  # nothing done before the checkpoint is read again
        assert every_minutes is None or done == fail_at - 1  # saved after every step: only the failed one is redone


def test_the_checkpoint_is_safetensors_with_a_json_document(tmp_path):
    images, labels = data()
    fit(images, labels, Checkpoint(tmp_path / "ck"))
    with safe_open(str(tmp_path / "ck" / FILE), framework="pt") as f:
        document = json.loads(f.metadata()["document"])
        names = set(f.keys())
    assert document["epoch"] == 4 and document["batch"] == 0 and len(document["history"]) == 3
    assert {"rng.torch", "rng.numpy", "generator.data_at_epoch_start", "value.loss_sum"} <= names
    assert any(n.startswith("module.model.") for n in names) and any(n.startswith("optimizer.") for n in names)
    assert not [p for p in (tmp_path / "ck").iterdir() if p.name != FILE]  # written atomically, nothing left


def test_saves_within_an_epoch_follow_the_interval(tmp_path):
    now = [0.0]
    checkpoint = Checkpoint(tmp_path, every_minutes=1.0, clock=lambda: now[0])
    assert not checkpoint.due()
    now[0] = 59.0
    assert not checkpoint.due()
    now[0] = 60.0
    assert checkpoint.due()
    checkpoint.save({"x": torch.ones(2)}, {"epoch": 1})
    assert not checkpoint.due() and checkpoint.load()[1] == {"epoch": 1}
    assert not Checkpoint(tmp_path).due() and Checkpoint(tmp_path / "none").load() is None


def small_backbone(seed=7, width=4):
    torch.manual_seed(seed)
    return build_backbone(embedding_size=width, hidden_sizes=[4, 8], depths=[1, 1])


LOOPS = {
    "simclr": lambda images, **kw: selfsup.pretrain_simclr(
        small_backbone(), images, epochs=3, batch_size=16, lr=1e-2, weight_decay=0.01, temperature=0.5,
        projection_dim=8, seed=2, device=CPU, **kw),
    "byol": lambda images, **kw: selfsup.pretrain_byol(  # its target network is in the checkpoint
        small_backbone(), images, epochs=3, batch_size=16, lr=1e-2, weight_decay=0.01, projection_dim=8,
        predictor_hidden=16, base_momentum=0.9, seed=2, device=CPU, **kw),
    "seed": lambda images, **kw: representation.distill(  # its queues are in the checkpoint
        small_backbone(width=4), small_backbone(seed=8, width=8).eval(), images, epochs=3, batch_size=16, lr=1e-2,
        weight_decay=0.01, queue_size=24, tau_s=0.2, tau_t=0.1, seed=2, device=CPU, method="seed", **kw),
    "compress": lambda images, **kw: representation.distill(
        small_backbone(width=4), small_backbone(seed=8, width=8).eval(), images, epochs=3, batch_size=16, lr=1e-2,
        weight_decay=0.01, queue_size=24, tau_s=0.2, tau_t=0.1, seed=2, device=CPU, method="compress", **kw),
}


@pytest.mark.parametrize("loop", list(LOOPS))
def test_a_crashed_self_supervised_or_distillation_loop_resumes_to_the_uninterrupted_weights(tmp_path, loop):
    images, _ = data()
    history, expected_history = [], []
    expected, expected_metrics = LOOPS[loop](FailingImages(images), on_metrics=lambda e, m: expected_history.append(
        (e, m["loss"])))
    with pytest.raises(Crash):  # in epoch 2 of 3, 4 batches an epoch
        LOOPS[loop](FailingImages(images, fail_at=7), checkpoint=Checkpoint(tmp_path, every_minutes=0.0))
    resumed = FailingImages(images)
    got, metrics = LOOPS[loop](resumed, checkpoint=Checkpoint(tmp_path, every_minutes=0.0),
                               on_metrics=lambda e, m: history.append((e, m["loss"])))
    assert all(torch.equal(v, expected.state_dict()[k]) for k, v in got.state_dict().items())
    assert history == expected_history and metrics["loss_history"] == expected_metrics["loss_history"]
    assert (metrics["resumed_from_epoch"], metrics["resumed_from_batch"]) == (2, 2) and resumed.reads == 12 - 6


@pytest.mark.parametrize(("value", "minutes"), [(None, 10.0), ("0", 0.0), ("2.5", 2.5),
                                                ("often", None), ("-1", None), ("nan", None), ("inf", None)])
def test_the_checkpoint_interval_comes_from_the_environment(monkeypatch, value, minutes):
    from runner.context import checkpoint_minutes

    if value is None:
        monkeypatch.delenv("TLPIPE_CHECKPOINT_MINUTES", raising=False)
    else:
        monkeypatch.setenv("TLPIPE_CHECKPOINT_MINUTES", value)
    if minutes is None:
        with pytest.raises(ValueError, match="TLPIPE_CHECKPOINT_MINUTES=.* must be a number of minutes >= 0"):
            checkpoint_minutes()
    else:
        assert checkpoint_minutes() == minutes
