"""Choosing the next token of each sequence from its logits: greedy, or temperature, top-k and
top-p sampling with a per-sequence generator (a seed gives the same output every time), plus the
log-probabilities a client asked for (of the model's own distribution, before any filtering)."""

from __future__ import annotations

import torch

from shipyard.generate.params import TokenLogprob
from shipyard.generate.sequence import Sequence


def _filtered(logits: torch.Tensor, temperature: float, top_k: int, top_p: float) -> torch.Tensor:
    logits = logits / temperature
    if 0 < top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        ordered, order = torch.sort(logits, descending=True)
        probs = ordered.softmax(-1)
        # Drop a token when the ones before it already reach top_p (the first always stays).
        drop = probs.cumsum(-1) - probs >= top_p
        logits = logits.index_fill(0, order[drop], float("-inf"))
    return logits


def sample(logits: torch.Tensor, seqs: list[Sequence]) -> tuple[list[int], list[TokenLogprob | None]]:
    """One token per row of `logits` [len(seqs), vocab]."""
    greedy = logits.argmax(-1).tolist()
    tokens: list[int] = []
    logprobs: list[TokenLogprob | None] = []
    for row, seq in enumerate(seqs):
        p = seq.request.params
        if p.greedy:
            tok = greedy[row]
        else:
            probs = _filtered(logits[row], p.temperature, p.top_k, p.top_p).softmax(-1)
            tok = int(torch.multinomial(probs, 1, generator=seq.generator).item())
        tokens.append(tok)
        if p.logprobs is None:
            logprobs.append(None)
            continue
        lp = logits[row].log_softmax(-1)
        top: list[tuple[int, float]] = []
        if p.logprobs:
            values, ids = torch.topk(lp, p.logprobs)
            top = list(zip(ids.tolist(), values.tolist(), strict=True))
        logprobs.append(TokenLogprob(tok, float(lp[tok]), top))
    return tokens, logprobs
