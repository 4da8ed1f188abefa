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
from genforge.generate.scheduler import Request
from genforge.generate.structured import Grammar
from genforge.generate.text import Delta, DeltaMaker


class _AsyncSink:
    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.loop, self.queue = loop, asyncio.Queue()

    def put(self, item) -> None:  # called from the engine thread
        self.loop.call_soon_threadsafe(self.queue.put_nowait, item)


@dataclass
class Run:
    """One choice: its engine request and what it produced so far."""

    n_prompt: int
    n_generated: int = 0
    started: float = field(default_factory=time.perf_counter)
    first_token: float | None = None  # seconds from start to the first token
    request: Request | None = None
    sink: _AsyncSink | None = None


async def submit(
    llm,
    jobs: list[tuple[list[int], SamplingParams]],
    grammar: Grammar | None = None,
    logprobs: int | None = None,
    runs: list[Run] | None = None,
) -> list[Run]:
    """Queue every choice of an API request at once (the engine admits them at the same step).

    The runs are appended to `runs` as soon as they exist, so that whoever owns that list can
    `cancel` them however the request ends.
    """
    loop = asyncio.get_running_loop()
    eos = llm.tokenizer.eos_ids
    new = [Run(len(ids), sink=_AsyncSink(loop)) for ids, _ in jobs]
    if runs is not None:
        runs += new

    def queue() -> None:  # in a worker thread: building matchers and taking the engine lock block
        requests = llm.engine.submit_all(
            [
                {
                    "prompt_ids": ids,
                    "params": params,
                    "eos_ids": eos,
                    "out": run.sink,
                    "constraint": llm.constraint(grammar),
                    "logprobs": logprobs,
                    "adapter": llm.adapter,
                }
                for run, (ids, params) in zip(new, jobs, strict=True)
            ]
        )
        for run, req in zip(new, requests, strict=True):
            run.request = req

    await asyncio.to_thread(queue)
    return new


def cancel(llm, runs: list[Run]) -> None:
    """Cancel the runs still going, without blocking the event loop (the engine lock may be held
    for a whole step)."""
    live = [r.request for r in runs if r.request is not None and not r.request.finished]
    if live:
        asyncio.get_running_loop().run_in_executor(None, _cancel_all, llm.engine, live)


def _cancel_all(engine, requests) -> None:
    for req in requests:
        engine.cancel(req)


async def deltas(
    llm, run: Run, params: SamplingParams, logprobs: int | None = None
) -> AsyncIterator[tuple[Delta, list[TokenLogprob]]]:
    """Text deltas of a submitted run, each with the log-probabilities of its tokens (if asked)."""
    eos = llm.tokenizer.eos_ids
    maker = DeltaMaker(llm.tokenizer.stream(), eos, params.stop)
    n_logprobs = 0
    try:
        while True:
            item = await run.sink.queue.get()
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
            yield delta, _take_logprobs(run.request, delta, n_logprobs, logprobs)
            n_logprobs += len(delta.token_ids)
            if maker.done:
                return
        delta = maker.end()
        yield delta, _take_logprobs(run.request, delta, n_logprobs, logprobs)
    finally:
        cancel(llm, [run])


def _take_logprobs(req, delta: Delta, start: int, logprobs: int | None) -> list[TokenLogprob]:
    if logprobs is None:
        return []
    return req.state.token_logprobs[start : start + len(delta.token_ids)]
