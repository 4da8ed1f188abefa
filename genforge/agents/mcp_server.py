"""The Model Context Protocol, server side: genforge `Tool`s served to any MCP client.

`serve(tools)` runs the SDK's `MCPServer` over stdio (a client starts this process) or streamable
HTTP. Each tool is registered from its JSON schema, not from a Python signature, so any `Tool`
can be served: the one made by `@tool`, the built-ins, a tool of another MCP server. The arguments
are checked by the tool's own `validate`, and a call runs through `run_tool`, as in the agent loop:
a bad argument or an exception becomes an error result with its reason, which the client's model
reads. A dangerous tool is announced as destructive, any other as read-only, so that a client
that asks before destructive calls asks before these.

`generate_tool` is the one tool made here: a chat turn of a local model, loaded on its first call
so that a server whose client never generates loads nothing.
"""

from __future__ import annotations

import functools
import socket
import sys
import threading
from collections.abc import Callable, Iterable
from typing import Any

from genforge.agents.mcp import require_sdk
from genforge.agents.tools import Tool, run_tool, tool
from genforge.errors import GenforgeError

PATH = "/mcp"  # where the streamable HTTP endpoint answers


def build_server(
    tools: Iterable[Tool], *, name: str = "genforge", version: str = "", instructions: str = ""
):
    """The SDK's `MCPServer` with `tools` registered."""
    require_sdk()
    from mcp.server.mcpserver import MCPServer

    registered = [_sdk_tool(t) for t in tools]
    names = [t.name for t in registered]
    if len(set(names)) < len(names):
        raise GenforgeError(f"two tools to serve have the same name: {', '.join(names)}.")
    return MCPServer(
        name,
        version=version,
        instructions=instructions or None,
        tools=registered,
        log_level="WARNING",  # the SDK logs every request at INFO
    )


def serve(
    tools: Iterable[Tool],
    *,
    http: bool = False,
    host: str = "127.0.0.1",
    port: int = 8000,
    name: str = "genforge",
    version: str = "",
) -> None:
    """Serve `tools` until the client goes away (stdio) or the process is stopped (HTTP)."""
    server = build_server(tools, name=name, version=version)
    if not http:
        server.run()
        return
    _check_port(host, port)
    print(f"MCP server on http://{_url_host(host)}:{port}{PATH}", file=sys.stderr, flush=True)
    server.run("streamable-http", host=host, port=port, streamable_http_path=PATH)


def _check_port(host: str, port: int) -> None:
    """A port that cannot be listened on fails here in one sentence (uvicorn would log it)."""
    if not 0 < port < 65536:
        raise GenforgeError(f"--port must be between 1 and 65535, got {port}.")
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as e:
        raise GenforgeError(f"cannot listen on {host}: {e.strerror}; check --host.") from None
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(address)
        except OSError as e:
            raise GenforgeError(
                f"cannot listen on {host}:{port}: {e.strerror}; pick another --port."
            ) from None


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _sdk_tool(t: Tool):
    """`t` as the SDK's tool: its schema as it is, its calls through `run_tool`."""
    from mcp.server.mcpserver.tools import Tool as SDKTool
    from mcp.server.mcpserver.utilities.func_metadata import FuncMetadata
    from mcp.types import CallToolResult, TextContent, ToolAnnotations

    def call(**arguments: Any) -> CallToolResult:
        result = run_tool(t, arguments)
        return CallToolResult(
            content=[TextContent(type="text", text=result.output)], is_error=result.error
        )

    return SDKTool(
        fn=call,
        name=t.name,
        description=t.description,
        parameters=t.parameters,
        fn_metadata=FuncMetadata(arg_model=_any_arguments()),
        is_async=False,
        annotations=ToolAnnotations(read_only_hint=not t.dangerous, destructive_hint=t.dangerous),
    )


@functools.cache
def _any_arguments():
    """The SDK's argument model for a tool known by its schema: it takes any arguments and passes
    them on whole, for the tool's own `validate` to check."""
    from mcp.server.mcpserver.utilities.func_metadata import ArgModelBase
    from pydantic import ConfigDict

    class AnyArguments(ArgModelBase):
        model_config = ConfigDict(extra="allow", arbitrary_types_allowed=True)

        def model_dump_one_level(self) -> dict[str, Any]:
            return dict(self.model_extra or {})

    return AnyArguments


def generate_tool(load: Callable[[], Any], max_tokens: int = 1024) -> Tool:
    """`generate`: one chat turn of the model that `load()` returns (an `LLM`), called once, on
    the tool's first call. max_tokens: the most a call may ask for."""
    lock = threading.Lock()
    loaded: list[Any] = []

    def model():
        with lock:  # calls run on worker threads: the first loads, the others wait for it
            if not loaded:
                loaded.append(load())
        return loaded[0]

    limit, default = max_tokens, min(256, max_tokens)

    @tool
    def generate(prompt: str, max_tokens: int = default, temperature: float | None = None) -> str:
        """Answer a prompt with a local language model (one chat turn) and return its reply.

        Args:
            prompt: the message to the model.
            max_tokens: the most tokens the reply may have.
            temperature: randomness, 0 for the most likely reply (default: the model's own).
        """
        if not 1 <= max_tokens <= limit:
            raise ValueError(f"max_tokens must be between 1 and {limit}")
        sampling: dict[str, Any] = {"max_tokens": max_tokens}
        if temperature is not None:
            sampling["temperature"] = temperature
        return model().chat(prompt, **sampling)

    return generate
