"""Tolerances of the distillation-loss fixtures (tests/fixtures/distill_losses.json, `tolerances`), in one place."""

import numpy as np
import torch


def check_loss_parity(loss: torch.Tensor, grad: torch.Tensor, case: dict) -> None:
    """A loss and its gradient w.r.t. the raw student embeddings against a fixture case, at the
    float64 tolerances (loss rtol 1e-9, grad rtol 1e-7) or the float32 ones (loss rtol 1e-4, grad
    atol 1e-4 max|grad|), chosen by the loss's dtype."""
    expected = case["expected_grad_student_emb"]
    assert loss.ndim == 0
    if loss.dtype == torch.float64:
        np.testing.assert_allclose(loss.item(), case["expected_loss"], rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(grad.numpy(), expected, rtol=1e-7, atol=1e-10)
    else:
        np.testing.assert_allclose(loss.item(), case["expected_loss"], rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(grad.numpy(), expected, rtol=0, atol=1e-4 * np.abs(expected).max())
