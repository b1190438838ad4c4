"""fit -> validate -> test -> predict through the CLI for each task kind on the fixture data."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from lit_unitscale.cli import main
from tests.tasks.conftest import CONFIGS, cli, last_checkpoint

EXPECTED = {
    "mlm": ("loss", "ppl", "acc"),
    "sentiment": ("loss", "acc", "f1"),
    "ner": ("loss", "precision", "recall", "f1", "person/f1", "geo-loc/f1"),
    "g2p": ("loss", "ppl", "wer", "per"),
}


def _check_predictions(kind: str, predictions: list) -> None:
    first = predictions[0]
    if kind == "mlm":
        assert first["predictions"].shape == first["labels"].shape
    elif kind == "sentiment":
        assert set(first["labels"]) <= {"negative", "positive"}
        assert torch.allclose(first["probabilities"].sum(-1), torch.ones(1))
    elif kind == "ner":
        assert [len(t) for t in first["tags"]] == [len(t) for t in first["gold"]]
        assert all(tag == "O" or tag[:2] in ("B-", "I-") for row in first["tags"] for tag in row)
    else:
        assert first["ids"].shape[0] == len(first["phonemes"]) == len(first["words"])
        assert first["ids"].shape[1] <= 12  # max_decode_len of the test config


@pytest.mark.parametrize("kind", ["mlm", "sentiment", "ner", "g2p"])
def test_fit_validate_test_predict(kind: str, tmp_path: Path) -> None:
    main(["fit", "--config", str(CONFIGS / "trainer.yaml"), "--config",
          str(CONFIGS / f"{kind}.yaml"), "--trainer.default_root_dir", str(tmp_path)])  # fmt: skip
    ckpt = last_checkpoint(tmp_path)
    saved = torch.load(ckpt, map_location="cpu", weights_only=True)
    assert saved["architecture"] and saved["model_config"]["d_model"] == 32
    for split, sub in (("val", "validate"), ("test", "test")):
        metrics = cli(sub, kind, tmp_path, ckpt=ckpt).trainer.callback_metrics
        for name in EXPECTED[kind]:
            value = metrics[f"{split}/{name}"].item()
            assert math.isfinite(value), (split, name, value)
    predictions = cli("predict", kind, tmp_path, ckpt=ckpt).trainer.predict_loop.predictions
    assert predictions
    _check_predictions(kind, predictions)


def test_masked_lm_run_leaves_its_tokenizer_beside_the_checkpoints(tmp_path: Path) -> None:
    cli("fit", "mlm", tmp_path, "--trainer.max_steps", "1")
    tokenizer = (tmp_path / "tokenizer.json").read_text()
    saved = torch.load(last_checkpoint(tmp_path), map_location="cpu", weights_only=True)
    assert saved["tokenizer"] == tokenizer
