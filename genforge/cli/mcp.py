"""`genforge mcp serve`: genforge's tools served over the Model Context Protocol."""

from __future__ import annotations

import argparse

from genforge.cli.flags import add_model_args, check_model_args, load_model


def add_parser(sub) -> None:
    p = sub.add_parser(
        "mcp",
        help="serve genforge's tools to MCP clients (the Model Context Protocol)",
        description="The Model Context Protocol: genforge's tools for any MCP client "
        "(an editor, a desktop assistant, another agent).",
    )
    msub = p.add_subparsers(dest="mcp_verb", metavar="VERB", required=True)
    s = msub.add_parser(
        "serve",
        help="serve python, generate and rag_search as an MCP server",
        description="Serve genforge's tools as an MCP server: python (a program run in the "
        "sandbox), generate (a reply of a local model, loaded on the first call) and, with "
        "--rag, rag_search over a document store. Over stdio by default: an MCP client starts "
        "`genforge mcp serve` itself; with --http, over streamable HTTP at "
        "http://HOST:PORT/mcp.",
    )
    s.add_argument(
        "--rag",
        default=None,
        metavar="FILE|URL",
        help="also serve rag_search over this document store (made by `genforge rag index`)",
    )
    add_model_args(s)
    s.add_argument(
        "--http",
        action="store_true",
        help="serve over streamable HTTP instead of stdio",
    )
    s.add_argument(
        "--host",
        default="127.0.0.1",
        help="the address to listen on with --http (default: 127.0.0.1, this machine only; "
        "there is no authentication: whoever reaches the port can call the tools)",
    )
    s.add_argument(
        "--port", type=int, default=8000, help="the port to listen on with --http (default: 8000)"
    )
    s.set_defaults(func=run_serve)


def run_serve(args: argparse.Namespace) -> int:
    from genforge import __version__, hub
    from genforge.agents.builtin import python, rag_search
    from genforge.agents.mcp_server import generate_tool, serve

    check_model_args(args)
    if args.model not in hub.KNOWN:
        hub.resolve(args.model)  # a path: checked now; a named model is pulled on first use
    tools = [python(), generate_tool(lambda: load_model(args))]
    if args.rag:
        tools.append(rag_search(args.rag))
    serve(tools, http=args.http, host=args.host, port=args.port, version=__version__)
    return 0
