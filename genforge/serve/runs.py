"""One generation as an async stream of text deltas, for the event loop.

The engine's background thread puts each sampled token into an `_AsyncSink`, which hands it to the
event loop; a `DeltaMaker` turns tokens into text (stop strings, eos). Leaving the stream early, by
a stop string, a client that disconnects or an error, cancels the engine request at once (off the
event loop: cancelling waits for the engine's current step).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from genforge.errors import GenforgeError
from genforge.generate.engine import TokenLogprob, is_end
from genforge.generate.sampling import SamplingParams
from genforge.generate.structured import Grammar
from genforge.generate.text import Delta, DeltaMaker


class _AsyncSink:
    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.loop, self.queue = loop, asyncio.Queue()

    def put(self, item) -> None:  # called from the engine thread
        self.loop.call_soon_threadsafe(self.queue.put_nowait, item)


@dataclass
class Run:
    """What one choice produced so far."""

    n_prompt: int
    n_generated: int = 0
    started: float = field(default_factory=time.perf_counter)
    first_token: float | None = None  # seconds from start to the first token
    logprobs: list[TokenLogprob] = field(default_factory=list)


async def deltas(
    llm, ids: list[int], params: SamplingParams, grammar: Grammar | None = None,
    logprobs: int | None = None, run: Run | None = None,
) -> AsyncIterator[tuple[Delta, list[TokenLogprob]]]:  # fmt: skip
    """Text deltas of one generation, each with the log-probabilities of its tokens (when asked)."""
    run = run or Run(len(ids))
    loop = asyncio.get_running_loop()
    sink = _AsyncSink(loop)
    constraint = llm.constraint(grammar)
    eos = llm.tokenizer.eos_ids
    req = await asyncio.to_thread(
        llm.engine.submit, ids, params, eos, sink, constraint=constraint, logprobs=logprobs
    )
    maker = DeltaMaker(llm.tokenizer.stream(), eos, params.stop)
    n_logprobs = 0
    try:
        while True:
            item = await sink.queue.get()
            if is_end(item):
                break
            if isinstance(item, Exception):
                raise GenforgeError(f"generation failed: {item}")
            run.n_generated += 1
            if run.first_token is None:
                run.first_token = time.perf_counter() - run.started
            delta = maker.push(item)
            if delta is None:
                continue
            yield delta, _take_logprobs(req, delta, n_logprobs, logprobs)
            n_logprobs += len(delta.token_ids)
            if maker.done:
                return
        delta = maker.end()
        yield delta, _take_logprobs(req, delta, n_logprobs, logprobs)
    finally:
        if not req.finished:
            # Fire and forget: the engine lock may be held for a whole step.
            loop.run_in_executor(None, llm.engine.cancel, req)


def _take_logprobs(req, delta: Delta, start: int, logprobs: int | None) -> list[TokenLogprob]:
    if logprobs is None:
        return []
    return req.state.token_logprobs[start : start + len(delta.token_ids)]
