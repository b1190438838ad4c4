"""Cached generation: the key/value cache computes what full recomputation computes.

Models run in float64, so "equal" means equal to rounding (relative 1e-9 on logits; 1e-6 under
RoPE, whose float32 angle tables see left padding as a shift of every position) and the
searches, fed the same scores, pick the same tokens.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lit_unitscale.models import DecoderLM, TransformerConfig
from lit_unitscale.models.attention import KVCache
from lit_unitscale.tasks.causal_lm import CausalLM
from lit_unitscale.tasks.decoding import generate, sampler
from lit_unitscale.tasks.seq2seq import Seq2Seq
from lit_unitscale.tasks.task_data import SpecialTokens

V = 23
POSITIONS = ["rope", "learned", "sinusoidal", "relative", "none"]

architectures = st.fixed_dictionaries(
    {
        "positions": st.sampled_from(POSITIONS),
        "parametrization": st.sampled_from(["umup", "sp"]),
        "mlp": st.sampled_from(["gelu", "swiglu"]),
        "norm": st.sampled_from(["rms", "layer"]),
        "n_kv_heads": st.sampled_from([None, 1]),
    }
)


def config(**kw) -> TransformerConfig:
    base = dict(vocab_size=V, d_model=16, n_layers=2, n_heads=2, max_seq_len=24)
    return TransformerConfig(**{**base, **kw})


def decoder(seed: int, **kw) -> DecoderLM:
    torch.manual_seed(seed)
    model = DecoderLM(config(**kw)).double().eval()
    # Relative biases start at zero under u-μP; random ones make positions matter.
    for name, p in model.named_parameters():
        if "relative" in name:
            torch.nn.init.normal_(p)
    return model


def left_pad(prompts: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded ids (pad 0) and their mask."""
    width = max(map(len, prompts))
    ids = torch.zeros(len(prompts), width, dtype=torch.long)
    mask = torch.zeros(len(prompts), width, dtype=torch.bool)
    for row, p in enumerate(prompts):
        ids[row, width - len(p) :] = torch.tensor(p)
        mask[row, width - len(p) :] = True
    return ids, mask


prompt = st.lists(st.integers(1, V - 1), min_size=1, max_size=7)
prompt_lists = st.lists(prompt, min_size=1, max_size=3)


@settings(max_examples=12, deadline=None)
@given(arch=architectures, prompts=prompt_lists, split=st.integers(1, 7), seed=st.integers(0, 99))
def test_cached_logits_equal_the_full_forward_of_each_prompt_alone(arch, prompts, split, seed):
    """Left-padded prompts of mixed lengths, fed in two chunks through one cache, give each
    real position the logits the prompt gets alone, uncached."""
    model = decoder(seed, **arch)
    ids, mask = left_pad(prompts)
    cache = KVCache()
    chunks = [slice(0, split), slice(split, None)] if split < ids.shape[1] else [slice(None)]
    logits = torch.cat([model(ids[:, c], mask[:, c], cache) for c in chunks], dim=1)
    for row, p in enumerate(prompts):
        alone = model(torch.tensor([p]))[0]
        got = logits[row, ids.shape[1] - len(p) :]
        rms = alone.pow(2).mean().sqrt()
        tolerance = 1e-6 if arch["positions"] == "rope" else 1e-9
        assert ((got - alone).abs().max() / rms).item() < tolerance


@settings(max_examples=12, deadline=None)
@given(
    arch=architectures,
    prompts=prompt_lists,
    beam=st.sampled_from([1, 3]),
    penalty=st.sampled_from([0.0, 1.0]),
    seed=st.integers(0, 99),
)
def test_cached_generation_equals_uncached_recomputation(arch, prompts, beam, penalty, seed):
    """Greedy and beam search over one left-padded batch, cached, pick the tokens that
    recomputing every prefix of each prompt alone picks."""
    model = decoder(seed, **arch)
    ids, mask = left_pad(prompts)
    new = 24 - ids.shape[1]
    common = dict(eos_id=(V - 1, V - 2), beam_size=beam, length_penalty=penalty)
    cached = generate(model, ids, new, prompt_mask=mask, **common)
    for row, p in enumerate(prompts):
        alone = generate(model, torch.tensor([p]), new, cached=False, **common)[0]
        assert cached[row, : len(alone)].tolist() == alone.tolist()
        assert (cached[row, len(alone) :] == 0).all()


@settings(max_examples=8, deadline=None)
@given(
    positions=st.sampled_from(POSITIONS),
    parametrization=st.sampled_from(["umup", "sp"]),
    lengths=st.lists(st.integers(1, 6), min_size=1, max_size=3),
    beam=st.sampled_from([1, 3]),
    seed=st.integers(0, 99),
)
def test_seq2seq_cached_decoding_equals_uncached(positions, parametrization, lengths, beam, seed):
    """The encoder-decoder's cached decoding (cross-attention keys and values computed once)
    returns the sequences of the fixed-width uncached reference, sources of mixed lengths."""
    torch.manual_seed(seed)
    cfg = config(positions=positions, parametrization=parametrization, max_seq_len=12)
    task = Seq2Seq(cfg, max_decode_len=10)
    task.special_tokens = SpecialTokens(pad=0, bos=2, eos=3)
    task.configure_model()
    task.model.double().eval()
    for name, p in task.model.named_parameters():
        if "relative" in name:
            torch.nn.init.normal_(p)
    src = torch.randint(4, V, (len(lengths), max(lengths)))
    mask = torch.arange(src.shape[1])[None, :] < torch.tensor(lengths)[:, None]
    src = src.masked_fill(~mask, 0)
    cached = task.decode(src, mask, beam)
    uncached = task.decode(src, mask, beam, cached=False)
    assert cached.tolist() == uncached.tolist()


@pytest.mark.parametrize("parametrization", ["umup", "sp"])
def test_sampling_with_a_seed_is_reproducible_and_narrow_sampling_is_greedy(parametrization):
    task = CausalLM(config(parametrization=parametrization))
    task.configure_model()
    task.model.eval()
    ids, mask = left_pad([[3, 4, 5], [6]])

    def sample(seed: int, **kw) -> list:
        g = torch.Generator().manual_seed(seed)
        return task.generate(ids, 12, attention_mask=mask, generator=g, **kw).tolist()

    assert sample(7, temperature=1.5) == sample(7, temperature=1.5)
    assert sample(7, temperature=1.5) != sample(8, temperature=1.5)
    greedy = task.generate(ids, 12, temperature=0, attention_mask=mask).tolist()
    assert sample(1, temperature=2.0, top_k=1) == greedy
    assert sample(2, temperature=2.0, top_p=1e-6) == greedy


def test_stop_tokens_end_a_row_and_pad_it():
    model = decoder(0)
    ids, mask = left_pad([[3, 4], [5]])
    free = generate(model, ids, 10, prompt_mask=mask)
    stops = (int(free[0, 2]), int(free[1, 4]))
    out = generate(model, ids, 10, prompt_mask=mask, eos_id=stops)
    for row in range(2):
        end = next(i for i, t in enumerate(free[row].tolist()) if t in stops) + 1
        assert out[row, :end].tolist() == free[row, :end].tolist()
        assert (out[row, end:] == 0).all()


def test_sampler_refuses_impossible_settings():
    with pytest.raises(ValueError, match="top_p"):
        sampler(top_p=0.0)
