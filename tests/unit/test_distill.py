import numpy as np
import pytest
import torch

from tlpipe.distill import distill
from tlpipe.models import build_backbone, feature_dim

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
