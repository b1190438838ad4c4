"""Measures of the two contracts every model here keeps, shared by the tests and benchmarks.

- **One function of its input**: a decoder's logits for a prefix equal the full sequence's
  first positions; an encoder's outputs for a sentence do not depend on how far it is padded or
  what it is batched with. Errors are reported relative to the logits' RMS.
- **Valid gradients**: each parameter's scaled gradient is parallel to the true gradient of the
  same forward function (computed under :func:`lit_unitscale.unit.scale.true_gradients`, where
  every scale is a plain multiplication and autograd does the rest).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from lit_unitscale.unit.scale import true_gradients


def relative_error(got: Tensor, want: Tensor) -> float:
    """Largest absolute difference over the RMS of ``want``.

    Args:
        got: tensor under test.
        want: reference of the same shape.
    """
    rms = want.double().pow(2).mean().sqrt().clamp_min(1e-30)
    return float((got.double() - want.double()).abs().max() / rms)


def _grads(model: nn.Module, loss_fn: Callable[[nn.Module], Tensor]) -> dict[str, Tensor]:
    model.zero_grad(set_to_none=True)
    loss_fn(model).backward()
    return {
        name: p.grad.detach().clone().double().flatten()
        for name, p in model.named_parameters()
        if p.grad is not None
    }


def gradient_cosines(model: nn.Module, loss_fn: Callable[[nn.Module], Tensor]) -> dict[str, float]:
    """Cosine between each parameter's gradient and its true gradient (1 when valid).

    A parameter whose true gradient is exactly zero (an unused row, a padding embedding) is
    reported as 1 when ours is zero too, else 0.

    Args:
        model: the model, in the state to measure (train mode, dropout 0 for determinism).
        loss_fn: computes the scalar loss from the model; called twice, with the same inputs.
    """
    ours = _grads(model, loss_fn)
    with true_gradients():
        true = _grads(model, loss_fn)
    out = {}
    for name, g_true in true.items():
        g = ours.get(name, torch.zeros_like(g_true))
        norms = g.norm() * g_true.norm()
        if float(g_true.norm()) == 0.0:
            out[name] = 1.0 if float(g.norm()) == 0.0 else 0.0
        else:
            out[name] = float(g @ g_true / norms) if float(norms) > 0 else 0.0
    return out
