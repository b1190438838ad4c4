"""Causal language modelling (GPT-like decoders)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from torchmetrics import MeanMetric, Metric

from lit_unitscale.errors import RecipeError
from lit_unitscale.tasks.base import UnitScaledTask
from lit_unitscale.tasks.decoding import all_done, generate, sampler
from lit_unitscale.tasks.evaluation import counted_labels
from lit_unitscale.tasks.predictions import WritesPredictions


class CausalLM(WritesPredictions, UnitScaledTask):
    """Next-token prediction with a unit-scaled decoder; reports loss and perplexity per token.

    Batches: ``{"input_ids": (B, T), "labels": (B, T)}`` with labels already shifted.
    """

    architecture = "DecoderLM"
    prog_bar_metrics = ("loss", "ppl")
    reports_perplexity = True

    def forward(self, input_ids: Tensor) -> Tensor:
        return self.model(input_ids)

    def loss(self, batch: dict[str, Tensor]) -> Tensor:
        return self.model.loss(self.model(batch["input_ids"]), batch["labels"])

    def split_metrics(self) -> dict[str, Metric]:
        # Token-weighted mean, so perplexity is exp(total NLL / total tokens) over the split.
        return {"loss": MeanMetric()}

    def evaluate(self, batch: dict[str, Tensor], split: str) -> None:
        labels = counted_labels(batch)
        tokens = int((labels != -100).sum())
        loss = self.model.loss(self.model(batch["input_ids"]), labels)
        if tokens:
            self.metric(split, "loss").update(loss.detach(), weight=tokens)

    def predict_step(self, batch: dict[str, Tensor], batch_idx: int) -> dict[str, Tensor]:
        """Per-sequence mean NLL, the greedy next token after each position, and the greedy
        continuation of each sequence's first half (as long as its second half)."""
        ids = batch["input_ids"]
        logits = self.model(ids).float()
        nll = torch.nn.functional.cross_entropy(
            logits.transpose(1, 2), batch["labels"], ignore_index=-100, reduction="none"
        )
        mask = (batch["labels"] != -100).float()
        half = ids.shape[1] // 2
        eos = getattr(self.datamodule, "eos_id", None)
        continuation = self.generate(
            ids[:, :half], ids.shape[1] - half, temperature=0, eos_id=() if eos is None else eos
        )[:, half:]
        return {
            "nll": (nll * mask).sum(1) / mask.sum(1).clamp_min(1),
            "next_tokens": logits.argmax(-1),
            "continuation": continuation,
        }

    def readable(self, batch: dict[str, Tensor], outputs: dict[str, Tensor]) -> list[dict]:
        """Prompt, the model's continuation and the text that really followed, per window."""
        tokenizer = self.tokenizer
        decode = tokenizer.decode if tokenizer is not None else lambda ids: " ".join(map(str, ids))
        eos = getattr(self.datamodule, "eos_id", None)
        ids = batch["input_ids"]
        half = ids.shape[1] // 2
        rows = []
        for row, cont, nll in zip(
            ids.tolist(), outputs["continuation"].tolist(), outputs["nll"].tolist(), strict=True
        ):
            cont = cont[: cont.index(eos) if eos in cont else len(cont)]
            rows.append(
                {
                    "prompt": decode(row[:half]),
                    "continuation": decode(cont),
                    "reference": decode(row[half:]),
                    "nll": round(nll, 4),
                }
            )
        return rows

    @torch.no_grad()
    def generate(
        self,
        input_ids: Tensor,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_k: int = 0,
        top_p: float = 1.0,
        attention_mask: Tensor | None = None,
        eos_id: int | Sequence[int] = (),
        beam_size: int = 1,
        length_penalty: float = 0.0,
        generator: torch.Generator | None = None,
        cached: bool = True,
    ) -> Tensor:
        """Continue each prompt (greedy when ``temperature`` is 0, beam search with
        ``beam_size`` > 1); returns the prompts followed by their new tokens (0 after a stop
        token).

        Args:
            input_ids: prompts, ``(batch, length)``, left-padded when their lengths differ.
            max_new_tokens: most tokens added; prompt plus new tokens fit in ``max_seq_len``.
            temperature: softmax temperature; 0 for greedy.
            top_k: sample among the k most likely tokens (0: all).
            top_p: sample among the most likely tokens reaching this probability (1: all).
            attention_mask: ``(batch, length)`` True for real tokens (None: no padding).
            eos_id: stop token(s) (empty: always ``max_new_tokens``).
            beam_size: beams (1: greedy or sampled).
            length_penalty: beam search's length-normalisation exponent.
            generator: random source of sampling (seed it to reproduce a sample).
            cached: keep keys and values (False: recompute every prefix; unpadded prompts).
        """
        if input_ids.shape[1] + max_new_tokens > self.config.max_seq_len:
            raise RecipeError(
                f"generate: prompt ({input_ids.shape[1]}) + max_new_tokens ({max_new_tokens}) "
                f"exceeds the model's max_seq_len ({self.config.max_seq_len})"
            )
        pick = None if beam_size > 1 else sampler(temperature, top_k, top_p, generator)
        new = generate(
            self.model,
            input_ids,
            max_new_tokens,
            prompt_mask=attention_mask,
            eos_id=eos_id,
            pick=pick,
            beam_size=beam_size,
            length_penalty=length_penalty,
            cached=cached,
            stop=all_done if eos_id != () else None,
        )
        return torch.cat([input_ids, new], dim=1)
