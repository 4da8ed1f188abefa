"""`/v1/chat/completions` and `/v1/completions`: the request's life around `genforge.serve.openai`
(which turns requests into engine runs and their output into OpenAI objects): upstream or local,
streamed or not, the model held and released, metrics, and cancellation when the client leaves.
A chat's pictures are first read as text (genforge/serve/content.py); a chat with `rag` is then
grounded in a document store (genforge/serve/rag.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time

from fastapi import APIRouter, Request
from fastapi.responses import Response, StreamingResponse

from genforge.errors import GenforgeError
from genforge.rag.answer import NO_ANSWER
from genforge.serve import openai
from genforge.serve.content import has_images, read_images
from genforge.serve.errors import APIError, bad_request, error_body
from genforge.serve.rag import NO_STORE, rag_fields
from genforge.serve.runs import cancel
from genforge.serve.schemas import ChatRequest, CompletionRequest

SSE_HEADERS = {"cache-control": "no-cache", "x-accel-buffering": "no"}

router = APIRouter()


@router.post("/v1/chat/completions")
async def chat_completions(body: ChatRequest, request: Request):
    return await until_disconnect(request, _chat(request, body))


async def _chat(request: Request, body: ChatRequest):
    registry = request.app.state.registry
    if has_images(body) and not registry.upstream_for(body.model):
        if body.model not in registry.loaded and not registry.loadable(body.model):
            raise registry.not_found(body.model)  # before the pictures are read
        body = await read_images(body)
    if body.rag is not None:
        return await _grounded_chat(request, body)
    return await _generation(request, body, "/v1/chat/completions", openai.chat)


@router.post("/v1/completions")
async def completions(body: CompletionRequest, request: Request):
    return await until_disconnect(
        request, _generation(request, body, "/v1/completions", openai.completions)
    )


async def _generation(request: Request, body, route: str, run):
    """Shared by chat and completions: upstream or local, streaming or not, metrics, cancel."""
    state = request.app.state
    registry, metrics = state.registry, state.metrics
    if up := registry.upstream_for(body.model):
        return await state.forwarder.forward(up, route.removeprefix("/v1"), await request.body())
    llm = await registry.acquire(body.model)
    started = time.perf_counter()
    metrics.in_flight.inc()
    runs: list = []  # the request's engine runs: cancelled on release, however it ends

    def finish() -> None:
        cancel(llm, runs)
        registry.release(body.model)
        metrics.in_flight.dec()
        metrics.duration.labels(route).observe(time.perf_counter() - started)
        metrics.prompt_tokens.labels(llm.name).inc(sum(r.n_prompt for r in runs) // body.n)
        for r in runs:  # cut-short runs too: their tokens were computed
            metrics.completion_tokens.labels(llm.name).inc(r.n_generated)
            if r.first_token is not None:
                metrics.ttft.labels(llm.name).observe(r.first_token)

    release = _once(finish)

    try:
        result = await run(llm, body, state.config.max_tokens, runs)
        if body.stream:
            # Started here, so that its `finally` (release) runs however the response ends,
            # even if the client is gone before the body is sent.
            stream = _guarded_stream(result, release)
            first = await stream.__anext__()
            return StreamingResponse(
                _prepend(first, stream), media_type="text/event-stream", headers=SSE_HEADERS
            )
        release()
        return result
    except BaseException:
        release()
        raise


async def _grounded_chat(request: Request, body: ChatRequest):
    """A chat whose last user message is answered from a document store (see serve/rag.py)."""
    registry, documents = request.app.state.registry, request.app.state.documents
    if documents is None:
        raise bad_request(NO_STORE, param="rag")
    if up := registry.upstream_for(body.model):
        raise bad_request(
            f"rag grounds chats of local models only; {body.model} is forwarded to {up.url}.",
            param="rag",
        )
    if body.model not in registry.loaded and not registry.loadable(body.model):
        raise registry.not_found(body.model)
    grounded, hits = await documents.ground(body)
    if not hits:  # the documents say nothing about it: the model is not asked
        reply = openai.canned_chat(body.model, NO_ANSWER, body, rag_fields([], NO_ANSWER))
        if body.stream:
            return StreamingResponse(reply, media_type="text/event-stream", headers=SSE_HEADERS)
        return reply

    similarity = await documents.meaning(body.rag.store)

    def cited_by_first_choice(texts: list[str]) -> dict:
        return rag_fields(hits, texts[0], similarity)

    run = functools.partial(openai.chat, extra=cited_by_first_choice)
    return await _generation(request, grounded, "/v1/chat/completions", run)


def _once(fn):
    called = False

    def wrapper():
        nonlocal called
        if not called:
            called = True
            fn()

    return wrapper


async def _guarded_stream(chunks, release):
    """The SSE body: an error after the headers went out is sent as an error event."""
    try:
        async for chunk in chunks:
            yield chunk
    except (APIError, GenforgeError) as e:
        status, message = (e.status, e.message) if isinstance(e, APIError) else (400, str(e))
        yield openai.sse(error_body(status, message))
    finally:
        release()


async def _prepend(first, rest):
    yield first
    async for item in rest:
        yield item


async def until_disconnect(request: Request, work):
    """Await `work` (the whole answer, or a stream's first event); if the client goes away first,
    cancel it, and so its generation. A stream's later events are cancelled by Starlette when the
    client disconnects."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
    if not task.done():
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        return Response(status_code=499)
    return task.result()


async def _disconnected(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass
