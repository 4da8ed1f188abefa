"""`genforge generate`: raw text completion of a prompt, optionally under a JSON schema."""

from __future__ import annotations

import argparse
import json
import sys

from genforge.cli.flags import (
    add_model_args,
    add_sampling_args,
    load_model,
    sampling_kwargs,
)
from genforge.errors import GenforgeError


def add_parser(sub) -> None:
    p = sub.add_parser(
        "generate",
        help="raw text completion (no chat template)",
        description="Complete PROMPT (or standard input) and print only the completion.",
    )
    p.add_argument("prompt", nargs="?", help="text to complete (default: read standard input)")
    p.add_argument(
        "--json-schema",
        metavar="FILE",
        help="decode under this JSON schema: output that ends by itself validates against it",
    )
    add_model_args(p)
    add_sampling_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    sampling = sampling_kwargs(args)
    schema = read_json_schema(args.json_schema)
    prompt = args.prompt if args.prompt is not None else sys.stdin.read()
    if not prompt:
        raise GenforgeError("the prompt is empty; pass it as an argument or on standard input.")
    llm = load_model(args)
    for piece in llm.generate(prompt, stream=True, json_schema=schema, **sampling):
        sys.stdout.write(piece)
        sys.stdout.flush()
    if sys.stdout.isatty():
        sys.stdout.write("\n")
    return 0


def read_json_schema(path: str | None) -> dict | None:
    """The schema in the --json-schema file, checked before the model loads."""
    if path is None:
        return None
    from pathlib import Path

    try:
        schema = json.loads(Path(path).read_text())
    except OSError as e:
        raise GenforgeError(f"cannot read the JSON schema file {path}: {e.strerror}.") from None
    except json.JSONDecodeError as e:
        raise GenforgeError(f"{path} is not valid JSON: {e}.") from None
    from genforge.generate.structured import Grammar

    Grammar.json_schema(schema)
    return schema
