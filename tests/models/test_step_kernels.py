"""What one training step of the ptb-tiny decoder costs in kernels, counted, not timed.

A ``TorchDispatchMode`` records every aten op of forward + backward + AdamW step; a
``saved_tensors_hooks`` pair records the bytes autograd keeps for backward. u-μP must launch no
more elementwise ``mul``/``div`` kernels than SP and keep no more bytes: every constant scale
rides in a kernel that runs anyway. ``python -m tests.models.test_step_kernels`` prints both.
"""

from __future__ import annotations

import json
from collections import Counter

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from lit_unitscale.models import DecoderLM, TransformerConfig
from lit_unitscale.unit import param_groups

# The ptb-tiny recipe's model (recipes/decoder/ptb-tiny.yaml) on a batch of its shape.
TINY = dict(d_model=128, n_layers=2, n_heads=4, max_seq_len=64, positions="rope", mlp="gelu")
VOCAB, BATCH = 10000, 8
SCALE_OPS = ("mul", "div")


class _Ops(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.counts: Counter[str] = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.counts[func.overloadpacket.__name__] += 1
        return func(*args, **(kwargs or {}))


def step_profile(parametrization: str, model_cls: type = DecoderLM, **overrides) -> dict:
    """Aten op counts of one training step and the bytes saved for its backward.

    Args:
        parametrization: ``"umup"`` or ``"sp"``.
        model_cls: the language-model class (the composed oracle's, to compare).
        overrides: TransformerConfig fields replacing the ptb-tiny ones.
    """
    torch.manual_seed(0)
    config = TransformerConfig(
        vocab_size=VOCAB, parametrization=parametrization, **{**TINY, **overrides}
    )
    model = model_cls(config)
    opt = torch.optim.AdamW(param_groups(model, 1e-3, parametrization=parametrization))
    ids = torch.randint(0, VOCAB, (BATCH, config.max_seq_len))
    # Parameters and the input ids are held anyway; only what a step adds counts, each
    # storage once (two ops saving one tensor, or views of it, keep one copy alive).
    seen = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen.add(ids.untyped_storage().data_ptr())
    saved = {"bytes": 0, "tensors": 0}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in seen:
            seen.add(storage.data_ptr())
            saved["bytes"] += storage.nbytes()
            saved["tensors"] += 1
        return t

    ops = _Ops()
    with ops, torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = model.loss(model(ids), ids)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    counts = ops.counts
    return {
        "scale_ops": sum(counts[k] for k in SCALE_OPS),
        "mul": counts["mul"],
        "div": counts["div"],
        "total_ops": sum(counts.values()),
        "saved_bytes": saved["bytes"],
        "saved_tensors": saved["tensors"],
        "counts": dict(counts),
    }


def test_umup_launches_no_more_scale_kernels_than_sp():
    umup, sp = step_profile("umup"), step_profile("sp")
    assert umup["scale_ops"] <= sp["scale_ops"], (umup["scale_ops"], sp["scale_ops"])


def test_umup_saves_no_more_for_backward_than_sp():
    umup, sp = step_profile("umup"), step_profile("sp")
    assert umup["saved_bytes"] <= sp["saved_bytes"], (umup["saved_bytes"], sp["saved_bytes"])


if __name__ == "__main__":
    from tests.unit.composed_oracle.heads import DecoderLM as Composed

    for name, cls in (("composed", Composed), ("fused", DecoderLM)):
        for p in ("umup", "sp"):
            r = step_profile(p, cls)
            del r["counts"]
            print(name, p, json.dumps(r))
