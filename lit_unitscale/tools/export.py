"""Export a training checkpoint: ``python -m lit_unitscale export CKPT OUT_DIR [--format F]``.

CKPT is any checkpoint our strategies write: a ``.ckpt`` file (single process, DDP), an FSDP2
folder of shards or a DeepSpeed folder; sharded ones are consolidated first. OUT_DIR receives

- ``model.safetensors``: the weights;
- ``config.json``: ``{"architecture": ..., "config": <TransformerConfig fields>}``;
- ``tokenizer.json``: the run's tokenizer, when the checkpoint recorded one.

``lit_unitscale.models.load(OUT_DIR)`` rebuilds the model. Nothing is unpickled beyond
tensors and plain containers (``torch.load(weights_only=True)``).

``--format hf`` instead writes a standard transformers model (u-μP constants folded into its
weights, see :mod:`lit_unitscale.models.hf`) that ``AutoModelForCausalLM`` (decoders),
``AutoModelForMaskedLM``, ``AutoModelForTokenClassification`` or
``AutoModelForSequenceClassification`` (encoders) ``.from_pretrained(OUT_DIR)`` loads without
custom code, with the tokenizer as a ``PreTrainedTokenizerFast``.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Literal

from jsonargparse import ArgumentParser

from lit_unitscale.tools.arguments import documented, parse_arguments, tool_parser

EXIT_ERROR = 1
Format = Literal["native", "hf"]


def export_checkpoint(
    checkpoint: str | Path,
    out_dir: str | Path,
    consolidated: str | Path | None = None,
    format: Format = "native",
) -> Path:
    """Write the model of a checkpoint in the native or the transformers format.

    Args:
        checkpoint: a checkpoint file, FSDP2 folder or DeepSpeed folder.
        out_dir: folder to write.
        consolidated: also write the consolidated single-file checkpoint here.
        format: ``native`` (``model.safetensors`` + ``config.json`` + ``tokenizer.json``) or
            ``hf`` (a transformers model folder with its tokenizer).
    """
    from lit_unitscale.checkpoints import consolidate_checkpoint, load_checkpoint
    from lit_unitscale.errors import CheckpointFileError
    from lit_unitscale.models import ARCHITECTURES, TransformerConfig, save_pretrained

    if consolidated is not None:
        consolidate_checkpoint(checkpoint, consolidated)
        checkpoint = consolidated
    state = load_checkpoint(checkpoint)
    if "model_config" not in state or "architecture" not in state:
        raise CheckpointFileError(
            f"checkpoint {checkpoint}: no model_config/architecture (not a lit_unitscale run)"
        )
    architecture = state["architecture"]
    if architecture not in ARCHITECTURES:
        raise CheckpointFileError(f"checkpoint {checkpoint}: unknown architecture {architecture!r}")
    model = ARCHITECTURES[architecture](TransformerConfig.from_dict(state["model_config"]))
    prefix = "model."
    weights = {
        key[len(prefix) :]: value.float() if value.is_floating_point() else value
        for key, value in state["state_dict"].items()
        if key.startswith(prefix)
    }
    weights = {k.replace("_checkpoint_wrapped_module.", ""): v for k, v in weights.items()}
    missing, unexpected = model.load_state_dict(weights, strict=False)
    # Tied weights appear under one name in some formats; anything else missing is an error.
    missing = [k for k in missing if not _is_tied_alias(model, k)]
    if missing or unexpected:
        raise CheckpointFileError(
            f"checkpoint {checkpoint}: weights do not match the model (missing {missing[:5]}, "
            f"unexpected {unexpected[:5]})"
        )
    if format == "hf":
        from lit_unitscale.models.hf import save_hf

        return save_hf(model, out_dir, tokenizer_json=state.get("tokenizer"))
    return save_pretrained(model, out_dir, tokenizer_json=state.get("tokenizer"))


def _is_tied_alias(model, key: str) -> bool:
    params = dict(model.named_parameters(remove_duplicate=False))
    target = params.get(key)
    return target is not None and any(
        p is target for name, p in model.named_parameters() if name != key
    )


def build_parser() -> ArgumentParser:
    """The ``export`` tool's parser; the help is :func:`export_checkpoint`'s."""
    docs = documented(export_checkpoint)
    parser = tool_parser(
        "export",
        "checkpoint (file, FSDP2 or DeepSpeed folder) -> model.safetensors + config.json "
        "(+ tokenizer.json), or a transformers model folder (--format hf)",
    )
    parser.add_argument("checkpoint", type=Path, help=docs["checkpoint"])
    parser.add_argument("out_dir", type=Path, help=docs["out_dir"])
    parser.add_argument("--consolidated", type=Path, default=None, help=docs["consolidated"])
    parser.add_argument(
        "--format",
        type=Format,
        default="native",
        help="native: lit_unitscale's safetensors + config (lit_unitscale.models.load); "
        "hf: a standard transformers model, u-μP constants folded into its weights",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m lit_unitscale export``.

    Args:
        argv: arguments after ``export``.
    """
    from lit_unitscale.errors import LitUnitscaleError, ToolError

    args = parse_arguments(build_parser(), argv, ToolError, "export")
    try:
        out = export_checkpoint(
            args.checkpoint, args.out_dir, args.consolidated, format=args.format
        )
    except (LitUnitscaleError, FileNotFoundError) as error:
        print(f"export: {error}", file=sys.stderr)
        return EXIT_ERROR
    print(f"exported {args.checkpoint} -> {out}")
    return 0
