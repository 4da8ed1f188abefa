"""Flag groups that several verbs share, declared once: the model to load and how to sample.

Each group comes with the function that reads it back from the parsed arguments. Nothing here
imports torch: the model stack is imported only when a verb loads a model.
"""

from __future__ import annotations

import argparse

from genforge.errors import GenforgeError
from genforge.hub import DEFAULT_MAX_TOKENS, DEFAULT_MODEL  # stdlib only: --help stays fast

SAMPLING_FLAGS = (
    "temperature",
    "top_p",
    "top_k",
    "min_p",
    "repetition_penalty",
    "presence_penalty",
    "frequency_penalty",
    "dry_multiplier",
    "dry_base",
    "dry_allowed_length",
    "seed",
    "max_tokens",
    "stop",
)


KV_DTYPES = ("fp32", "bf16", "fp16")  # genforge.generate.engine.KV_DTYPES, without importing torch
DEFAULT_KV_DTYPE = "fp16"  # genforge.generate.engine.DEFAULT_KV_DTYPE


def add_model_args(
    p: argparse.ArgumentParser,
    many: bool = False,
    dtype: str = "auto",
    default: str = DEFAULT_MODEL,
) -> None:
    """-m/--model (repeatable with `many`; `default` when not given), --dtype, --ctx, --threads."""
    if many:
        p.add_argument(
            "-m",
            "--model",
            action="append",
            default=None,
            metavar="NAME",
            help="a model to serve (repeatable; the first is the default): a name (see "
            f"`genforge models`), a .gguf file or a model folder (default: {default})",
        )
    else:
        p.add_argument(
            "-m",
            "--model",
            default=default,
            help="model name (see `genforge models`), a .gguf file, or a Hugging Face "
            f"model folder (default: {default})",
        )
    p.add_argument(
        "--dtype",
        default=dtype,
        choices=["auto", "fp32", "bf16", "int8", "int4"],
        help="weights: fp32 or bf16, or int8 / int4 weight-only quantized in blocks of 32 "
        "(int4 holds a Q4_1 file exactly); auto is int4 for a file of Q4_1 layers, else int8 "
        f"(default: {dtype})",
    )
    if many:
        p.add_argument(
            "--adapter",
            action="append",
            default=[],
            metavar="[NAME=]DIR",
            help="a LoRA adapter on the first model, served as its own model NAME (default: the "
            "folder's name); repeatable: requests for different adapters and the base run batched",
        )
    else:
        p.add_argument(
            "--adapter",
            default=None,
            metavar="DIR",
            help="a LoRA adapter on the model: a `genforge finetune` run or a peft adapter folder",
        )
    p.add_argument(
        "--device",
        default="cpu",
        help="cpu (default), or cuda / cuda:N for an NVIDIA GPU (fp32 or bf16 weights; "
        "auto is bf16 there)",
    )
    p.add_argument(
        "--kv-dtype",
        default=DEFAULT_KV_DTYPE,
        choices=list(KV_DTYPES),
        help="keys and values in the cache: fp16 (default) or bf16, or fp32 at twice the memory",
    )
    p.add_argument(
        "--ctx",
        type=int,
        default=None,
        metavar="N",
        help="context length in tokens (default: the model's own)",
    )
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        metavar="N",
        help="CPU threads for the matmuls (default: one per physical core)",
    )


def check_model_args(args: argparse.Namespace) -> None:
    """Refuse a --ctx or --threads no model can use, before anything loads."""
    if args.ctx is not None and args.ctx < 1:
        raise GenforgeError(f"--ctx must be a positive number of tokens, got {args.ctx}.")
    if args.threads is not None and args.threads < 1:
        raise GenforgeError(f"--threads must be at least 1, got {args.threads}.")


def load_model(args: argparse.Namespace):
    """The model the model flags name; a bad name or path fails before torch is imported."""
    from genforge import hub

    check_model_args(args)
    hub.resolve(args.model)
    from genforge.generate.llm import load

    return load(
        args.model,
        dtype=args.dtype,
        context_length=args.ctx,
        threads=args.threads,
        device=args.device,
        kv_dtype=args.kv_dtype,
        adapter=args.adapter,
    )


def parse_adapters(specs: list[str]) -> dict[str, str]:
    """`[NAME=]DIR` flags -> {name: folder}; a name defaults to the folder's (or run's) name."""
    from pathlib import Path

    out = {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep:
            name, path = Path(spec.rstrip("/")).name, spec
        if not name or not path:
            raise GenforgeError(f"--adapter wants DIR or NAME=DIR, got {spec!r}.")
        if name in out:
            raise GenforgeError(f"two adapters are named {name!r}; name them with NAME=DIR.")
        out[name] = path
    return out


SAMPLING_DEFAULTS = (
    "defaults: the model authors' recommended settings for named models, "
    "else temperature 0.8, top-k 40, top-p 0.95, min-p 0.05"
)


def add_sampling_args(
    p: argparse.ArgumentParser,
    title: str = "sampling",
    description: str = SAMPLING_DEFAULTS,
    max_tokens_help: str | None = None,
    seed_and_stop: bool = True,
) -> None:
    """--temperature, --top-p, ..., --max-tokens (and --seed and --stop), in one group."""
    g = p.add_argument_group(title, description)
    g.add_argument("--temperature", type=float, help="randomness; 0 = greedy")
    g.add_argument("--top-p", type=float, help="nucleus sampling mass in (0, 1]")
    g.add_argument("--top-k", type=int, help="keep the k most likely tokens; 0 = off")
    g.add_argument(
        "--min-p", type=float, help="drop tokens below min-p x the top probability; 0 = off"
    )
    g.add_argument(
        "--repetition-penalty", type=float, help="penalise tokens already in the context; 1 = off"
    )
    g.add_argument(
        "--presence-penalty", type=float, help="penalise tokens generated at least once, [-2, 2]"
    )
    g.add_argument(
        "--frequency-penalty", type=float, help="penalise tokens per time generated, [-2, 2]"
    )
    g.add_argument(
        "--dry-multiplier",
        type=float,
        help="DRY: penalise continuing a run of the output that appeared before; 0 = off",
    )
    g.add_argument(
        "--dry-base", type=float, help="DRY: the penalty grows by this factor per repeated token"
    )
    g.add_argument(
        "--dry-allowed-length",
        type=int,
        help="DRY: runs of up to this many tokens may repeat unpenalised",
    )
    g.add_argument(
        "--max-tokens",
        type=int,
        help=max_tokens_help
        or f"most new tokens per answer (default: {DEFAULT_MAX_TOKENS}, or what is left of the "
        "context if less; a small model can loop forever without a cap)",
    )
    if not seed_and_stop:
        return
    g.add_argument("--seed", type=int, help="random seed; the same seed gives the same output")
    g.add_argument(
        "--stop",
        action="append",
        default=None,
        metavar="TEXT",
        help="stop when this text is generated (repeatable); it is not printed",
    )


def sampling_kwargs(args: argparse.Namespace) -> dict:
    """The sampling flags given, as keyword arguments; bad values fail before the model loads."""
    kwargs = {n: getattr(args, n) for n in SAMPLING_FLAGS if getattr(args, n) is not None}
    from genforge.generate.sampling import SamplingParams

    SamplingParams.from_kwargs(**kwargs)
    return kwargs
