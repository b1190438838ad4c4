"""Exported models: ``model.safetensors`` + ``config.json`` (+ ``tokenizer.json``), loadable
without Lightning, without our training code's checkpoint format, and without unpickling.

    from lit_unitscale.models import load, save_pretrained
    save_pretrained(model, "exported/")            # config from model.config
    model = load("exported/")                     # same logits as the model that was saved
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from lit_unitscale.models.architectures import ARCHITECTURES
from lit_unitscale.models.config import ConfigError, TransformerConfig

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
TOKENIZER_NAME = "tokenizer.json"
FORMAT_VERSION = 1


def architecture_of(model: nn.Module) -> str:
    """The name under which ``model``'s class is registered in ``ARCHITECTURES``.

    Args:
        model: a lit_unitscale model.
    """
    for name, cls in ARCHITECTURES.items():
        if type(model) is cls:
            return name
    raise ConfigError(f"{type(model).__name__} is not one of {sorted(ARCHITECTURES)}")


def save_pretrained(
    model: nn.Module, out_dir: str | Path, tokenizer_json: str | None = None
) -> Path:
    """Write ``model.safetensors``, ``config.json`` and, if given, ``tokenizer.json``.

    Args:
        model: a lit_unitscale model (with a ``config`` attribute), on any device.
        out_dir: folder to write into (created if missing).
        tokenizer_json: the text of the tokenizer.json the model was trained with.
    """
    from safetensors.torch import save_model

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    config = {
        "format": "lit_unitscale",
        "format_version": FORMAT_VERSION,
        "architecture": architecture_of(model),
        "config": model.config.to_dict(),
    }
    # save_model drops the duplicate names of tied weights and keeps one copy.
    save_model(model, str(out / WEIGHTS_NAME), metadata={"format": "pt"})
    (out / CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n")
    if tokenizer_json is not None:
        (out / TOKENIZER_NAME).write_text(tokenizer_json)
    return out


def read_config(path: str | Path) -> tuple[str, TransformerConfig]:
    """Architecture name and :class:`TransformerConfig` from an exported folder.

    Args:
        path: the exported folder (or its ``config.json``).
    """
    path = Path(path)
    file = path / CONFIG_NAME if path.is_dir() else path
    data = json.loads(file.read_text())
    architecture = data.get("architecture")
    if architecture not in ARCHITECTURES:
        raise ConfigError(f"{file}: unknown architecture {architecture!r}")
    return architecture, TransformerConfig.from_dict(data["config"])


def load(path: str | Path, device: str | torch.device = "cpu") -> nn.Module:
    """Rebuild an exported model with its weights, in eval mode.

    Args:
        path: folder written by :func:`save_pretrained` (``python -m lit_unitscale export``).
        device: where to put the weights.
    """
    from safetensors.torch import load_model

    path = Path(path)
    architecture, config = read_config(path)
    model = ARCHITECTURES[architecture](config)
    load_model(model, str(path / WEIGHTS_NAME), strict=True, device=str(device))
    return model.to(device).eval()
