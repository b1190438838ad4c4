"""Fit the tiny LM for two steps with a ScaleMonitor on every step; run as a script so that
Lightning's ddp / ModelParallelStrategy launcher can start the second process.

    python tests/callbacks/dist_fit.py {single|ddp|fsdp2|deepspeed2|deepspeed3} OUT_DIR [ACCUMULATE]

The global batch is the same in every mode: 8 sequences per step (single), 4 per rank on 2
ranks (each consecutive 8 split between the ranks by the loader's own sampler), split into
ACCUMULATE micro-batches (default 1).
"""

import sys
from pathlib import Path

import lightning as L

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from lit_unitscale.callbacks import ScaleMonitor  # noqa: E402
from lit_unitscale.strategies.checks import destroy_process_group_if_initialized  # noqa: E402
from tests.callbacks.tiny import sliced_loader, tiny_task  # noqa: E402


def main(mode: str, out: str, accumulate: int = 1) -> None:
    L.seed_everything(0, verbose=False)
    if mode == "single":
        strategy, devices, batch = "auto", 1, 8
    elif mode == "ddp":
        from lit_unitscale.strategies import DDPStrategy

        strategy, devices, batch = DDPStrategy(), 2, 4
    elif mode.startswith("deepspeed"):
        from lit_unitscale.strategies import DeepSpeedStrategy

        strategy, devices, batch = DeepSpeedStrategy(stage=int(mode[-1])), 2, 4
    else:
        from lightning.pytorch.strategies import ModelParallelStrategy

        strategy = ModelParallelStrategy(data_parallel_size=2, tensor_parallel_size=1)
        devices, batch = 2, 4
    trainer = L.Trainer(
        accelerator="cpu",
        devices=devices,
        strategy=strategy,
        max_steps=2,
        accumulate_grad_batches=accumulate,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[ScaleMonitor(every_n_steps=1)],
        default_root_dir=out,
        use_distributed_sampler=False,
    )
    trainer.fit(tiny_task(), sliced_loader(batch_size=batch // accumulate))
    destroy_process_group_if_initialized()  # Lightning's own strategies leave it to exit


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], *map(int, sys.argv[3:]))
