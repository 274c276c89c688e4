"""The fine-tuning penalties against hand computations on tiny tensors (tlpipe.finetuning.regularizers)."""

import numpy as np
import pytest
import torch
from torch import nn

from tlpipe import registry
from tlpipe.finetuning.regularizers import L2SP, BatchSpectralShrinkage


class Tiny(nn.Module):
    """A stand-in for a Classifier: a backbone (one linear layer) and a head."""

    def __init__(self):
        super().__init__()
        self.backbone = nn.Linear(2, 2)
        self.head = nn.Linear(2, 1)
        with torch.no_grad():
            self.backbone.weight.copy_(torch.tensor([[1.0, 2.0], [3.0, 4.0]]))
            self.backbone.bias.copy_(torch.tensor([0.5, -0.5]))
            self.head.weight.copy_(torch.tensor([[2.0, -1.0]]))
            self.head.bias.copy_(torch.tensor([3.0]))


def test_l2sp_pulls_the_backbone_to_its_start_and_the_head_to_zero():
    model = Tiny()
    penalty = L2SP(model, alpha=0.1, beta=0.01)
    # at the start only the head counts: beta / 2 * (4 + 1 + 9) = 0.07
    assert penalty(model).item() == pytest.approx(0.07)
    with torch.no_grad():
        model.backbone.weight += torch.tensor([[1.0, 0.0], [0.0, -2.0]])  # ||delta||^2 = 1 + 4 = 5
        model.backbone.bias += torch.tensor([0.0, 1.0])  # + 1
    assert penalty(model).item() == pytest.approx(0.5 * 0.1 * 6 + 0.07)
    model.zero_grad()
    penalty(model).backward()
    # d/dw alpha/2 ||w - w0||^2 = alpha (w - w0); d/dv beta/2 ||v||^2 = beta v
    assert torch.allclose(model.backbone.weight.grad, torch.tensor([[0.1, 0.0], [0.0, -0.2]]))
    assert torch.allclose(model.head.weight.grad, torch.tensor([[0.02, -0.01]]))
    assert torch.allclose(model.head.bias.grad, torch.tensor([0.03]))


def test_bss_is_the_smallest_squared_singular_values_scaled():
    features = torch.tensor([[3.0, 0.0, 0.0], [0.0, 2.0, 0.0], [0.0, 0.0, 0.5], [0.0, 0.0, 0.0]])
    # singular values 3, 2, 0.5: k = 1 gives eta * 0.25, k = 2 eta * (0.25 + 4)
    assert BatchSpectralShrinkage(eta=0.001, k=1)(None, features).item() == pytest.approx(0.00025)
    assert BatchSpectralShrinkage(eta=0.001, k=2)(None, features).item() == pytest.approx(0.00425)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((6, 4))
    expected = 0.5 * (np.linalg.svd(x, compute_uv=False)[-1] ** 2)
    assert BatchSpectralShrinkage(eta=0.5)(None, torch.tensor(x)).item() == pytest.approx(expected, rel=1e-5)
    f = torch.tensor(x, dtype=torch.float32, requires_grad=True)
    BatchSpectralShrinkage(eta=1.0)(None, f).backward()
    u, s, vt = np.linalg.svd(x, full_matrices=False)
    # d sigma_min^2 / dF = 2 sigma_min u_min v_min^T
    assert np.allclose(f.grad.numpy(), 2 * s[-1] * np.outer(u[:, -1], vt[-1]), atol=1e-5)


def test_out_of_range_settings_are_refused():
    with pytest.raises(ValueError, match="alpha=-1"):
        L2SP(Tiny(), alpha=-1)
    with pytest.raises(ValueError, match="k=0"):
        BatchSpectralShrinkage(k=0)


def test_every_method_in_the_registry_names_a_penalty_that_loads_with_its_params():
    for name, method in registry.FINETUNING.items():
        if method.regularizer is not None:
            cls = registry.load(method.regularizer)
            assert cls(Tiny(), **{key: 1 for key in method.params}) is not None
    assert registry.finetune_method_params({"method": "l2sp", "l2sp": {"alpha": 0.2, "beta": 0.0}, "bss": {}}) \
        == {"alpha": 0.2, "beta": 0.0}
    assert registry.finetune_method_params({"method": "full", "l2sp": {"alpha": 0.2}}) == {}


@pytest.mark.parametrize("method", [m for m, e in registry.FINETUNING.items() if e.regularizer or e.unlabeled or e.adapter])
def test_each_method_s_code_enters_the_keys_of_finetune_and_of_the_sweep_s_probe(method):
    """The registry names a method's code by string; the modules that fine-tune import it, so editing it
    gives finetune (and the probes that fine-tune a teacher) a new key like any other code."""
    from runner.keys import code_closure

    entry = registry.FINETUNING[method]
    module = (entry.regularizer or entry.unlabeled or entry.adapter).partition(":")[0]
    assert module in code_closure("tasks.finetune") and module in code_closure("project.outputs")
