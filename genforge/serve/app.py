"""The FastAPI application: the routers of genforge/serve/routes/, the state they share on
`app.state`, errors in OpenAI's shape, the web UI's static files, and the middleware that guards
every request (genforge/serve/middleware.py).
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from genforge.errors import GenforgeError
from genforge.image.sampling import DEFAULT_IMAGE_MODEL
from genforge.serve.agents import DEFAULT_TOOLS
from genforge.serve.audio import SpeechModels
from genforge.serve.errors import APIError, bad_request, error_body
from genforge.serve.images import ImageModels
from genforge.serve.metrics import Metrics
from genforge.serve.middleware import (
    POST_ROUTES,
    BearerAuth,
    BodyLimit,
    HostCheck,
    RequestMetrics,
    is_loopback,
)
from genforge.serve.models import Registry
from genforge.serve.rag import DocumentStores, StoreSpec
from genforge.serve.routes import (
    agents,
    audio,
    embeddings,
    generation,
    health,
    images,
    models,
    rag,
)
from genforge.serve.routes.audio import SPEAKING, TRANSCRIPTIONS
from genforge.serve.upstream import Forwarder

STATIC = Path(__file__).parent / "static"


@dataclass
class ServeConfig:
    host: str = "127.0.0.1"  # the address bound; on loopback, only loopback Host names are answered
    allowed_hosts: list[str] = field(default_factory=list)  # other Host names answered on loopback
    api_key: str | None = None
    max_body_bytes: int = 4 * 1024 * 1024
    max_tokens: int = 4096  # the most tokens one completion may ask for
    cors_origins: list[str] = field(default_factory=list)
    rag_stores: list[StoreSpec] = field(default_factory=list)  # the first is the default
    rag_root: Path = field(default_factory=Path.cwd)  # the folder the API may index under
    # The tools agents may call (genforge.serve.agents.SERVED); empty: no agents.
    agent_tools: list[str] = field(default_factory=lambda: list(DEFAULT_TOOLS))
    # The default model of /v1/images/generations: a shipped one's name, a model folder or a run.
    image_model: str = DEFAULT_IMAGE_MODEL
    # Speech (genforge/serve/audio.py): served when the speech extra is installed and this is on.
    speech: bool = True
    speech_warm: bool = False  # start a Piper worker with the server (140-190 MB)
    max_audio_bytes: int = 25 * 1024 * 1024  # an upload to /v1/audio/transcriptions, as OpenAI's
    # Sound in one upload: faster-whisper holds the spectrogram of all of it (~2.7 GB an hour).
    max_audio_seconds: float = 3600.0


def create_app(registry: Registry, config: ServeConfig | None = None) -> FastAPI:
    config = config or ServeConfig()
    documents = (
        DocumentStores(config.rag_stores, config.rag_root, registry.embedder)
        if config.rag_stores
        else None
    )
    app = FastAPI(title="genforge", lifespan=_lifespan, docs_url="/docs", redoc_url=None)
    app.state.registry, app.state.config, app.state.documents = registry, config, documents
    app.state.metrics, app.state.forwarder = Metrics(), Forwarder()
    app.state.images = ImageModels(config.image_model)
    app.state.speech = SpeechModels(enabled=config.speech, warm=config.speech_warm)
    app.state.speaking = asyncio.Semaphore(SPEAKING)

    app.add_exception_handler(APIError, _api_error)
    app.add_exception_handler(GenforgeError, _genforge_error)
    app.add_exception_handler(RequestValidationError, _invalid)
    app.add_exception_handler(StarletteHTTPException, _http_error)

    for area in (health, models, generation, embeddings, rag, agents, images, audio):
        app.include_router(area.router)
    app.add_api_route(
        "/v1/{path:path}", _unknown_route, methods=["GET", "POST", "PUT", "PATCH", "DELETE"]
    )
    if STATIC.is_dir():
        app.mount("/", StaticFiles(directory=STATIC, html=True), name="ui")

    # Outermost last: Host check (on loopback) -> CORS (if any) -> auth -> body limit -> metrics.
    # The body limit reads the whole body, so it comes after auth: a client without the key gets
    # its 401 before any of its body is read.
    app.add_middleware(RequestMetrics, metrics=app.state.metrics)
    app.add_middleware(
        BodyLimit,
        limit=config.max_body_bytes,
        limits={TRANSCRIPTIONS: max(config.max_audio_bytes, config.max_body_bytes)},
    )
    if config.api_key:
        app.add_middleware(BearerAuth, key=config.api_key)
    if config.cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(
            CORSMiddleware,
            allow_origins=config.cors_origins,
            allow_methods=["*"],
            allow_headers=["*"],
        )
    if is_loopback(config.host):
        app.add_middleware(HostCheck, allowed=config.allowed_hosts)
    return app


@contextlib.asynccontextmanager
async def _lifespan(app: FastAPI):
    registry, forwarder = app.state.registry, app.state.forwarder
    await registry.start()
    app.state.speech.start()
    for up in registry.upstreams:
        await forwarder.refresh(up)
    unloader = asyncio.ensure_future(registry.unload_loop()) if registry.idle_unload else None
    yield
    if unloader:
        unloader.cancel()
    await forwarder.close()
    if app.state.documents:
        app.state.documents.close()
    app.state.speech.close()
    registry.close()


async def _unknown_route(path: str, request: Request):
    if f"/v1/{path}" in POST_ROUTES:
        raise APIError(405, f"{request.method} is not allowed on /v1/{path}; use POST.")
    raise APIError(404, f"Unknown route /v1/{path}.")


# -- errors in OpenAI's shape ------------------------------------------------------------------------


async def _api_error(request: Request, exc: APIError):
    return exc.response()


async def _genforge_error(request: Request, exc: GenforgeError):
    return bad_request(str(exc)).response()


async def _invalid(request: Request, exc: RequestValidationError):
    err = exc.errors()[0]
    loc = [str(p) for p in err.get("loc", ()) if p != "body"]
    param = ".".join(loc) or None
    if err.get("type") == "json_invalid":  # its loc is a position in the text, not a field
        param, position = None, err.get("loc", ())[-1]
        reason = (err.get("ctx") or {}).get("error", "malformed")
        where = f" at character {position}" if isinstance(position, int) else ""
        message = f"The request body is not valid JSON: {reason}{where}."
    elif param is None:  # the body as a whole: empty, not an object, or not sent as JSON
        message = (
            "The request body must be a JSON object, sent with Content-Type: application/json."
        )
    elif err.get("type") == "missing":
        message = f"Missing required parameter: {param!r}."
    else:
        message = f"Invalid value for {param!r}: {err.get('msg', 'invalid')}."
    return JSONResponse(error_body(400, message, param, "invalid_value"), status_code=400)


async def _http_error(request: Request, exc: StarletteHTTPException):
    messages = {404: f"Unknown route {request.url.path}.", 405: "Method not allowed."}
    message = messages.get(exc.status_code, str(exc.detail))
    return JSONResponse(error_body(exc.status_code, message), status_code=exc.status_code)
