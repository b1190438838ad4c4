"""Cached against uncached generation, same machine, one run.

1. The ptb-small decoder's shapes (recipes/decoder/ptb-small.yaml, PTB's 10k vocabulary):
   tokens/s of greedy generation with the key/value cache and with every prefix recomputed.
2. The G2P recipe's (recipes/encoder_decoder/cmudict-g2p.yaml) beam-4 decoding of test-set
   batches: the uncached fixed-width decoder (every step re-runs all ``max_decode_len``
   positions) before, the cached one after; both searches return the same sequences.

Weights are the recipes' initialisation, so no beam ends early and both decoders run every one
of ``max_decode_len`` steps: the time per step is what the cache changes. One thread.

    python benchmarks/generation.py --quick                # ~1 minute, one JSON line
    python benchmarks/generation.py --g2p-batches 0        # the whole G2P test set
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
import yaml

from benchmarks.common import emit, machine
from lit_unitscale.models import DecoderLM, TransformerConfig
from lit_unitscale.tasks.decoding import generate

REPO = Path(__file__).resolve().parents[1]


def recipe_model(name: str) -> dict:
    """The ``model.init_args`` of a shipped recipe."""
    return yaml.safe_load((REPO / "recipes" / name).read_text())["model"]["init_args"]


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def decoder_tokens_per_s(batch: int, prompt: int, new: int, repeats: int) -> dict:
    """Greedy generation on the ptb-small decoder: cached and uncached tokens/s."""
    fields = recipe_model("decoder/ptb-small.yaml")["model"]
    torch.manual_seed(0)
    model = DecoderLM(TransformerConfig(**{**fields, "vocab_size": 10_000})).eval()
    ids = torch.randint(0, 10_000, (batch, prompt))
    out = {}
    for name, cached in (("cached", True), ("uncached", False)):

        def run(cached=cached):
            generate(model, ids, new, cached=cached, stop=None)

        run()
        best = min(timed(run) for _ in range(repeats))
        out[f"{name}_tokens_per_s"] = round(batch * new / best, 1)
    same = generate(model, ids, new, stop=None).equal(generate(model, ids, new, cached=False))
    out.update(
        speedup=round(out["cached_tokens_per_s"] / out["uncached_tokens_per_s"], 2),
        batch=batch,
        prompt=prompt,
        new_tokens=new,
        same_tokens=same,
    )
    return out


def g2p_beam4(batches: int) -> dict:
    """Beam-4 decoding of the G2P test set's first ``batches`` batches (0: all)."""
    from lit_unitscale.data.g2p import G2PData
    from lit_unitscale.tasks.seq2seq import Seq2Seq
    from lit_unitscale.tasks.task_data import SpecialTokens

    recipe = yaml.safe_load((REPO / "recipes/encoder_decoder/cmudict-g2p.yaml").read_text())
    args = recipe["model"]["init_args"]
    data = G2PData(**recipe["data"]["init_args"])
    data.prepare_data()
    data.setup("test")
    config = TransformerConfig(
        **{**args["model"], "vocab_size": data.vocab_size, "tgt_vocab_size": data.tgt_vocab_size}
    )
    torch.manual_seed(0)
    task = Seq2Seq(config, max_decode_len=args["max_decode_len"], beam_size=args["beam_size"])
    task.configure_model()
    task.model.eval()
    task.special_tokens = SpecialTokens.of(data)
    loader = list(data.test_dataloader())
    total = len(loader)
    loader = loader[:batches] if batches else loader
    out, results = {}, {}
    for name, cached in (("uncached", False), ("cached", True)):
        seconds, ids = 0.0, []
        for b in loader:
            t0 = time.perf_counter()
            ids.append(task.decode(b["input_ids"], b["attention_mask"], 4, cached=cached))
            seconds += time.perf_counter() - t0
        out[f"{name}_s"] = round(seconds, 2)
        results[name] = ids
    words = sum(len(b["input_ids"]) for b in loader)
    out.update(
        speedup=round(out["uncached_s"] / out["cached_s"], 2),
        batches=len(loader),
        of_batches=total,
        words=words,
        same_sequences=all(a.equal(b) for a, b in zip(*results.values(), strict=True)),
    )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, one JSON line")
    parser.add_argument("--g2p-batches", type=int, default=None, help="G2P test batches (0: all)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.quick:
        decoder = decoder_tokens_per_s(batch=4, prompt=16, new=48, repeats=2)
        batches = 2 if args.g2p_batches is None else args.g2p_batches
    else:
        decoder = decoder_tokens_per_s(batch=8, prompt=32, new=96, repeats=3)
        batches = 0 if args.g2p_batches is None else args.g2p_batches
    emit({"decoder_ptb_small": decoder, "g2p_beam4": g2p_beam4(batches), **machine()})


if __name__ == "__main__":
    main()
