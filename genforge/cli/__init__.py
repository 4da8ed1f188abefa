"""The `genforge` command: each verb is a thin call into the library, one module per verb.

Shared flag groups are declared once in `flags`. Imports of torch and the model stack happen
inside the verbs, so `genforge --help` stays fast.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable

from genforge.cli import (
    agent,
    chat,
    eval,
    export,
    finetune,
    generate,
    image,
    mcp,
    models,
    rag,
    serve,
    speech,
    train,
)
from genforge.cli.parser import Parser
from genforge.errors import GenforgeError


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="genforge",
        description="Local-first generative AI: run open-weight models on your own machine, offline.",
    )
    parser.add_argument("--version", action="version", version=_version())
    # OpenMP's default wait policy (spin a little, then sleep) suits the engine: all model work
    # runs on one thread (genforge.compute). A verb that wants otherwise (training) sets
    # `omp_wait_policy` in its parser's defaults.
    parser.set_defaults(omp_wait_policy=None)
    sub = parser.add_subparsers(dest="verb", metavar="VERB")
    chat.add_parser(sub)
    generate.add_parser(sub)
    serve.add_parser(sub)
    train.add_parsers(sub)  # tokenizer, data, train
    finetune.add_parser(sub)
    export.add_parser(sub)
    eval.add_parser(sub)
    rag.add_parser(sub)
    image.add_parser(sub)
    speech.add_parsers(sub)  # transcribe, speak
    mcp.add_parser(sub)
    agent.add_parser(sub)
    models.add_parsers(sub)  # pull, models, rm
    return parser


def _version() -> str:
    from genforge import __version__

    return f"genforge {__version__}"


# oneDNN keeps up to 1,024 compiled matmuls by default, one per prompt-chunk shape seen (~60 MB
# after a few dozen prompt lengths); a few dozen cover the shapes that recur
ONEDNN_CACHE = "64"


def configure_threads(omp_wait_policy: str | None) -> None:
    """Set OpenMP's wait policy and oneDNN's primitive cache for this process; only effective
    before torch is imported, and what the user set wins."""
    if "torch" not in sys.modules:
        os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", ONEDNN_CACHE)
        if omp_wait_policy:
            os.environ.setdefault("OMP_WAIT_POLICY", omp_wait_policy)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.command_line = argv is None  # a command typed, not a call from within a program
    func: Callable[[argparse.Namespace], int] | None = getattr(args, "func", None)
    if func is None:
        parser.print_help()
        return 2
    configure_threads(args.omp_wait_policy)
    try:
        return func(args)
    except GenforgeError as e:
        print(f"genforge: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0
