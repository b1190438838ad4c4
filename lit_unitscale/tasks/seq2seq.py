"""Sequence-to-sequence (encoder-decoder) tasks such as grapheme-to-phoneme conversion."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torchmetrics import MeanMetric, Metric

from lit_unitscale.errors import RecipeError
from lit_unitscale.metrics import G2PErrorRates
from lit_unitscale.tasks.base import UnitScaledTask
from lit_unitscale.tasks.decoding import CachedScorer, beam_search, greedy_decode
from lit_unitscale.tasks.evaluation import counted_labels, counted_rows
from lit_unitscale.tasks.predictions import WritesPredictions
from lit_unitscale.tasks.task_data import SpecialTokens


class Seq2Seq(WritesPredictions, UnitScaledTask):
    """Teacher-forced training of an encoder-decoder; greedy or beam-search decoding.

    Validation and test report the teacher-forced loss and perplexity, and the word and
    phoneme (symbol) error rates of decoded outputs, where a word is right if it matches any
    of ``datamodule.references(split, ref_index)`` (or the batch's labels when the data module
    has no references). ``predict`` decodes with beam search.

    Batches: ``{"input_ids", "attention_mask", "decoder_input_ids", "labels"}`` and optionally
    ``"ref_index"``; the data module is a :class:`~lit_unitscale.tasks.task_data.Seq2SeqData`
    (``bos_id``, ``eos_id``, ``pad_id``), whose ids the checkpoints carry too.

    Args:
        max_decode_len: most target tokens decoded per sequence (``<eos>`` included); also
            the width every decoding step runs at, so keep it near the training targets'
            padded length.
        beam_size: beams for ``predict`` and ``test``.
        eval_beam_size: beams for validation (1: greedy, the fastest).
        length_penalty: exponent of the length normalisation of finished beams (0: none).
    """

    architecture = "Seq2SeqLM"
    prog_bar_metrics = ("loss", "ppl", "per", "wer")
    reports_perplexity = True

    def __init__(
        self,
        *args: Any,
        max_decode_len: int = 32,
        beam_size: int = 4,
        eval_beam_size: int = 1,
        length_penalty: float = 0.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        if beam_size < 1 or eval_beam_size < 1:
            raise RecipeError("beam sizes must be >= 1")
        self.max_decode_len = max_decode_len
        self.beam_size = beam_size
        self.eval_beam_size = eval_beam_size
        self.length_penalty = length_penalty
        # The data module's ids; or the ids a loaded checkpoint recorded; or set directly.
        self.special_tokens: SpecialTokens | None = None

    def forward(
        self, input_ids: Tensor, decoder_input_ids: Tensor, attention_mask: Tensor | None = None
    ) -> Tensor:
        return self.model(input_ids, decoder_input_ids, attention_mask)

    def loss(self, batch: dict[str, Tensor], labels: Tensor | None = None) -> Tensor:
        logits = self.model(batch["input_ids"], batch["decoder_input_ids"], batch["attention_mask"])
        return self.model.loss(logits, batch["labels"] if labels is None else labels)

    def split_metrics(self) -> dict[str, Metric]:
        # G2PErrorRates logs per (symbol) and wer (word) error rates.
        return {"loss": MeanMetric(), "rates": G2PErrorRates()}

    # -- decoding ----------------------------------------------------------------------------
    def special(self) -> SpecialTokens:
        """The target side's pad, bos and eos ids."""
        found = SpecialTokens.of(self.datamodule) if self.datamodule is not None else None
        found = found or self.special_tokens
        if found is None:
            raise RecipeError(
                "Seq2Seq decoding needs the target's pad_id, bos_id and eos_id: attach a data "
                "module that defines them, load a checkpoint that recorded them, or set "
                "task.special_tokens"
            )
        return found

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        special = SpecialTokens.of(self.datamodule) or self.special_tokens
        if special is not None:
            checkpoint["special_tokens"] = special.to_dict()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)
        self.special_tokens = SpecialTokens.of(checkpoint.get("special_tokens") or {})

    @torch.no_grad()
    def decode(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        beam_size: int = 1,
        cached: bool = True,
    ) -> Tensor:
        """Decoded target ids ``(batch, <= max_decode_len)``, ``<eos>`` kept, then padding.

        Args:
            input_ids: source ids ``(batch, S)``.
            attention_mask: source mask (True = real token).
            beam_size: 1 for greedy, else beam search with this many beams.
            cached: keep the decoder's keys and values between steps (False: recompute every
                prefix at the full ``max_decode_len`` width, the slow reference).
        """
        special = self.special()
        bos, eos, pad = special.bos, special.eos, special.pad
        memory = self.model.encode(input_ids, attention_mask)
        B = input_ids.shape[0]
        if beam_size > 1:
            memory = memory.repeat_interleave(beam_size, dim=0)
            if attention_mask is not None:
                attention_mask = attention_mask.repeat_interleave(beam_size, dim=0)

        reorder = None
        if cached:
            step = CachedScorer(
                lambda new, _, cache: self.model.decode_logits(
                    new, memory, attention_mask, cache=cache
                )
            )
            reorder = step.reorder
        else:
            width = self.max_decode_len

            def step(prefix: Tensor) -> Tensor:
                # Every prefix padded to one width (causal: the padding is never attended).
                t = prefix.shape[1]
                padded = torch.nn.functional.pad(prefix, (0, width - t), value=pad)
                return self.model.decode_logits(padded, memory, attention_mask)[:, t - 1]

        common = {"device": input_ids.device, "stop": self._stop_decoding}
        if beam_size == 1:
            return greedy_decode(step, B, bos, eos, pad, self.max_decode_len, **common)
        ids, _ = beam_search(
            step,
            B,
            bos,
            eos,
            pad,
            self.max_decode_len,
            beam_size,
            self.length_penalty,
            reorder=reorder,
            **common,
        )
        return ids

    def _stop_decoding(self, done: Tensor) -> bool:
        """True once every process's sequences are done. A sharded model's forward is a
        collective, so every process must run as many decoding steps as the slowest one."""
        finished = bool(done.all())
        # Prediction deals processes uneven shares without padding: nothing to agree with.
        if self._trainer is None or self.trainer.predicting:
            return finished
        return self.trainer.strategy.reduce_boolean_decision(finished, all=True)

    def _strip(self, ids: Tensor) -> list[list[int]]:
        special = self.special()
        eos, pad, bos = special.eos, special.pad, special.bos
        out = []
        for row in ids.tolist():
            seq = []
            for i in row:
                if i == eos:
                    break
                if i not in (pad, bos):
                    seq.append(i)
            out.append(seq)
        return out

    def _references(self, batch: dict[str, Tensor], split: str) -> list[list[list[int]]]:
        dm = self.datamodule
        if dm is not None and hasattr(dm, "references") and "ref_index" in batch:
            name = "valid" if split == "val" else split
            return [dm.references(name, int(i)) for i in batch["ref_index"].tolist()]
        labels = batch["labels"].masked_fill(batch["labels"] == -100, self.special().pad)
        return [[ref] for ref in self._strip(labels)]

    # -- evaluation --------------------------------------------------------------------------
    def evaluate(self, batch: dict[str, Tensor], split: str) -> None:
        # Validation decodes cheaply (greedy by default); test uses the full beam.
        beam_size = self.eval_beam_size if split == "val" else self.beam_size
        labels = counted_labels(batch)
        tokens = int((labels != -100).sum())
        loss = self.loss(batch, labels)
        if tokens:
            self.metric(split, "loss").update(loss.detach(), weight=tokens)
        # Every process decodes its whole batch, repeats too: the steps are collectives.
        ids = self.decode(batch["input_ids"], batch["attention_mask"], beam_size)
        self.metric(split, "rates").update(
            counted_rows(batch, self._strip(ids)),
            counted_rows(batch, self._references(batch, split)),
        )

    def predict_step(self, batch: dict[str, Tensor], batch_idx: int) -> dict[str, Any]:
        """Beam-search outputs: ids, and symbols when the data module can decode them."""
        ids = self.decode(batch["input_ids"], batch["attention_mask"], self.beam_size)
        out: dict[str, Any] = {"ids": ids}
        dm = self.datamodule
        if dm is not None and hasattr(dm, "decode_phonemes"):
            out["phonemes"] = [dm.decode_phonemes(row) for row in ids.tolist()]
            if "ref_index" in batch and hasattr(dm, "words"):
                words = dm.words["test"]
                out["words"] = [words[i] for i in batch["ref_index"].tolist()]
        return out

    def readable(self, batch: dict[str, Tensor], outputs: dict[str, Any]) -> list[dict]:
        """Each word and its decoded pronunciation (phoneme symbols, space-separated)."""
        phonemes = outputs.get("phonemes")
        if phonemes is None:
            phonemes = [list(map(str, row)) for row in self._strip(outputs["ids"])]
        words = outputs.get("words") or [None] * len(phonemes)
        return [{"word": w, "phonemes": " ".join(p)} for w, p in zip(words, phonemes, strict=True)]
