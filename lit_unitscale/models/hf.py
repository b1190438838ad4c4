"""Export to standard ``transformers`` architectures, every u-μP constant folded into weights.

At inference a u-μP model is a plain pre-norm Transformer with constant multipliers, so each
multiplier moves into the weight next to it:

- every projection's ``1/sqrt(fan_in)`` (readouts: ``1/fan_in``) scale into its weight;
- the attention-logit multiplier (u-μP logits are ``mult * q.k / d_head``, transformers'
  ``q.k / sqrt(d_head)``) into the query projection;
- attention's static output scale and the MLP nonlinearity's scale and multiplier into the
  output and up/down projections;
- eval-mode dropout's ``sqrt(1 - p)`` and the embedding/position sum's ``1/sqrt(2)`` into the
  tables (tied tables are untied when their folded values differ);
- each residual branch's weights ``x' = a·f(norm(x)) + b·x`` into the branch's output
  projection: a pre-norm branch does not see the scale of its input, so the exported stream is
  ``c_i · x_i`` with ``c_{i+1} = c_i / b_i`` and the branch writes ``c_{i+1} · a_i · f``.

Only the norms' ``eps`` sees the stream's scale: relative to the stream's mean square it moves
by a factor ``c_i**2`` (≤ 3 at ``residual_mult`` 1), a change of ~1e-5 of the output at
``eps`` 1e-5.

Mappings (each checked against the installed transformers source):

- ``DecoderLM``, RoPE + RMSNorm, SwiGLU or GELU → ``LlamaForCausalLM`` (a GELU MLP is Llama's
  gated MLP with ``hidden_act="gelu"`` and an up projection that is the constant 1: zero weight,
  unit bias);
- ``DecoderLM``, RoPE + LayerNorm + GELU, one key/value head per head →
  ``GPTNeoXForCausalLM`` with sequential residuals (``use_parallel_residual=False``);
- ``DecoderLM``, learned positions + LayerNorm + GELU, one key/value head per head →
  ``GPT2LMHeadModel``;
- ``EncoderMLM`` and ``TokenClassifier``, RoPE + RMSNorm, SwiGLU or GELU →
  ``EuroBertForMaskedLM`` / ``EuroBertForTokenClassification``: EuroBERT is Llama's stack
  with bidirectional attention, no norm on the embeddings and a plain linear head, as ours;
- ``SequenceClassifier``, RoPE + RMSNorm, ``pool_norm=False`` →
  ``UltrabertForSequenceClassification`` (the same stack; first-token or masked-mean pooling
  read out by one linear, every layer set to global attention).

What no standard encoder computes: a norm between pooling and the classifier (ours by
default; ModernBERT's head has one, but ModernBERT also normalises the embeddings, so its
first layer's skip differs from ours) and LayerNorm encoders (ModernBERT: the same embedding
norm; ESM: a dense + GELU + LayerNorm transform before the MLM readout; RoBERTa-PreLayerNorm:
learned absolute positions and an embedding norm).

The constants are read from the model's own modules (a projection applied to the identity is
its folded weight), so the export follows the unit layer's rules instead of restating them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from lit_unitscale.models.architectures import (
    DecoderLM,
    EncoderMLM,
    SequenceClassifier,
    TokenClassifier,
    TransformerModel,
)
from lit_unitscale.models.config import ConfigError, TransformerConfig
from lit_unitscale.models.stack import Block, TransformerStack

__all__ = ["HFExportError", "hf_architecture", "fold_for_hf", "save_hf"]


class HFExportError(ConfigError):
    """A model that no standard transformers architecture computes; names the nearest one."""


EXPORTABLE = (
    "DecoderLM with positions='rope', norm='rms', mlp='swiglu' or 'gelu' (Llama); "
    "positions='rope', norm='layer', mlp='gelu', n_kv_heads=None (GPT-NeoX); or "
    "positions='learned', norm='layer', mlp='gelu', n_kv_heads=None (GPT-2); "
    "EncoderMLM or TokenClassifier with positions='rope', norm='rms' (EuroBERT); "
    "SequenceClassifier with positions='rope', norm='rms', pool_norm=False (UltraBERT)"
)
ENCODERS = {
    EncoderMLM: "EuroBertForMaskedLM",
    TokenClassifier: "EuroBertForTokenClassification",
    SequenceClassifier: "UltrabertForSequenceClassification",
}


def hf_architecture(model: nn.Module) -> str:
    """The transformers class that computes ``model``'s function, or :class:`HFExportError`.

    Args:
        model: a lit_unitscale model.
    """
    if type(model) in ENCODERS:
        return _encoder_architecture(model)
    if not isinstance(model, DecoderLM):
        raise HFExportError(
            f"{type(model).__name__} has no transformers export yet; exportable: {EXPORTABLE}"
        )
    c = model.config
    if c.positions == "rope" and c.norm == "rms":
        return "LlamaForCausalLM"
    plain = c.norm == "layer" and c.mlp == "gelu" and c.kv_heads == c.n_heads
    if plain and c.positions == "rope":
        return "GPTNeoXForCausalLM"
    if plain and c.positions == "learned":
        return "GPT2LMHeadModel"
    raise HFExportError(
        f"DecoderLM with positions={c.positions!r}, norm={c.norm!r}, mlp={c.mlp!r}, "
        f"n_kv_heads={c.n_kv_heads} matches no standard transformers architecture; "
        f"nearest exportable: {_nearest(c)}"
    )


def _encoder_architecture(model: nn.Module) -> str:
    c, name = model.config, type(model).__name__
    family = "UltraBERT" if isinstance(model, SequenceClassifier) else "EuroBERT"
    if c.positions != "rope" or c.norm != "rms":
        raise HFExportError(
            f"{name} with positions={c.positions!r}, norm={c.norm!r} matches no standard "
            f"transformers encoder; nearest exportable: positions='rope', norm='rms' ({family})"
        )
    if isinstance(model, SequenceClassifier) and c.pool_norm:
        raise HFExportError(
            "SequenceClassifier with pool_norm=True (a norm between pooling and the head) "
            "matches no standard transformers classifier; nearest exportable: the same "
            "with pool_norm=False (UltraBERT)"
        )
    return ENCODERS[type(model)]


def _nearest(c) -> str:
    if c.positions == "learned":
        return "positions='learned', norm='layer', mlp='gelu', n_kv_heads=None (GPT-2)"
    if c.norm == "layer" and c.positions == "rope":
        return "positions='rope', norm='layer', mlp='gelu', n_kv_heads=None (GPT-NeoX)"
    return "positions='rope', norm='rms' (Llama)"


@torch.no_grad()
def _weight(linear: nn.Module) -> Tensor:
    """The plain ``(out, in)`` weight that computes what ``linear`` computes."""
    return linear(torch.eye(linear.in_features)).T.contiguous()


@torch.no_grad()
def _readout(model: TransformerModel) -> Tensor:
    return model.head(torch.eye(model.config.d_model)).T.contiguous()


@torch.no_grad()
def _attention_output_scale(block: Block) -> float:
    # One key: the softmax is exactly 1, so the output is the value times the op's scale.
    attn = block.attn
    zeros = torch.zeros(1, 1, 1, attn.d_head)
    out = attn.F.scaled_dot_product_attention(
        zeros,
        zeros,
        torch.ones_like(zeros),
        is_causal=attn.causal,
        mult=attn.mult,
        scale_len=attn.scale_len,
        dropout_p=attn.dropout_p,
        training=False,
    )
    return float(out.flatten()[0])


def _logit_factor(block: Block) -> float:
    # transformers scales logits by 1/sqrt(d_head); u-μP by mult/d_head, SP like transformers.
    attn = block.attn
    return attn.mult / attn.d_head**0.5 if attn.parametrization == "umup" else 1.0


@torch.no_grad()
def _probe(fn, *args: float) -> float:
    return float(fn(*(torch.tensor([a]) for a in args)).flatten()[0])


def _eval_dropout(module, p: float) -> float:
    """Eval-mode dropout's factor: u-μP outputs the train-mode mean, SP the input."""
    return _probe(lambda x: module.F.dropout(x, p, training=False), 1.0)


def _residual_weights(block: Block, tau: float) -> tuple[float, float]:
    """``(a, b)`` of the stream update ``a * branch + b * stream``."""
    f = block.F
    return (
        _probe(lambda r, s: f.residual_add(r, s, tau), 1.0, 0.0),
        _probe(lambda r, s: f.residual_add(r, s, tau), 0.0, 1.0),
    )


@torch.no_grad()
def _mlp(block: Block) -> dict[str, Tensor]:
    """``gate``, ``up`` (or None: the constant 1) and ``down`` for ``down(act(gate) * up)``."""
    mlp, umup = block.mlp, block.parametrization == "umup"
    mult = mlp.mult if umup else 1.0
    up = _weight(mlp.up)
    x = torch.linspace(-3, 3, 7)
    if mlp.kind == "swiglu":
        value, gate = up.chunk(2, dim=0)
        # silu_glu(v, g) = s * v * g * sigmoid(mult * g) = (s / mult) * v * silu(mult * g)
        s = float(
            (
                mlp.F.silu_glu(x, x, mult=mlp.mult)
                / (x * torch.nn.functional.silu(x * mult) / mult)
            ).nanmean()
        )
        return {"gate": gate * mult, "up": value, "down": _weight(mlp.down) * s / mult}
    # gelu(h) = s * gelu(mult * h) / mult
    ref = torch.nn.functional.gelu(x * mult) / mult
    s = float((mlp.F.gelu(x, mult=mlp.mult) / ref).nanmean())
    return {"gate": up * mult, "up": None, "down": _weight(mlp.down) * s / mult}


def _norm(norm: nn.Module, d: int) -> tuple[Tensor, Tensor]:
    weight = norm.weight.detach().clone() if norm.weight is not None else torch.ones(d)
    bias = getattr(norm, "bias", None)
    return weight, bias.detach().clone() if bias is not None else torch.zeros(d)


def _blocks(stack: TransformerStack) -> list[dict[str, Any]]:
    """Per block: folded q, k, v, o, MLP and norms, carrying the stream scale c through."""
    out, c = [], 1.0
    for block in stack.layers:
        d, kv = block.attn.n_heads * block.attn.d_head, block.attn.kv_heads * block.attn.d_head
        tau_attn, tau_mlp = block.taus[0], block.taus[-1]
        keep = _eval_dropout(block, block.dropout_p)
        a, b = _residual_weights(block, tau_attn)
        c_mid = c / b
        k, v = _weight(block.attn.kv).split([kv, kv], dim=0)
        o_scale = _attention_output_scale(block) * keep * a * c_mid
        a, b = _residual_weights(block, tau_mlp)
        c = c_mid / b
        mlp = _mlp(block)
        mlp["down"] = mlp["down"] * keep * a * c
        out.append(
            {
                "q": _weight(block.attn.q) * _logit_factor(block),
                "k": k,
                "v": v,
                "o": _weight(block.attn.o) * o_scale,
                "attn_norm": _norm(block.attn_norm, d),
                "mlp_norm": _norm(block.mlp_norm, d),
                **{f"mlp_{name}": t for name, t in mlp.items()},
            }
        )
    return out


def _rope_halves(w: Tensor, heads: int, d_head: int) -> Tensor:
    # Ours rotates channel pairs (2j, 2j+1), transformers' rotate_half pairs (j, j + d/2) at
    # the same frequencies: reorder each head's output channels (q.k is unchanged).
    perm = torch.cat([torch.arange(0, d_head, 2), torch.arange(1, d_head, 2)])
    return w.view(heads, d_head, -1)[:, perm].reshape_as(w)


def _llama_config(c: TransformerConfig, eps: float, rope: dict[str, Any]) -> dict[str, Any]:
    """The fields Llama and the Llama-style encoders (EuroBERT, UltraBERT) share."""
    gelu = c.mlp == "gelu"
    return {
        "hidden_size": c.d_model,
        "intermediate_size": c.d_ff,
        "num_hidden_layers": c.n_layers,
        "num_attention_heads": c.n_heads,
        "num_key_value_heads": c.kv_heads,
        "head_dim": c.d_head,
        "hidden_act": "gelu" if gelu else "silu",
        "max_position_embeddings": c.max_seq_len,
        "rms_norm_eps": eps,
        "rope_parameters": rope,
        "attention_bias": False,
        "mlp_bias": gelu,
    }


def _llama_layers(
    c: TransformerConfig, blocks: list[dict[str, Any]], final_norm: Tensor
) -> dict[str, Tensor]:
    """``model.layers.*`` and ``model.norm`` of Llama, EuroBERT and UltraBERT (one layout)."""
    gelu = c.mlp == "gelu"
    sd: dict[str, Tensor] = {}
    for i, blk in enumerate(blocks):
        p = f"model.layers.{i}."
        sd[p + "self_attn.q_proj.weight"] = _rope_halves(blk["q"], c.n_heads, c.d_head)
        sd[p + "self_attn.k_proj.weight"] = _rope_halves(blk["k"], c.kv_heads, c.d_head)
        sd[p + "self_attn.v_proj.weight"] = blk["v"]
        sd[p + "self_attn.o_proj.weight"] = blk["o"]
        sd[p + "mlp.gate_proj.weight"] = blk["mlp_gate"]
        sd[p + "mlp.down_proj.weight"] = blk["mlp_down"]
        if gelu:
            sd[p + "mlp.up_proj.weight"] = torch.zeros_like(blk["mlp_gate"])
            sd[p + "mlp.up_proj.bias"] = torch.ones(c.d_ff)
            sd[p + "mlp.gate_proj.bias"] = torch.zeros(c.d_ff)
            sd[p + "mlp.down_proj.bias"] = torch.zeros(c.d_model)
        else:
            sd[p + "mlp.up_proj.weight"] = blk["mlp_up"]
        sd[p + "input_layernorm.weight"] = blk["attn_norm"][0]
        sd[p + "post_attention_layernorm.weight"] = blk["mlp_norm"][0]
    sd["model.norm.weight"] = final_norm
    return sd


@torch.no_grad()
def fold_for_hf(model: TransformerModel) -> tuple[str, dict[str, Any], dict[str, Tensor]]:
    """``(architecture, config kwargs, state dict)`` of the transformers model computing ``model``.

    Args:
        model: a lit_unitscale model (any device; read in fp32 on the CPU, eval mode).
    """
    architecture = hf_architecture(model)
    model = _cpu_eval_copy(model)
    c = model.config
    backbone = model.decoder if isinstance(model, DecoderLM) else model.encoder
    embed = backbone.embed
    keep = _eval_dropout(embed, embed.dropout_p)
    table_scale = keep
    if embed.positions is not None:
        table_scale *= _probe(lambda x, y: embed.F.add(x, y), 1.0, 0.0)
    tokens = embed.tokens.weight.detach() * table_scale
    readout = _readout(model)
    tied = tokens.shape == readout.shape and torch.equal(tokens, readout)
    blocks = _blocks(backbone.stack)
    final_norm = _norm(backbone.stack.final_norm, c.d_model)
    eps = backbone.stack.final_norm.eps
    common = {
        "vocab_size": c.vocab_size,
        "tie_word_embeddings": tied,
        "architectures": [architecture],
        # transformers' defaults name their own vocabularies; the tokenizer sets ours.
        "bos_token_id": None,
        "eos_token_id": None,
    }
    rope = {"rope_type": "default", "rope_theta": 10000.0}
    sd: dict[str, Tensor] = {}
    if architecture == "LlamaForCausalLM":
        config = {**common, "model_type": "llama", **_llama_config(c, eps, rope)}
        sd["model.embed_tokens.weight"] = tokens
        sd.update(_llama_layers(c, blocks, final_norm[0]))
        sd["lm_head.weight"] = readout
    elif architecture.startswith(("EuroBert", "Ultrabert")):
        euro = architecture.startswith("EuroBert")
        config = {
            **common,
            "pad_token_id": None,
            **_llama_config(c, eps, rope if euro else {"full_attention": rope}),
        }
        if euro:
            config["model_type"] = "eurobert"
        else:
            # Every layer global: UltraBERT's default interleaves windowed layers.
            config |= {
                "model_type": "ultrabert",
                "layer_types": ["full_attention"] * c.n_layers,
                "classifier_pooling": c.pooling,
                "classifier_dropout": 0.0,
            }
        if not isinstance(model, EncoderMLM):
            config["num_labels"] = c.num_labels
        sd["model.embed_tokens.weight"] = tokens
        sd.update(_llama_layers(c, blocks, final_norm[0]))
        if isinstance(model, EncoderMLM):
            # EuroBERT's MLM readout has a bias exactly where its MLP has them (mlp_bias).
            head, with_bias = "lm_head", c.mlp == "gelu"
        else:
            head, with_bias = "classifier", True
        sd[head + ".weight"] = readout
        if with_bias:
            sd[head + ".bias"] = torch.zeros(readout.shape[0])
    elif architecture == "GPTNeoXForCausalLM":
        config = {
            **common,
            "model_type": "gpt_neox",
            "hidden_size": c.d_model,
            "intermediate_size": c.d_ff,
            "num_hidden_layers": c.n_layers,
            "num_attention_heads": c.n_heads,
            "hidden_act": "gelu",
            "max_position_embeddings": c.max_seq_len,
            "layer_norm_eps": eps,
            "rope_parameters": {
                "rope_type": "default",
                "rope_theta": 10000.0,
                "partial_rotary_factor": 1.0,
            },
            "use_parallel_residual": False,
            "attention_bias": False,
        }
        sd["gpt_neox.embed_in.weight"] = tokens
        for i, blk in enumerate(blocks):
            p = f"gpt_neox.layers.{i}."
            # The fused projection holds [q, k, v] of one head after another.
            q, k = (_rope_halves(blk[n], c.n_heads, c.d_head) for n in ("q", "k"))
            qkv = torch.stack([t.view(c.n_heads, c.d_head, -1) for t in (q, k, blk["v"])], 1)
            sd[p + "attention.query_key_value.weight"] = qkv.reshape(3 * c.d_model, -1)
            sd[p + "attention.dense.weight"] = blk["o"]
            sd[p + "mlp.dense_h_to_4h.weight"] = blk["mlp_gate"]
            sd[p + "mlp.dense_h_to_4h.bias"] = torch.zeros(c.d_ff)
            sd[p + "mlp.dense_4h_to_h.weight"] = blk["mlp_down"]
            sd[p + "mlp.dense_4h_to_h.bias"] = torch.zeros(c.d_model)
            sd[p + "input_layernorm.weight"], sd[p + "input_layernorm.bias"] = blk["attn_norm"]
            ln2 = p + "post_attention_layernorm."
            sd[ln2 + "weight"], sd[ln2 + "bias"] = blk["mlp_norm"]
        sd["gpt_neox.final_layer_norm.weight"], sd["gpt_neox.final_layer_norm.bias"] = final_norm
        sd["lm_head.weight"] = readout
    else:
        config = {
            **common,
            "model_type": "gpt2",
            "n_embd": c.d_model,
            "n_inner": c.d_ff,
            "n_layer": c.n_layers,
            "n_head": c.n_heads,
            "n_positions": c.max_seq_len,
            "activation_function": "gelu",
            "layer_norm_epsilon": eps,
            "resid_pdrop": 0.0,
            "embd_pdrop": 0.0,
            "attn_pdrop": 0.0,
        }
        sd["transformer.wte.weight"] = tokens
        sd["transformer.wpe.weight"] = embed.positions.table.weight.detach() * table_scale
        for i, blk in enumerate(blocks):
            p = f"transformer.h.{i}."
            # GPT-2's Conv1D stores (in, out); every projection has a bias, zero here.
            qkv = torch.cat([blk["q"], blk["k"], blk["v"]], dim=0)
            for name, w in (
                ("attn.c_attn", qkv),
                ("attn.c_proj", blk["o"]),
                ("mlp.c_fc", blk["mlp_gate"]),
                ("mlp.c_proj", blk["mlp_down"]),
            ):
                sd[p + name + ".weight"] = w.T.contiguous()
                sd[p + name + ".bias"] = torch.zeros(w.shape[0])
            sd[p + "ln_1.weight"], sd[p + "ln_1.bias"] = blk["attn_norm"]
            sd[p + "ln_2.weight"], sd[p + "ln_2.bias"] = blk["mlp_norm"]
        sd["transformer.ln_f.weight"], sd["transformer.ln_f.bias"] = final_norm
        sd["lm_head.weight"] = readout
    return architecture, config, {k: v.contiguous() for k, v in sd.items()}


def _cpu_eval_copy(model: TransformerModel) -> TransformerModel:
    copy = type(model)(model.config)
    copy.load_state_dict({k: v.detach().float().cpu() for k, v in model.state_dict().items()})
    return copy.eval()


def _special_tokens(tokenizer_json: str) -> dict[str, str]:
    """transformers' special-token roles for the tokenizers lit_unitscale trains."""
    vocab = json.loads(tokenizer_json).get("model", {}).get("vocab", {})
    names = set(vocab) if isinstance(vocab, dict) else {entry[0] for entry in vocab}
    roles = {
        "pad_token": "[PAD]",
        "unk_token": "[UNK]" if "[UNK]" in names else "<unk>",
        "cls_token": "[CLS]",
        "sep_token": "[SEP]",
        "mask_token": "[MASK]",
        "eos_token": "<eos>" if "<eos>" in names else "[SEP]",
    }
    return {role: token for role, token in roles.items() if token in names}


def save_hf(
    model: TransformerModel, out_dir: str | Path, tokenizer_json: str | None = None
) -> Path:
    """Write a folder ``transformers`` loads with ``AutoModelFor….from_pretrained`` (no custom
    code), plus the tokenizer as a ``PreTrainedTokenizerFast`` when given.

    Args:
        model: a lit_unitscale model.
        out_dir: folder to write into (created if missing).
        tokenizer_json: the text of the tokenizer.json the model was trained with.
    """
    try:
        import transformers
    except ImportError as error:
        raise HFExportError(
            "export --format hf needs the transformers package (pip install transformers)"
        ) from error
    architecture, config_kwargs, state = fold_for_hf(model)
    tokenizer = None
    if tokenizer_json is not None:
        from tokenizers import Tokenizer

        specials = _special_tokens(tokenizer_json)
        tokenizer = transformers.PreTrainedTokenizerFast(
            tokenizer_object=Tokenizer.from_str(tokenizer_json),
            model_max_length=model.config.max_seq_len,
            **specials,
        )
        # EuroBERT's config names the mask token too (its default is outside our vocabulary).
        roles = ("pad", "eos", "bos", "mask") if config_kwargs["model_type"] == "eurobert" else ()
        for role in roles or ("pad", "eos", "bos"):
            token = specials.get(f"{role}_token")
            if token is not None:
                config_kwargs[f"{role}_token_id"] = tokenizer.convert_tokens_to_ids(token)
    model_type = config_kwargs.pop("model_type")
    config = transformers.AutoConfig.for_model(model_type, **config_kwargs)
    hf_model = getattr(transformers, architecture)(config)
    missing, unexpected = hf_model.load_state_dict(state, strict=False)
    if config.tie_word_embeddings:
        missing = [k for k in missing if k != "lm_head.weight"]
    if missing or unexpected:
        raise HFExportError(
            f"{architecture}: folded weights do not match (missing {missing[:5]}, "
            f"unexpected {unexpected[:5]})"
        )
    out = Path(out_dir)
    hf_model.save_pretrained(out)
    if tokenizer is not None:
        tokenizer.save_pretrained(out)
    return out
