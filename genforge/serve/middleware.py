"""What guards every request, as plain ASGI middleware (so streamed responses and client
disconnects pass through untouched): the request counter for `/metrics`, the bearer-token check
when an API key is set, and the request-body size limit.
"""

from __future__ import annotations

import hmac
import json

from genforge.serve.errors import error_body
from genforge.serve.metrics import Metrics

POST_ROUTES = (
    "/v1/chat/completions",
    "/v1/completions",
    "/v1/embeddings",
    "/v1/rag/search",
    "/v1/rag/index",
)
# The `route` label of the request counter; any other path is "other".
NAMED_ROUTES = (*POST_ROUTES, "/v1/models", "/v1/rag/stores", "/health", "/metrics")


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


def _header(scope, name: bytes) -> bytes | None:
    return dict(scope.get("headers") or []).get(name)


# -- API key ---------------------------------------------------------------------------------------


class BearerAuth:
    OPEN = ("/health",)  # and the web UI's static files, which hold no data

    def __init__(self, app, key: str):
        self.app, self.key = app, key.encode()

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or self._open(scope):
            return await self.app(scope, receive, send)
        auth = _header(scope, b"authorization") or b""
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


# -- body size -------------------------------------------------------------------------------------


class BodyLimit:
    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = _header(scope, b"content-length")
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


# -- request counter -------------------------------------------------------------------------------


class RequestMetrics:
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
            route = path if path in NAMED_ROUTES else "other"
            if path.startswith("/v1/models/"):
                route = "/v1/models/{id}"
            self.metrics.requests.labels(route, str(status)).inc()
