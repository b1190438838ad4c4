"""Every task's evaluation skips the examples that the evaluation sampler repeats to even out
processes: a batch with a repeated example flagged gives the same metrics as without it."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torchmetrics import Metric

from lit_unitscale.data.base import COUNTED
from tests.tasks.conftest import CONFIGS


def _metrics(task) -> dict[str, Metric]:
    return dict(task.metrics["val"].items())


def _values(task, batch: dict) -> dict[str, torch.Tensor]:
    for metric in _metrics(task).values():
        metric.reset()
    with torch.no_grad():
        task.evaluate(batch, "val")
    out = {}
    for name, metric in _metrics(task).items():
        value = metric.compute()
        for key, v in value.items() if isinstance(value, dict) else [("", value)]:
            out[f"{name}{key}"] = torch.as_tensor(v, dtype=torch.float64)
    return out


@pytest.mark.parametrize("kind", ["causal", "mlm", "sentiment", "ner", "g2p"])
def test_flagged_repeats_leave_every_metric_unchanged(kind: str, tmp_path: Path) -> None:
    from lit_unitscale.cli import make_cli

    cli = make_cli(
        [
            "--config",
            str(CONFIGS / "trainer.yaml"),
            "--config",
            str(CONFIGS / f"{kind}.yaml"),
            f"--trainer.default_root_dir={tmp_path}",
            "--trainer.limit_val_batches=1",
        ],
        run=False,
    )
    cli.trainer.validate(cli.model, datamodule=cli.datamodule)  # builds the model and metrics
    task = cli.model
    batch = next(iter(cli.datamodule.val_dataloader()))
    n = len(batch["input_ids"])
    plain = _values(task, {**batch, COUNTED: torch.ones(n, dtype=torch.bool)})
    # Rows 0 and 1 again at the end, flagged as repeats (as the sampler deals them).
    padded = {k: torch.cat([v, v[:2]]) for k, v in batch.items()}
    padded[COUNTED] = torch.arange(n + 2) < n
    repeated = _values(task, padded)
    assert set(repeated) == set(plain) and plain
    for name, value in plain.items():
        torch.testing.assert_close(repeated[name], value, rtol=1e-6, atol=1e-7, msg=name)
    # Counting the repeats would show: the flags are what keeps the metrics unchanged.
    padded[COUNTED] = torch.ones(n + 2, dtype=torch.bool)
    counted = _values(task, padded)
    assert any(not torch.allclose(counted[k], v, rtol=1e-6, atol=1e-7) for k, v in plain.items())
