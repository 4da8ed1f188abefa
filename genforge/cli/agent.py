"""`genforge agent "TASK"`: a model that uses tools toward a task, each step printed as it happens."""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import textwrap

from genforge.cli.flags import add_model_args, check_model_args, load_model
from genforge.errors import GenforgeError
from genforge.hub import ANSWER_MODEL

DEFAULT_TOOLS = "python,calculator"
BUILTIN = "python, calculator, rag_search, read_file, list_dir, write_file, web_get"


def add_parser(sub) -> None:
    p = sub.add_parser(
        "agent",
        help="run a tool-using agent on a task",
        description="Let a model work on TASK with tools: it calls them, reads their results and "
        "answers. In process, tool calls are decoded under the tools' schemas, so they always "
        "parse. Each step is printed as it happens.",
    )
    p.add_argument("task", nargs="?", help="what the agent should do (default: standard input)")
    p.add_argument(
        "--tools",
        default=DEFAULT_TOOLS,
        help=f"comma-separated built-in tools to enable ({BUILTIN}); 'none' for none; nothing "
        f"else can be called (default: {DEFAULT_TOOLS})",
    )
    p.add_argument(
        "--rag",
        metavar="STORE",
        help="a document store (genforge rag index) searched by the rag_search tool, which "
        "this enables",
    )
    p.add_argument(
        "--mcp",
        action="append",
        default=[],
        metavar="'CMD ARGS' | URL",
        help="an MCP server whose tools the agent may call: a command line (stdio) or an "
        "http(s) URL (streamable HTTP); repeatable; a server's tools are named mcpN_NAME when "
        "a name is already taken",
    )
    p.add_argument(
        "--workspace",
        metavar="DIR",
        help="the folder read_file, list_dir and write_file work in, and never outside "
        "(default: the current folder)",
    )
    p.add_argument(
        "--web-allow",
        metavar="HOSTS",
        help="comma-separated hosts web_get may fetch from, which this enables (off without it)",
    )
    p.add_argument(
        "--style",
        choices=["tools", "code"],
        default="tools",
        help="tools: JSON tool calls; code: the model writes Python that calls the tools as "
        "functions, run in the sandbox (default: tools)",
    )
    p.add_argument("--max-steps", type=int, default=8, help="turns of the model (default: 8)")
    p.add_argument(
        "--max-tokens",
        type=int,
        default=4096,
        help="tokens the model may write in the whole run (default: 4096)",
    )
    p.add_argument(
        "--time-limit",
        type=float,
        default=600.0,
        metavar="SECONDS",
        help="wall-clock limit of the whole run (default: 600)",
    )
    p.add_argument(
        "--yes",
        action="store_true",
        help="approve every call of a dangerous tool (write_file, MCP tools that change "
        "things) without asking; without it you are asked y/n, and refused when no one can answer",
    )
    p.add_argument("--trace", metavar="FILE.jsonl", help="write every step, as JSON lines")
    p.add_argument(
        "--base-url",
        metavar="URL",
        help="use an OpenAI-compatible server (genforge serve, vLLM, ...) instead of loading "
        "the model here, e.g. http://127.0.0.1:8000/v1",
    )
    p.add_argument("--api-key", help="the --base-url server's API key")
    add_model_args(p, default=ANSWER_MODEL)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    task = args.task if args.task is not None else sys.stdin.read()
    if not task.strip():
        raise GenforgeError("the task is empty; pass it as an argument or on standard input.")
    check_model_args(args)
    with contextlib.ExitStack() as stack:
        tools = _tools(args, stack)
        agent = _agent(args, tools)
        trace = stack.enter_context(_open_trace(args.trace))
        from genforge.agents.loop import trace_line

        for step in agent.run(task):
            _print_step(step)
            if trace is not None:
                trace.write(trace_line(step) + "\n")
                trace.flush()
    return 0


def _tools(args: argparse.Namespace, stack: contextlib.ExitStack) -> list:
    from genforge.agents.builtin import builtin_tools

    names = [n.strip() for n in args.tools.split(",") if n.strip() and n.strip() != "none"]
    if args.rag and "rag_search" not in names:
        names.append("rag_search")
    if args.web_allow and "web_get" not in names:
        names.append("web_get")
    allow = [h for h in (args.web_allow or "").split(",") if h.strip()]
    tools = builtin_tools(names, workspace=args.workspace or ".", store=args.rag, web_allow=allow)
    if args.mcp:
        from genforge.agents.mcp import connect

        for n, spec in enumerate(args.mcp, 1):
            server = stack.enter_context(contextlib.closing(connect(spec)))
            served = server.tools()
            taken = {t.name for t in tools}
            if taken & {t.name for t in served}:  # a second `python`: tell them apart
                served = server.tools(prefix=f"mcp{n}_")
            tools.extend(served)
    return tools


def _agent(args: argparse.Namespace, tools: list):
    from genforge.agents.loop import Agent

    if args.base_url:
        from genforge.agents.backends import OpenAIBackend

        model_given = args.model != ANSWER_MODEL
        model = OpenAIBackend(
            args.base_url, args.model if model_given else None, args.api_key, args.ctx or 8192
        )
    else:
        model = load_model(args)
    return Agent(
        model,
        tools,
        style=args.style,
        max_steps=args.max_steps,
        max_tokens=args.max_tokens,
        time_limit=args.time_limit,
        approve=_approver(args.yes),
    )


def _approver(yes: bool):
    def approve(tool, call) -> bool:
        if yes:
            return True
        if not sys.stdin.isatty():
            print(f"  refused {tool.name}: no one to ask (pass --yes to approve)", flush=True)
            return False
        args = json.dumps(call.arguments, ensure_ascii=False)
        answer = input(f"  allow {tool.name}({_short(args, 200)})? [y/N] ")
        return answer.strip().lower() in ("y", "yes")

    return approve


@contextlib.contextmanager
def _open_trace(path: str | None):
    if path is None:
        yield None
        return
    try:
        f = open(path, "w", encoding="utf-8")  # noqa: SIM115 - closed below
    except OSError as e:
        raise GenforgeError(f"cannot write the trace file {path}: {e.strerror}.") from None
    with f:
        yield f


def _print_step(step) -> None:
    kind = step.type
    if kind == "model":
        head = f"[{step.index}] model ({step.completion_tokens} tokens, {step.seconds:.1f} s)"
        print(head, flush=True)
        if step.code is not None:
            print(textwrap.indent(step.code, "    | ", lambda line: True), flush=True)
        elif step.text.strip():
            print(textwrap.indent(step.text.strip(), "    "), flush=True)
        for call in step.calls:
            args = json.dumps(call.arguments, ensure_ascii=False)
            print(f"    -> {call.name}({_short(args, 300)})", flush=True)
    elif kind == "tool":
        mark = "error" if step.error else "result"
        print(f"    <- {step.call.name} {mark} ({step.seconds:.2f} s):", flush=True)
        print(textwrap.indent(_short(step.output, 1200), "       "), flush=True)
    else:
        ended = "" if step.reason == "answer" else f", stopped by {step.reason}"
        print(
            f"answer ({step.steps} steps, {step.completion_tokens} tokens, "
            f"{step.seconds:.1f} s{ended}):",
            flush=True,
        )
        print(step.text.strip(), flush=True)


def _short(text: str, limit: int) -> str:
    return text if len(text) <= limit else f"{text[:limit]} [... {len(text) - limit} more]"
