"""``torch.compile`` traces a whole training step's forward (model + loss) as one graph, with
the scale-carrying autograd Functions inside: no graph breaks (``torch._dynamo.explain``
counts them), ``fullgraph=True`` succeeds, and the compiled step's loss and gradients equal
eager ones within 1e-5 relative (fp32). ``aot_eager`` runs dynamo and AOT autograd (forward
and backward graphs) without code generation, so the test stays fast.
"""

from __future__ import annotations

import pytest
import torch

from lit_unitscale.models import ARCHITECTURES, TransformerConfig

TOL = 1e-5


def _model(arch: str, parametrization: str):
    torch.manual_seed(0)
    config = TransformerConfig(
        vocab_size=40, d_model=32, n_layers=2, n_heads=2, max_seq_len=16,
        parametrization=parametrization, norm_affine=True, num_labels=3,
    )  # fmt: skip
    return ARCHITECTURES[arch](config)


def _grads(model, step, ids):
    model.zero_grad(set_to_none=True)
    loss = step(ids)
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize(
    "arch,parametrization", [("DecoderLM", "umup"), ("DecoderLM", "sp"), ("EncoderMLM", "umup")]
)
def test_training_step_compiles_whole(arch, parametrization):
    model = _model(arch, parametrization)
    ids = torch.randint(0, 40, (2, 16), generator=torch.Generator().manual_seed(1))

    def step(ids):
        return model.loss(model(ids), ids)

    torch._dynamo.reset()
    explained = torch._dynamo.explain(step)(ids)
    assert explained.graph_break_count == 0, explained.break_reasons
    assert explained.graph_count == 1
    torch._dynamo.reset()
    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    loss_c, grads_c = _grads(model, compiled, ids)
    loss_e, grads_e = _grads(model, step, ids)
    assert abs(loss_c - loss_e) <= TOL * abs(loss_e)
    for name, g in grads_e.items():
        err = (grads_c[name] - g).abs().max() / g.abs().max().clamp_min(1e-30)
        assert err <= TOL, (name, err.item())
