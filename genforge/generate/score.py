"""Log-likelihood scoring: how likely is each continuation after its context, under the model.

The engine's paged KV cache makes this cheap. Requests are grouped by context, and a batch of them
takes two forward passes:

    contexts       -> every distinct context once, end to end; its last row gives the log-probs
                      of each continuation's first token. Contexts that start like an earlier one
                      (the same few-shot examples) reuse its cached blocks (the prefix cache).
    continuations  -> every continuation of every context, end to end, each attending to its
                      context's cached keys and values (full blocks shared, the partial last block
                      copied); all their rows give logits.

So the 4 endings of a HellaSwag item cost the context once, not 4 times, and a batch of items runs
as two forward passes with no padding. A context with a single continuation (a perplexity window)
is one sequence in the first pass. Token ids in, numbers out: text lives above (`LLM`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from genforge.errors import GenforgeError
from genforge.generate.blocks import BlockPool, BlockTable
from genforge.model.kv_cache import PagedBatch, PagedKVCache
from genforge.model.transformer import Transformer

LOGITS_BYTES = 256 * 2**20  # float32 logits one pass may produce: bounds rows per batch


@dataclass
class Scored:
    logprob: float  # log p(continuation | context), natural log, summed over its tokens
    greedy: bool  # every continuation token was the model's most likely next token
    n_tokens: int  # tokens in the continuation


@dataclass
class _Group:
    context: list[int]
    requests: list[int]  # indices into the caller's list


def check_requests(requests: list[tuple[list[int], list[int]]], context_length: int) -> None:
    for i, (context, continuation) in enumerate(requests):
        if not context or not continuation:
            raise GenforgeError(
                f"scoring request {i} has an empty {'context' if not context else 'continuation'}; "
                "give at least one token of each (start a context with the BOS token)."
            )
        if len(context) + len(continuation) > context_length:
            raise GenforgeError(
                f"scoring request {i} is {len(context) + len(continuation)} tokens but the context "
                f"holds {context_length}; shorten it (drop tokens from the start of the context)."
            )


def loglikelihood(
    model: Transformer,
    cache: PagedKVCache,
    pool: BlockPool,
    requests: list[tuple[list[int], list[int]]],
    *,
    batch_tokens: int = 2048,
    progress: Callable[[int], None] | None = None,
    salt: bytes = b"",
) -> list[Scored]:
    """Score each (context ids, continuation ids) request; results in the same order.

    batch_tokens: tokens per forward pass (contexts and continuations are separate passes);
    progress: called with the number of requests finished after each batch; salt: the prefix
    cache's name for the adapter the model runs through (`BlockTable.salt`).
    """
    groups: dict[tuple[int, ...], _Group] = {}
    for i, (context, _) in enumerate(requests):
        groups.setdefault(tuple(context), _Group(list(context), [])).requests.append(i)
    units = []
    for group in groups.values():
        if len(group.requests) > 1 and _cost(group, requests, pool)[2] > pool.n_blocks:
            # Its continuations together outgrow the cache: score them one by one instead.
            units += [_Group(group.context, [i]) for i in group.requests]
        else:
            units.append(group)
    results: list[Scored | None] = [None] * len(requests)
    max_rows = max(64, LOGITS_BYTES // (4 * model.cfg.vocab_size))
    batch: list[_Group] = []
    tokens = rows = blocks = 0
    for group in units:
        g_tokens, g_rows, g_blocks = _cost(group, requests, pool)
        if batch and (
            tokens + g_tokens > batch_tokens
            or rows + g_rows > max_rows
            or blocks + g_blocks > pool.n_available
        ):
            _score_batch(model, cache, pool, batch, requests, results, progress, salt)
            batch, tokens, rows, blocks = [], 0, 0, 0
        if g_blocks > pool.n_available:
            raise GenforgeError(
                "the KV cache is too busy to score this request; wait for running generations "
                "to finish or load the model with a larger kv_tokens."
            )
        batch.append(group)
        tokens, rows, blocks = tokens + g_tokens, rows + g_rows, blocks + g_blocks
    if batch:
        _score_batch(model, cache, pool, batch, requests, results, progress, salt)
    return results  # type: ignore[return-value]


def _cost(group: _Group, requests, pool: BlockPool) -> tuple[int, int, int]:
    """Tokens computed, logit rows and cache blocks that scoring `group` takes."""
    n, bs = len(group.context), pool.block_size
    conts = [len(requests[i][1]) - 1 for i in group.requests]
    if len(conts) == 1:  # one sequence, one pass
        return n + conts[0], 1 + conts[0], pool.blocks_for(n + conts[0])
    blocks = pool.blocks_for(n) + sum(pool.blocks_for(n + m) - n // bs for m in conts)
    return n + sum(conts), 1 + sum(conts), blocks


def _score_batch(
    model, cache, pool, batch: list[_Group], requests, results, progress, salt: bytes
) -> None:
    bs = pool.block_size
    tables: list[BlockTable] = []
    try:
        # Pass 1: each context once. A context with one continuation runs on through it (all of
        # that pair in one sequence); otherwise its last row predicts each continuation's first token.
        seqs, feed = [], []
        for group in batch:
            table, n = BlockTable(salt=salt), len(group.context)
            tables.append(table)
            cached = pool.match_prefix(table, group.context, n - 1)
            tokens = group.context[cached:]
            if len(group.requests) == 1:
                tokens = tokens + requests[group.requests[0]][1][:-1]
            pool.grow(table, cached + len(tokens))
            n_rows = len(requests[group.requests[0]][1]) if len(group.requests) == 1 else 1
            seqs.append((table.blocks, cached, len(tokens), n_rows))
            feed.extend(tokens)
        lp = _log_probs(model, cache, seqs, feed)  # (rows, vocab)
        # Pass 2: every continuation but its last token, after its context's cached rows.
        seqs, feed, targets, owners = [], [], [], []
        row = 0
        for group, table in zip(batch, tables[: len(batch)], strict=True):
            n = len(group.context)
            pool.publish(table, group.context, n)
            if len(group.requests) == 1:
                i = group.requests[0]
                cont = requests[i][1]
                results[i] = _scored(lp[row : row + len(cont)], cont)
                row += len(cont)
                continue
            first, best = lp[row], int(lp[row].argmax())
            row += 1
            for i in group.requests:
                cont = requests[i][1]
                results[i] = Scored(float(first[cont[0]]), best == cont[0], len(cont))
                if len(cont) == 1:
                    continue
                own = BlockTable(salt=salt)
                tables.append(own)
                pool.share(own, table.blocks[: n // bs])
                pool.grow(own, n + len(cont) - 1)
                if n % bs:  # the context's partial last block: a private copy to write after
                    offsets = torch.arange(n % bs)
                    src = table.blocks[n // bs] * bs + offsets
                    cache.copy_slots(src, own.blocks[n // bs] * bs + offsets)
                seqs.append((own.blocks, n, len(cont) - 1, len(cont) - 1))
                feed.extend(cont[:-1])
                targets.extend(cont[1:])
                owners.extend([i] * (len(cont) - 1))
        if seqs:
            lp = _log_probs(model, cache, seqs, feed)  # (rows, vocab)
            want = torch.tensor(targets)
            token_lp = lp.gather(1, want[:, None])[:, 0].tolist()
            hits = (lp.argmax(1) == want).tolist()
            for i, value, hit in zip(owners, token_lp, hits, strict=True):
                r = results[i]
                r.logprob += value
                r.greedy = r.greedy and hit
    finally:
        for table in tables:
            pool.release(table)
    if progress is not None:
        progress(sum(len(g.requests) for g in batch))


def _scored(lp: torch.Tensor, continuation: list[int]) -> Scored:
    """The score of a continuation from the log-prob rows (one per token) that predict it."""
    want = torch.tensor(continuation)
    total = float(lp.gather(1, want[:, None]).sum(dtype=torch.float64))
    return Scored(total, bool((lp.argmax(1) == want).all()), len(continuation))


def _log_probs(
    model: Transformer, cache: PagedKVCache, seqs: list, feed: list[int]
) -> torch.Tensor:
    """Log-probabilities (rows, vocab) of the rows that `seqs` ask logits for."""
    batch = PagedBatch(cache, seqs, model.cfg.sliding_window)
    tokens = torch.tensor([feed], device=cache.device)
    logits = model(tokens, batch, last_only=True)[0].cpu()  # (rows, vocab)
    return torch.log_softmax(logits, dim=-1)
