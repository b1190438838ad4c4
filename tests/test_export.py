"""Export: checkpoint -> model.safetensors + config.json (+ tokenizer.json) -> same logits."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from lightning.pytorch import Trainer

from lit_unitscale.data.causal_lm import CausalLMData
from lit_unitscale.models import TransformerConfig, load
from lit_unitscale.tasks.causal_lm import CausalLM
from lit_unitscale.tools.export import main as export

FIXTURE_TEXT = Path(__file__).resolve().parent / "fixtures" / "data" / "text"


@pytest.fixture
def trained(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[CausalLM, Path]:
    """A tiny CausalLM (tied embeddings) after 2 steps on the fixture text, and its checkpoint."""
    monkeypatch.setenv("LIT_UNITSCALE_CACHE", str(tmp_path / "cache"))
    torch.manual_seed(0)
    config = TransformerConfig(
        d_model=32, n_layers=2, n_heads=2, max_seq_len=16, tie_embeddings=True
    )
    task = CausalLM(config, lr=0.01, warmup_steps=1)
    data = CausalLMData(
        corpus=str(FIXTURE_TEXT), tokenizer="word", seq_len=16, batch_size=4, max_train_tokens=200
    )
    trainer = Trainer(
        accelerator="cpu",
        max_steps=2,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        default_root_dir=tmp_path,
    )
    trainer.fit(task, datamodule=data)
    path = tmp_path / "run.ckpt"
    trainer.save_checkpoint(path)
    return task, path


def test_export_round_trip_gives_the_same_logits(trained, tmp_path: Path) -> None:
    task, checkpoint = trained
    out = tmp_path / "exported"
    assert export([str(checkpoint), str(out)]) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["architecture"] == "DecoderLM"
    assert config["config"]["tie_embeddings"] is True
    assert config["config"]["vocab_size"] == task.config.vocab_size
    assert json.loads((out / "tokenizer.json").read_text())["model"]
    model = load(out)
    ids = torch.randint(0, task.config.vocab_size, (3, 16))
    task.model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(ids), task.model(ids), rtol=0, atol=0)
    # Tied weights stay tied after loading.
    assert model.head.tied.weight is model.decoder.embed.tokens.weight


def test_export_never_unpickles_arbitrary_objects(tmp_path: Path, capsys) -> None:
    class Payload:
        def __reduce__(self):
            return (print, ("unpickled!",))

    bad = tmp_path / "bad.ckpt"
    torch.save(
        {"state_dict": {}, "model_config": {}, "architecture": "DecoderLM", "x": Payload()}, bad
    )
    assert export([str(bad), str(tmp_path / "out")]) == 1
    captured = capsys.readouterr()
    assert "unpickled!" not in captured.out
    assert "refused by the safe loader" in captured.err


def test_export_explains_what_is_not_a_checkpoint(tmp_path: Path, capsys) -> None:
    assert export([str(tmp_path), str(tmp_path / "out")]) == 1
    assert "not a checkpoint" in capsys.readouterr().err


def test_hf_export_loads_in_transformers_with_its_tokenizer(trained, tmp_path: Path) -> None:
    transformers = pytest.importorskip("transformers")
    from tokenizers import Tokenizer

    task, checkpoint = trained
    out = tmp_path / "hf"
    assert export([str(checkpoint), str(out), "--format", "hf"]) == 0
    model = transformers.AutoModelForCausalLM.from_pretrained(out)
    tokenizer = transformers.AutoTokenizer.from_pretrained(out)
    assert isinstance(model, transformers.LlamaForCausalLM)
    assert isinstance(tokenizer, transformers.PreTrainedTokenizerFast)
    from lit_unitscale.checkpoints import load_checkpoint

    native = Tokenizer.from_str(load_checkpoint(checkpoint)["tokenizer"])
    text = "the cat sat on the mat"
    assert tokenizer(text)["input_ids"] == native.encode(text).ids
    assert tokenizer.eos_token == "<eos>" and model.config.eos_token_id == tokenizer.eos_token_id
    ids = torch.randint(0, task.config.vocab_size, (2, 16))
    task.model.eval()
    with torch.no_grad():
        ours_logits, theirs = task.model(ids), model(ids).logits
    assert float((ours_logits - theirs).abs().max() / ours_logits.pow(2).mean().sqrt()) < 1e-4


def _encoder_checkpoint(path: Path, config: TransformerConfig, tokenizer: str | None = None):
    from lit_unitscale.models.architectures import EncoderMLM

    state_dict = {f"model.{k}": v for k, v in EncoderMLM(config).state_dict().items()}
    state = {"state_dict": state_dict, "model_config": config.to_dict()}
    state |= {"architecture": "EncoderMLM"} | ({"tokenizer": tokenizer} if tokenizer else {})
    torch.save(state, path)
    return path


def test_hf_export_of_a_masked_lm_loads_with_auto_classes(tmp_path: Path) -> None:
    transformers = pytest.importorskip("transformers")
    from lit_unitscale.data.text_tokenizers import train_subword_tokenizer

    native = train_subword_tokenizer(
        "wordpiece", (FIXTURE_TEXT / "train.txt").read_text().splitlines(), vocab_size=120
    )
    torch.manual_seed(0)
    config = TransformerConfig(vocab_size=native.get_vocab_size(), d_model=16, n_heads=2)
    checkpoint = _encoder_checkpoint(tmp_path / "mlm.ckpt", config, native.to_str())
    out = tmp_path / "hf"
    assert export([str(checkpoint), str(out), "--format", "hf"]) == 0
    model = transformers.AutoModelForMaskedLM.from_pretrained(out)
    tokenizer = transformers.AutoTokenizer.from_pretrained(out)
    assert isinstance(model, transformers.EuroBertForMaskedLM)
    assert tokenizer.mask_token_id == model.config.mask_token_id
    text = "the cat sat on the mat"
    assert tokenizer(text)["input_ids"] == native.encode(text).ids


def test_hf_export_refuses_a_model_kind_it_cannot_map_in_one_line(tmp_path: Path, capsys) -> None:
    pytest.importorskip("transformers")
    config = TransformerConfig(vocab_size=11, d_model=16, n_heads=2, norm="layer")
    checkpoint = _encoder_checkpoint(tmp_path / "mlm.ckpt", config)
    assert export([str(checkpoint), str(tmp_path / "out"), "--format", "hf"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "EncoderMLM" in err and "nearest exportable" in err
