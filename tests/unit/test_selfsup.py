import numpy as np
import pytest
import torch

from tlpipe.pretraining.selfsup import pretrain_byol, pretrain_simclr
from tlpipe.training.models import build_backbone, feature_dim

CPU = torch.device("cpu")
COMMON = dict(batch_size=16, lr=5e-3, weight_decay=0.01, projection_dim=8, seed=0, device=CPU)
SIMCLR = dict(COMMON, temperature=0.5)
BYOL = dict(COMMON, predictor_hidden=16, base_momentum=0.9)
METHODS = [(pretrain_simclr, SIMCLR), (pretrain_byol, BYOL)]


def backbone(seed: int = 1):
    torch.manual_seed(seed)
    return build_backbone(arch="resnet", embedding_size=4, hidden_sizes=[4, 8], depths=[1, 1])


def random_images(n: int = 64) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, size=(n, 1, 16, 16), dtype=np.uint8)


def bars(n: int = 64) -> np.ndarray:
    """Dark images with one bright bar each, four orientations/places repeated: structure to learn."""
    images = np.random.default_rng(1).integers(0, 30, size=(n, 1, 16, 16), dtype=np.uint8)
    for i in range(n):
        kind = i % 4
        if kind == 0:
            images[i, 0, 3:6, 2:14] = 255
        elif kind == 1:
            images[i, 0, 2:14, 10:13] = 255
        elif kind == 2:
            images[i, 0, 10:13, 2:14] = 255
        else:
            images[i, 0, 2:14, 3:6] = 255
    return images


def state(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def same(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize(("pretrain", "settings"), METHODS)
def test_pretrain_trains_a_copy_and_returns_the_backbone_and_metrics(pretrain, settings):
    original = backbone()
    before = state(original)
    history = []
    trained, metrics = pretrain(original, random_images(70), epochs=2,
                                on_metrics=lambda epoch, m: history.append((epoch, m)), **settings)
    assert same(state(original), before)  # the caller's backbone is copied, not trained
    assert not same(state(trained), before)
    assert type(trained) is type(original) and feature_dim(trained) == 8 and not trained.training
    assert [epoch for epoch, _ in history] == [1, 2]
    assert set(history[0][1]) == {"loss", "lr", "elapsed_s"}
    assert metrics["loss_history"] == [m["loss"] for _, m in history] and metrics["loss"] == history[-1][1]["loss"]
    assert metrics["images_seen"] == 2 * 64  # 70 images -> 4 full batches of 16, each image once (not per view)
    assert metrics["images_per_s"] > 0 and metrics["wall_time_s"] > 0
    assert all(np.isfinite(metrics["loss_history"]))


@pytest.mark.parametrize(("pretrain", "settings"), METHODS)
def test_pretrain_is_deterministic_given_the_seed(pretrain, settings):
    runs = [pretrain(backbone(), random_images(), epochs=2, **settings) for _ in range(2)]
    assert same(state(runs[0][0]), state(runs[1][0]))
    assert runs[0][1]["loss_history"] == runs[1][1]["loss_history"]
    other, _ = pretrain(backbone(), random_images(), epochs=2, **{**settings, "seed": 1})
    assert not same(state(runs[0][0]), state(other))


def test_simclr_loss_decreases_on_structured_images():
    _, metrics = pretrain_simclr(backbone(), bars(), epochs=8, **{**SIMCLR, "lr": 1e-2})
    history = metrics["loss_history"]
    assert history[-1] < history[0] - 0.05, history


def test_byol_loss_decreases_on_structured_images():
    _, metrics = pretrain_byol(backbone(), bars(), epochs=8, **{**BYOL, "lr": 1e-2})
    history = metrics["loss_history"]
    assert history[-1] < history[0], history


@pytest.mark.parametrize(("pretrain", "settings"), METHODS)
@pytest.mark.parametrize(
    ("bad", "match"),
    [({"batch_size": 65}, "batch_size"), ({"batch_size": 1}, "batch_size"), ({"epochs": 0}, "epochs"),
     ({"lr": 0.0}, "lr"), ({"weight_decay": -1.0}, "weight_decay"), ({"projection_dim": 0}, "projection_dim")],
)
def test_pretrain_rejects_bad_shared_arguments(pretrain, settings, bad, match):
    kwargs = {"epochs": 1, **settings, **bad}
    with pytest.raises(ValueError, match=match):
        pretrain(backbone(), random_images(64), **kwargs)


@pytest.mark.parametrize("temperature", [0.0, -0.5, float("nan")])
def test_simclr_rejects_a_non_positive_temperature(temperature):
    with pytest.raises(ValueError, match="temperature"):
        pretrain_simclr(backbone(), random_images(), epochs=1, **{**SIMCLR, "temperature": temperature})


@pytest.mark.parametrize(("bad", "match"), [({"base_momentum": 1.1}, "base_momentum"), ({"base_momentum": -0.1}, "base_momentum"),
                                            ({"predictor_hidden": 0}, "predictor_hidden")])
def test_byol_rejects_bad_arguments(bad, match):
    with pytest.raises(ValueError, match=match):
        pretrain_byol(backbone(), random_images(), epochs=1, **{**BYOL, **bad})


def test_pretrain_rejects_images_that_are_not_nchw():
    with pytest.raises(ValueError, match="images"):
        pretrain_simclr(backbone(), random_images()[:, 0], epochs=1, **SIMCLR)
