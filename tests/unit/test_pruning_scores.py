import numpy as np
import pytest
import torch
from torch import nn

import tlpipe.pruning.scores as scores_module
from tlpipe.pruning import (
    el2n_norms,
    el2n_scores,
    select_samples,
    grand_scores,
    moderate_scores,
    per_sample_grad_norms,
    select_samples_el2n,
    select_samples_el2n_norms,
    select_samples_grand,
    select_samples_moderate,
)


def _reference_el2n(logits_per_model, labels):
    per_model = []
    for z in logits_per_model:
        p = torch.softmax(torch.as_tensor(z, dtype=torch.float64), dim=1)
        per_model.append(torch.linalg.norm(p - nn.functional.one_hot(torch.as_tensor(labels), p.shape[1]), dim=1))
    return torch.stack(per_model).mean(0).numpy()


def test_el2n_by_hand():
    # model 1: p = [.5, .5] -> ||[-.5, .5]|| = sqrt(.5); model 2: p = [.75, .25] -> sqrt(.125)
    scores = el2n_scores([np.zeros((1, 2)), np.array([[np.log(3.0), 0.0]])], [0])
    np.testing.assert_allclose(scores, [(np.sqrt(0.5) + np.sqrt(0.125)) / 2], rtol=1e-12)


def test_el2n_matches_reference_and_keeps_highest():
    rng = np.random.default_rng(0)
    logits = [rng.normal(size=(12, 4)).astype(np.float32) for _ in range(3)]
    labels = rng.integers(0, 4, size=12)
    expected = _reference_el2n(logits, labels)
    np.testing.assert_allclose(el2n_scores(logits, labels), expected, rtol=1e-12)
    np.testing.assert_allclose(el2n_scores([torch.from_numpy(z) for z in logits], labels), expected, rtol=1e-12)
    sel = select_samples_el2n(logits, labels, ratio=0.75)
    assert sel.method == "el2n" and sel.num_kept == 3
    np.testing.assert_array_equal(sel.kept, np.sort(np.argsort(-expected)[:3]))
    np.testing.assert_array_equal(select_samples_el2n(logits[0], labels, ratio=0.0).kept, np.arange(12))


def test_el2n_from_norms_a_chunk_at_a_time_selects_what_the_logits_select():
    """The prune stage keeps each model's norms (one number an image), computed a chunk of logits at a time."""
    rng = np.random.default_rng(3)
    logits, labels = [rng.normal(size=(40, 6)).astype(np.float32) for _ in range(2)], rng.integers(0, 6, size=40)
    norms = [np.concatenate([el2n_norms(z[s : s + 7], labels[s : s + 7]) for s in range(0, 40, 7)]) for z in logits]
    np.testing.assert_allclose(np.mean(norms, axis=0), el2n_scores(logits, labels), rtol=1e-12)
    expected = select_samples_el2n(logits, labels, ratio=0.6)
    for got in (select_samples_el2n_norms(norms, ratio=0.6),
                select_samples("el2n", ratio=0.6, el2n_norms_per_model=norms)):
        assert got.method == "el2n"
        np.testing.assert_array_equal(got.kept, expected.kept)
        np.testing.assert_allclose(got.scores, expected.scores, rtol=1e-12)
    with pytest.raises(ValueError, match="labels"):
        el2n_norms(logits[0], labels[:5])
    with pytest.raises(ValueError, match="ratio"):
        select_samples_el2n_norms(norms, ratio=1.0)
    with pytest.raises(ValueError, match="el2n_norms_per_model"):
        select_samples("el2n", ratio=0.5)


@pytest.mark.parametrize(
    ("logits", "labels", "match"),
    [
        ([], [0], "logits_per_model"),
        ([np.zeros((2, 3)), np.zeros((3, 3))], [0, 0], r"logits_per_model\[1\]"),
        ([np.zeros((2, 3), np.int64)], [0, 0], "logits_per_model"),
        ([np.zeros((2, 3))], [0, 0, 0], "labels"),
        ([np.zeros((2, 3))], [0, 3], "labels"),
    ],
)
def test_el2n_bad_inputs(logits, labels, match):
    with pytest.raises(ValueError, match=match):
        el2n_scores(logits, np.asarray(labels))


def test_el2n_bad_ratio_raises_before_compute(monkeypatch):
    monkeypatch.setattr(scores_module, "_el2n", lambda *a: (_ for _ in ()).throw(AssertionError("computed")))
    with pytest.raises(ValueError, match="ratio"):
        select_samples_el2n([np.zeros((2, 3))], [0, 1], ratio=1.0)


def _tiny_model(dtype):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.BatchNorm2d(3), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 4 * 4, 5))
    with torch.no_grad():  # non-trivial running statistics, so eval mode matters
        model[1].running_mean.uniform_(-0.5, 0.5)
        model[1].running_var.uniform_(0.5, 2.0)
    return model.to(dtype)


def _reference_grad_norms(model, images, labels):
    model.eval()
    norms = []
    for x, y in zip(images, labels):
        model.zero_grad()
        nn.functional.cross_entropy(model(x[None]), y[None]).backward()
        norms.append(torch.sqrt(sum((p.grad**2).sum() for p in model.parameters())).item())
    return np.array(norms)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("batch_size", [1, 3, 64])
def test_grad_norms_match_per_sample_autograd(dtype, batch_size):
    model = _tiny_model(dtype)
    images = torch.randn(7, 2, 4, 4, generator=torch.Generator().manual_seed(1), dtype=dtype)
    labels = torch.tensor([0, 1, 2, 3, 4, 0, 1])
    model.train()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    got = per_sample_grad_norms(model, images, labels, batch_size=batch_size)
    assert got.dtype == np.float64 and got.shape == (7,)
    assert model.training  # the flag is restored
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, state[k], rtol=0, atol=0)  # BN buffers untouched
    np.testing.assert_allclose(got, _reference_grad_norms(model, images, labels), rtol=1e-5)


def test_grad_norms_accept_numpy_and_bad_inputs():
    model = _tiny_model(torch.float32)
    images = np.random.default_rng(0).normal(size=(3, 2, 4, 4)).astype(np.float32)
    assert per_sample_grad_norms(model, images, np.array([0, 1, 2])).shape == (3,)
    with pytest.raises(ValueError, match="images"):
        per_sample_grad_norms(model, images.astype(np.uint8), np.array([0, 1, 2]))
    with pytest.raises(ValueError, match="labels"):
        per_sample_grad_norms(model, images, np.array([0, 1]))
    with pytest.raises(ValueError, match="batch_size"):
        per_sample_grad_norms(model, images, np.array([0, 1, 2]), batch_size=0)


def test_grand_averages_models_and_keeps_highest():
    norms = [np.array([1.0, 4.0, 2.0, 0.0]), np.array([3.0, 0.0, 2.0, 1.0])]
    np.testing.assert_array_equal(grand_scores(norms), [2.0, 2.0, 2.0, 0.5])
    sel = select_samples_grand(norms, ratio=0.5)
    assert sel.method == "grand" and sel.kept.tolist() == [0, 1]  # three-way tie -> lowest indices
    with pytest.raises(ValueError, match="grad_norms_per_model"):
        grand_scores([np.zeros(3), np.zeros(4)])
    with pytest.raises(ValueError, match="ratio"):
        select_samples_grand(norms, ratio=-0.1)


def _moderate_case():
    # class 0 (1-D): centre median 2, d = [2, 1, 0, 1, 8], median d = 1 -> scores [-1, 0, -1, 0, -7]
    # class 7: centre 102, d = [2, 2], median 2 -> scores [0, 0]
    features = np.array([[0.0], [100.0], [1.0], [2.0], [104.0], [3.0], [10.0]])
    labels = np.array([0, 7, 0, 0, 7, 0, 0])
    return features, labels


def test_moderate_scores_by_hand():
    features, labels = _moderate_case()
    np.testing.assert_allclose(moderate_scores(features, labels), [-1, 0, 0, -1, 0, 0, -7])


@pytest.mark.parametrize(("ratio", "expected"), [(0.0, [0, 1, 2, 3, 4, 5, 6]), (0.4, [0, 1, 2, 5]), (0.6, [1, 2, 5]), (0.9, [1, 2])])
def test_moderate_keeps_per_class_nearest_to_median(ratio, expected):
    # class 0 keeps round(5(1-r)), class 7 round(2(1-r)), both at least 1; ties by index
    features, labels = _moderate_case()
    sel = select_samples_moderate(features, labels, ratio=ratio)
    assert sel.method == "moderate" and sel.kept.tolist() == expected


def test_moderate_uses_per_dimension_median():
    rng = np.random.default_rng(0)
    features, labels = rng.normal(size=(9, 3)), np.array([0, 1] * 4 + [0])
    expected = np.empty(9)
    for c in (0, 1):
        f = features[labels == c]
        d = np.sqrt(((f - np.median(f, axis=0)) ** 2).sum(1))
        expected[labels == c] = -np.abs(d - np.median(d))
    np.testing.assert_allclose(moderate_scores(features, labels), expected, rtol=1e-12)


@pytest.mark.parametrize(
    ("features", "labels", "ratio", "match"),
    [
        (np.zeros((3, 2)), np.array([0, 1]), 0.5, "labels"),
        (np.zeros(3), np.array([0, 1, 0]), 0.5, "features"),
        (np.zeros((3, 2)), np.array([0, 1, 0]), 1.0, "ratio"),
    ],
)
def test_moderate_bad_inputs(features, labels, ratio, match):
    with pytest.raises(ValueError, match=match):
        select_samples_moderate(features, labels, ratio=ratio)
