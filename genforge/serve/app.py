"""The FastAPI application: OpenAI routes, document-store routes, health, metrics, the web UI, and
what guards them.

Guards are plain ASGI middleware (so streamed responses and client disconnects pass through
untouched): a bearer-token check when an API key is set (everything but `/health` and the UI's static
files), a request-body size limit, and CORS only for origins given explicitly.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import hmac
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from genforge.errors import GenforgeError
from genforge.rag.answer import NO_ANSWER
from genforge.serve import openai
from genforge.serve.errors import APIError, bad_request, error_body
from genforge.serve.metrics import Metrics
from genforge.serve.models import Registry
from genforge.serve.rag import NO_STORE, DocumentStores, StoreSpec, rag_fields
from genforge.serve.runs import cancel
from genforge.serve.schemas import (
    ChatRequest,
    CompletionRequest,
    EmbeddingRequest,
    RagIndexRequest,
    RagSearchRequest,
)
from genforge.serve.upstream import Forwarder

log = logging.getLogger(__name__)

STATIC = Path(__file__).parent / "static"
SSE_HEADERS = {"cache-control": "no-cache", "x-accel-buffering": "no"}
POST_ROUTES = (
    "/v1/chat/completions",
    "/v1/completions",
    "/v1/embeddings",
    "/v1/rag/search",
    "/v1/rag/index",
)


@dataclass
class ServeConfig:
    api_key: str | None = None
    max_body_bytes: int = 4 * 1024 * 1024
    max_tokens: int = 4096  # the most tokens one completion may ask for
    cors_origins: list[str] = field(default_factory=list)
    rag_stores: list[StoreSpec] = field(default_factory=list)  # the first is the default
    rag_root: Path = field(default_factory=Path.cwd)  # the folder the API may index under


def create_app(registry: Registry, config: ServeConfig | None = None) -> FastAPI:
    config = config or ServeConfig()
    metrics = Metrics()
    forwarder = Forwarder()
    documents = (
        DocumentStores(config.rag_stores, config.rag_root, registry.embedder)
        if config.rag_stores
        else None
    )

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        await registry.start()
        for up in registry.upstreams:
            await forwarder.refresh(up)
        unloader = asyncio.ensure_future(registry.unload_loop()) if registry.idle_unload else None
        yield
        if unloader:
            unloader.cancel()
        await forwarder.close()
        if documents:
            documents.close()
        registry.close()

    app = FastAPI(title="genforge", lifespan=lifespan, docs_url="/docs", redoc_url=None)
    app.state.registry, app.state.metrics = registry, metrics

    # -- errors in OpenAI's shape --------------------------------------------------------------

    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError):
        return exc.response()

    @app.exception_handler(GenforgeError)
    async def _genforge_error(request: Request, exc: GenforgeError):
        return bad_request(str(exc)).response()

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):
        err = exc.errors()[0]
        loc = [str(p) for p in err.get("loc", ()) if p != "body"]
        param = ".".join(loc) or None
        if err.get("type") == "json_invalid":
            message = "The request body is not valid JSON."
        elif err.get("type") == "missing":
            message = f"Missing required parameter: {param!r}."
        else:
            message = f"Invalid value for {param!r}: {err.get('msg', 'invalid')}."
        return JSONResponse(error_body(400, message, param, "invalid_value"), status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException):
        messages = {404: f"Unknown route {request.url.path}.", 405: "Method not allowed."}
        message = messages.get(exc.status_code, str(exc.detail))
        return JSONResponse(error_body(exc.status_code, message), status_code=exc.status_code)

    # -- routes ----------------------------------------------------------------------------------

    @app.get("/health")
    async def health():
        return {"status": "ok", "models": list(registry.loaded)}

    @app.get("/metrics")
    async def prometheus():
        data = metrics.render(registry.engines())
        return Response(data, media_type="text/plain; version=0.0.4")

    @app.get("/v1/models")
    async def list_models():
        for up in registry.upstreams:
            await forwarder.refresh(up)
        data = registry.local_entries()
        seen = {m["id"] for m in data}
        for up in registry.upstreams:
            data += [m for m in up.listed if m["id"] not in seen]
        return {"object": "list", "data": data}

    @app.get("/v1/models/{name:path}")
    async def get_model(name: str):
        for m in (await list_models())["data"]:
            if m["id"] == name:
                return m
        raise registry.not_found(name)

    async def generation(request: Request, body, route: str, run):
        """Shared by chat and completions: upstream or local, streaming or not, metrics, cancel."""
        if up := registry.upstream_for(body.model):
            return await forwarder.forward(up, route.removeprefix("/v1"), await request.body())
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
            result = await run(llm, body, config.max_tokens, runs)
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

    async def grounded_chat(request: Request, body: ChatRequest):
        """A chat whose last user message is answered from a document store (see serve/rag.py)."""
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

        def cited_by_first_choice(texts: list[str]) -> dict:
            return rag_fields(hits, texts[0])

        run = functools.partial(openai.chat, extra=cited_by_first_choice)
        return await generation(request, grounded, "/v1/chat/completions", run)

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatRequest, request: Request):
        if body.rag is not None:
            return await _until_disconnect(request, grounded_chat(request, body))
        return await _until_disconnect(
            request, generation(request, body, "/v1/chat/completions", openai.chat)
        )

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, request: Request):
        return await _until_disconnect(
            request, generation(request, body, "/v1/completions", openai.completions)
        )

    @app.post("/v1/embeddings")
    async def create_embeddings(body: EmbeddingRequest, request: Request):
        if up := registry.upstream_for(body.model):
            return await forwarder.forward(up, "/embeddings", await request.body())
        embedder = await registry.embedder(body.model)
        texts = [body.input] if isinstance(body.input, str) else body.input
        if not texts or not all(isinstance(t, str) for t in texts):
            raise bad_request(
                "input must be a non-empty string or list of strings (token ids are not accepted "
                "for this model).",
                param="input",
            )
        if body.dimensions not in (None, embedder.dimensions):
            raise bad_request(
                f"{body.model} gives {embedder.dimensions} dimensions; they cannot be changed.",
                param="dimensions",
            )
        try:
            vectors, n_tokens = await asyncio.to_thread(embedder.embed, texts)
        except GenforgeError as e:
            raise bad_request(str(e), param="input") from None
        data = [
            {"object": "embedding", "index": i, "embedding": _encode(v, body.encoding_format)}
            for i, v in enumerate(vectors)
        ]
        usage = {"prompt_tokens": n_tokens, "total_tokens": n_tokens}
        return {"object": "list", "data": data, "model": body.model, "usage": usage}

    # -- document stores ---------------------------------------------------------------------------

    def stores() -> DocumentStores:
        if documents is None:
            raise bad_request(NO_STORE)
        return documents

    @app.get("/v1/rag/stores")
    async def list_stores():
        if documents is None:
            return {"object": "list", "data": [], "root": None}
        return {"object": "list", "data": await documents.describe(), "root": str(documents.root)}

    @app.post("/v1/rag/search")
    async def rag_search(body: RagSearchRequest):
        hits = await stores().search(body.query, body.store, body.k, body.mode, body.path)
        return {"object": "list", "data": [h.to_dict() for h in hits]}

    @app.post("/v1/rag/index")
    async def rag_index(body: RagIndexRequest):
        return await stores().index(body.paths, body.store)

    @app.api_route("/v1/{path:path}", methods=["GET", "POST", "PUT", "PATCH", "DELETE"])
    async def unknown_route(path: str, request: Request):
        if f"/v1/{path}" in POST_ROUTES:
            raise APIError(405, f"{request.method} is not allowed on /v1/{path}; use POST.")
        raise APIError(404, f"Unknown route /v1/{path}.")

    if STATIC.is_dir():
        app.mount("/", StaticFiles(directory=STATIC, html=True), name="ui")

    # Outermost last: CORS (if any) -> body limit -> auth -> metrics of every request.
    app.add_middleware(_Metrics, metrics=metrics)
    if config.api_key:
        app.add_middleware(_BearerAuth, key=config.api_key)
    app.add_middleware(_BodyLimit, limit=config.max_body_bytes)
    if config.cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(
            CORSMiddleware,
            allow_origins=config.cors_origins,
            allow_methods=["*"],
            allow_headers=["*"],
        )
    return app


def _encode(vector, fmt: str):
    if fmt == "base64":
        return base64.b64encode(vector.astype("<f4").tobytes()).decode()
    return vector.tolist()


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


async def _until_disconnect(request: Request, work):
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


# -- ASGI middleware ---------------------------------------------------------------------------------


async def _send_error(send, status: int, message: str, code: str | None = None, headers=()):
    body = json.dumps(error_body(status, message, None, code)).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), *headers],
        }
    )
    await send({"type": "http.response.body", "body": body})


class _BearerAuth:
    OPEN = ("/health",)  # and the web UI's static files, which hold no data

    def __init__(self, app, key: str):
        self.app, self.key = app, key.encode()

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or self._open(scope):
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        auth = headers.get(b"authorization", b"")
        scheme, _, token = auth.partition(b" ")
        if scheme.lower() != b"bearer" or not hmac.compare_digest(token.strip(), self.key):
            message = (
                "Incorrect API key provided."
                if auth
                else "Missing API key: send the header 'Authorization: Bearer YOUR_KEY'."
            )
            return await _send_error(
                send, 401, message, "invalid_api_key", [(b"www-authenticate", b"Bearer")]
            )
        return await self.app(scope, receive, send)

    def _open(self, scope) -> bool:
        path = scope["path"]
        if path in self.OPEN or scope["method"] == "OPTIONS":
            return True
        return scope["method"] in ("GET", "HEAD") and not path.startswith(("/v1", "/metrics"))


class _BodyLimit:
    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            return await _send_error(send, 413, self._message(), "request_too_large")
        seen = 0

        async def limited_receive():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise _TooLarge
            return message

        try:
            await self.app(scope, limited_receive, send)
        except _TooLarge:
            await _send_error(send, 413, self._message(), "request_too_large")

    def _message(self) -> str:
        return (
            f"The request body is larger than this server's limit of {self.limit} bytes "
            "(genforge serve --max-body-bytes)."
        )


class _TooLarge(Exception):
    pass


class _Metrics:
    def __init__(self, app, metrics: Metrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        status = 500

        async def send_status(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            path = scope["path"]
            named = (*POST_ROUTES, "/v1/models", "/v1/rag/stores", "/health", "/metrics")
            route = path if path in named else "other"
            if path.startswith("/v1/models/"):
                route = "/v1/models/{id}"
            self.metrics.requests.labels(route, str(status)).inc()
