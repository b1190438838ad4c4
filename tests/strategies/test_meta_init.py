"""A model built under MetaInit and materialised equals the plain build, over drawn configurations
of every architecture: every parameter and buffer bit for bit, and the random generator moves
on exactly as far (so what is drawn after the build, dropout included, is the same too).

One process, no sharding: the sharded case (2 ranks, FSDP2) is in ``test_sharding.py``.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lit_unitscale.models import ARCHITECTURES, ConfigError, TransformerConfig
from lit_unitscale.strategies.meta_init import MetaInit, MetaInitError


@settings(max_examples=40, deadline=None)
@given(
    architecture=st.sampled_from(sorted(ARCHITECTURES)),
    parametrization=st.sampled_from(["umup", "sp"]),
    positions=st.sampled_from(["rope", "sinusoidal", "learned", "relative", "none"]),
    tie=st.booleans(),
    norm=st.sampled_from(["rms", "layer"]),
    affine=st.booleans(),
    mlp=st.sampled_from(["gelu", "swiglu"]),
    vocab=st.integers(5, 41),
    seed=st.integers(0, 2**31 - 1),
)
def test_meta_build_equals_plain_build(
    architecture, parametrization, positions, tie, norm, affine, mlp, vocab, seed
) -> None:
    try:
        config = TransformerConfig(
            vocab_size=vocab,
            d_model=16,
            n_layers=2,
            n_heads=2,
            max_seq_len=8,
            positions=positions,
            tie_embeddings=tie,
            parametrization=parametrization,
            norm=norm,
            norm_affine=affine,
            mlp=mlp,
            num_labels=3,
            tgt_vocab_size=vocab + 2,
        )
        torch.manual_seed(seed)
        reference = ARCHITECTURES[architecture](config)
    except ConfigError:
        return  # a combination the model refuses
    after = torch.default_generator.get_state()
    torch.manual_seed(seed)
    with MetaInit() as init:
        model = ARCHITECTURES[architecture](config)
    assert all(p.is_meta for p in model.parameters())
    assert torch.equal(torch.default_generator.get_state(), after)
    init.materialise(model, "cpu")
    expected = reference.state_dict()
    for name, value in model.state_dict().items():
        assert torch.equal(value, expected[name]), name


def test_an_init_that_reads_another_parameter_is_refused() -> None:
    class Derived(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = torch.nn.Parameter(torch.randn(4))
            self.b = torch.nn.Parameter(torch.empty(4))
            with torch.no_grad():
                self.b.copy_(self.a)

    with pytest.raises(MetaInitError, match="meta tensor"), MetaInit():
        Derived()
