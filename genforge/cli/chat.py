"""`genforge chat`: one message, lines of standard input, or an interactive conversation."""

from __future__ import annotations

import argparse
import sys

from genforge.cli.flags import (
    add_model_args,
    add_sampling_args,
    capped,
    load_model,
    sampling_kwargs,
)
from genforge.errors import GenforgeError

REPL_HELP = "commands: /reset (new conversation), /exit (or Ctrl-D); Ctrl-C stops an answer"


def add_parser(sub) -> None:
    p = sub.add_parser(
        "chat",
        help="chat with a model (REPL, one message, or lines of stdin)",
        description="Chat with a model. With MESSAGE, answer it and exit; with stdin "
        "not a terminal, answer each line as a turn of one conversation; otherwise "
        "start an interactive chat.",
    )
    p.add_argument("message", nargs="?", help="one user message to answer (omit for a REPL)")
    p.add_argument("--system", help="system prompt")
    add_model_args(p)
    add_sampling_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    sampling = sampling_kwargs(args)
    llm = load_model(args)
    start = [{"role": "system", "content": args.system}] if args.system else []
    history = list(start)
    llm.tokenizer.apply_chat_template(history + [{"role": "user", "content": "hi"}])  # fail early
    if args.message is not None:
        history.append({"role": "user", "content": args.message})
        answer(llm, history, sampling)
        return 0
    if not sys.stdin.isatty():  # each line of stdin is one user turn of a single conversation
        for line in sys.stdin:
            if line.strip():
                history.append({"role": "user", "content": line.rstrip("\n")})
                answer(llm, history, sampling)
        return 0
    return repl(llm, start, sampling)


def answer(llm, history: list[dict], sampling: dict) -> None:
    """Stream one assistant turn to stdout and append it to the history (also when interrupted)."""
    pieces: list[str] = []
    sampling = capped(llm, len(llm.tokenizer.encode_chat(history)), sampling)
    try:
        for piece in llm.chat(history, stream=True, **sampling):
            pieces.append(piece)
            sys.stdout.write(piece)
            sys.stdout.flush()
    except KeyboardInterrupt:  # keep what was said so far as the answer
        sys.stdout.write(" [stopped]")
    finally:
        sys.stdout.write("\n")
        sys.stdout.flush()
    history.append({"role": "assistant", "content": "".join(pieces)})


def repl(llm, start: list[dict], sampling: dict) -> int:
    """The interactive chat on a terminal; `start` is the conversation /reset goes back to."""
    history = list(start)
    print(
        f"{llm.name} ({llm.config.arch}, context {llm.context_length}). {REPL_HELP}",
        file=sys.stderr,
    )
    while True:
        try:
            line = input("> ")
        except EOFError:
            print(file=sys.stderr)
            return 0
        except KeyboardInterrupt:
            print(file=sys.stderr)
            continue
        if line.strip() in ("/exit", "/quit"):
            return 0
        if line.strip() == "/reset":
            history = list(start)
            print("(new conversation)", file=sys.stderr)
            continue
        if line.strip() in ("/help", "/?"):
            print(REPL_HELP, file=sys.stderr)
            continue
        if not line.strip():
            continue
        history.append({"role": "user", "content": line})
        try:
            answer(llm, history, sampling)
        except GenforgeError as e:  # e.g. the conversation outgrew the context: keep the REPL alive
            history.pop()
            print(f"error: {e}", file=sys.stderr)
