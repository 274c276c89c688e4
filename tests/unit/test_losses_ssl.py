import math

import pytest
import torch
from torch import nn

from tlpipe.pretraining.byol import byol_loss, byol_momentum, ema_update
from tlpipe.pretraining.ntxent import nt_xent_loss


def _cos(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(a @ b / (a.norm() * b.norm()))


def _nt_xent_reference(z1: torch.Tensor, z2: torch.Tensor, t: float) -> float:
    """SimCLR Eq. 1 as written: l(i, j) over the 2N views, summed over both orders of each pair."""
    views = list(z1) + list(z2)
    n = len(z1)

    def l(i: int, j: int) -> float:
        # log-sum-exp with the max taken out, so tiny temperatures stay finite
        logits = [_cos(views[i], views[k]) / t for k in range(2 * n) if k != i]
        top = max(logits)
        log_denominator = top + math.log(sum(math.exp(v - top) for v in logits))
        return -(_cos(views[i], views[j]) / t - log_denominator)

    return sum(l(k, k + n) + l(k + n, k) for k in range(n)) / (2 * n)


@pytest.mark.parametrize(("n", "d"), [(2, 3), (3, 4), (5, 8)])
@pytest.mark.parametrize("temperature", [1e-3, 0.1, 0.5, 1.0, 100.0])
def test_nt_xent_matches_the_loop_reference(n, d, temperature):
    g = torch.Generator().manual_seed(n * 10 + d)
    z1, z2 = torch.randn(2, n, d, dtype=torch.float64, generator=g)
    got = nt_xent_loss(z1, z2, temperature=temperature)
    assert got.dtype == torch.float64 and got.ndim == 0 and torch.isfinite(got)
    assert got.item() == pytest.approx(_nt_xent_reference(z1, z2, temperature), rel=1e-10, abs=1e-10)


def test_nt_xent_at_a_huge_temperature_is_chance():
    z1, z2 = torch.randn(2, 4, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    loss = nt_xent_loss(z1, z2, temperature=1e8)
    assert loss.item() == pytest.approx(math.log(2 * 4 - 1), rel=1e-6)


def test_nt_xent_with_aligned_orthogonal_views_and_a_small_temperature_is_zero():
    z = torch.eye(3, dtype=torch.float64) * torch.tensor([1.0, 2.0, 0.5], dtype=torch.float64)[:, None]
    assert nt_xent_loss(z, 3 * z, temperature=1e-2).item() == pytest.approx(0.0, abs=1e-30)


def test_nt_xent_ignores_scale_and_swapping_the_views():
    z1, z2 = torch.randn(2, 3, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    loss = nt_xent_loss(z1, z2, temperature=0.3)
    assert nt_xent_loss(7 * z1, 0.1 * z2, temperature=0.3).item() == pytest.approx(loss.item(), rel=1e-12)
    assert nt_xent_loss(z2, z1, temperature=0.3).item() == pytest.approx(loss.item(), rel=1e-12)


def test_nt_xent_keeps_float32():
    z1, z2 = torch.randn(2, 4, 3)
    assert nt_xent_loss(z1, z2, temperature=0.5).dtype == torch.float32


@pytest.mark.parametrize(("n", "temperature"), [(2, 0.5), (4, 0.1)])
def test_nt_xent_gradient_matches_finite_differences(n, temperature):
    g = torch.Generator().manual_seed(n)
    z1, z2 = torch.randn(2, n, 3, dtype=torch.float64, generator=g).unbind(0)
    inputs = (z1.clone().requires_grad_(True), z2.clone().requires_grad_(True))
    assert torch.autograd.gradcheck(lambda a, b: nt_xent_loss(a, b, temperature=temperature), inputs)


@pytest.mark.parametrize(
    ("z1", "z2", "match"),
    [((1, 4), (1, 4), "z1"), ((4,), (4,), "z1"), ((3, 4), (2, 4), "z2"), ((3, 4), (3, 5), "z2")],
)
def test_nt_xent_bad_shapes(z1, z2, match):
    with pytest.raises(ValueError, match=match):
        nt_xent_loss(torch.ones(z1), torch.ones(z2), temperature=0.5)


@pytest.mark.parametrize("temperature", [0.0, -0.1, float("inf"), float("nan"), "x"])
def test_nt_xent_bad_temperature(temperature):
    with pytest.raises(ValueError, match="temperature"):
        nt_xent_loss(torch.ones(2, 3), torch.ones(2, 3), temperature=temperature)


# --- BYOL -----------------------------------------------------------------------------------------


def _byol_reference(p: torch.Tensor, z: torch.Tensor) -> float:
    """Grill et al. Eq. 2 per pair, ||p/||p|| - z/||z|| ||^2, averaged over the batch."""
    return sum(float(((pi / pi.norm() - zi / zi.norm()) ** 2).sum()) for pi, zi in zip(p, z)) / len(p)


@pytest.mark.parametrize(("b", "d"), [(1, 3), (2, 4), (6, 8)])
def test_byol_loss_matches_the_loop_reference(b, d):
    g = torch.Generator().manual_seed(b * 10 + d)
    p, z = torch.randn(2, b, d, dtype=torch.float64, generator=g)
    got = byol_loss(p, z)
    assert got.dtype == torch.float64 and got.ndim == 0
    assert got.item() == pytest.approx(_byol_reference(p, z), rel=1e-12)


def test_byol_loss_extremes_and_scale_invariance():
    p = torch.tensor([[1.0, 2.0], [0.0, 3.0]], dtype=torch.float64)
    assert byol_loss(p, 5 * p).item() == pytest.approx(0.0, abs=1e-15)
    assert byol_loss(p, -p).item() == pytest.approx(4.0)


def test_byol_loss_stops_the_gradient_into_z_and_matches_finite_differences():
    p = torch.randn(2, 4, dtype=torch.float64, requires_grad=True)
    z = torch.randn(2, 4, dtype=torch.float64, requires_grad=True)
    byol_loss(p, z).backward()
    assert z.grad is None and p.grad is not None
    assert torch.autograd.gradcheck(lambda x: byol_loss(x, z), (p.detach().clone().requires_grad_(True),))


@pytest.mark.parametrize(("p", "z", "match"), [((0, 3), (0, 3), "p"), ((3,), (3,), "p"), ((2, 3), (2, 4), "z")])
def test_byol_loss_bad_shapes(p, z, match):
    with pytest.raises(ValueError, match=match):
        byol_loss(torch.ones(p), torch.ones(z))


@pytest.mark.parametrize(("step", "expected"), [(0, 0.9), (50, 0.95), (100, 1.0), (25, 1 - 0.1 * (math.cos(math.pi / 4) + 1) / 2)])
def test_byol_momentum_cosine_schedule(step, expected):
    assert byol_momentum(step, 100, 0.9) == pytest.approx(expected, rel=1e-12)


def test_byol_momentum_rises_monotonically():
    taus = [byol_momentum(k, 10, 0.99) for k in range(11)]
    assert taus == sorted(taus) and taus[0] == pytest.approx(0.99) and taus[-1] == 1.0


@pytest.mark.parametrize(
    ("step", "total", "base", "match"),
    [(-1, 10, 0.9, "step"), (11, 10, 0.9, "step"), (0, 0, 0.9, "total_steps"), (0, 10, 1.1, "base"), (0, 10, -0.1, "base")],
)
def test_byol_momentum_bad_arguments(step, total, base, match):
    with pytest.raises(ValueError, match=match):
        byol_momentum(step, total, base)


def _net(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))
    net(torch.randn(8, 3))  # train-mode forward: running statistics move away from their init
    return net


def test_ema_update_averages_parameters_and_copies_buffers():
    target, online = _net(0), _net(1)
    before = {k: v.clone() for k, v in target.state_dict().items()}
    online_state = {k: v.clone() for k, v in online.state_dict().items()}
    ema_update(target, online, 0.9)
    params = {name for name, _ in target.named_parameters()}
    for name, value in target.state_dict().items():
        if name in params:
            torch.testing.assert_close(value, 0.9 * before[name] + 0.1 * online_state[name])
        else:
            assert torch.equal(value, online_state[name])  # running_mean, running_var, num_batches_tracked
    assert all(torch.equal(v, online_state[k]) for k, v in online.state_dict().items())


@pytest.mark.parametrize("momentum", [0.0, 1.0])
def test_ema_update_is_exact_at_the_ends(momentum):
    target, online = _net(0), _net(1)
    before = [p.clone() for p in target.parameters()]
    ema_update(target, online, momentum)
    expected = before if momentum == 1.0 else list(online.parameters())
    assert all(torch.equal(a, b) for a, b in zip(target.parameters(), expected))


def test_ema_update_bad_arguments():
    with pytest.raises(ValueError, match="momentum"):
        ema_update(_net(0), _net(1), 1.5)
    with pytest.raises(ValueError, match="parameters"):
        ema_update(_net(0), nn.Sequential(nn.Linear(3, 5), nn.BatchNorm1d(5), nn.Linear(5, 2)), 0.9)
