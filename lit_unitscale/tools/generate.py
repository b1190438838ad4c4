"""Generate text: ``python -m lit_unitscale generate CKPT_OR_FOLDER --prompt TEXT``.

CKPT_OR_FOLDER is a training checkpoint (``.ckpt`` file, FSDP2 or DeepSpeed folder) or a
folder written by ``python -m lit_unitscale export`` (native format). One prompt streams its
continuation to the terminal token by token; several (``--prompts-file``, one per line) are
decoded together in one left-padded batch, one line of output each.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import torch
from tokenizers import Tokenizer
from torch import nn

from lit_unitscale.errors import ToolError


class GenerateError(ToolError, ValueError):
    """A generate argument or input that cannot work."""


def load_model(source: str | Path) -> tuple[nn.Module, Tokenizer]:
    """The model and tokenizer of a checkpoint or a native export folder.

    Args:
        source: ``.ckpt`` file, sharded checkpoint folder, or exported folder.
    """
    from lit_unitscale.models import load
    from lit_unitscale.models.io import CONFIG_NAME, TOKENIZER_NAME

    path = Path(source)
    if not path.exists():
        raise GenerateError(f"generate: {source} does not exist")
    if path.is_dir() and (path / CONFIG_NAME).is_file():
        folder = path
        model = load(folder)
        tokenizer_file = folder / TOKENIZER_NAME
        if not tokenizer_file.is_file():
            raise GenerateError(f"generate: {folder} has no {TOKENIZER_NAME}")
        return model, Tokenizer.from_file(str(tokenizer_file))
    from lit_unitscale.errors import CheckpointFileError
    from lit_unitscale.tools.export import export_checkpoint

    # The export's reading of every checkpoint format, into a folder that lives for the load.
    with tempfile.TemporaryDirectory() as tmp:
        try:
            export_checkpoint(path, tmp)
        except CheckpointFileError as error:
            raise GenerateError(f"generate: {error}") from None
        if not (Path(tmp) / TOKENIZER_NAME).is_file():
            raise GenerateError(f"generate: {source} recorded no tokenizer")
        return load(tmp), Tokenizer.from_file(str(Path(tmp) / TOKENIZER_NAME))


def generate_text(
    checkpoint: str,
    prompt: str | None = None,
    prompts_file: str | None = None,
    max_new_tokens: int = 32,
    temperature: float = 0.0,
    top_k: int = 0,
    top_p: float = 1.0,
    seed: int = 0,
) -> list[str]:
    """Continue prompts with a trained decoder (a KV cache keeps each step one token wide).

    Args:
        checkpoint: a .ckpt file, sharded checkpoint folder, or exported (native) folder.
        prompt: text to continue.
        prompts_file: file of prompts, one per line (decoded together as one batch).
        max_new_tokens: most tokens added to each prompt (stops early at <eos>).
        temperature: sampling temperature; 0 is greedy.
        top_k: sample among the k most likely tokens (0: all).
        top_p: sample among the most likely tokens whose probability reaches this (1: all).
        seed: random seed of sampling (the same seed gives the same text).
    """
    from lit_unitscale.models import DecoderLM
    from lit_unitscale.tasks.decoding import all_done, generate, sampler

    prompts = [prompt] if prompt is not None else []
    if prompts_file is not None:
        file = Path(prompts_file)
        if not file.is_file():
            raise GenerateError(f"generate: --prompts-file {prompts_file} is not a file")
        prompts += [line for line in file.read_text().splitlines() if line.strip()]
    if not prompts:
        raise GenerateError("generate: give --prompt TEXT or --prompts-file FILE")
    if max_new_tokens < 1:
        raise GenerateError(f"generate: --max-new-tokens must be >= 1, got {max_new_tokens}")
    try:
        pick = sampler(temperature, top_k, top_p, torch.Generator().manual_seed(seed))
    except ValueError as error:
        raise GenerateError(f"generate: {error}") from None
    model, tokenizer = load_model(checkpoint)
    if not isinstance(model, DecoderLM):
        raise GenerateError(
            f"generate: {checkpoint} holds a {type(model).__name__}; generate needs a DecoderLM"
        )
    encoded = [tokenizer.encode(p).ids for p in prompts]
    if not all(encoded):
        raise GenerateError("generate: a prompt encodes to no tokens")
    width = max(map(len, encoded))
    limit = model.config.max_seq_len
    if width + max_new_tokens > limit:
        raise GenerateError(
            f"generate: the longest prompt ({width} tokens) + --max-new-tokens "
            f"({max_new_tokens}) exceeds the model's max_seq_len ({limit})"
        )
    ids = torch.zeros(len(encoded), width, dtype=torch.long)
    mask = torch.zeros(len(encoded), width, dtype=torch.bool)
    for row, e in enumerate(encoded):
        ids[row, width - len(e) :], mask[row, width - len(e) :] = torch.tensor(e), True
    eos = tokenizer.token_to_id("<eos>")
    stops = () if eos is None else (eos,)

    streamed = list(encoded[0])

    def emit(tokens: torch.Tensor) -> None:
        if int(tokens[0]) in stops:
            return
        # Decode the whole text each time: pieces and spaces join only in context.
        before = tokenizer.decode(streamed)
        streamed.append(int(tokens[0]))
        print(tokenizer.decode(streamed)[len(before) :], end="", flush=True)

    stream = len(prompts) == 1
    if stream:
        print(tokenizer.decode(streamed), end="", flush=True)
    new = generate(
        model,
        ids,
        max_new_tokens,
        prompt_mask=mask,
        eos_id=stops,
        pick=pick,
        stop=all_done,
        emit=emit if stream else None,
    )
    texts = []
    for e, row in zip(encoded, new.tolist(), strict=True):
        cut = next((i for i, t in enumerate(row) if t in stops), len(row))
        texts.append(tokenizer.decode(e + row[:cut]))
    if stream:
        print()
    else:
        for text in texts:
            print(text)
    return texts


def _underscored(arg: str) -> str:
    """``--max-new-tokens=8`` → ``--max_new_tokens=8`` (either spelling is accepted)."""
    if not arg.startswith("--"):
        return arg
    name, eq, value = arg[2:].partition("=")
    return "--" + name.replace("-", "_") + eq + value


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m lit_unitscale generate``.

    Args:
        argv: arguments after ``generate``.
    """
    from jsonargparse import auto_cli

    args = [_underscored(a) for a in (sys.argv[1:] if argv is None else argv)]
    auto_cli(generate_text, args=args, as_positional=True, prog="python -m lit_unitscale generate")
    return 0
