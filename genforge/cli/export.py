"""`genforge export`: a trained run (or model folder) as a Hugging Face folder or a GGUF file."""

from __future__ import annotations

import argparse


def add_parser(sub) -> None:
    p = sub.add_parser(
        "export",
        help="write a trained model as a Hugging Face folder or a GGUF file",
        description="Export RUN's newest checkpoint (or a Hugging Face model folder) "
        "as a Hugging Face folder that transformers loads, or as a GGUF file that "
        "llama.cpp loads, optionally with a LoRA adapter merged in (--adapter). The "
        "training state stays behind.",
    )
    p.add_argument(
        "source",
        metavar="RUN",
        help="a training run folder (its newest checkpoint is exported) or a model folder",
    )
    p.add_argument(
        "--format",
        required=True,
        choices=["hf", "gguf"],
        help="hf: a folder of safetensors, config.json and tokenizer files; gguf: one "
        "file for llama.cpp",
    )
    p.add_argument(
        "--out",
        required=True,
        metavar="PATH",
        help="the folder (hf) or file (gguf) to write; an earlier export there is replaced",
    )
    p.add_argument(
        "--adapter",
        default=None,
        metavar="DIR",
        help="merge this LoRA adapter (a `genforge finetune` run or a peft folder) into the "
        "weights; RUN may then also be a named model or a .gguf file",
    )
    p.add_argument(
        "--dtype",
        default="f32",
        choices=["f32", "f16", "bf16"],
        help="precision of the weight matrices; gguf keeps norms in f32 (default: f32, as trained)",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from genforge.train.export import export, source_folder

    if args.adapter is not None:
        path = export(args.source, args.format, args.out, args.dtype, adapter=args.adapter)
        print(f"wrote {path} ({args.format}, {args.dtype}): {args.source} + {args.adapter}")
        return 0
    folder = source_folder(args.source)
    path = export(folder, args.format, args.out, args.dtype)
    print(f"wrote {path} ({args.format}, {args.dtype}) from {folder}")
    return 0
