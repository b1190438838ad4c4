"""Fine-tuning from a tiny masked-LM checkpoint: weights, config, frozen or slower encoder,
and the errors for a different architecture or tokenizer."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from lit_unitscale.errors import CheckpointFileError
from lit_unitscale.tasks.finetune import PretrainedMismatchError, load_pretrained_encoder
from tests.tasks.conftest import cli, last_checkpoint


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A 2-step MLM run: (checkpoint, tokenizer.json)."""
    root = tmp_path_factory.mktemp("mlm")
    cli("fit", "mlm", root, "--trainer.max_steps", "2")
    return last_checkpoint(root), root / "tokenizer.json"


def finetune(kind: str, root: Path, pretrained: tuple[Path, Path], *overrides: str):
    ckpt, tokenizer = pretrained
    return cli(
        "fit",
        kind,
        root,
        "--model.init_args.pretrained",
        str(ckpt),
        "--data.init_args.tokenizer_path",
        str(tokenizer),
        *overrides,
    )


def test_frozen_encoder_keeps_the_pretrained_weights(pretrained, tmp_path: Path) -> None:
    run = finetune("sentiment", tmp_path, pretrained, "--model.init_args.freeze_encoder", "true")
    expected = load_pretrained_encoder(pretrained[0]).encoder_state
    got = run.model.model.encoder.state_dict()
    assert expected.keys() == got.keys()
    for key, value in expected.items():
        assert torch.equal(got[key], value), key
    names = [n for g in run.trainer.optimizers[0].param_groups for n in g["names"]]
    assert names and not any(n.startswith("encoder.") for n in names)


def test_config_comes_from_the_checkpoint(pretrained, tmp_path: Path) -> None:
    # The recipe leaves n_layers, ffn_mult, ... at their defaults: the checkpoint's are used.
    run = finetune(
        "ner",
        tmp_path,
        pretrained,
        "--model.init_args.model",
        "{num_labels: 0, dropout: 0.1}",
        "--trainer.max_steps",
        "1",
    )
    config = run.model.config
    saved = torch.load(pretrained[0], map_location="cpu", weights_only=True)["model_config"]
    assert (config.d_model, config.n_layers, config.vocab_size) == (
        saved["d_model"],
        saved["n_layers"],
        saved["vocab_size"],
    )
    assert config.dropout == 0.1 and config.num_labels == 9  # head fields stay the recipe's
    # ... and the fine-tuned checkpoint reloads for testing (on the same tokenizer).
    tokenizer = ("--data.init_args.tokenizer_path", str(pretrained[1]))
    run = cli("test", "ner", tmp_path, *tokenizer, ckpt=last_checkpoint(tmp_path))
    metrics = run.trainer.callback_metrics
    assert "test/f1" in metrics


def test_encoder_lr_multiplier(pretrained, tmp_path: Path) -> None:
    """The multiplier scales the encoder's LRs; u-μP's independent decay per step (LR times
    decay) stays what the recipe says, for the encoder and the head alike."""

    def groups(run) -> dict[str, tuple[float, float]]:
        return {
            n: (g["lr"], g["weight_decay"])
            for g in run.trainer.optimizers[0].param_groups
            for n in g["names"]
        }

    common = ("--trainer.max_steps", "1", "--model.init_args.weight_decay", "0.001")
    base = groups(finetune("sentiment", tmp_path / "a", pretrained, *common))
    slow = groups(
        finetune(
            "sentiment",
            tmp_path / "b",
            pretrained,
            *common,
            "--model.init_args.encoder_lr_mult",
            "0.1",
        )
    )
    assert base.keys() == slow.keys()
    for name, (lr, wd) in base.items():
        ratio = 0.1 if name.startswith("encoder.") else 1.0
        assert slow[name][0] == pytest.approx(lr * ratio), name
        assert slow[name][0] * slow[name][1] == pytest.approx(lr * wd), name
    assert any(wd > 0 for _, wd in base.values())
    assert any(n.startswith("encoder.") for n in base) and any(n.startswith("head") for n in base)


def test_architecture_mismatch_names_the_fields(pretrained, tmp_path: Path) -> None:
    with pytest.raises(PretrainedMismatchError, match=r"d_model=32/64.*n_layers=2/3"):
        finetune(
            "sentiment",
            tmp_path,
            pretrained,
            "--model.init_args.model.d_model",
            "64",
            "--model.init_args.model.n_layers",
            "3",
        )


def test_another_tokenizer_is_refused(pretrained, tmp_path: Path) -> None:
    ckpt, _ = pretrained
    # A tokenizer trained on the sentiment data: a different vocabulary.
    with pytest.raises(PretrainedMismatchError, match="vocab_size|tokenizer"):
        cli("fit", "sentiment", tmp_path, "--model.init_args.pretrained", str(ckpt))


def test_missing_or_foreign_checkpoint(tmp_path: Path) -> None:
    with pytest.raises(CheckpointFileError, match="not found"):
        load_pretrained_encoder(tmp_path / "nope.ckpt")
    torch.save({"state_dict": {}}, tmp_path / "other.ckpt")
    with pytest.raises(ValueError, match="model_config"):
        load_pretrained_encoder(tmp_path / "other.ckpt")
