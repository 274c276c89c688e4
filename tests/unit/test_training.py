import numpy as np
import pytest
import torch

from tlpipe.training import inference
from tlpipe.training.inference import extract_features, iter_features, predict_logits
from tlpipe.training.loops import finetune, train_classifier
from tlpipe.training.models import Classifier, build_backbone, embed
from tlpipe.training.optim import warmup_cosine

CPU = torch.device("cpu")
FAST = dict(batch_size=16, weight_decay=0.01, seed=0, device=CPU)


def tiny_backbone(seed: int = 0):
    torch.manual_seed(seed)
    return build_backbone(embedding_size=4, hidden_sizes=[4, 8], depths=[1, 1])


def toy_data(n: int = 64, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Two learnable classes: a bright block in the top-left or in the bottom-right quadrant."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 40, size=(n, 1, 16, 16), dtype=np.uint8)
    labels = rng.integers(0, 2, size=n).astype(np.int64)
    for i, label in enumerate(labels):
        rows = slice(0, 8) if label == 0 else slice(8, 16)
        images[i, 0, rows, rows] = 255
    return images, labels


def state(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def states_equal(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_warmup_cosine_schedule():
    factor = warmup_cosine(total_steps=10, warmup_steps=2)
    assert [factor(0), factor(1), factor(2)] == [0.5, 1.0, 1.0]
    assert factor(6) == pytest.approx(0.5) and factor(10) == pytest.approx(0.0)


def test_train_classifier_learns_and_reports():
    images, labels = toy_data()
    history = []
    model = Classifier(tiny_backbone(), 2)
    metrics = train_classifier(model, images, labels, epochs=6, lr=1e-2, val_images=images, val_labels=labels,
                               on_metrics=lambda step, m: history.append((step, m)), **FAST)
    assert [step for step, _ in history] == list(range(1, 7))
    assert history[-1][1]["train_loss"] < history[0][1]["train_loss"]
    assert metrics["val_accuracy"] >= 0.9
    assert metrics["images_seen"] == 6 * 64 and metrics["images_per_s"] > 0 and metrics["wall_time_s"] > 0
    assert {"train_loss", "train_accuracy"} <= metrics.keys()


def test_train_classifier_times_training_apart_from_validation():
    images, labels = toy_data()
    with_val = train_classifier(Classifier(tiny_backbone(), 2), images, labels, epochs=2, lr=1e-2,
                                val_images=images, val_labels=labels, **FAST)
    assert 0 < with_val["val_time_s"] < with_val["wall_time_s"]
    assert with_val["train_time_s"] == pytest.approx(with_val["wall_time_s"] - with_val["val_time_s"])
    assert with_val["images_per_s"] == pytest.approx(with_val["images_seen"] / with_val["train_time_s"])
    without = train_classifier(Classifier(tiny_backbone(), 2), images, labels, epochs=2, lr=1e-2, **FAST)
    assert without["val_time_s"] == 0 and without["train_time_s"] == without["wall_time_s"]


def test_train_classifier_is_deterministic_given_the_seed():
    images, labels = toy_data()
    runs = []
    for _ in range(2):
        model = Classifier(tiny_backbone(), 2)
        train_classifier(model, images, labels, epochs=2, lr=1e-2, **FAST)
        runs.append(state(model))
    assert states_equal(*runs)


@pytest.mark.parametrize("n", [1, 17, 40, 70])
def test_predict_and_extract_shapes(n):
    images, _ = toy_data(n)
    model = Classifier(tiny_backbone(), 3)
    logits = predict_logits(model, images, batch_size=16, device=CPU)
    features = extract_features(model.backbone, images, batch_size=16, device=CPU)
    assert logits.shape == (n, 3) and logits.dtype == np.float32
    assert features.shape == (n, 8) and features.dtype == np.float32
    # batching does not change the answer
    np.testing.assert_allclose(features, extract_features(model.backbone, images, batch_size=n, device=CPU),
                               rtol=1e-5, atol=1e-6)
    # one image a batch: outputs come back to the host in groups of batches, then the remainder (n=70)
    np.testing.assert_allclose(logits, predict_logits(model, images, batch_size=1, device=CPU), rtol=1e-5, atol=1e-6)


def test_features_a_chunk_at_a_time():
    """`iter_features` gives `extract_features` in order, a chunk of batches at a time, and the caller's
    code between chunks runs with gradients as usual (inference mode is entered per batch only)."""
    images, _ = toy_data(70)
    backbone = Classifier(tiny_backbone(), 3).backbone
    chunks = inference.iter_outputs(lambda x: embed(backbone.eval(), x), images, batch_size=4, device=CPU,
                                batches_per_copy=5)
    sizes = []
    for chunk in chunks:
        sizes.append(len(chunk))
        assert torch.is_grad_enabled() and not torch.is_inference_mode_enabled()
    assert sizes == [20, 20, 20, 10]
    np.testing.assert_array_equal(np.concatenate(list(iter_features(backbone, images, batch_size=16, device=CPU))),
                                  extract_features(backbone, images, batch_size=16, device=CPU))


@pytest.mark.parametrize("mode", ["linear", "full", "l2sp", "bss"])
def test_finetune_methods(mode):
    images, labels = toy_data()
    backbone = tiny_backbone()
    before = state(backbone)
    model, metrics = finetune(backbone, images, labels, num_classes=2, method=mode, epochs=8, lr=1e-2, **FAST)
    assert states_equal(state(backbone), before)  # the caller's backbone is never modified
    changed = not states_equal(state(model.backbone), before)
    assert changed is (mode != "linear")  # linear keeps the backbone frozen, the others train it
    accuracy = (predict_logits(model, images, batch_size=16, device=CPU).argmax(1) == labels).mean()
    assert accuracy >= 0.85 and metrics["train_accuracy"] >= 0.85
    assert metrics["images_seen"] > 0 and metrics["wall_time_s"] > 0


def test_finetune_linear_head_acts_on_raw_features():
    # the standardisation used for training is folded into the head: logits = head(features)
    images, labels = toy_data()
    model, _ = finetune(tiny_backbone(), images, labels, num_classes=2, method="linear", epochs=3, lr=1e-2, **FAST)
    features = torch.from_numpy(extract_features(model.backbone, images, batch_size=16, device=CPU))
    logits = predict_logits(model, images, batch_size=16, device=CPU)
    np.testing.assert_allclose(model.head(features).detach().numpy(), logits, rtol=1e-4, atol=1e-4)


def test_finetune_rejects_unknown_method_and_params_it_does_not_take():
    images, labels = toy_data(8)
    with pytest.raises(ValueError, match="linear, full, l2sp, bss"):
        finetune(tiny_backbone(), images, labels, num_classes=2, method="partial", epochs=1, lr=1e-2, **FAST)
    with pytest.raises(ValueError, match="method bss takes eta, k, not alpha"):
        finetune(tiny_backbone(), images, labels, num_classes=2, method="bss", epochs=1, lr=1e-2,
                 method_params={"alpha": 0.1}, **FAST)
