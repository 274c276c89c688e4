"""KRR-ST (tlpipe.distillation.krr_st): parity of the outer loss, its gradients and the pool's SGD step with the
authors' code (tests/fixtures/krr_st.*, cases K1-K3), and the loops on tiny data."""

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from tlpipe.distillation import kernel_ridge, krr_st, synthetic_set
from tlpipe.training.checkpoints import Checkpoint
from tlpipe.training.models import build_backbone

FIXTURES = Path(__file__).parents[1] / "fixtures"
CASES = ("K1", "K2", "K3")
PARAMS = ("embed_weight", "embed_bias", "fc_weight", "fc_bias")
TINY = {"arch": "resnet", "embedding_size": 4, "hidden_sizes": [8], "depths": [1],
        "downsample_in_first_stage": True, "layer_type": "basic", "patch_size": 2, "pretrained": None}


def case(name: str) -> dict:
    stored = np.load(FIXTURES / "krr_st.npz")
    return {key.split("__", 1)[1]: stored[key] for key in stored.files if key.startswith(f"{name}__")}


class OneLayer(nn.Module):
    """The fixtures' pool model: embed(x) = relu(flatten(x) W^T + b), forward = embed(x) fc_W^T + fc_b."""

    def __init__(self, c: dict):
        super().__init__()
        for name in PARAMS:
            setattr(self, name, nn.Parameter(torch.tensor(c[name], dtype=torch.float64)))

    def embed(self, x):
        return torch.relu(x.reshape(len(x), -1) @ self.embed_weight.T + self.embed_bias)

    def forward(self, x):
        return self.embed(x) @ self.fc_weight.T + self.fc_bias


def as64(array) -> torch.Tensor:
    return torch.tensor(array, dtype=torch.float64)


@pytest.mark.parametrize("name", CASES)
def test_outer_loss_and_gradients_match_the_authors_code(name):
    c = case(name)
    model = OneLayer(c).eval()
    x_syn, y_syn = as64(c["x_syn"]).requires_grad_(), as64(c["y_syn"]).requires_grad_()
    loss, extra = kernel_ridge.krr_loss(model.embed, as64(c["x_real"]), as64(c["y_real"]), x_syn, y_syn)
    grad_x, grad_y = torch.autograd.grad(loss, [x_syn, y_syn])
    np.testing.assert_allclose(loss.item(), c["expected_loss"], rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(grad_x.numpy(), c["expected_grad_x_syn"], rtol=1e-7, atol=1e-10)
    np.testing.assert_allclose(grad_y.numpy(), c["expected_grad_y_syn"], rtol=1e-7, atol=1e-10)
    np.testing.assert_allclose(extra["lambda"].item(), c["expected_lambda"], rtol=1e-12, atol=0)
    np.testing.assert_allclose(extra["prediction"].numpy(), c["expected_prediction"], rtol=1e-7, atol=1e-10)
    assert all(p.grad is None for p in model.parameters())  # the outer loss trains no pool model


def test_outer_loss_in_float32_on_the_full_rank_case():
    c = case("K1")
    model = OneLayer(c).float().eval()
    x_syn = torch.tensor(c["x_syn"], dtype=torch.float32, requires_grad=True)
    y_syn = torch.tensor(c["y_syn"], dtype=torch.float32, requires_grad=True)
    loss, _ = kernel_ridge.krr_loss(model.embed, torch.tensor(c["x_real"], dtype=torch.float32),
                              torch.tensor(c["y_real"], dtype=torch.float32), x_syn, y_syn)
    grad_x, = torch.autograd.grad(loss, [x_syn])
    np.testing.assert_allclose(loss.item(), c["expected_loss"], rtol=1e-5)
    expected = c["expected_grad_x_syn"]
    np.testing.assert_allclose(grad_x.numpy(), expected, rtol=0, atol=1e-5 * np.abs(expected).max())


def test_a_ridge_that_is_not_detached_would_be_caught():
    """The fixtures tell the detached ridge from a differentiated one: guard that our test would see it."""
    c = case("K2")
    model = OneLayer(c).eval()
    x_syn = as64(c["x_syn"]).requires_grad_()
    phi = kernel_ridge.kernel_features(model.embed, x_syn)
    k_ss = phi @ phi.T
    phi_r = kernel_ridge.kernel_features(model.embed, as64(c["x_real"])).detach()
    ridge = kernel_ridge.RIDGE * torch.trace(k_ss)  # not detached
    pred = phi_r @ phi.T @ torch.linalg.solve(k_ss + ridge * torch.eye(len(k_ss), dtype=torch.float64), as64(c["y_syn"]))
    wrong, = torch.autograd.grad(torch.nn.functional.mse_loss(pred, as64(c["y_real"])), [x_syn])
    assert not np.allclose(wrong.numpy(), c["expected_grad_x_syn"], rtol=1e-7, atol=1e-10)


def test_pool_sgd_steps_match_the_authors_update():
    c = case("K1")
    member = kernel_ridge.PoolMember(OneLayer(c))
    x_syn, y_syn = as64(c["x_syn"]), as64(c["y_syn"])
    lr, wd = float(c["inner_lr"]), float(c["inner_weight_decay"])
    assert float(c["inner_momentum"]) == kernel_ridge.POOL_MOMENTUM
    for step in (1, 2):
        loss = member.sgd_step(x_syn, y_syn, lr=lr, weight_decay=wd)
        np.testing.assert_allclose(loss, c[f"expected_inner_loss_step{step}"], rtol=1e-12, atol=0)
        for name in PARAMS:
            np.testing.assert_allclose(getattr(member.model, name).detach().numpy(),
                                       c[f"expected_inner_step{step}_{name}"], rtol=1e-10, atol=1e-12)
    assert int(member.steps) == 2


def test_the_first_step_gradient_is_the_fixtures():
    c = case("K1")
    model = OneLayer(c)
    loss = torch.nn.functional.mse_loss(model(as64(c["x_syn"])), as64(c["y_syn"]))
    grads = torch.autograd.grad(loss, [getattr(model, n) for n in PARAMS])
    for name, grad in zip(PARAMS, grads):
        np.testing.assert_allclose(grad.numpy(), c[f"expected_inner_grad_step1_{name}"], rtol=1e-10, atol=1e-12)


def make_images(n=48, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(n, 1, 8, 8), dtype=np.uint8)


def tiny_teacher(seed=0):
    torch.manual_seed(seed)
    return build_backbone(in_channels=1, **{**TINY, "hidden_sizes": [6]}).eval()


def run_dataset(images, teacher, **kw):
    args = dict(synthetic_size=6, steps=8, batch_size=12, lr=0.01, pool_size=2, online_steps=3, online_lr=0.05,
                online_weight_decay=1e-3, seed=3, device=torch.device("cpu"), augment=False, rounds=4)
    args.update(kw)
    return krr_st.distill_dataset(teacher, images, kernel_ridge.regressor_factory(TINY, 1, 6), **args)


def test_pool_restarts_a_model_after_online_steps_and_trains_it_again():
    make = kernel_ridge.regressor_factory(TINY, 1, 3)
    pool = kernel_ridge.ModelPool(make, 1, online_steps=2, lr=0.1, weight_decay=0.0, seed=0)
    x, y = torch.randn(4, 1, 8, 8), torch.randn(4, 3)
    pool.update(0, x, y)
    pool.update(0, x, y)
    trained = {k: v.clone() for k, v in pool.members[0].model.state_dict().items()}
    pool.update(0, x, y)  # steps == online_steps: a fresh model, nothing trained
    member = pool.members[0]
    assert int(member.steps) == 0 and int(member.resets) == 1
    assert all(torch.equal(v, make(pool._seed(0, 1)).state_dict()[k]) for k, v in member.model.state_dict().items())
    assert not torch.equal(trained["head.weight"], member.model.head.weight)
    pool.update(0, x, y)  # unlike the authors' pool, the fresh model trains
    assert int(member.steps) == 1


def test_distill_dataset_learns_a_set_and_is_reproducible():
    images, teacher = make_images(), tiny_teacher()
    rounds = []
    synthetic, metrics = run_dataset(images, teacher, on_metrics=lambda r, m: rounds.append((r, m)))
    again, _ = run_dataset(images, teacher)
    assert synthetic.images.shape == (6, 1, 8, 8) and synthetic.targets.shape == (6, 6)
    assert torch.equal(synthetic.images, again.images) and torch.equal(synthetic.targets, again.targets)
    assert [r for r, _ in rounds] == [1, 2, 3, 4] and {"krr_loss", "outer_lr"} <= set(rounds[0][1])
    assert metrics["images_seen"] == 8 * 12 and metrics["teacher_forward"]
    start, _ = run_dataset(images, teacher, steps=1, rounds=1, lr=1e-12)
    assert not torch.allclose(synthetic.images, start.images)  # the images moved


def test_teacher_table_gives_the_same_set_as_the_live_teacher_without_augmentation():
    images, teacher = make_images(), tiny_teacher()
    from tlpipe.distillation.representation import teacher_embeddings_of

    table = torch.as_tensor(teacher_embeddings_of(teacher, images, batch_size=16, device=torch.device("cpu")))
    cached, m_cached = run_dataset(images, teacher, teacher_table=table)
    live, m_live = run_dataset(images, teacher)
    assert m_live["teacher_forward"] and not m_cached["teacher_forward"]
    torch.testing.assert_close(cached.images, live.images, rtol=1e-4, atol=1e-5)


def test_resume_after_an_interruption_gives_the_uninterrupted_set(tmp_path):
    images, teacher = make_images(), tiny_teacher()
    whole, _ = run_dataset(images, teacher)

    class Stop(Exception):
        pass

    def stop_after_round_two(r, m):
        if r == 2:
            raise Stop

    checkpoint = Checkpoint(tmp_path / "ck")
    with pytest.raises(Stop):
        run_dataset(images, teacher, on_metrics=stop_after_round_two, checkpoint=checkpoint)
    resumed, metrics = run_dataset(images, teacher, checkpoint=checkpoint)
    assert metrics["resumed_from_epoch"] == 2  # round 2 ended in the callback, before its save
    torch.testing.assert_close(resumed.images, whole.images, rtol=0, atol=0)
    torch.testing.assert_close(resumed.targets, whole.targets, rtol=0, atol=0)


def test_save_and_load_keep_the_set(tmp_path):
    synthetic = synthetic_set.SyntheticSet(torch.randn(5, 1, 8, 8), torch.randn(5, 3))
    synthetic_set.save_synthetic(synthetic, tmp_path / "s", {"teacher": "pretrain"})
    loaded, meta = synthetic_set.load_synthetic(tmp_path / "s")
    assert torch.equal(loaded.images, synthetic.images) and meta["size"] == 5 and meta["target_dim"] == 3
    with pytest.raises(ValueError, match="holds no synthetic set"):
        synthetic_set.load_synthetic(tmp_path)


def test_pretraining_on_the_synthetic_set_fits_its_targets():
    torch.manual_seed(0)
    synthetic = synthetic_set.SyntheticSet(torch.rand(16, 1, 8, 8) * 2 - 1, torch.randn(16, 4))
    backbone = build_backbone(in_channels=1, **TINY)
    _, metrics = krr_st.pretrain_on_synthetic(backbone, synthetic, epochs=40, batch_size=8, lr=0.01,
                                              weight_decay=0.0, seed=0, device=torch.device("cpu"))
    assert metrics["loss_history"][-1] < 0.5 * metrics["loss_history"][0]


@pytest.mark.parametrize("kw, message", [
    ({"synthetic_size": 0}, "synthetic_size"),
    ({"synthetic_size": 49}, "synthetic_size"),
    ({"steps": -1}, "steps=-1"),
    ({"augment": True, "teacher_table": torch.zeros(48, 6)}, "augment=False"),
    ({"teacher_table": torch.zeros(47, 6)}, "teacher_table has shape"),
    ({"pool_size": 0}, "pool size"),
])
def test_bad_arguments_are_refused(kw, message):
    with pytest.raises(ValueError, match=message):
        run_dataset(make_images(), tiny_teacher(), **kw)


def test_initial_rows_random_and_kmeans():
    rows = krr_st.initial_rows(50, 7, init="random", seed=1)
    assert len(set(rows)) == 7 and list(rows) == sorted(rows)
    # two tight clusters far apart: k-means with 2 picks one image from each
    features = np.concatenate([np.zeros((20, 3)), np.full((30, 3), 10.0)]) + np.random.default_rng(0).normal(0, .1, (50, 3))
    picked = krr_st.initial_rows(50, 2, init="kmeans", seed=0, features=features)
    assert picked[0] < 20 <= picked[1]
    with pytest.raises(ValueError, match="needs the teacher's features"):
        krr_st.initial_rows(50, 2, init="kmeans", seed=0)
    with pytest.raises(ValueError, match="valid options: random, kmeans"):
        krr_st.initial_rows(50, 2, init="herding", seed=0)


def test_no_outer_step_is_the_baseline_subset():
    images, teacher = make_images(), tiny_teacher()
    synthetic, metrics = run_dataset(images, teacher, steps=0)
    rows = krr_st.initial_rows(len(images), 6, init="random", seed=3)
    torch.testing.assert_close(synthetic.images, torch.as_tensor(images[rows]).float() * (2 / 255) - 1)
    assert metrics["images_seen"] == 0
