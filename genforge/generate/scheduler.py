"""Which requests run in the next forward pass, and how many of their tokens.

Continuous batching: each step mixes the decodes of running requests (one token each) with chunks of
the prompts of new ones, up to a token budget, so a long prompt never stalls the others for long and a
finished request's place is taken at the next step. Memory comes from a `BlockPool`: a request is
admitted when the blocks for its next chunk are free; when the pool runs dry mid-generation the
newest request is preempted (its blocks released, its tokens so far kept) and later recomputed,
mostly from the prefix cache. Requests wait; nothing crashes because the cache is full.

The scheduler knows nothing of models or tensors: it deals in token counts and block tables, so it
is tested with plain requests and no model.
"""

from __future__ import annotations

import itertools
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from genforge.generate.blocks import BlockPool, BlockTable

_ids = itertools.count()


@dataclass(eq=False)
class Request:
    prompt: list[int]
    max_tokens: int  # new tokens at most (already checked against the context)
    params: Any = None  # the sampler's settings; opaque here
    eos_ids: frozenset[int] = frozenset()
    id: int = field(default_factory=lambda: next(_ids))
    output: list[int] = field(default_factory=list)
    n_computed: int = 0  # tokens whose keys/values are in the cache
    table: BlockTable = field(default_factory=BlockTable)
    finish_reason: str | None = None  # "stop", "length", "cancelled" once finished
    state: Any = None  # the engine's per-request data (sampler state, output queue)
    n_cached: int = 0  # prompt tokens served by the prefix cache (the last admission)
    n_preempted: int = 0
    adapter: str | None = None  # the LoRA adapter its rows go through (None: the base model)

    @property
    def tokens(self) -> list[int]:
        return self.prompt + self.output

    @property
    def n_tokens(self) -> int:
        """len(tokens), without building the list (asked every step)."""
        return len(self.prompt) + len(self.output)

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None


@dataclass
class Scheduled:
    request: Request
    start: int  # first position computed this step
    n: int  # tokens computed this step

    @property
    def samples(self) -> bool:
        """True when this step reaches the end of the request's tokens, so it yields a new token."""
        return self.start + self.n == self.request.n_tokens


class Scheduler:
    def __init__(self, pool: BlockPool, max_batch: int = 16, step_tokens: int = 512):
        if max_batch < 1 or step_tokens < 1:
            raise ValueError("max_batch and step_tokens must be at least 1")
        self.pool, self.max_batch, self.step_tokens = pool, max_batch, step_tokens
        self.waiting: deque[Request] = deque()
        self.running: list[Request] = []  # in admission order

    @property
    def capacity_tokens(self) -> int:
        return self.pool.n_blocks * self.pool.block_size

    def add(self, request: Request) -> None:
        need = len(request.prompt) + request.max_tokens
        if need > self.capacity_tokens:
            raise ValueError(
                f"request needs {need} cache positions but the KV cache holds {self.capacity_tokens}"
            )
        self.waiting.append(request)

    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    def cancel(self, request: Request) -> None:
        self.finish(request, "cancelled")

    def finish(self, request: Request, reason: str) -> None:
        if request.finished:
            return
        request.finish_reason = reason
        if request in self.running:
            self.running.remove(request)
        elif request in self.waiting:
            self.waiting.remove(request)
        self.pool.release(request.table)

    def schedule(self) -> list[Scheduled]:
        """Choose this step's work: running requests first (oldest first), then new ones."""
        budget, out = self.step_tokens, []
        for req in list(self.running):
            if req not in self.running:  # preempted below to make room for an older request
                continue
            n = min(req.n_tokens - req.n_computed, budget)
            if n == 0:
                continue
            while not self.pool.grow(req.table, req.n_computed + n):
                victim = self.running[-1]
                self._preempt(victim)
                if victim is req:
                    break
            if req not in self.running:
                continue
            out.append(Scheduled(req, req.n_computed, n))
            budget -= n
            if budget == 0:
                return out
        while self.waiting and len(self.running) < self.max_batch and budget > 0:
            req = self.waiting[0]
            tokens = req.tokens
            if not req.table.blocks:
                # Keep at least one token to compute: its logits give the next token. Copied
                # positions of a partly shared block leave two: prompt rows are attended together
                # (SDPA), where a single row would take the decode kernel, whose float sums differ,
                # and a repeated prompt would not give the bits it gave cold.
                req.n_computed = req.n_cached = self.pool.match_prefix(
                    req.table, tokens, len(tokens) - 1, partial=len(tokens) - 2
                )
            n = min(len(tokens) - req.n_computed, budget)
            if not self.pool.grow(req.table, req.n_computed + n) and self.pool.copying(req.table):
                # The copy's source holds a block the chunk needs: do without the copy.
                self.pool.release(req.table)
                req.n_computed = req.n_cached = self.pool.match_prefix(
                    req.table, tokens, len(tokens) - 1
                )
                n = min(len(tokens) - req.n_computed, budget)
            if not self.pool.grow(req.table, req.n_computed + n):
                # Wait for memory; its prefix blocks stay cached (not held) meanwhile.
                self.pool.release(req.table)
                req.n_computed = 0
                if self.running or out:
                    break
                raise RuntimeError("the KV cache cannot hold a single request's chunk")
            self.waiting.popleft()
            self.running.append(req)
            self.pool.queries += len(tokens)
            self.pool.hits += req.n_cached
            out.append(Scheduled(req, req.n_computed, n))
            budget -= n
        return out

    def _preempt(self, req: Request) -> None:
        """Free a running request's memory; it waits at the front and is recomputed later."""
        self.running.remove(req)
        self.pool.release(req.table)
        req.n_computed = 0
        req.n_preempted += 1
        self.waiting.appendleft(req)

    def update(self, scheduled: list[Scheduled]) -> None:
        """Record that the scheduled tokens were computed (call before appending sampled tokens)."""
        for s in scheduled:
            s.request.n_computed = s.start + s.n
            req = s.request
            if self.pool.fills_block(req.table, req.n_computed):  # builds req.tokens only then
                self.pool.publish(req.table, req.tokens, req.n_computed)
