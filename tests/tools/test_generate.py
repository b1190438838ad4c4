"""``python -m lit_unitscale generate`` on a checkpoint trained by a tiny run."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from lightning.pytorch import Trainer

from lit_unitscale.data.causal_lm import CausalLMData
from lit_unitscale.models import TransformerConfig
from lit_unitscale.tasks.causal_lm import CausalLM
from lit_unitscale.tools.export import main as export
from lit_unitscale.tools.generate import GenerateError, generate_text, main

FIXTURE_TEXT = Path(__file__).resolve().parents[1] / "fixtures" / "data" / "text"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny decoder after 4 steps on the fixture text."""
    tmp = tmp_path_factory.mktemp("generate")
    mp = pytest.MonkeyPatch()
    mp.setenv("LIT_UNITSCALE_CACHE", str(tmp / "cache"))
    torch.manual_seed(0)
    task = CausalLM(TransformerConfig(d_model=32, n_layers=2, n_heads=2, max_seq_len=24), lr=0.02)
    data = CausalLMData(corpus=str(FIXTURE_TEXT), tokenizer="word", seq_len=16, batch_size=4)
    trainer = Trainer(
        accelerator="cpu",
        max_steps=4,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        default_root_dir=tmp,
    )
    trainer.fit(task, datamodule=data)
    path = tmp / "run.ckpt"
    trainer.save_checkpoint(path)
    mp.undo()
    return path


def test_generate_streams_a_greedy_continuation_and_an_export_gives_the_same(
    checkpoint: Path, tmp_path: Path, capsys
) -> None:
    args = [str(checkpoint), "--prompt", "the", "--max-new-tokens", "8"]
    assert main(args) == 0
    out = capsys.readouterr().out.strip().splitlines()[-1]
    assert out.startswith("the ") and len(out.split()) > 1
    assert export([str(checkpoint), str(tmp_path / "native")]) == 0
    capsys.readouterr()
    assert main([str(tmp_path / "native"), *args[1:]]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == out


def test_a_batch_of_prompts_of_mixed_lengths_matches_each_prompt_alone(
    checkpoint: Path, tmp_path: Path
) -> None:
    prompts = ["the", "a new model of the", "it"]
    file = tmp_path / "prompts.txt"
    file.write_text("\n".join(prompts) + "\n")
    together = generate_text(str(checkpoint), prompts_file=str(file), max_new_tokens=6)
    alone = [generate_text(str(checkpoint), prompt=p, max_new_tokens=6)[0] for p in prompts]
    assert together == alone


def test_sampling_with_a_seed_is_reproducible(checkpoint: Path) -> None:
    def sample(seed: int) -> str:
        kw = dict(prompt="the", max_new_tokens=12, temperature=1.5, top_k=20, top_p=0.95)
        return generate_text(str(checkpoint), seed=seed, **kw)[0]

    assert sample(3) == sample(3)
    assert len({sample(s) for s in range(4)}) > 1


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({}, "give --prompt TEXT or --prompts-file FILE"),
        ({"prompt": "the", "max_new_tokens": 100}, "exceeds the model's max_seq_len"),
        ({"prompt": "the", "top_p": 0.0}, "0 < top_p <= 1"),
        ({"prompt": "the", "prompts_file": "missing.txt"}, "is not a file"),
    ],
)
def test_bad_arguments_name_what_is_wrong(checkpoint: Path, kwargs: dict, message: str) -> None:
    with pytest.raises(GenerateError, match=message.replace("(", r"\(")):
        generate_text(str(checkpoint), **kwargs)


def test_bad_input_is_one_line_and_a_non_zero_exit(tmp_path: Path) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "lit_unitscale",
            "generate",
            str(tmp_path / "nope.ckpt"),
            "--prompt",
            "x",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert (
        result.stderr.splitlines()[0]
        == f"lit_unitscale: generate: {tmp_path / 'nope.ckpt'} does not exist"
    )
