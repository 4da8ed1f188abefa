"""Sampling: pure functions from logits (and the tokens seen so far) to the next token.

Order of operations: repetition / presence / frequency penalties, the DRY penalty, temperature,
top-k, top-p, min-p, then a draw from a seeded `torch.Generator`; temperature 0 is greedy. The same
parameters and seed give the same tokens.

DRY ("don't repeat yourself", the sampler llama.cpp and text-generation-webui ship) penalises the
tokens that would continue a run of the output that already appeared earlier in the output: a
continuation of a repeated run of `n >= dry_allowed_length` tokens loses
`dry_multiplier * dry_base ** (n - dry_allowed_length)` from its logit. Unlike a repetition penalty it
leaves single words alone (an answer may say "the" or "cache" as often as it needs) and grows only
with the length of what is being repeated, so a loop is broken within a few tokens. Only the output
is matched, not the prompt: quoting the sources of a grounded answer is not repetition. Runs do not
extend across a sequence breaker (a token holding a newline, a colon, a quote or an asterisk), so
the repeated keys of JSON and the repeated shapes of a list's lines are not penalised.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field, fields

import torch

from genforge.errors import GenforgeError


@dataclass
class SamplingParams:
    temperature: float = 0.8  # 0 = greedy; defaults follow llama.cpp's
    top_k: int = 40  # keep the k most likely tokens; 0 = off
    top_p: float = 0.95  # keep the smallest set with this much probability; 1 = off
    min_p: float = 0.05  # drop tokens below min_p x the top token's probability; 0 = off
    repetition_penalty: float = 1.0  # divide logits of tokens already in the context; 1 = off
    presence_penalty: float = 0.0  # subtract once from logits of generated tokens
    frequency_penalty: float = 0.0  # subtract per occurrence in the generated tokens
    dry_multiplier: float = 0.0  # DRY penalty on continuing a repeated run of the output; 0 = off
    dry_base: float = 1.75  # ... multiplied by this for each token the run is longer
    dry_allowed_length: int = 2  # ... than this
    seed: int | None = None  # same seed, same output
    max_tokens: int | None = None  # None = genforge.hub.DEFAULT_MAX_TOKENS, or the context's rest
    stop: list[str] = field(default_factory=list)  # strings that end the output (not included)
    logit_bias: dict[int, float] = field(default_factory=dict)  # token id -> added to its logit

    def __post_init__(self):
        checks = [
            (
                "temperature",
                self.temperature >= 0 and math.isfinite(self.temperature),
                "a number >= 0",
            ),
            ("top_k", isinstance(self.top_k, int) and self.top_k >= 0, "an integer >= 0"),
            ("top_p", 0 < self.top_p <= 1, "in (0, 1]"),
            ("min_p", 0 <= self.min_p <= 1, "in [0, 1]"),
            ("repetition_penalty", 0 < self.repetition_penalty <= 10, "in (0, 10]"),
            ("presence_penalty", -2 <= self.presence_penalty <= 2, "in [-2, 2]"),
            ("frequency_penalty", -2 <= self.frequency_penalty <= 2, "in [-2, 2]"),
            ("dry_multiplier", 0 <= self.dry_multiplier <= 5, "in [0, 5]"),
            ("dry_base", 1 <= self.dry_base <= 4, "in [1, 4]"),
            (
                "dry_allowed_length",
                isinstance(self.dry_allowed_length, int) and self.dry_allowed_length >= 1,
                "an integer >= 1",
            ),
            ("max_tokens", self.max_tokens is None or self.max_tokens >= 1, "an integer >= 1"),
        ]
        for name, ok, want in checks:
            if not ok:
                raise GenforgeError(f"{name} must be {want}, got {getattr(self, name)!r}.")
        if isinstance(self.stop, str):
            self.stop = [self.stop]
        if any(not s for s in self.stop):
            raise GenforgeError("stop strings must not be empty.")
        for token, bias in self.logit_bias.items():
            if not (isinstance(token, int) and token >= 0 and -100 <= bias <= 100):
                raise GenforgeError(
                    f"logit_bias maps token ids (integers >= 0) to numbers in [-100, 100], got {token!r}: {bias!r}."
                )

    @classmethod
    def from_kwargs(cls, **kwargs) -> SamplingParams:
        """Build from keyword arguments, ignoring None values; unknown names are an error."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(kwargs) - known)
        if unknown:
            raise GenforgeError(
                f"unknown sampling option {unknown[0]!r}; the options are {', '.join(sorted(known))}."
            )
        return cls(**{k: v for k, v in kwargs.items() if v is not None})

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


def apply_penalties(
    logits: torch.Tensor,  # (V,)
    params: SamplingParams,
    context_ids: torch.Tensor | None,  # (N,) prompt + generated tokens
    generated_counts: torch.Tensor | None,  # (V,) how often each token was generated so far
    generated: list[int] | None = None,  # the output so far, for DRY
    breakers: frozenset[int] = frozenset(),  # tokens that end a DRY run
) -> torch.Tensor:
    if params.repetition_penalty != 1.0 and context_ids is not None and context_ids.numel():
        seen = logits[context_ids]
        logits = logits.clone()
        logits[context_ids] = torch.where(
            seen > 0, seen / params.repetition_penalty, seen * params.repetition_penalty
        )
    if (params.presence_penalty or params.frequency_penalty) and generated_counts is not None:
        counts = generated_counts.to(logits.dtype)
        logits = logits - params.frequency_penalty * counts
        logits = logits - params.presence_penalty * (counts > 0).to(logits.dtype)
    if params.dry_multiplier and generated:
        penalties = dry_penalties(generated, params, breakers)
        if penalties:
            ids = torch.tensor(list(penalties), dtype=torch.long)
            values = torch.tensor(list(penalties.values()), dtype=logits.dtype)
            logits = logits.index_add(0, ids, -values)
    if params.logit_bias:
        ids = torch.tensor([t for t in params.logit_bias if t < logits.shape[-1]], dtype=torch.long)
        bias = torch.tensor([params.logit_bias[int(t)] for t in ids], dtype=logits.dtype)
        logits = logits.index_add(0, ids, bias)
    return logits


DRY_MAX_RUN = 48  # longer runs are penalised as this long (the penalty is already prohibitive)


def dry_penalties(
    generated: list[int], params: SamplingParams, breakers: frozenset[int]
) -> dict[int, float]:
    """Token id -> DRY penalty for the next token after `generated`.

    For every earlier position whose token equals the last one, the run of tokens matching the
    output's end is measured backwards (stopping at a breaker); the token that followed that
    earlier run is the one that would repeat it.
    """
    n = len(generated)
    last = generated[-1] if n else None
    if n < 2 or last in breakers:
        return {}
    runs: dict[int, int] = {}
    for j in range(n - 2, -1, -1):
        if generated[j] != last:
            continue
        length = 1
        while (
            length < DRY_MAX_RUN
            and j - length >= 0
            and generated[j - length] == generated[n - 1 - length]
            and generated[j - length] not in breakers
        ):
            length += 1
        if length >= params.dry_allowed_length:
            follower = generated[j + 1]
            runs[follower] = max(runs.get(follower, 0), length)
    return {
        token: params.dry_multiplier * params.dry_base ** (length - params.dry_allowed_length)
        for token, length in runs.items()
    }


def filter_logits(logits: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    """Temperature, top-k, top-p and min-p: scaled logits (V,) with removed tokens at -inf."""
    logits = logits / params.temperature
    if 0 < params.top_k < logits.shape[-1]:
        kth = torch.topk(logits, params.top_k).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if params.top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True)
        sorted_probs = sorted_logits.softmax(-1)
        drop_sorted = (
            sorted_probs.cumsum(-1) - sorted_probs >= params.top_p
        )  # keeps the one crossing p
        drop = torch.zeros_like(drop_sorted).scatter(0, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    if params.min_p > 0:
        probs = logits.softmax(-1)
        logits = logits.masked_fill(probs < params.min_p * probs.max(), float("-inf"))
    return logits


def sample(
    logits: torch.Tensor,  # (V,) float32
    params: SamplingParams,
    generator: torch.Generator | None,
    context_ids: torch.Tensor | None = None,
    generated_counts: torch.Tensor | None = None,
    generated: list[int] | None = None,
    breakers: frozenset[int] = frozenset(),
) -> int:
    """Pick the next token id: from the distribution `filter_logits` defines, computed faster."""
    logits = apply_penalties(logits, params, context_ids, generated_counts, generated, breakers)
    if params.greedy:
        return int(torch.argmax(logits))
    ids, weights = candidates(logits, params)
    pick = int(torch.multinomial(weights, 1, generator=generator))
    return int(ids[pick]) if ids is not None else pick


NUCLEUS_GUESS = 256  # top-p nuclei are almost always smaller: look there before sorting everything


def candidates(
    logits: torch.Tensor, params: SamplingParams
) -> tuple[torch.Tensor | None, torch.Tensor]:
    """(token ids, unnormalized probabilities) that `filter_logits` keeps, most likely first; ids
    None means the whole vocabulary in order.

    Sorting the whole vocabulary for top-p costs ~5 ms per token on a 49k vocabulary, a few times
    the model's own time per request in a batch, so the nucleus is looked for among the most likely
    NUCLEUS_GUESS tokens first (exact whenever it lies there) and the full sort is the fallback.
    """
    vocab = logits.shape[-1]
    k = params.top_k if 0 < params.top_k < vocab else vocab
    if k < vocab:  # the top-k's softmax is the whole softmax's top-k renormalized: no pass over V
        values, ids = torch.topk(logits, k)
        weights = (values / params.temperature).softmax(-1)  # top-p applies to these
    else:
        probs = (logits / params.temperature).softmax(-1)
        if params.top_p >= 1:
            if params.min_p > 0:
                probs = probs.masked_fill(probs < params.min_p * probs.max(), 0)
            return None, probs
        weights, ids = torch.topk(probs, min(NUCLEUS_GUESS, vocab))
        if float(weights.sum()) < params.top_p:
            weights, ids = torch.sort(probs, descending=True)
    if params.top_p < 1:
        keep = int(((weights.cumsum(-1) - weights) < params.top_p).sum())
        weights, ids = weights[: max(keep, 1)], ids[: max(keep, 1)]
    if params.min_p > 0:
        keep = int((weights >= params.min_p * weights[0]).sum())
        weights, ids = weights[:keep], ids[:keep]
    return ids, weights


def make_generator(seed: int | None) -> torch.Generator:
    g = torch.Generator()
    g.manual_seed(seed if seed is not None else int.from_bytes(os.urandom(7), "little"))
    return g
