"""FixMatch (tlpipe.finetuning.fixmatch): its loss against a hand computation, its views, the unlabeled
batches the training loop takes, and the fine-tuning run that uses them."""

import math

import numpy as np
import pytest
import torch
from torchvision.transforms import v2

from tlpipe.data import images as image_sets, storage
from tlpipe.finetuning import fixmatch
from tlpipe.training import loops, models


def image_set(n: int, size: int = 16, channels: int = 1, seed: int = 0):
    pixels = np.random.default_rng(seed).integers(0, 256, (n, channels, size, size), dtype=np.uint8)
    return image_sets.read(storage.build_dataset(pixels, np.arange(n) % 2, ["a", "b"]))[0]


def test_the_unlabeled_loss_keeps_confident_weak_predictions_as_labels_for_the_strong_views():
    weak = torch.tensor([[2.0, 0.0], [0.0, 0.0], [0.0, 3.0]])  # top probabilities 0.881, 0.5, 0.953
    strong = torch.tensor([[1.0, 0.0], [5.0, -5.0], [2.0, 0.0]], requires_grad=True)
    value, confident = fixmatch.unlabeled_loss(weak, strong, threshold=0.8)
    # rows 0 and 2 pass 0.8 with labels 0 and 1; row 1 (0.5) is masked out; the mean is over all 3
    ce0, ce2 = math.log(1 + math.exp(-1.0)), math.log(1 + math.exp(2.0))
    assert value.item() == pytest.approx((ce0 + ce2) / 3, rel=1e-6)
    assert confident.item() == 2
    value.backward()
    p0, p2 = torch.softmax(torch.tensor([1.0, 0.0]), 0), torch.softmax(torch.tensor([2.0, 0.0]), 0)
    expected = torch.stack([p0 - torch.tensor([1.0, 0.0]), torch.zeros(2), p2 - torch.tensor([0.0, 1.0])]) / 3
    assert torch.allclose(strong.grad, expected, atol=1e-6)
    # at 0.95 only row 2 counts; the weak logits never get a gradient
    weak.requires_grad_(True)
    value, confident = fixmatch.unlabeled_loss(weak, strong, threshold=0.95)
    assert value.item() == pytest.approx(ce2 / 3, rel=1e-6) and confident.item() == 1
    value.backward()
    assert weak.grad is None


def test_the_weak_view_is_a_translation_of_at_most_an_eighth_of_the_side():
    image = torch.arange(16 * 16, dtype=torch.int32).reshape(1, 16, 16).to(torch.uint8)
    padded = torch.nn.functional.pad(image[None].float(), (2, 2, 2, 2), mode="reflect")[0].to(torch.uint8)
    view = fixmatch.weak_view(16, flip=False)
    for seed in range(20):
        torch.manual_seed(seed)
        out = view(image)
        assert out.shape == image.shape and out.dtype == torch.uint8
        # some 16 x 16 window of the image padded by 2 (= 16 / 8) with its reflection
        assert any(torch.equal(out, padded[:, y : y + 16, x : x + 16]) for y in range(5) for x in range(5))


def test_cutout_paints_one_gray_square_of_at_most_half_the_side():
    image = torch.zeros(3, 20, 20, dtype=torch.uint8)
    sides = []
    for seed in range(50):
        torch.manual_seed(seed)
        out = fixmatch.Cutout()(image)
        gray = (out == fixmatch.GRAY).all(0)
        assert ((out == 0) | (out == fixmatch.GRAY)).all() and image.eq(0).all()  # the input is left alone
        if gray.any():
            rows, cols = gray.any(1).nonzero().flatten(), gray.any(0).nonzero().flatten()
            assert gray[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1].all()  # one rectangle
            sides.append(max(len(rows), len(cols)))
    assert sides and max(sides) <= 10


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("encoded", [False, True])
def test_the_views_keep_uint8_at_the_training_size(channels, encoded):
    image = torch.randint(0, 256, (channels, 40, 52) if encoded else (channels, 32, 32), dtype=torch.uint8)
    for view in (fixmatch.weak_view(32, encoded=encoded), fixmatch.strong_view(32, encoded=encoded)):
        for seed in range(10):
            torch.manual_seed(seed)
            out = view(image)
            assert out.shape == (channels, 32, 32) and out.dtype == torch.uint8
    torch.manual_seed(0)
    first = fixmatch.strong_view(32, encoded=encoded)(image)
    assert any(not torch.equal(first, fixmatch.strong_view(32, encoded=encoded)(image)) for _ in range(5))


def identity_views(objective: fixmatch.FixMatch) -> fixmatch.FixMatch:
    """The same objective with views that leave the pixels as they are, so rows can be told apart."""
    objective.weak = objective.strong = v2.Identity()
    return objective


def rows_of(batch: torch.Tensor, images) -> list[int]:
    every = torch.as_tensor(images[np.arange(len(images))]).float() / 127.5 - 1
    return [int(((every - x).abs().flatten(1).amax(1) < 1e-6).nonzero()[0]) for x in batch]


def test_the_unlabeled_batches_are_mu_per_labeled_image_in_passes_drawn_per_epoch_and_resume_alike():
    images = image_set(50)
    objective = identity_views(fixmatch.FixMatch(images, mu=3))
    take = lambda epoch, skip, steps: [  # noqa: E731
        (rows_of(w, images), rows_of(s, images))
        for _, (w, s) in zip(range(steps), objective.batches(seed=0, epoch=epoch, batch_size=4, skip=skip,
                                                              device=torch.device("cpu"), shard=(0, 1),
                                                              loaders=(None, None)))]
    epoch = take(1, 0, 8)  # 12 per step; 4 steps per pass over 50 images, so two passes
    assert all(len(w) == 12 and w == s for w, s in epoch)  # both views read the same rows
    first_pass = [r for w, _ in epoch[:4] for r in w]
    assert len(set(first_pass)) == 48  # a pass reads each image at most once
    assert [r for w, _ in epoch[4:] for r in w] != first_pass  # the next pass is drawn anew
    assert take(1, 5, 3) == epoch[5:]  # a resumed epoch reads the same batches
    assert take(2, 0, 1) != epoch[:1]  # another epoch, another order
    assert take(1, 0, 8) == epoch


def test_the_weak_and_strong_views_are_drawn_independently_of_each_other():
    images = image_set(20)
    objective = fixmatch.FixMatch(images, mu=2)
    objective.strong = objective.weak  # the same transform: only the salts differ
    weak, strong = next(objective.batches(seed=0, epoch=1, batch_size=5, skip=0, device=torch.device("cpu"),
                                          shard=(0, 1), loaders=(None, None)))
    assert weak.shape == strong.shape == (10, 1, 16, 16) and not torch.equal(weak, strong)


def test_bad_settings_and_inputs_are_refused_in_one_line():
    images = image_set(4)
    for kwargs, message in (({"threshold": 0.0}, "threshold=0.0"), ({"threshold": 1.5}, "threshold=1.5"),
                            ({"mu": 0}, "mu=0"), ({"lambda_u": -1.0}, "lambda_u=-1.0")):
        with pytest.raises(ValueError, match=message):
            fixmatch.FixMatch(images, **kwargs)
    with pytest.raises(ValueError, match="read by index"):
        fixmatch.FixMatch(np.zeros((4, 1, 16, 16), dtype=np.uint8))
    backbone = models.build_backbone(arch="resnet", in_channels=1, embedding_size=4, hidden_sizes=[8], depths=[1])
    train = image_set(8)
    recipe = dict(num_classes=2, method="fixmatch", epochs=1, batch_size=4, lr=1e-3, weight_decay=0.0, seed=0,
                  device=torch.device("cpu"))
    with pytest.raises(ValueError, match="unlabeled images; there are none"):
        loops.finetune(backbone, train, train.labels, **recipe)
    with pytest.raises(ValueError, match="unlabeled images; there are none"):
        loops.finetune(backbone, train, train.labels, unlabeled=train.select([]), **recipe)
    with pytest.raises(ValueError, match="takes threshold, mu, lambda_u, flip, not eta"):
        loops.finetune(backbone, train, train.labels, unlabeled=images, method_params={"eta": 1.0},
                       **{**recipe, "method": "fixmatch"})


def test_fixmatch_fine_tuning_is_deterministic_learns_from_the_unlabeled_images_and_reports_them():
    backbone = models.build_backbone(arch="resnet", in_channels=1, embedding_size=4, hidden_sizes=[8], depths=[1])
    train, unlabeled = image_set(8), image_set(30, seed=1)
    recipe = dict(num_classes=2, epochs=2, batch_size=4, lr=1e-2, weight_decay=0.0, seed=0, device=torch.device("cpu"))
    history = []
    run = lambda **extra: loops.finetune(backbone, train, train.labels, method="fixmatch", unlabeled=unlabeled,  # noqa: E731
                                         **recipe, **extra)
    model, metrics = run(method_params={"threshold": 0.5, "mu": 2}, on_metrics=lambda e, m: history.append(m))
    again, _ = run(method_params={"threshold": 0.5, "mu": 2})
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))
    assert len(history) == 2 and 0 <= metrics["confident_fraction"] <= 1 and metrics["unlabeled_loss"] >= 0
    assert history[-1]["confident_fraction"] == metrics["confident_fraction"]
    # with lambda_u 0 the unlabeled images only share BatchNorm's batch: the unlabeled loss moved the weights
    muted, muted_metrics = run(method_params={"threshold": 0.5, "mu": 2, "lambda_u": 0.0})
    assert muted_metrics["unlabeled_loss"] == 0.0
    assert not all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), muted.state_dict().values()))


def test_arrays_are_read_as_image_sets_and_train_the_same_weights():
    backbone = models.build_backbone(arch="resnet", in_channels=1, embedding_size=4, hidden_sizes=[8], depths=[1])
    train, unlabeled = image_set(8), image_set(20, seed=1)
    every = lambda s: s[np.arange(len(s))]  # noqa: E731
    recipe = dict(num_classes=2, method="fixmatch", epochs=1, batch_size=4, lr=1e-2, weight_decay=0.0, seed=0,
                  device=torch.device("cpu"), method_params={"threshold": 0.5, "mu": 2})
    from_sets, _ = loops.finetune(backbone, train, train.labels, unlabeled=unlabeled, **recipe)
    from_arrays, _ = loops.finetune(backbone, every(train), train.labels, unlabeled=every(unlabeled), **recipe)
    assert all(torch.equal(a, b) for a, b in zip(from_sets.state_dict().values(), from_arrays.state_dict().values()))
