"""Greedy, sampled and beam-search decoding over any next-token scorer (no model code here).

``step(prefixes)`` takes ``(N, t)`` token ids (each row starting with ``<bos>``, or with the
``prompt`` given) and returns ``(N, V)`` logits for the next token; for an encoder-decoder it
closes over the encoder memory. A scorer with a key/value cache reads only the columns it has
not seen; beam search tells it, through ``reorder(rows)``, which rows survive each step.
Every tensor is built on ``device`` (the scorer's), and the search itself reads nothing back to
the host: the only host read is ``stop``'s, once per step.

``stop(done)`` sees which sequences are finished and says whether to end the search. Under a
sharded model (FSDP2, ZeRO-3) every step's forward is a collective, so all processes must take
the same number of steps: pass a ``stop`` that agrees across them (e.g. true only when every
process is done); a process whose own sequences are done keeps stepping on padding until then.
``stop=None`` runs exactly ``max_len`` steps with no host read at all.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from lit_unitscale.errors import RecipeError
from lit_unitscale.models.attention import KVCache

Step = Callable[[Tensor], Tensor]
Stop = Callable[[Tensor], bool]
Pick = Callable[[Tensor], Tensor]
Reorder = Callable[[Tensor], None]
EndIds = int | Sequence[int]


def _ends(token: Tensor, eos_id: EndIds) -> Tensor:
    """True where ``token`` is a stop token."""
    if isinstance(eos_id, int):
        return token == eos_id
    return torch.isin(token, torch.tensor(list(eos_id), device=token.device))


def sampler(
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    generator: torch.Generator | None = None,
) -> Pick:
    """Draw the next token from the softmax of ``logits / temperature``, restricted to the
    ``top_k`` most likely tokens and to the smallest set whose probability reaches ``top_p``.
    Temperature 0 is greedy.

    Args:
        temperature: softmax temperature (0: the most likely token).
        top_k: keep the k most likely tokens (0: all).
        top_p: keep the most likely tokens whose cumulative probability reaches this (1: all).
        generator: random source (seeded for reproducible samples).
    """
    if temperature < 0 or top_k < 0 or not 0 < top_p <= 1:
        raise RecipeError("sampling: temperature >= 0, top_k >= 0 and 0 < top_p <= 1 required")

    def pick(logits: Tensor) -> Tensor:
        if temperature == 0:
            return logits.argmax(-1)
        logits = logits / temperature
        if top_k:
            kth = logits.topk(min(top_k, logits.shape[-1])).values[:, -1:]
            logits = logits.masked_fill(logits < kth, float("-inf"))
        if top_p < 1:
            sorted_logits, order = logits.sort(-1, descending=True)
            probs = sorted_logits.softmax(-1)
            # Drop a token once the more likely ones already reach top_p (the first stays).
            drop = probs.cumsum(-1) - probs >= top_p
            logits = logits.scatter(1, order, sorted_logits.masked_fill(drop, float("-inf")))
        return torch.multinomial(logits.softmax(-1), 1, generator=generator)[:, 0]

    return pick


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
    prompt: Tensor | None = None,
    pick: Pick | None = None,
    emit: Callable[[Tensor], None] | None = None,
) -> Tensor:
    """The most likely (or a sampled) next token at each step until a stop token or
    ``max_len`` tokens.

    Returns ``(batch, steps)`` new ids (no ``<bos>``, no prompt); the stop token kept, then
    ``pad_id``.

    Args:
        step: next-token logits for a batch of prefixes.
        batch_size: number of sequences.
        bos_id: start token (unused with a ``prompt``).
        eos_id: stop token, or several.
        pad_id: filler after the stop token.
        max_len: most tokens generated per sequence.
        device: where the ids live (the scorer's device).
        stop: ends the search early given the finished flags (None: always ``max_len`` steps).
        prompt: ``(batch, t)`` ids every sequence starts from (None: ``<bos>``).
        pick: next token from ``(batch, V)`` logits (None: the most likely; see :func:`sampler`).
        emit: sees each step's ``(batch,)`` new tokens as they come (streaming output).
    """
    if prompt is None:
        prompt = torch.full((batch_size, 1), bos_id, dtype=torch.long, device=device)
    ids, start = prompt, prompt.shape[1]
    done = torch.zeros(ids.shape[0], dtype=torch.bool, device=ids.device)
    for _ in range(max_len):
        logits = step(ids).float()
        nxt = logits.argmax(-1) if pick is None else pick(logits)
        nxt = torch.where(done, pad_id, nxt)
        ids = torch.cat([ids, nxt[:, None]], dim=1)
        if emit is not None:
            emit(nxt)
        done = done | _ends(nxt, eos_id)
        if stop is not None and stop(done):
            break
    return ids[:, start:]


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
    prompt: Tensor | None = None,
    reorder: Reorder | None = None,
) -> tuple[Tensor, Tensor]:
    """Beam search: keep the ``beam_size`` best prefixes by total log-probability.

    A hypothesis ends at ``<eos>`` (included in its score) or at ``max_len`` tokens. Finished
    hypotheses are ranked by ``logp / length ** length_penalty`` (0: plain log-probability).
    Search stops for a sequence once no open beam can beat its best finished hypothesis (exact
    for ``length_penalty`` 0, since log-probabilities only fall).

    Returns ``(ids, scores)``: ``(batch, steps)`` best new sequences (no ``<bos>``, no prompt),
    padded with ``pad_id`` after their end, and their ranking scores.

    Args:
        step: next-token logits for ``(N, t)`` prefixes; called with ``N = batch * beam_size``
            rows in the order ``(sequence, beam)``.
        batch_size: number of sequences.
        bos_id: start token (unused with a ``prompt``).
        eos_id: stop token, or several.
        pad_id: filler after the stop token.
        max_len: most tokens generated per sequence.
        beam_size: hypotheses kept per sequence.
        length_penalty: exponent of the length normalisation of finished hypotheses.
        device: where the ids and scores live (the scorer's device).
        stop: ends the search early given the finished flags (None: always ``max_len`` steps).
        prompt: ``(batch, t)`` ids every sequence starts from (None: ``<bos>``).
        reorder: told after each step which of the previous ``N`` rows each new row extends
            (a cached scorer reorders its cache), as ``(N,)`` row indices.
    """
    B, K = batch_size, beam_size
    full = torch.full
    if prompt is None:
        prompt = full((B, 1), bos_id, dtype=torch.long, device=device)
    device, start = prompt.device, prompt.shape[1]
    ids = prompt.repeat_interleave(K, dim=0)
    # Only the first beam is live at the start, so the K beams do not duplicate one prefix.
    logp = full((B, K), float("-inf"), device=device)
    logp[:, 0] = 0.0
    best_score = full((B,), float("-inf"), device=device)
    best_ids = full((B, max_len), pad_id, dtype=torch.long, device=device)
    steps = 0
    first_row = torch.arange(B, device=device)[:, None] * K
    for t in range(1, max_len + 1):
        steps, width = t, start + t - 1
        scores = torch.log_softmax(step(ids).float(), dim=-1)  # (B*K, V)
        V = scores.shape[-1]
        total = (logp[:, :, None] + scores.view(B, K, V)).view(B, K * V)
        # 2K candidates, best first, so that K open ones remain even if K of them end here.
        C = min(2 * K, K * V)
        top, index = total.topk(C, dim=-1)
        beam, token = index // V, index % V
        prev = ids.view(B, K, width)
        candidates = torch.cat(
            [prev.gather(1, beam[:, :, None].expand(B, C, width)), token[:, :, None]], dim=2
        )  # (B, C, width + 1), the prompt (or <bos>) first
        alive = top > float("-inf")
        ends = alive & (_ends(token, eos_id) | (t == max_len))

        # The best hypothesis ending here replaces the best so far only if strictly better
        # (ties: the earlier one, and among this step's, the higher-ranked candidate).
        value = top / t**length_penalty if length_penalty else top
        value = torch.where(ends, value, float("-inf"))
        here, pick = value.max(dim=-1)
        better = here > best_score
        best_score = torch.where(better, here, best_score)
        chosen = candidates.gather(1, pick[:, None, None].expand(B, 1, width + 1))[:, 0, start:]
        padded = torch.nn.functional.pad(chosen, (0, max_len - t), value=pad_id)
        best_ids = torch.where(better[:, None], padded, best_ids)

        # The first K open candidates become the next beams; slot K collects the rest.
        open_ = alive & ~ends
        slot = open_.long().cumsum(-1) - 1
        keep = open_ & (slot < K)
        slot = torch.where(keep, slot, K)
        new_logp = full((B, K + 1), float("-inf"), device=top.device)
        new_logp.scatter_(1, slot, torch.where(keep, top, float("-inf")))
        new_ids = full((B, K + 1, width + 1), pad_id, dtype=torch.long, device=top.device)
        new_ids.scatter_(1, slot[:, :, None].expand(B, C, width + 1), candidates)
        new_logp, new_ids = new_logp[:, :K], new_ids[:, :K]
        if reorder is not None:
            source = torch.zeros((B, K + 1), dtype=torch.long, device=top.device)
            source.scatter_(1, slot, beam)
            reorder((first_row + source[:, :K]).flatten())
        if length_penalty == 0:
            # Stop a sequence once its best finished hypothesis beats every open beam.
            beaten = new_logp.max(dim=-1).values <= best_score
            new_logp = torch.where(beaten[:, None], float("-inf"), new_logp)
        ids, logp = new_ids.reshape(B * K, width + 1), new_logp
        if stop is not None and stop(torch.isinf(logp).all(dim=-1)):
            break
    return best_ids[:, :steps], best_score


class CachedScorer:
    """A :data:`Step` over a model with a key/value cache: each call runs the model on the
    columns it has not seen yet (the whole prompt first, then one token), and beam search's
    ``reorder`` reorders the cache.

    Args:
        forward: ``forward(new_ids, new_mask, cache)`` → ``(N, new, V)`` logits, extending
            ``cache``; ``new_mask`` is the prompt's mask on the first call, else None.
        prompt_mask: ``(batch, t)`` True for real prompt tokens, False for left padding (None:
            no padding); repeated to the scorer's rows when beams multiply them.
        cache: the cache ``forward`` reads and extends (None: a new empty one).
    """

    def __init__(
        self,
        forward: Callable[[Tensor, Tensor | None, KVCache], Tensor],
        prompt_mask: Tensor | None = None,
        cache: KVCache | None = None,
    ) -> None:
        self.forward, self.prompt_mask = forward, prompt_mask
        self.cache = KVCache() if cache is None else cache
        self.seen = 0

    def __call__(self, ids: Tensor) -> Tensor:
        mask = None
        if self.seen == 0 and self.prompt_mask is not None:
            mask = self.prompt_mask.repeat_interleave(ids.shape[0] // len(self.prompt_mask), 0)
        new, self.seen = ids[:, self.seen :], ids.shape[1]
        return self.forward(new, mask, self.cache)[:, -1]

    def reorder(self, rows: Tensor) -> None:
        """Keep the cache rows ``rows`` in that order.

        Args:
            rows: ``(N,)`` row indices.
        """
        self.cache.reorder(rows)


@torch.no_grad()
def generate(
    forward: Callable[[Tensor, Tensor | None, KVCache | None], Tensor],
    prompt: Tensor,
    max_new_tokens: int,
    prompt_mask: Tensor | None = None,
    eos_id: EndIds = (),
    pad_id: int = 0,
    pick: Pick | None = None,
    beam_size: int = 1,
    length_penalty: float = 0.0,
    cached: bool = True,
    stop: Stop | None = all_done,
    emit: Callable[[Tensor], None] | None = None,
) -> Tensor:
    """Continue each prompt of a batch by up to ``max_new_tokens`` tokens.

    Returns ``(batch, steps)`` new tokens; after a stop token, ``pad_id``.

    Args:
        forward: ``forward(ids, mask, cache)`` → ``(N, t, V)`` logits of a causal model
            (e.g. ``DecoderLM.__call__``); with ``cache`` None it sees whole prefixes.
        prompt: ``(batch, t)`` prompt ids, left-padded when their lengths differ.
        max_new_tokens: most tokens added per prompt.
        prompt_mask: ``(batch, t)`` True for real tokens (None: no padding).
        eos_id: stop token(s) (empty: run ``max_new_tokens``).
        pad_id: filler after a stop token.
        pick: next token from logits (None: greedy; see :func:`sampler`); greedy only for beams.
        beam_size: 1: greedy or sampled; more: beam search with this many beams.
        length_penalty: beam search's length-normalisation exponent.
        cached: reuse keys and values (False: recompute every prefix, prompts unpadded).
        stop: ends the search early given the finished flags (None: always every step).
        emit: sees each step's new tokens (greedy and sampling only).
    """
    if cached:
        scorer = CachedScorer(forward, prompt_mask)
        step, reorder = scorer, scorer.reorder
    else:
        if prompt_mask is not None and not bool(prompt_mask.all()):
            raise RecipeError("uncached generation needs prompts of one length (no padding)")

        def step(ids: Tensor) -> Tensor:
            return forward(ids, None, None)[:, -1]

        reorder = None
    common = {"stop": stop, "prompt": prompt}
    B = prompt.shape[0]
    if beam_size == 1:
        return greedy_decode(
            step, B, 0, eos_id, pad_id, max_new_tokens, pick=pick, emit=emit, **common
        )
    ids, _ = beam_search(
        step,
        B,
        0,
        eos_id,
        pad_id,
        max_new_tokens,
        beam_size,
        length_penalty,
        reorder=reorder,
        **common,
    )
    return ids
