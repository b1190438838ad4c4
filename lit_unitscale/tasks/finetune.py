"""Fine-tuning an encoder pretrained with masked-LM: load its config and weights by path.

The pretrained encoder fixes the architecture: fields a recipe leaves at their
``TransformerConfig`` default are taken from the checkpoint, and a field the recipe sets to a
different value is an error that names it. Head fields (labels, pooling, dropout, loss
multiplier) stay the recipe's.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from lit_unitscale.checkpoints import load_checkpoint, stored_tokenizer
from lit_unitscale.errors import CheckpointFileError, RecipeError
from lit_unitscale.models import TransformerConfig
from lit_unitscale.tasks.base import UnitScaledTask

# Fields that shape the encoder's weights or its function; the rest belong to the head or to
# training (num_labels, pooling, dropout, loss_mult, tie_embeddings, decoder-only fields).
ENCODER_FIELDS = (
    "vocab_size",
    "d_model",
    "n_layers",
    "n_heads",
    "n_kv_heads",
    "ffn_mult",
    "mlp",
    "norm",
    "norm_affine",
    "positions",
    "max_seq_len",
    "relative_buckets",
    "relative_max_distance",
    "parametrization",
    "residual_mult",
    "residual_attn_ratio",
    "attn_mult",
    "ffn_act_mult",
)
_DEFAULTS = TransformerConfig()


class PretrainedMismatchError(RecipeError):
    """The recipe's encoder differs from the pretrained checkpoint's."""


@dataclasses.dataclass
class PretrainedEncoder:
    """What a pretrained run hands to fine-tuning."""

    config: dict[str, Any]
    encoder_state: dict[str, Tensor]
    tokenizer: str | None  # the tokenizer.json text, when the checkpoint carries it
    source: str


def load_pretrained_encoder(path: str | Path) -> PretrainedEncoder:
    """Read a masked-LM run's encoder: a checkpoint of any format our strategies write (read by
    :func:`lit_unitscale.checkpoints.load_checkpoint`, never unpickled) or a native export
    folder holding ``config.json`` and ``model.safetensors``.

    Args:
        path: the checkpoint file or export folder.
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise CheckpointFileError(f"pretrained checkpoint {path}: not found")
    if path.is_dir() and (path / "model.safetensors").is_file():
        from safetensors.torch import load_file

        meta = json.loads((path / "config.json").read_text())
        config = meta.get("model_config", meta)
        state = load_file(str(path / "model.safetensors"))
        tokenizer_file = path / "tokenizer.json"
        tokenizer = tokenizer_file.read_text() if tokenizer_file.is_file() else None
    else:
        checkpoint = load_checkpoint(path)
        if "model_config" not in checkpoint:
            raise CheckpointFileError(
                f"pretrained checkpoint {path}: no model_config (not a lit_unitscale run)"
            )
        config, state = checkpoint["model_config"], checkpoint["state_dict"]
        tokenizer = stored_tokenizer(checkpoint)
    encoder_state = {}
    for key, value in state.items():
        for prefix in ("model.encoder.", "encoder."):
            if key.startswith(prefix):
                encoder_state[key[len(prefix) :]] = value
                break
    if not encoder_state:
        raise CheckpointFileError(
            f"pretrained checkpoint {path}: no encoder weights (keys 'model.encoder.*')"
        )
    return PretrainedEncoder(dict(config), encoder_state, tokenizer, str(path))


def merge_encoder_config(
    recipe: TransformerConfig, pretrained: dict[str, Any]
) -> TransformerConfig:
    """The recipe's config with the encoder fields of ``pretrained``; raises
    :class:`PretrainedMismatchError` naming every field the recipe sets differently.

    Args:
        recipe: the fine-tuning recipe's model config (vocab_size already filled from data).
        pretrained: the pretrained run's config dict.
    """
    updates, mismatches = {}, []
    for name in ENCODER_FIELDS:
        ours, theirs = getattr(recipe, name), pretrained[name]
        if ours == theirs:
            continue
        if ours == getattr(_DEFAULTS, name):
            updates[name] = theirs
        else:
            mismatches.append(f"{name}={theirs}/{ours}")
    if mismatches:
        raise PretrainedMismatchError(
            "the recipe's encoder does not match the pretrained checkpoint (checkpoint/recipe; "
            "vocab_size comes from the data's tokenizer): " + ", ".join(mismatches)
        )
    return dataclasses.replace(recipe, **updates)


class EncoderTask(UnitScaledTask):
    """An encoder task that can start from a masked-LM checkpoint (sequence and token
    classification). Without ``pretrained`` it trains from scratch.

    Args:
        pretrained: a masked-LM run's checkpoint (a file, FSDP2 or DeepSpeed folder) or native
            export folder (config.json + model.safetensors) to initialise the encoder from; its
            config fixes the encoder's architecture.
        freeze_encoder: train only the head; the encoder's weights stay fixed.
        encoder_lr_mult: multiplier on the encoder's learning rates (on top of the u-μP
            per-parameter multipliers); e.g. 0.1 to fine-tune it gently.
    """

    def __init__(
        self,
        *args: Any,
        pretrained: str | None = None,
        freeze_encoder: bool = False,
        encoder_lr_mult: float = 1.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        if encoder_lr_mult <= 0:
            raise RecipeError(f"encoder_lr_mult must be > 0, got {encoder_lr_mult}")
        self.pretrained = pretrained
        self.freeze_encoder = freeze_encoder
        self.encoder_lr_mult = encoder_lr_mult

    def build_model(self) -> nn.Module:
        if self.pretrained is None:
            model = super().build_model()
        else:
            source = load_pretrained_encoder(self.pretrained)
            self._check_tokenizer(source)
            self.config = merge_encoder_config(self.config, source.config)
            model = super().build_model()
            model.encoder.load_state_dict(source.encoder_state)
        if self.freeze_encoder:
            model.encoder.requires_grad_(False)
        return model

    def _check_tokenizer(self, source: PretrainedEncoder) -> None:
        path = getattr(self.datamodule, "tokenizer_file", None)
        if source.tokenizer is None or path is None:
            return
        ours = json.loads(Path(path).read_text()).get("model", {}).get("vocab")
        theirs = json.loads(source.tokenizer).get("model", {}).get("vocab")
        if ours != theirs:
            raise PretrainedMismatchError(
                f"the data's tokenizer ({path}) differs from the one {source.source} was "
                "pretrained with: set the data's tokenizer_path to the pretraining run's "
                "tokenizer.json"
            )

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # Resuming or testing a fine-tuned run: its own checkpoint holds every weight.
        if self.model is None and checkpoint.get("model_config") is not None:
            self.pretrained = None
        super().on_load_checkpoint(checkpoint)

    def configure_optimizers(self) -> dict[str, Any]:
        out = super().configure_optimizers()
        if self.encoder_lr_mult == 1.0:
            return out
        optimizer, scheduler = out["optimizer"], out["lr_scheduler"]["scheduler"]
        encoder = {id(p) for p in self.model.encoder.parameters()}
        groups = []
        for group in optimizer.param_groups:
            params = {k: v for k, v in group.items() if k not in ("params", "names", "initial_lr")}
            names = group.get("names", [None] * len(group["params"]))
            for in_encoder in (True, False):
                chosen = [
                    (p, n)
                    for p, n in zip(group["params"], names, strict=True)
                    if (id(p) in encoder) == in_encoder
                ]
                if not chosen:
                    continue
                mult = self.encoder_lr_mult if in_encoder else 1.0
                if self.hparams.independent_weight_decay and self.config.parametrization == "umup":
                    # Independent decay per step does not follow the LR multiplier.
                    params["weight_decay"] = group["weight_decay"] / mult
                groups.append(
                    {
                        **params,
                        "params": [p for p, _ in chosen],
                        "names": [n for _, n in chosen],
                        "lr": group["initial_lr"] * mult,
                        "lr_mult": group.get("lr_mult", 1.0) * mult,
                    }
                )
        optimizer.param_groups = []  # no state yet: regroup in place, then a fresh schedule
        for group in groups:
            optimizer.add_param_group(group)
        out["lr_scheduler"]["scheduler"] = torch.optim.lr_scheduler.LambdaLR(
            optimizer, scheduler.lr_lambdas[0]
        )
        return out
