import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tlpipe.distillation.compress import build_compress_memory_bank, compress_loss
from tlpipe.distillation.mse import feature_regression_loss
from tlpipe import registry
from tlpipe.distillation.queue import EmbeddingQueue
from tests.unit.parity import check_loss_parity

COMPRESS_CASES = ["C1", "C2", "C3", "C4"]  # C1-C3 two-queue, C4 one-queue


def _loss_and_grad(c, dtype):
    student = torch.tensor(c["student_emb"], dtype=dtype, requires_grad=True)
    teacher = torch.tensor(c["teacher_emb"], dtype=dtype)
    teacher_queue = torch.tensor(c["teacher_queue"], dtype=dtype)
    student_queue = torch.tensor(c["student_queue"], dtype=dtype) if "student_queue" in c else None
    loss = compress_loss(student, teacher, teacher_queue, temperature=float(c["T"]), student_queue=student_queue)
    loss.backward()
    return loss, student.grad


def _numpy_reference(student, teacher, teacher_queue, temperature, student_queue=None):
    """Short float64 re-statement of the fixture README definition (Sec. 2, CompRess)."""
    s = student / np.linalg.norm(student, axis=1, keepdims=True)
    t = teacher / np.linalg.norm(teacher, axis=1, keepdims=True)
    a_t = t @ teacher_queue.T / temperature
    a_s = s @ (teacher_queue if student_queue is None else student_queue).T / temperature

    def log_softmax(a):
        a = a - a.max(1, keepdims=True)
        return a - np.log(np.exp(a).sum(1, keepdims=True))

    log_p_t, log_p_s = log_softmax(a_t), log_softmax(a_s)
    return (np.exp(log_p_t) * (log_p_t - log_p_s)).sum(1).mean()


def _random(shape, seed, dtype=torch.float64):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


# --- compress_loss: parity with the reference ---------------------------------------------------


def test_fixture_has_the_expected_variants(distill_fixture):
    assert all("student_queue" in distill_fixture[case] for case in ("C1", "C2", "C3"))
    assert "student_queue" not in distill_fixture["C4"]
    assert distill_fixture["C2"]["student_emb"].shape[1] != distill_fixture["C2"]["teacher_emb"].shape[1]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("case", COMPRESS_CASES)
def test_compress_parity(distill_fixture, case, dtype):
    loss, grad = _loss_and_grad(distill_fixture[case], dtype)
    assert loss.dtype == dtype
    check_loss_parity(loss, grad, distill_fixture[case])


@pytest.mark.parametrize("case", COMPRESS_CASES)
def test_compress_numpy_reference_matches_fixture(distill_fixture, case):
    # guards the test's own re-statement, which the random-input tests below rely on
    c = distill_fixture[case]
    got = _numpy_reference(c["student_emb"], c["teacher_emb"], c["teacher_queue"], float(c["T"]), c.get("student_queue"))
    np.testing.assert_allclose(got, c["expected_loss"], rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize(
    ("batch", "d_s", "d_t", "size", "temperature", "two_queue"),
    [(1, 4, 4, 3, 0.04, False), (1, 3, 5, 7, 0.2, True), (5, 8, 8, 10, 0.1, False), (6, 8, 12, 20, 0.07, True), (3, 2, 2, 1, 1.0, True)],
)
def test_compress_matches_numpy_reference(batch, d_s, d_t, size, temperature, two_queue):
    rng = np.random.default_rng(batch * 1000 + d_s * 10 + d_t)
    student, teacher = rng.normal(size=(batch, d_s)), rng.normal(size=(batch, d_t))
    teacher_queue = rng.normal(size=(size, d_t))
    student_queue = rng.uniform(-1, 1, size=(size, d_s)) if two_queue else None
    got = compress_loss(
        torch.tensor(student), torch.tensor(teacher), torch.tensor(teacher_queue), temperature=temperature,
        student_queue=None if student_queue is None else torch.tensor(student_queue),
    )
    expected = _numpy_reference(student, teacher, teacher_queue, temperature, student_queue)
    assert got.item() == pytest.approx(expected, rel=1e-12, abs=1e-14)


# --- compress_loss: properties -------------------------------------------------------------------


@pytest.mark.parametrize("two_queue", [False, True])
def test_compress_batch_of_one(two_queue):
    student = _random((1, 6), 0).requires_grad_(True)
    teacher, teacher_queue = _random((1, 6), 1), _random((9, 6), 2)
    student_queue = _random((9, 6), 3) if two_queue else None
    loss = compress_loss(student, teacher, teacher_queue, temperature=0.04, student_queue=student_queue)
    loss.backward()
    assert loss.ndim == 0 and torch.isfinite(loss) and loss.item() >= 0
    assert student.grad.shape == (1, 6) and torch.isfinite(student.grad).all()
    expected = _numpy_reference(student.detach().numpy(), teacher.numpy(), teacher_queue.numpy(), 0.04,
                                None if student_queue is None else student_queue.numpy())
    assert loss.item() == pytest.approx(expected, rel=1e-12)
    # a one-row batch is the same as that row's term in a larger batch
    pair = compress_loss(torch.cat([student.detach(), _random((1, 6), 4)]), torch.cat([teacher, _random((1, 6), 5)]),
                         teacher_queue, temperature=0.04, student_queue=student_queue)
    second = compress_loss(_random((1, 6), 4), _random((1, 6), 5), teacher_queue, temperature=0.04, student_queue=student_queue)
    assert pair.item() == pytest.approx((loss.item() + second.item()) / 2, rel=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("temperature", [1e-8, 1e-4, 1e3])
def test_compress_extreme_temperatures_stay_finite(dtype, temperature):
    student = _random((4, 8), 10, dtype).requires_grad_(True)
    teacher = _random((4, 8), 11, dtype)
    teacher_queue = F.normalize(_random((16, 8), 12, dtype), dim=1)
    student_queue = build_compress_memory_bank(16, 8, seed=13, dtype=dtype).tensor
    for queue in (None, student_queue):
        student.grad = None
        loss = compress_loss(student, teacher, teacher_queue, temperature=temperature, student_queue=queue)
        loss.backward()
        assert torch.isfinite(loss) and loss.item() >= 0
        assert torch.isfinite(student.grad).all()


def test_compress_tiny_temperature_is_hard_target_cross_entropy():
    # T -> 0: p_T is one-hot on the teacher's nearest bank row, so KL -> CE(a_S, argmax a_T)
    student, teacher, bank = _random((5, 6), 20), _random((5, 6), 21), F.normalize(_random((11, 6), 22), dim=1)
    temperature = 1e-6
    loss = compress_loss(student, teacher, bank, temperature=temperature)
    logits = F.normalize(student, dim=1) @ bank.T / temperature
    target = (F.normalize(teacher, dim=1) @ bank.T).argmax(dim=1)
    assert loss.item() == pytest.approx(F.cross_entropy(logits, target).item(), rel=1e-9)


def test_compress_huge_temperature_is_near_zero():
    student, teacher, bank = _random((3, 4), 23), _random((3, 4), 24), _random((7, 4), 25)
    assert 0 <= compress_loss(student, teacher, bank, temperature=1e6).item() < 1e-10


def test_compress_identical_embeddings_one_queue_give_zero_loss_and_gradient():
    teacher, bank = _random((4, 5), 30), F.normalize(_random((12, 5), 31), dim=1)
    student = teacher.clone().requires_grad_(True)
    loss = compress_loss(student, teacher, bank, temperature=0.04)
    loss.backward()
    assert loss.item() == 0.0
    assert student.grad.abs().max().item() < 1e-12


def test_compress_is_invariant_to_embedding_scale():
    student, teacher, bank = _random((3, 4), 32), _random((3, 4), 33), _random((6, 4), 34)
    base = compress_loss(student, teacher, bank, temperature=0.1)
    scaled = compress_loss(3.0 * student, 0.5 * teacher, bank, temperature=0.1)
    assert scaled.item() == pytest.approx(base.item(), rel=1e-12)


@pytest.mark.parametrize("two_queue", [False, True])
def test_compress_gradient_matches_finite_differences(two_queue):
    student = _random((3, 4), 40).requires_grad_(True)
    teacher, teacher_queue = _random((3, 5 if two_queue else 4), 41), _random((6, 5 if two_queue else 4), 42)
    student_queue = _random((6, 4), 43) if two_queue else None
    assert torch.autograd.gradcheck(
        lambda x: compress_loss(x, teacher, teacher_queue, temperature=0.3, student_queue=student_queue), (student,)
    )


def test_compress_teacher_and_queues_get_no_gradient():
    teacher = torch.randn(2, 4, requires_grad=True)
    teacher_queue = torch.randn(5, 4, requires_grad=True)
    student_queue = torch.randn(5, 3, requires_grad=True)
    student = torch.randn(2, 3, requires_grad=True)
    compress_loss(student, teacher, teacher_queue, temperature=0.1, student_queue=student_queue).backward()
    assert teacher.grad is None and teacher_queue.grad is None and student_queue.grad is None
    assert student.grad is not None


def test_compress_caller_may_enqueue_before_backward():
    # both banks are copied: overwriting them after the forward pass leaves the loss and gradient intact
    teacher_bank, student_bank = build_compress_memory_bank(8, 4, seed=1, dtype=torch.float64), build_compress_memory_bank(8, 3, seed=2, dtype=torch.float64)
    student, teacher = _random((2, 3), 50).requires_grad_(True), _random((2, 4), 51)
    loss = compress_loss(student, teacher, teacher_bank.tensor, temperature=0.04, student_queue=student_bank.tensor)
    expected = _numpy_reference(student.detach().numpy(), teacher.numpy(), teacher_bank.tensor.numpy().copy(), 0.04,
                                student_bank.tensor.numpy().copy())
    reference = student.detach().clone().requires_grad_(True)
    compress_loss(reference, teacher, teacher_bank.tensor.clone(), temperature=0.04, student_queue=student_bank.tensor.clone()).backward()
    teacher_bank.enqueue(teacher)
    student_bank.enqueue(student)
    loss.backward()
    assert loss.item() == pytest.approx(expected, rel=1e-12)
    torch.testing.assert_close(student.grad, reference.grad, rtol=0, atol=0)
    assert teacher_bank.pointer == 2 and student_bank.pointer == 2


def test_compress_accepts_other_dtypes_for_teacher_and_queue():
    student = _random((2, 4), 60, torch.float32)
    loss = compress_loss(student, _random((2, 4), 61), _random((5, 4), 62), temperature=0.1)
    assert loss.dtype == torch.float32


@pytest.mark.parametrize(
    ("student", "teacher", "teacher_queue", "student_queue", "match"),
    [
        ((4,), (1, 4), (3, 4), None, "student"),
        ((0, 4), (0, 4), (3, 4), None, "student"),
        ((2, 0), (2, 4), (3, 4), (3, 0), "student"),
        ((2, 4), (3, 4), (3, 4), None, "teacher"),
        ((2, 4), (4,), (3, 4), None, "teacher"),
        ((2, 4), (2, 4), (3, 5), None, "teacher_queue"),
        ((2, 4), (2, 4), (0, 4), None, "teacher_queue"),
        ((2, 4), (2, 4), (4,), None, "teacher_queue"),
        ((2, 4), (2, 5), (3, 5), None, "student_queue"),  # one queue needs d_s = d_t
        ((2, 4), (2, 5), (3, 5), (3, 5), "student_queue"),
        ((2, 4), (2, 5), (3, 5), (4, 4), "student_queue"),  # K must match the teacher bank
        ((2, 4), (2, 5), (3, 5), (12,), "student_queue"),
    ],
)
def test_compress_bad_shapes(student, teacher, teacher_queue, student_queue, match):
    sq = None if student_queue is None else torch.ones(student_queue)
    with pytest.raises(ValueError, match=match):
        compress_loss(torch.ones(student), torch.ones(teacher), torch.ones(teacher_queue), temperature=0.04, student_queue=sq)


@pytest.mark.parametrize("temperature", [0.0, -0.04, float("inf"), float("nan"), "x", None])
def test_compress_bad_temperature(temperature):
    with pytest.raises(ValueError, match="temperature"):
        compress_loss(torch.ones(2, 3), torch.ones(2, 3), torch.ones(4, 3), temperature=temperature)


# --- build_compress_memory_bank ------------------------------------------------------------------


def test_memory_bank_init_is_uniform_seeded_and_a_queue():
    a, b, c = (build_compress_memory_bank(4000, 12, seed=s) for s in (1, 1, 2))
    assert isinstance(a, EmbeddingQueue) and a.tensor.shape == (4000, 12) and a.tensor.dtype == torch.float32
    bound = 1 / math.sqrt(12 / 3)
    assert a.tensor.abs().max().item() <= bound and a.tensor.min().item() < -0.99 * bound < 0.99 * bound < a.tensor.max().item()
    assert torch.equal(a.tensor, b.tensor) and not torch.equal(a.tensor, c.tensor)
    # the bound makes E||row||^2 = d * a^2 / 3 = 1, though single rows are not unit norm
    assert a.tensor.pow(2).sum(1).mean().item() == pytest.approx(1.0, abs=0.02)
    assert (a.tensor.norm(dim=1) - 1).abs().max().item() > 0.1
    assert a.pointer == 0 and not a.tensor.requires_grad and list(a.parameters()) == []
    assert build_compress_memory_bank(3, 2, dtype=torch.float64).tensor.dtype == torch.float64


def test_memory_bank_matches_reference_draw():
    # the reference: torch.rand(K, d).mul_(2 * stdv).add_(-stdv) with stdv = 1 / sqrt(d / 3)
    stdv = 1.0 / math.sqrt(6 / 3)
    expected = torch.rand(5, 6, generator=torch.Generator().manual_seed(7)).mul_(2 * stdv).add_(-stdv)
    assert torch.equal(build_compress_memory_bank(5, 6, seed=7).tensor, expected)


def test_memory_bank_enqueue_normalises_and_default_queue_is_unchanged():
    bank = build_compress_memory_bank(4, 3, seed=0)
    bank.enqueue(torch.tensor([[3.0, 0.0, 4.0]]))
    torch.testing.assert_close(bank.tensor[0], torch.tensor([0.6, 0.0, 0.8]))
    assert bank.pointer == 1
    # building a CompRess bank leaves the plain queue's Gaussian, unit-norm init alone
    plain = EmbeddingQueue(4, 3, seed=0)
    torch.testing.assert_close(plain.tensor.norm(dim=1), torch.ones(4))
    assert torch.equal(plain.tensor, F.normalize(torch.randn(4, 3, generator=torch.Generator().manual_seed(0)), dim=1))


@pytest.mark.parametrize(("kwargs", "match"), [({"size": 0, "dim": 2}, "size"), ({"size": 2, "dim": 0}, "dim"), ({"size": 2, "dim": 2, "dtype": torch.long}, "dtype")])
def test_memory_bank_bad_construction(kwargs, match):
    with pytest.raises(ValueError, match=match):
        build_compress_memory_bank(**kwargs)


# --- feature_regression_loss ---------------------------------------------------------------------


@pytest.mark.parametrize(("batch", "dim"), [(1, 3), (4, 8), (7, 2)])
def test_regression_matches_hand_formula(batch, dim):
    rng = np.random.default_rng(batch * 10 + dim)
    student, teacher = rng.normal(size=(2, batch, dim))
    got = feature_regression_loss(torch.tensor(student), torch.tensor(teacher))
    cos = (student * teacher).sum(1) / (np.linalg.norm(student, axis=1) * np.linalg.norm(teacher, axis=1))
    assert got.dtype == torch.float64 and got.ndim == 0
    assert got.item() == pytest.approx((2 - 2 * cos).mean(), rel=1e-12)
    raw = feature_regression_loss(torch.tensor(student), torch.tensor(teacher), normalize=False)
    assert raw.item() == pytest.approx(((student - teacher) ** 2).sum(1).mean(), rel=1e-12)


def test_regression_unnormalised_is_mse_times_dim():
    student, teacher = _random((5, 6), 70), _random((5, 6), 71)
    got = feature_regression_loss(student, teacher, normalize=False)
    assert got.item() == pytest.approx(6 * F.mse_loss(student, teacher).item(), rel=1e-12)


def test_regression_normalised_is_scale_invariant_and_bounded():
    student, teacher = _random((4, 3), 72), _random((4, 3), 73)
    base = feature_regression_loss(student, teacher)
    assert feature_regression_loss(5 * student, 0.1 * teacher).item() == pytest.approx(base.item(), rel=1e-12)
    assert feature_regression_loss(student, -student).item() == pytest.approx(4.0, rel=1e-12)


@pytest.mark.parametrize("normalize", [True, False])
def test_regression_zero_when_equal(normalize):
    teacher = _random((3, 5), 74)
    student = teacher.clone().requires_grad_(True)
    loss = feature_regression_loss(student, teacher, normalize=normalize)
    loss.backward()
    assert loss.item() == 0.0 and student.grad.abs().max().item() == 0.0


@pytest.mark.parametrize("normalize", [True, False])
def test_regression_teacher_gets_no_gradient_and_gradcheck(normalize):
    teacher = torch.randn(2, 4, requires_grad=True)
    student = torch.randn(2, 4, requires_grad=True)
    feature_regression_loss(student, teacher, normalize=normalize).backward()
    assert teacher.grad is None and student.grad is not None
    x, y = _random((3, 4), 75).requires_grad_(True), _random((3, 4), 76)
    assert torch.autograd.gradcheck(lambda s: feature_regression_loss(s, y, normalize=normalize), (x,))


@pytest.mark.parametrize(
    ("student", "teacher", "match"),
    [((4,), (4,), "student"), ((0, 4), (0, 4), "student"), ((2, 4), (3, 4), "teacher"), ((2, 4), (2, 5), "teacher"), ((2, 4), (2, 4, 1), "teacher")],
)
def test_regression_bad_shapes(student, teacher, match):
    with pytest.raises(ValueError, match=match):
        feature_regression_loss(torch.ones(student), torch.ones(teacher))


def test_regression_bad_normalize():
    with pytest.raises(TypeError, match="normalize"):
        feature_regression_loss(torch.ones(2, 3), torch.ones(2, 3), normalize="yes")


def test_compress_separate_temperatures_match_the_formula():
    student, teacher = _random((3, 4), 71), _random((3, 4), 72)
    teacher_queue, student_queue = _random((6, 4), 73), _random((6, 4), 74)
    both = compress_loss(student, teacher, teacher_queue, student_queue=student_queue, temperature=0.2)
    same = compress_loss(student, teacher, teacher_queue, student_queue=student_queue, tau_s=0.2, tau_t=0.2)
    assert torch.equal(both, same)
    loss = compress_loss(student, teacher, teacher_queue, student_queue=student_queue, tau_s=0.2, tau_t=0.05)
    s, t = F.normalize(student, dim=1), F.normalize(teacher, dim=1)
    p_t = torch.softmax(t @ teacher_queue.T / 0.05, dim=1)
    log_p_s = torch.log_softmax(s @ student_queue.T / 0.2, dim=1)
    expected = (p_t * (p_t.log() - log_p_s)).sum(1).mean()
    torch.testing.assert_close(loss, expected, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("kwargs, match", [({}, r"temperature \(or tau_s\)"), ({"tau_s": 0.1}, "or tau_t"), ({"tau_t": -1.0, "tau_s": 0.1}, "^tau_t")])
def test_compress_needs_both_temperatures(kwargs, match):
    with pytest.raises(ValueError, match=match):
        compress_loss(torch.ones(2, 3), torch.ones(2, 3), torch.ones(4, 3), **kwargs)


@pytest.mark.parametrize("method", [m for m, entry in registry.DISTILLATION.items() if entry.objective])
def test_each_objective_is_a_registry_entry_whose_code_enters_the_distill_key(method):
    """The loop builds a method's objective from its registry entry alone, and editing the module that
    holds it gives distill a new key like any other code."""
    from runner.keys import code_closure

    objective = registry.load(registry.DISTILLATION[method].objective)(4, queue_size=8, tau_s=0.1, tau_t=0.05, seed=0)
    student, teacher = torch.randn(3, 4), torch.randn(3, 4)
    before = {name: b.clone() for name, b in objective.named_buffers()}
    assert torch.isfinite(objective.loss(student, teacher))
    objective.remember(student, teacher)
    assert all(not torch.equal(before[name], b) for name, b in objective.named_buffers() if name.endswith("embeddings"))
    assert registry.DISTILLATION[method].objective.partition(":")[0] in code_closure("tasks.distill")
