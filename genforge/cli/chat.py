"""`genforge chat`: one message, lines of standard input, or an interactive conversation."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator

from genforge.cli.flags import (
    add_model_args,
    add_sampling_args,
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
        "not a terminal, answer each line as a turn of one conversation (a /reset or "
        "/exit line acts as in the interactive chat); otherwise start an interactive chat.",
    )
    p.add_argument("message", nargs="?", help="one user message to answer (omit for a REPL)")
    p.add_argument("--system", help="system prompt")
    add_model_args(p)
    add_sampling_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.message is not None and not args.message.strip():
        raise GenforgeError(
            "the message is empty; give some text, or leave MESSAGE out to chat interactively."
        )
    sampling = sampling_kwargs(args)
    llm = load_model(args)
    start = [{"role": "system", "content": args.system}] if args.system else []
    llm.tokenizer.apply_chat_template(start + [{"role": "user", "content": "hi"}])  # fail early
    if args.message is not None:
        answer(llm, start + [{"role": "user", "content": args.message}], sampling)
        return 0
    if not sys.stdin.isatty():  # each line of stdin is a turn (or a command) of one conversation
        converse(llm, start, sampling, (line.rstrip("\n") for line in sys.stdin))
        return 0
    print(
        f"{llm.name} ({llm.config.arch}, context {llm.context_length}). {REPL_HELP}",
        file=sys.stderr,
    )
    converse(llm, start, sampling, typed_lines(), keep_going=True)
    return 0


def converse(
    llm, start: list[dict], sampling: dict, lines: Iterator[str], keep_going: bool = False
) -> None:
    """Answer each line as a user turn of one conversation, obeying the REPL commands, whether
    typed or piped; `start` is the conversation /reset goes back to. With `keep_going`, a turn
    the model refuses (e.g. longer than the context) is reported and the chat goes on."""
    history = list(start)
    for line in lines:
        command = line.strip()
        if command in ("/exit", "/quit"):
            return
        if command == "/reset":
            history = list(start)
            print("(new conversation)", file=sys.stderr)
            continue
        if command in ("/help", "/?"):
            print(REPL_HELP, file=sys.stderr)
            continue
        if not command:
            continue
        history.append({"role": "user", "content": line})
        try:
            answer(llm, history, sampling)
        except GenforgeError as e:
            if not keep_going:
                raise
            history.pop()  # the refused turn leaves the conversation as it was
            print(f"error: {e}", file=sys.stderr)


def answer(llm, history: list[dict], sampling: dict) -> None:
    """Stream one assistant turn to stdout and append it to the history (also when interrupted)."""
    pieces: list[str] = []
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


def typed_lines() -> Iterator[str]:
    """Lines typed at the `> ` prompt until Ctrl-D; Ctrl-C at the prompt only clears the line."""
    while True:
        try:
            yield input("> ")
        except EOFError:
            print(file=sys.stderr)
            return
        except KeyboardInterrupt:
            print(file=sys.stderr)
