"""Greedy and beam-search decoding over any next-token scorer (no model code here).

``step(prefixes)`` takes ``(N, t)`` token ids (each row starting with ``<bos>``) and returns
``(N, V)`` logits for the next token; for an encoder-decoder it closes over the encoder memory.
Every tensor is built on ``device`` (the scorer's), and the search itself reads nothing back to
the host: the only host read is ``stop``'s, once per step.

``stop(done)`` sees which sequences are finished and says whether to end the search. Under a
sharded model (FSDP2, ZeRO-3) every step's forward is a collective, so all processes must take
the same number of steps: pass a ``stop`` that agrees across them (e.g. true only when every
process is done); a process whose own sequences are done keeps stepping on padding until then.
``stop=None`` runs exactly ``max_len`` steps with no host read at all.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

Step = Callable[[Tensor], Tensor]
Stop = Callable[[Tensor], bool]


def all_done(done: Tensor) -> bool:
    """Stop once every sequence here is finished (one process, or unsharded models).

    Args:
        done: ``(batch,)`` flags, True where a sequence is finished.
    """
    return bool(done.all())


@torch.no_grad()
def greedy_decode(
    step: Step,
    batch_size: int,
    bos_id: int,
    eos_id: int,
    pad_id: int,
    max_len: int,
    device: torch.device | str | None = None,
    stop: Stop | None = all_done,
) -> Tensor:
    """The most likely next token at each step until ``<eos>`` or ``max_len`` tokens.

    Returns ``(batch, steps)`` ids without ``<bos>``; ``<eos>`` kept, then ``pad_id``.

    Args:
        step: next-token logits for a batch of prefixes.
        batch_size: number of sequences.
        bos_id: start token.
        eos_id: end token.
        pad_id: filler after ``<eos>``.
        max_len: most tokens generated per sequence.
        device: where the ids live (the scorer's device).
        stop: ends the search early given the finished flags (None: always ``max_len`` steps).
    """
    ids = torch.full((batch_size, 1), bos_id, dtype=torch.long, device=device)
    done = torch.zeros(batch_size, dtype=torch.bool, device=device)
    for _ in range(max_len):
        nxt = step(ids).float().argmax(-1)
        nxt = torch.where(done, pad_id, nxt)
        ids = torch.cat([ids, nxt[:, None]], dim=1)
        done = done | (nxt == eos_id)
        if stop is not None and stop(done):
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
    device: torch.device | str | None = None,
    stop: Stop | None = all_done,
) -> tuple[Tensor, Tensor]:
    """Beam search: keep the ``beam_size`` best prefixes by total log-probability.

    A hypothesis ends at ``<eos>`` (included in its score) or at ``max_len`` tokens. Finished
    hypotheses are ranked by ``logp / length ** length_penalty`` (0: plain log-probability).
    Search stops for a sequence once no open beam can beat its best finished hypothesis (exact
    for ``length_penalty`` 0, since log-probabilities only fall).

    Returns ``(ids, scores)``: ``(batch, steps)`` best sequences without ``<bos>``, padded
    with ``pad_id`` after their end, and their ranking scores.

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
        device: where the ids and scores live (the scorer's device).
        stop: ends the search early given the finished flags (None: always ``max_len`` steps).
    """
    B, K = batch_size, beam_size
    full = torch.full
    ids = full((B * K, 1), bos_id, dtype=torch.long, device=device)
    # Only the first beam is live at the start, so the K beams do not duplicate one prefix.
    logp = full((B, K), float("-inf"), device=device)
    logp[:, 0] = 0.0
    best_score = full((B,), float("-inf"), device=device)
    best_ids = full((B, max_len), pad_id, dtype=torch.long, device=device)
    steps = 0
    for t in range(1, max_len + 1):
        steps = t
        scores = torch.log_softmax(step(ids).float(), dim=-1)  # (B*K, V)
        V = scores.shape[-1]
        total = (logp[:, :, None] + scores.view(B, K, V)).view(B, K * V)
        # 2K candidates, best first, so that K open ones remain even if K of them end here.
        C = min(2 * K, K * V)
        top, index = total.topk(C, dim=-1)
        beam, token = index // V, index % V
        prev = ids.view(B, K, t)
        candidates = torch.cat(
            [prev.gather(1, beam[:, :, None].expand(B, C, t)), token[:, :, None]], dim=2
        )  # (B, C, t + 1), <bos> first
        alive = top > float("-inf")
        ends = alive & ((token == eos_id) | (t == max_len))

        # The best hypothesis ending here replaces the best so far only if strictly better
        # (ties: the earlier one, and among this step's, the higher-ranked candidate).
        value = top / t**length_penalty if length_penalty else top
        value = torch.where(ends, value, float("-inf"))
        here, pick = value.max(dim=-1)
        better = here > best_score
        best_score = torch.where(better, here, best_score)
        chosen = candidates.gather(1, pick[:, None, None].expand(B, 1, t + 1))[:, 0, 1:]
        padded = torch.nn.functional.pad(chosen, (0, max_len - t), value=pad_id)
        best_ids = torch.where(better[:, None], padded, best_ids)

        # The first K open candidates become the next beams; slot K collects the rest.
        open_ = alive & ~ends
        slot = open_.long().cumsum(-1) - 1
        keep = open_ & (slot < K)
        slot = torch.where(keep, slot, K)
        new_logp = full((B, K + 1), float("-inf"), device=top.device)
        new_logp.scatter_(1, slot, torch.where(keep, top, float("-inf")))
        new_ids = full((B, K + 1, t + 1), pad_id, dtype=torch.long, device=top.device)
        new_ids.scatter_(1, slot[:, :, None].expand(B, C, t + 1), candidates)
        new_logp, new_ids = new_logp[:, :K], new_ids[:, :K]
        if length_penalty == 0:
            # Stop a sequence once its best finished hypothesis beats every open beam.
            beaten = new_logp.max(dim=-1).values <= best_score
            new_logp = torch.where(beaten[:, None], float("-inf"), new_logp)
        ids, logp = new_ids.reshape(B * K, t + 1), new_logp
        if stop is not None and stop(torch.isinf(logp).all(dim=-1)):
            break
    return best_ids[:, :steps], best_score
