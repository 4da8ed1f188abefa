"""What guards every request, as plain ASGI middleware (so streamed responses and client
disconnects pass through untouched): the request counter for `/metrics`, the bearer-token check
when an API key is set, the request-body size limit, and the `Host` check of a server bound to
loopback.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import socket

from genforge.serve.errors import error_body
from genforge.serve.metrics import Metrics

POST_ROUTES = (
    "/v1/chat/completions",
    "/v1/completions",
    "/v1/embeddings",
    "/v1/rag/search",
    "/v1/rag/index",
    "/v1/agents/runs",
    "/v1/images/generations",
    "/v1/audio/transcriptions",
    "/v1/audio/speech",
)
# The `route` label of the request counter; any other path is "other".
NAMED_ROUTES = (
    *POST_ROUTES,
    "/v1/models",
    "/v1/rag/stores",
    "/v1/agents/tools",
    "/health",
    "/metrics",
)


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


# -- Host check ----------------------------------------------------------------------------------


def is_loopback(host: str) -> bool:
    """Whether binding `host` serves this machine only (127.0.0.0/8, ::1, or a name resolving
    there only)."""
    if host.lower().rstrip(".") == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except socket.gaierror:
        return False
    return bool(infos) and all(ipaddress.ip_address(i[4][0]).is_loopback for i in infos)


def host_name(header: str) -> str:
    """The name in a `Host` header, lower-cased, without port or IPv6 brackets."""
    header = header.strip().lower()
    if header.startswith("["):  # [::1] or [::1]:8000
        return header[1:].partition("]")[0]
    if header.count(":") == 1:  # name:port (a bare IPv6 address has several colons)
        header = header.partition(":")[0]
    return header.rstrip(".")


class HostCheck:
    """Answers only requests whose `Host` is a loopback name (or one allowed by the user).

    A server bound to loopback is reachable by every web page the machine's browser opens: a page
    on an attacker's domain whose DNS name is re-pointed to 127.0.0.1 (DNS rebinding) sends its
    own domain as `Host`, which this refuses, before any route reads a file or runs a model.
    """

    def __init__(self, app, allowed: list[str] = ()):
        self.app = app
        self.allowed = {host_name(a) for a in allowed}

    def allows(self, header: bytes | None) -> bool:
        if header is None:
            return False
        name = host_name(header.decode("latin-1"))
        if name == "localhost" or name in self.allowed:
            return True
        try:
            return ipaddress.ip_address(name).is_loopback
        except ValueError:
            return False

    def _message(self, header: bytes | None) -> str:
        names = ", ".join(["localhost", "127.0.0.1", "[::1]", *sorted(self.allowed)])
        if header is None:
            return f"The request has no Host header; this server answers to {names}."
        shown = header.decode("latin-1")[:100]
        return (
            f"This server answers to {names}, not to the Host {shown!r}; to reach it by that "
            "name, start it with genforge serve --allowed-host NAME."
        )

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        header = _header(scope, b"host")
        if not self.allows(header):
            return await _send_error(send, 400, self._message(header), "invalid_host")
        return await self.app(scope, receive, send)


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
    """Reads the whole body before the app sees it, refusing it (413) once it passes the limit.

    Read here rather than counted as the app reads it: an error raised inside the app's read would
    be caught by FastAPI's body parsing and answered as a 400.
    """

    def __init__(self, app, limit: int, limits: dict[str, int] | None = None):
        self.app, self.limit = app, limit
        self.limits = limits or {}  # a path's own limit (audio uploads are larger than chats)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        limit = self.limits.get(scope["path"], self.limit)
        declared = _header(scope, b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            return await _send_error(send, 413, self._message(scope), "request_too_large")
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client left: let the app see it
                return await self.app(scope, _replay([message], receive), send)
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > limit:
                return await _send_error(send, 413, self._message(scope), "request_too_large")
            if not message.get("more_body", False):
                break
        body = {"type": "http.request", "body": b"".join(chunks), "more_body": False}
        return await self.app(scope, _replay([body], receive), send)

    def _message(self, scope) -> str:
        if scope["path"] in self.limits:
            limit, flag = self.limits[scope["path"]], "--max-audio-bytes"
        else:
            limit, flag = self.limit, "--max-body-bytes"
        return (
            f"The request body is larger than this server's limit of {limit} bytes "
            f"(genforge serve {flag})."
        )


def _replay(messages: list[dict], receive):
    """A `receive` that gives `messages` first, then the client's own (such as its disconnect)."""
    pending = list(messages)

    async def replayed():
        if pending:
            return pending.pop(0)
        return await receive()

    return replayed


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
