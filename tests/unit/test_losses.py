import numpy as np
import pytest
import torch

from tlpipe.distillation.queue import EmbeddingQueue
from tlpipe.distillation.seed import seed_loss
from tests.unit.parity import check_loss_parity

SEED_CASES = ["S1", "S2", "S3"]


def _loss_and_grad(c, dtype):
    student = torch.tensor(c["student_emb"], dtype=dtype, requires_grad=True)
    teacher = torch.tensor(c["teacher_emb"], dtype=dtype)
    queue = torch.tensor(c["queue"], dtype=dtype)
    loss = seed_loss(student, teacher, queue, tau_s=float(c["tau_s"]), tau_t=float(c["tau_t"]))
    loss.backward()
    return loss, student.grad


def _numpy_reference(student, teacher, queue, tau_s, tau_t):
    """Short float64 re-statement of the fixture README definition."""
    s = student / np.maximum(np.linalg.norm(student, axis=1, keepdims=True), 1e-12)
    t = teacher / np.maximum(np.linalg.norm(teacher, axis=1, keepdims=True), 1e-12)
    zs = np.concatenate([(s * t).sum(1, keepdims=True), s @ queue.T], axis=1) / tau_s
    zt = np.concatenate([(t * t).sum(1, keepdims=True), t @ queue.T], axis=1) / tau_t
    p = np.exp(zt - zt.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    log_q = zs - zs.max(1, keepdims=True)
    log_q -= np.log(np.exp(log_q).sum(1, keepdims=True))
    return -(p * log_q).sum(1).mean()


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("case", SEED_CASES)
def test_seed_parity(distill_fixture, case, dtype):
    loss, grad = _loss_and_grad(distill_fixture[case], dtype)
    assert loss.dtype == dtype
    check_loss_parity(loss, grad, distill_fixture[case])


@pytest.mark.parametrize(("batch", "dim", "size", "tau_s", "tau_t"), [(1, 4, 3, 0.2, 0.07), (5, 8, 10, 0.1, 0.5), (3, 2, 1, 1.0, 1.0)])
def test_seed_matches_numpy_reference(batch, dim, size, tau_s, tau_t):
    rng = np.random.default_rng(batch * 100 + dim)
    student, teacher = rng.normal(size=(2, batch, dim))
    queue = rng.normal(size=(size, dim))
    queue /= np.linalg.norm(queue, axis=1, keepdims=True)
    got = seed_loss(torch.tensor(student), torch.tensor(teacher), torch.tensor(queue), tau_s=tau_s, tau_t=tau_t)
    assert got.item() == pytest.approx(_numpy_reference(student, teacher, queue, tau_s, tau_t), rel=1e-12)


def test_tiny_teacher_temperature_gives_one_hot_target():
    torch.manual_seed(0)
    student, teacher, queue = torch.randn(4, 6, dtype=torch.float64), torch.randn(4, 6, dtype=torch.float64), torch.randn(9, 6, dtype=torch.float64)
    queue = torch.nn.functional.normalize(queue, dim=1)
    loss = seed_loss(student, teacher, queue, tau_s=0.2, tau_t=1e-6)
    s = torch.nn.functional.normalize(student, dim=1)
    t = torch.nn.functional.normalize(teacher, dim=1)
    logits = torch.cat([(s * t).sum(1, keepdim=True), s @ queue.T], dim=1) / 0.2
    expected = torch.nn.functional.cross_entropy(logits, torch.zeros(4, dtype=torch.long))
    assert loss.item() == pytest.approx(expected.item(), rel=1e-12)


def test_equal_temperatures_and_identical_embeddings_give_zero_gradient():
    # student == teacher and tau_s == tau_t: target and prediction coincide, so the loss is the
    # target entropy and it is stationary in the student
    torch.manual_seed(1)
    teacher = torch.randn(3, 5, dtype=torch.float64)
    queue = torch.nn.functional.normalize(torch.randn(7, 5, dtype=torch.float64), dim=1)
    student = teacher.clone().requires_grad_(True)
    loss = seed_loss(student, teacher, queue, tau_s=0.3, tau_t=0.3)
    loss.backward()
    t = torch.nn.functional.normalize(teacher, dim=1)
    p = torch.softmax(torch.cat([(t * t).sum(1, keepdim=True), t @ queue.T], 1) / 0.3, dim=1)
    entropy = -(p * p.log()).sum(1).mean()
    assert loss.item() == pytest.approx(entropy.item(), rel=1e-12)
    assert student.grad.abs().max().item() < 1e-12


def test_gradient_matches_finite_differences():
    torch.manual_seed(2)
    student = torch.randn(2, 4, dtype=torch.float64, requires_grad=True)
    teacher = torch.randn(2, 4, dtype=torch.float64)
    queue = torch.nn.functional.normalize(torch.randn(6, 4, dtype=torch.float64), dim=1)
    assert torch.autograd.gradcheck(lambda x: seed_loss(x, teacher, queue, tau_s=0.2, tau_t=0.07), (student,))


def test_teacher_and_queue_get_no_gradient():
    teacher = torch.randn(2, 4, requires_grad=True)
    queue = torch.randn(5, 4, requires_grad=True)
    student = torch.randn(2, 4, requires_grad=True)
    seed_loss(student, teacher, queue, tau_s=0.2, tau_t=0.1).backward()
    assert teacher.grad is None and queue.grad is None and student.grad is not None


@pytest.mark.parametrize(
    ("student", "teacher", "queue", "match"),
    [
        ((4,), (4,), (3, 4), "student"),
        ((0, 4), (0, 4), (3, 4), "student"),
        ((2, 4), (3, 4), (3, 4), "teacher"),
        ((2, 4), (2, 5), (3, 4), "teacher"),
        ((2, 4), (2, 4), (3, 5), "queue"),
        ((2, 4), (2, 4), (0, 4), "queue"),
        ((2, 4), (2, 4), (4,), "queue"),
    ],
)
def test_seed_bad_shapes(student, teacher, queue, match):
    with pytest.raises(ValueError, match=match):
        seed_loss(torch.zeros(student), torch.zeros(teacher), torch.zeros(queue), tau_s=0.2, tau_t=0.1)


@pytest.mark.parametrize(("tau_s", "tau_t", "match"), [(0.0, 0.1, "tau_s"), (-1.0, 0.1, "tau_s"), (0.2, 0.0, "tau_t"), (0.2, float("inf"), "tau_t"), (0.2, float("nan"), "tau_t"), (0.2, "x", "tau_t")])
def test_seed_bad_temperatures(tau_s, tau_t, match):
    with pytest.raises(ValueError, match=match):
        seed_loss(torch.ones(2, 3), torch.ones(2, 3), torch.ones(4, 3), tau_s=tau_s, tau_t=tau_t)


# --- EmbeddingQueue -------------------------------------------------------------------------------


def test_queue_init_is_normalised_seeded_and_gradless():
    a, b, c = EmbeddingQueue(8, 4, seed=1), EmbeddingQueue(8, 4, seed=1), EmbeddingQueue(8, 4, seed=2)
    assert a.tensor.shape == (8, 4) and a.tensor.dtype == torch.float32
    torch.testing.assert_close(a.tensor.norm(dim=1), torch.ones(8))
    assert torch.equal(a.tensor, b.tensor) and not torch.equal(a.tensor, c.tensor)
    assert not a.tensor.requires_grad and list(a.parameters()) == []
    assert set(a.state_dict()) == {"embeddings", "ptr"}
    assert a.pointer == 0 and a.size == 8
    assert EmbeddingQueue(3, 2, dtype=torch.float64).tensor.dtype == torch.float64


def _unit_rows(n, dim, start=0):
    return torch.nn.functional.normalize(torch.arange(start, start + n * dim, dtype=torch.float32).reshape(n, dim) + 1, dim=1)


def test_enqueue_advances_and_wraps():
    q = EmbeddingQueue(5, 3)
    first, second = _unit_rows(3, 3), _unit_rows(4, 3, start=100)
    q.enqueue(first)
    assert q.pointer == 3
    torch.testing.assert_close(q.tensor[:3], first)
    q.enqueue(second)  # slots 3, 4, then wraps to 0, 1
    assert q.pointer == 2
    torch.testing.assert_close(q.tensor[[3, 4, 0, 1]], second)
    torch.testing.assert_close(q.tensor[2], first[2])


def test_enqueue_batch_of_one_and_normalises():
    q = EmbeddingQueue(2, 3)
    q.enqueue(torch.tensor([[3.0, 0.0, 4.0]], requires_grad=True))
    torch.testing.assert_close(q.tensor[0], torch.tensor([0.6, 0.0, 0.8]))
    assert q.pointer == 1 and not q.tensor.requires_grad
    q.enqueue(torch.tensor([[0.0, 2.0, 0.0]]))
    assert q.pointer == 0


def test_enqueue_batch_larger_than_queue_keeps_last_rows():
    q = EmbeddingQueue(4, 3)
    q.enqueue(_unit_rows(1, 3))  # pointer 1
    rows = _unit_rows(6, 3, start=50)
    q.enqueue(rows)  # writes slots 1,2,3,0,1,2: the last four rows land in 3,0,1,2
    assert q.pointer == (1 + 6) % 4
    torch.testing.assert_close(q.tensor[[3, 0, 1, 2]], rows[2:])


def test_enqueue_matches_one_by_one():
    a, b = EmbeddingQueue(6, 2, seed=3), EmbeddingQueue(6, 2, seed=3)
    rows = torch.randn(17, 2, generator=torch.Generator().manual_seed(0))
    a.enqueue(rows[:4])
    a.enqueue(rows[4:])
    for row in rows:
        b.enqueue(row[None])
    assert a.pointer == b.pointer
    torch.testing.assert_close(a.tensor, b.tensor)


def test_queue_to_and_state_dict_roundtrip():
    q = EmbeddingQueue(4, 2, seed=5)
    q.enqueue(_unit_rows(3, 2))
    q64 = q.to(torch.float64)
    assert q64.tensor.dtype == torch.float64 and q64.ptr.dtype == torch.long
    r = EmbeddingQueue(4, 2, seed=9)
    r.load_state_dict(EmbeddingQueue(4, 2, seed=5).state_dict())
    r.load_state_dict(q.to(torch.float32).state_dict())
    assert r.pointer == 3 and torch.equal(r.tensor, q.tensor)


@pytest.mark.parametrize(("kwargs", "match"), [({"size": 0, "dim": 2}, "size"), ({"size": 2, "dim": 0}, "dim"), ({"size": 2, "dim": 2, "dtype": torch.long}, "dtype")])
def test_queue_bad_construction(kwargs, match):
    with pytest.raises(ValueError, match=match):
        EmbeddingQueue(**kwargs)


@pytest.mark.parametrize("shape", [(3,), (2, 4), (0, 3)])
def test_enqueue_bad_shape(shape):
    with pytest.raises(ValueError, match="emb"):
        EmbeddingQueue(4, 3).enqueue(torch.ones(shape))


def test_queue_feeds_seed_loss():
    q = EmbeddingQueue(8, 4, dtype=torch.float64)
    student = torch.randn(2, 4, dtype=torch.float64, requires_grad=True)
    teacher = torch.randn(2, 4, dtype=torch.float64)
    loss = seed_loss(student, teacher, q.tensor, tau_s=0.2, tau_t=1e-4)
    q.enqueue(teacher)  # the loss is formed before the enqueue, as in the reference
    loss.backward()
    assert torch.isfinite(loss) and q.pointer == 2
