"""The Model Context Protocol, client side: the tools of an MCP server as genforge `Tool`s.

`connect(spec)` reaches one server: a URL (http or https) is spoken to over streamable HTTP,
anything else is a command line ("npx -y some-server --flag") started as a subprocess and spoken
to over its stdin and stdout. `tools()` lists the server's tools as `Tool`s: their JSON schemas
are what the model is shown and what arguments are checked against (`schema_validator`), and a
tool is dangerous (the agent asks before each call) unless the server marks it read-only or
explicitly not destructive. A call's text content is the result; an error result raises, so that
the agent reports it to the model as an error.

The SDK is async and the agent loop is not: the session lives in an event loop of its own, on a
thread of its own (an anyio blocking portal), and every call is handed to that loop from whatever
thread the agent calls tools from, so calls of one turn run concurrently. `close()` (or leaving
the `with` block, or the end of the process) ends the session and stops a subprocess.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import re
import shlex
import tempfile
import weakref
from concurrent.futures import FIRST_COMPLETED, Future, wait
from contextlib import ExitStack
from typing import Any

from genforge.agents.tools import Tool, schema_validator
from genforge.errors import GenforgeError

logger = logging.getLogger(__name__)

INSTALL = "pip install 'genforge[agents]'"
CONNECT_TIMEOUT = 30.0  # seconds for the server to start and answer the handshake
CALL_TIMEOUT = 300.0  # seconds one tool call may take
STOP_TIMEOUT = 10.0  # seconds to wait for a session to end (the SDK stops a server in ~4)
MAX_PAGES = 100  # of a tool listing: a server that pages forever cannot hang `tools()`
_NOT_IN_NAME = re.compile(r"[^A-Za-z0-9_-]")  # what genforge's tool names leave out


def require_sdk() -> None:
    """Fail with the extra to install when the `mcp` package is missing."""
    try:
        import mcp  # noqa: F401
    except ImportError:
        raise GenforgeError(
            f"the Model Context Protocol needs the mcp package; install it with: {INSTALL}"
        ) from None
    # The SDK logs a server's stray output and failed pipes with tracebacks; where the
    # application has set up no logging, Python's last-resort handler would print them.
    sdk_logger = logging.getLogger("mcp")
    if not any(isinstance(h, logging.NullHandler) for h in sdk_logger.handlers):
        sdk_logger.addHandler(logging.NullHandler())


class MCPToolError(RuntimeError):
    """A tool of an MCP server answered with an error, or the server did not answer."""


def connect(
    spec: str, *, timeout: float = CONNECT_TIMEOUT, call_timeout: float = CALL_TIMEOUT
) -> MCPServer:
    """Connect to the MCP server `spec`: an http(s) URL, or a command line to run over stdio."""
    require_sdk()
    if not isinstance(spec, str) or not spec.strip():
        raise GenforgeError("an MCP server is a URL or a command line to run; got nothing.")
    return MCPServer(spec.strip(), timeout=timeout, call_timeout=call_timeout)


class MCPServer:
    """One MCP server this process is connected to; `tools()` are its tools."""

    def __init__(
        self, spec: str, *, timeout: float = CONNECT_TIMEOUT, call_timeout: float = CALL_TIMEOUT
    ):
        from anyio.from_thread import start_blocking_portal
        from mcp import Client

        self.spec, self.timeout, self.call_timeout = spec, timeout, call_timeout
        self.url = spec if re.match(r"https?://", spec, re.IGNORECASE) else None
        self._stderr = None
        stack = ExitStack()
        try:
            if not self.url:
                # The subprocess's stderr is kept here: it explains a server that fails to
                # start, and its logging would otherwise run through the agent's output.
                stderr = tempfile.TemporaryFile("w+", encoding="utf-8")  # noqa: SIM115 - the stack
                self._stderr = stack.enter_context(stderr)
            target = self.url or self._stdio_transport()
            self._portal = stack.enter_context(start_blocking_portal(name=f"mcp {spec[:40]}"))
            # Each request has call_timeout; the whole handshake has `timeout`, however many
            # requests the SDK makes of it.
            self._client = Client(target, read_timeout_seconds=call_timeout)
            ready: Future = Future()
            session = self._portal.start_task_soon(_hold, self._client, ready)
            stack.callback(_end, self._portal, session, ready)
            wait([ready, session], timeout, return_when=FIRST_COMPLETED)
            if session.done():
                session.result()  # raises why the session ended
            if not ready.done():
                raise TimeoutError
        except Exception as e:
            error = self._connect_error(e)
            _close(stack)
            raise error from None
        except BaseException:  # Ctrl-C while connecting: still stop what was started
            _close(stack)
            raise
        info = self._client.server_info
        self.name = info.name if info is not None and info.name else spec
        self.instructions: str | None = self._client.instructions
        self._closer = weakref.finalize(self, _close, stack)

    def _stdio_transport(self):
        from mcp import StdioServerParameters
        from mcp.client.stdio import stdio_client

        try:
            argv = shlex.split(self.spec)
        except ValueError as e:
            raise GenforgeError(f"cannot read the MCP server command {self.spec!r}: {e}.") from None
        # The user's own command, run as their shell would: with their whole environment.
        params = StdioServerParameters(command=argv[0], args=argv[1:], env=dict(os.environ))
        return stdio_client(params, errlog=self._stderr)

    def tools(self, prefix: str = "") -> list[Tool]:
        """The server's tools, as `Tool`s that call it. prefix: put before each name, to tell
        apart tools of the same name (two servers' `search`, or a built-in's)."""
        listed, cursor = [], None
        for _ in range(MAX_PAGES):
            page = self._run(functools.partial(self._client.list_tools, cursor=cursor))
            listed.extend(page.tools)
            cursor = page.next_cursor
            if cursor is None:
                break
        return [self._tool(t, prefix) for t in listed]

    def _tool(self, listed, prefix: str) -> Tool:
        name = _NOT_IN_NAME.sub("_", prefix + listed.name)[:64] or "tool"
        schema = listed.input_schema or {"type": "object", "properties": {}}
        hints = listed.annotations
        safe = hints is not None and (
            hints.read_only_hint is True or hints.destructive_hint is False
        )
        description = (listed.description or listed.title or listed.name).strip()

        def call(**arguments: Any) -> str:
            return self.call(listed.name, arguments)

        return Tool(name, description, schema, call, not safe, schema_validator(name, schema))

    def call(self, name: str, arguments: dict[str, Any]) -> str:
        """Call the server's tool `name`; its text content, or MCPToolError."""
        call = functools.partial(self._client.call_tool, name, arguments, self.call_timeout)
        result = self._run(call)
        text = result_text(result)
        if result.is_error:
            raise MCPToolError(text or f"{name} failed without saying why")
        return text

    def _run(self, fn):
        """Run the coroutine function `fn` in the session's loop; the server's failures become
        MCPToolError, which the agent reports to the model."""
        import anyio
        from mcp import MCPError

        try:
            return self._portal.call(fn)
        except MCPError as e:
            raise MCPToolError(f"the MCP server {self.name} answered: {e}") from None
        except (anyio.BrokenResourceError, anyio.ClosedResourceError):
            raise MCPToolError(f"the connection to the MCP server {self.name} is lost") from None
        except RuntimeError as e:
            if self._closer.alive:
                raise
            raise MCPToolError(f"the connection to the MCP server {self.name} is closed") from e

    def close(self) -> None:
        """End the session; a server started as a subprocess is stopped."""
        self._closer()

    def __enter__(self) -> MCPServer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _connect_error(self, error: BaseException) -> GenforgeError:
        """What went wrong in connecting, as one sentence for the user."""
        if isinstance(error, GenforgeError):
            return error
        from mcp import MCPError
        from mcp.types import CONNECTION_CLOSED

        e = _leaf(error)
        where = self.url or f"`{self.spec}`"
        if isinstance(e, TimeoutError):
            return GenforgeError(
                f"the MCP server {where} did not answer within {self.timeout:g} s; "
                "is it an MCP server, and does it speak over this transport?"
            )
        if isinstance(e, FileNotFoundError) and not self.url:
            command = shlex.split(self.spec)[0]
            return GenforgeError(
                f"cannot start the MCP server {where}: there is no command {command!r}; "
                "check its spelling and that it is installed (or give its full path)."
            )
        if isinstance(e, OSError) and not self.url:
            return GenforgeError(f"cannot start the MCP server {where}: {e.strerror or e}.")
        if isinstance(e, MCPError) and e.code == CONNECTION_CLOSED and not self.url:
            return GenforgeError(
                f"the MCP server {where} exited before it answered{self._said()}; "
                "run the command by itself to see why."
            )
        if self.url and type(e).__name__ in ("ConnectError", "ConnectTimeout"):
            return GenforgeError(f"cannot reach the MCP server at {self.url}; is it running?")
        if self.url and isinstance(e, MCPError):
            return GenforgeError(
                f"{self.url} did not answer as an MCP server ({e}); check the URL "
                "(a streamable HTTP endpoint often ends in /mcp)."
            )
        return GenforgeError(f"cannot connect to the MCP server {where}: {_describe(e)}.")

    def _said(self) -> str:
        """The end of what the subprocess wrote to stderr, for an error message."""
        if self._stderr is None:
            return ""
        try:
            self._stderr.seek(0)
            lines = [line.strip() for line in self._stderr.read().splitlines() if line.strip()]
        except (OSError, ValueError):
            return ""
        return f" (its last words: {lines[-1][-300:]!r})" if lines else ""


def result_text(result) -> str:
    """A call result as the text a model reads: its text blocks, a note for anything else, and
    the structured content where there is no text."""
    parts = []
    for block in result.content or []:
        kind = getattr(block, "type", "")
        if kind == "text":
            parts.append(block.text)
        elif kind == "resource":
            resource = block.resource
            parts.append(getattr(resource, "text", None) or f"[resource {resource.uri}]")
        elif kind == "resource_link":
            parts.append(f"[resource {block.uri}]")
        else:  # image, audio: a model that reads text cannot use the bytes
            parts.append(f"[{kind or 'content'} {getattr(block, 'mime_type', '')}]".rstrip())
    if not parts and result.structured_content is not None:
        return json.dumps(result.structured_content, ensure_ascii=False)
    return "\n".join(parts)


def _leaf(error: BaseException) -> BaseException:
    """The first exception that is not a group: task groups wrap the one that matters."""
    while isinstance(error, BaseExceptionGroup) and error.exceptions:
        error = error.exceptions[0]
    return error


def _describe(error: BaseException) -> str:
    text = str(error).strip()
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


async def _hold(client, ready: Future) -> None:
    """The session's task: enter the client, say so, stay until told to close."""
    import anyio

    async with client:
        closing = anyio.Event()
        ready.set_result(closing)
        await closing.wait()


def _end(portal, session: Future, ready: Future) -> None:
    """End the session's task: a connected one leaves the client (which stops a subprocess),
    one still connecting is cancelled."""
    if ready.done():
        portal.call(ready.result().set)
    else:
        session.cancel()
    wait([session], STOP_TIMEOUT)
    if session.done() and not session.cancelled() and session.exception() is not None:
        logger.debug("closing an MCP session: %s", _describe(session.exception()))


def _close(stack: ExitStack) -> None:
    try:
        stack.close()
    except Exception as e:  # a server that fails on the way out has nothing left to give
        logger.debug("closing an MCP session: %s", _describe(e))
