import numpy as np
import pytest
import torch

from tlpipe.distillation.representation import METHODS, distill, teacher_embeddings_of
from tlpipe.distillation.teachers import select_teachers
from tlpipe.training.models import build_backbone, feature_dim

CPU = torch.device("cpu")
SETTINGS = dict(batch_size=16, lr=5e-3, weight_decay=0.01, queue_size=64, tau_s=0.2, tau_t=0.05, seed=0, device=CPU)


def backbone(hidden_sizes, seed):
    torch.manual_seed(seed)
    return build_backbone(embedding_size=4, hidden_sizes=hidden_sizes, depths=[1] * len(hidden_sizes))


def unlabeled(n: int = 48) -> np.ndarray:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 30, size=(n, 1, 16, 16), dtype=np.uint8)
    for i in range(n):  # a bright bar at a random row: structure the teacher's features vary with
        row = rng.integers(2, 14)
        images[i, 0, row - 2 : row + 2, 3:13] = 255
    return images


def state(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def same(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("augment", [True, False])
def test_distill_trains_a_copy_of_the_student_and_leaves_the_teacher(augment):
    teacher, student = backbone([8, 16], seed=1), backbone([4, 8], seed=2)
    teacher_before, student_before = state(teacher), state(student)
    history = []
    trained, metrics = distill(student, teacher, unlabeled(), epochs=6, augment=augment,
                               on_metrics=lambda step, m: history.append(m["loss"]), **SETTINGS)
    assert same(state(teacher), teacher_before)
    assert same(state(student), student_before)  # the caller's student is copied, not trained
    assert not same(state(trained), student_before)
    assert feature_dim(trained) == 8 and not trained.training  # the backbone only; the head is dropped
    assert len(history) == 6 and metrics["loss_history"] == history and metrics["loss"] == history[-1]
    assert history[-1] < history[0]
    assert metrics["images_seen"] == 6 * 48 and metrics["images_per_s"] > 0


def test_distill_is_deterministic_given_the_seed():
    teacher = backbone([8, 16], seed=1)
    runs = [distill(backbone([4, 8], seed=2), teacher, unlabeled(), epochs=2, **SETTINGS) for _ in range(2)]
    assert same(state(runs[0][0]), state(runs[1][0]))
    assert runs[0][1]["loss_history"] == runs[1][1]["loss_history"]


@pytest.mark.parametrize("method", METHODS)
def test_every_method_trains_the_student(method):
    teacher, student = backbone([8, 16], seed=1), backbone([4, 8], seed=2)
    history = []
    trained, metrics = distill(student, teacher, unlabeled(), epochs=4, method=method, augment=False,
                               on_metrics=lambda step, m: history.append(m["loss"]), **SETTINGS)
    assert not same(state(trained), state(student))
    assert all(np.isfinite(history)) and metrics["teacher_forward"] is True
    if method != "compress":  # CompRess starts from two random banks: its first epochs are not comparable
        assert history[-1] < history[0]


def test_a_zero_weight_teacher_changes_nothing():
    teacher, other, student = backbone([8, 16], seed=1), backbone([8, 12], seed=3), backbone([4, 8], seed=2)
    alone, _ = distill(student, teacher, unlabeled(), epochs=2, **SETTINGS)
    paired, metrics = distill(student, [teacher, other], unlabeled(), epochs=2, weights=[1.0, 0.0], **SETTINGS)
    assert same(state(alone), state(paired))


def test_two_teachers_of_different_widths_each_get_a_head():
    teachers = [backbone([8, 16], seed=1), backbone([8, 12], seed=3)]
    trained, metrics = distill(backbone([4, 8], seed=2), teachers, unlabeled(), epochs=2, method="compress",
                               weights=[0.3, 0.7], **SETTINGS)
    assert feature_dim(trained) == 8 and np.isfinite(metrics["loss"])


def test_precomputed_teacher_embeddings_replace_the_teacher_in_the_loop():
    teacher, student = backbone([8, 16], seed=1), backbone([4, 8], seed=2)
    images = unlabeled()
    table = teacher_embeddings_of(teacher, images, batch_size=7, device=CPU)
    assert table.shape == (len(images), 16) and table.dtype == np.float32
    live, live_metrics = distill(student, teacher, images, epochs=2, augment=False, **SETTINGS)
    cached, cached_metrics = distill(student, teacher, images, epochs=2, augment=False, teacher_embeddings=[table],
                                     **SETTINGS)
    assert cached_metrics["teacher_forward"] is False
    np.testing.assert_allclose(cached_metrics["loss_history"], live_metrics["loss_history"], rtol=1e-4)


@pytest.mark.parametrize("kwargs, match", [
    ({"method": "kd"}, "valid options: seed, compress, mse"),
    ({"weights": [0.5]}, "summing to 1"),
    ({"weights": [0.5, 0.6]}, "summing to 1"),
    ({"weights": [-1.0, 2.0]}, "non-negative"),
    ({"teacher_embeddings": [np.zeros((48, 16)), np.zeros((48, 16))]}, "augment=False"),
    ({"teacher_embeddings": [np.zeros((48, 16)), np.zeros((47, 16))], "augment": False}, r"teacher_embeddings\[1\]"),
])
def test_bad_arguments_fail_before_training(kwargs, match):
    teachers = [backbone([8, 16], seed=1), backbone([8, 16], seed=3)]
    with pytest.raises(ValueError, match=match):
        distill(backbone([4, 8], seed=2), teachers, unlabeled(), epochs=1, **{**SETTINGS, **kwargs})


def test_no_teacher_is_an_error():
    with pytest.raises(ValueError, match="at least one teacher"):
        distill(backbone([4, 8], seed=2), [], unlabeled(), epochs=1, **SETTINGS)


def labelled(n: int = 40, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Images whose class is where their bar is (top, middle, bottom)."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 3
    images = rng.integers(0, 30, size=(n, 1, 16, 16), dtype=np.uint8)
    for i, label in enumerate(labels):
        images[i, 0, 2 + 5 * label: 5 + 5 * label, 3:13] = 255
    return images, labels


@pytest.mark.parametrize("select", ["osborn", "logme"])
def test_select_teachers_keeps_size_candidates_and_records_why(select):
    candidates = {name: backbone([8], seed) for name, seed in (("a", 0), ("b", 1), ("c", 2))}
    target, (source, source_labels) = labelled(), labelled(60, seed=1)
    chosen, record = select_teachers(candidates, target, source, source_labels, select=select, size=2, seed=0,
                                     device=CPU, max_samples=30)
    assert list(chosen) == record["chosen"] and len(chosen) == 2 and set(chosen) < set(candidates)
    assert all(chosen[name] is candidates[name] for name in chosen)
    assert set(record["candidates"]) == {"a", "b", "c"} and len(record["gain"]) == 2
    logme = {name: c["logme"] for name, c in record["candidates"].items()}
    if select == "logme":
        assert record["chosen"] == sorted(logme, key=lambda n: -logme[n])[:2]
    else:
        assert all({"domain", "task"} <= set(c) for c in record["candidates"].values())
        again = select_teachers(candidates, target, source, source_labels, select=select, size=2, seed=0,
                                device=CPU, max_samples=30)[1]
        assert again == record


def test_select_teachers_refuses_an_unknown_selector():
    with pytest.raises(ValueError, match="valid options: osborn, logme"):
        select_teachers({"a": backbone([8], 0)}, labelled(), *labelled(), select="best", size=1, seed=0, device=CPU)
