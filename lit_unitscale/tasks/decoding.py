"""Greedy and beam-search decoding over any next-token scorer (no model code here).

``step(prefixes)`` takes ``(N, t)`` token ids (each row starting with ``<bos>``) and returns
``(N, V)`` logits for the next token; for an encoder-decoder it closes over the encoder memory.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

Step = Callable[[Tensor], Tensor]


@torch.no_grad()
def greedy_decode(
    step: Step, batch_size: int, bos_id: int, eos_id: int, pad_id: int, max_len: int
) -> Tensor:
    """The most likely next token at each step until ``<eos>`` or ``max_len`` tokens.

    Returns ``(batch, <= max_len)`` ids without ``<bos>``; ``<eos>`` kept, then ``pad_id``.

    Args:
        step: next-token logits for a batch of prefixes.
        batch_size: number of sequences.
        bos_id: start token.
        eos_id: end token.
        pad_id: filler after ``<eos>``.
        max_len: most tokens generated per sequence.
    """
    ids = torch.full((batch_size, 1), bos_id, dtype=torch.long)
    done = torch.zeros(batch_size, dtype=torch.bool)
    for _ in range(max_len):
        nxt = step(ids).float().argmax(-1)
        nxt = torch.where(done, torch.full_like(nxt, pad_id), nxt)
        ids = torch.cat([ids, nxt[:, None]], dim=1)
        done |= nxt == eos_id
        if done.all():
            break
    return ids[:, 1:]


@torch.no_grad()
def beam_search(
    step: Step,
    batch_size: int,
    bos_id: int,
    eos_id: int,
    pad_id: int,
    max_len: int,
    beam_size: int = 4,
    length_penalty: float = 0.0,
) -> tuple[Tensor, Tensor]:
    """Beam search: keep the ``beam_size`` best prefixes by total log-probability.

    A hypothesis ends at ``<eos>`` (included in its score) or at ``max_len`` tokens. Finished
    hypotheses are ranked by ``logp / length ** length_penalty`` (0: plain log-probability).
    Search stops for a sequence once no open beam can beat its best finished hypothesis (exact
    for ``length_penalty`` 0, since log-probabilities only fall).

    Returns ``(ids, scores)``: ``(batch, <= max_len)`` best sequences without ``<bos>``, padded
    with ``pad_id`` after ``<eos>``, and their ranking scores.

    Args:
        step: next-token logits for ``(N, t)`` prefixes; called with ``N = batch * beam_size``
            rows in the order ``(sequence, beam)``.
        batch_size: number of sequences.
        bos_id: start token.
        eos_id: end token.
        pad_id: filler after ``<eos>``.
        max_len: most tokens generated per sequence.
        beam_size: hypotheses kept per sequence.
        length_penalty: exponent of the length normalisation of finished hypotheses.
    """
    B, K = batch_size, beam_size
    ids = torch.full((B * K, 1), bos_id, dtype=torch.long)
    # Only the first beam is live at the start, so the K beams do not duplicate one prefix.
    logp = torch.full((B, K), float("-inf"))
    logp[:, 0] = 0.0
    best: list[tuple[float, list[int]] | None] = [None] * B

    def rank(score: float, length: int) -> float:
        return score / (length**length_penalty) if length_penalty else score

    for t in range(1, max_len + 1):
        scores = torch.log_softmax(step(ids).float(), dim=-1)  # (B*K, V)
        V = scores.shape[-1]
        total = (logp[:, :, None] + scores.view(B, K, V)).view(B, K * V)
        # 2K candidates so that K open ones remain even if K of them end here.
        top, index = total.topk(min(2 * K, K * V), dim=-1)
        beam, token = index // V, index % V
        new_ids = torch.full((B, K, t + 1), pad_id, dtype=torch.long)
        new_logp = torch.full((B, K), float("-inf"))
        prev = ids.view(B, K, t)
        for b in range(B):
            kept = 0
            candidates = zip(top[b].tolist(), beam[b].tolist(), token[b].tolist(), strict=True)
            for score, k, tok in candidates:
                if score == float("-inf"):
                    break
                seq = prev[b, k].tolist() + [tok]
                if tok == eos_id or t == max_len:
                    value = rank(score, t)
                    if best[b] is None or value > best[b][0]:
                        best[b] = (value, seq[1:])
                    continue
                if kept < K:
                    new_ids[b, kept] = torch.tensor(seq)
                    new_logp[b, kept] = score
                    kept += 1
            # Stop this sequence once its best finished hypothesis beats every open beam.
            if best[b] is not None and length_penalty == 0 and new_logp[b].max() <= best[b][0]:
                new_logp[b] = float("-inf")
        ids, logp = new_ids.view(B * K, t + 1), new_logp
        if torch.isinf(logp).all():
            break
    width = max(len(seq) for _, seq in best)
    out = torch.full((B, width), pad_id, dtype=torch.long)
    for b, (_, seq) in enumerate(best):
        out[b, : len(seq)] = torch.tensor(seq, dtype=torch.long)
    return out, torch.tensor([score for score, _ in best])
