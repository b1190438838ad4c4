"""Checks of sharded initialisation, FSDP2 collective dtypes and MLM masks under forkserver
workers, run in one 2-process gloo group.

    python tests/strategies/_sharding_worker.py OUT_DIR

Started once per rank by ``test_sharding.py`` (RANK/WORLD_SIZE/MASTER_* set). Each rank writes
``OUT_DIR/rank<r>.json`` with one entry per check (its measurements, or its error).
"""

from __future__ import annotations

import copy
import json
import multiprocessing
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from benchmarks.gpu_check import collective_dtypes  # noqa: E402

# Shapes with dim 0 not divisible by 2 (vocab 37, 3 labels), tied and untied heads, every kind of
# position, both parametrizations, an encoder-decoder with relative bias and affine norms.
META_CASES = [
    ("DecoderLM", {"positions": "rope", "parametrization": "umup"}),
    ("DecoderLM", {"positions": "learned", "parametrization": "sp", "tie_embeddings": True}),
    ("Seq2SeqLM", {"positions": "relative", "norm": "layer", "norm_affine": True}),
    ("SequenceClassifier", {"positions": "sinusoidal", "mlp": "swiglu", "parametrization": "sp"}),
]


def _config(**fields: Any):
    from lit_unitscale.models import TransformerConfig

    base = dict(vocab_size=37, d_model=16, n_layers=2, n_heads=2, max_seq_len=16)
    return TransformerConfig(**base, num_labels=3, tgt_vocab_size=29, **fields)


def _mesh():
    from torch.distributed.device_mesh import init_device_mesh

    return init_device_mesh("cpu", (dist.get_world_size(),), mesh_dim_names=("data_parallel",))


def check_meta_init() -> dict[str, Any]:
    """Sharded meta-device build vs the single-device build, parameter by parameter."""
    from lit_unitscale.models import ARCHITECTURES
    from lit_unitscale.strategies.fsdp2 import shard_model
    from lit_unitscale.strategies.meta_init import MetaInit

    out = {}
    for arch, fields in META_CASES:
        config = _config(**fields)
        torch.manual_seed(11)
        reference = ARCHITECTURES[arch](config)
        after_reference = torch.default_generator.get_state()
        torch.manual_seed(11)
        with MetaInit() as init:
            model = ARCHITECTURES[arch](config)
        init.name_parameters(model)
        after_meta = torch.default_generator.get_state()
        shard_model(model, _mesh())
        init.materialise(model, "cpu")
        ref = dict(reference.named_parameters())
        unequal, local = [], 0
        for name, param in model.named_parameters():
            local += param.to_local().numel()
            if not torch.equal(param.full_tensor(), ref[name]):
                unequal.append(name)
        buffers = dict(reference.named_buffers())
        unequal += [n for n, b in model.named_buffers() if not torch.equal(b, buffers[n])]
        out[f"{arch}:{','.join(f'{k}={v}' for k, v in fields.items())}"] = {
            "unequal": unequal,
            "parameters": len(ref),
            "local_fraction": local / sum(p.numel() for p in ref.values()),
            "generator_continues": torch.equal(after_reference, after_meta),
        }
    return out


def check_collective_dtypes() -> dict[str, Any]:
    """Dtypes FSDP2 all-gathers and reduce-scatters in, from the strategy's policy."""
    from lightning.pytorch.plugins.precision import MixedPrecision, Precision

    from lit_unitscale.models import DecoderLM
    from lit_unitscale.strategies import FSDP2Strategy
    from lit_unitscale.strategies.fsdp2 import shard_model

    cases = {
        "32-true": (Precision(), {}),
        "bf16-mixed": (MixedPrecision("bf16-mixed", "cpu"), {}),
        "bf16-mixed,reduce=bfloat16": (
            MixedPrecision("bf16-mixed", "cpu"),
            {"reduce_dtype": "bfloat16"},
        ),
        "bf16-mixed,param=float32": (
            MixedPrecision("bf16-mixed", "cpu"),
            {"param_dtype": "float32"},
        ),
    }
    out = {}
    for name, (plugin, options) in cases.items():
        strategy = FSDP2Strategy(**options)
        strategy.precision_plugin = plugin
        torch.manual_seed(0)
        model = shard_model(DecoderLM(_config()), _mesh(), mp_policy=strategy.mp_policy())
        ids = torch.randint(0, 37, (2, 8))
        with collective_dtypes() as seen, plugin.forward_context():
            logits = model(ids)
            model.loss(logits, ids).backward()
        out[name] = {k: sorted(v) for k, v in seen.items()}
    return out


def check_mlm_masks() -> dict[str, Any]:
    """First training batch of a forkserver worker: which positions were chosen."""
    from torch.utils.data import DataLoader

    from lit_unitscale.data.masked_lm import MaskedLMData

    data = MaskedLMData(
        corpus=str(ROOT / "tests/fixtures/data/text"), vocab_size=200, seq_len=24, seed=5
    )
    loader = data.train_dataloader()
    # The forkserver imports these once; its workers fork from it.
    multiprocessing.set_forkserver_preload(["torch", "lit_unitscale.data.masked_lm"])
    forkserver = DataLoader(
        loader.dataset,
        batch_size=8,
        shuffle=False,
        num_workers=1,
        multiprocessing_context="forkserver",
        collate_fn=loader.collate_fn,
        generator=torch.Generator().manual_seed(5),
    )
    batch = next(iter(forkserver))
    # What every rank drew when the rank was looked up inside the worker: rank 0 everywhere
    # (and the loader's seed, the same on every rank, without a worker).
    unranked = copy.copy(loader.collate_fn)
    unranked.rank, unranked._generator = 0, None
    same = unranked([loader.dataset[i] for i in range(8)])
    out = {
        "chosen": (batch["labels"] != -100).int().tolist(),
        "tokens": batch["attention_mask"].sum().item(),
        "rank": loader.collate_fn.rank,
        "chosen_unranked": (same["labels"] != -100).int().tolist(),
    }
    return out


def main() -> None:
    out_dir = Path(sys.argv[1])
    rank = int(os.environ["RANK"])
    results: dict[str, Any] = {}
    dist.init_process_group("gloo")
    checks = {
        "meta_init": check_meta_init,
        "collective_dtypes": check_collective_dtypes,
        "mlm_masks": check_mlm_masks,
    }
    for name, check in checks.items():
        start = time.perf_counter()
        try:
            results[name] = check()
            results[name]["seconds"] = round(time.perf_counter() - start, 1)
        except BaseException as error:  # recorded for the test to show
            results[name] = {"error": "".join(traceback.format_exception(error))[-4000:]}
        dist.barrier()
    (out_dir / f"rank{rank}.json").write_text(json.dumps(results))


if __name__ == "__main__":
    main()
