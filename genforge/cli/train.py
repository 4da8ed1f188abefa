"""`genforge tokenizer train`, `genforge data prepare` and `genforge train`: from text to a model.

`genforge train` has one flag per `TrainConfig` field, its help text the field's comment.
"""

from __future__ import annotations

import argparse
from dataclasses import MISSING, fields

from genforge.errors import GenforgeError
from genforge.hub import DEFAULT_MODEL

# Training is one thread team doing all the work: spinning OpenMP workers make its steps 12 %
# faster on 2 cores (main() sets this before torch is imported, unless the user set a policy).
OMP_WAIT_POLICY = "ACTIVE"


def add_parsers(sub) -> None:
    _add_tokenizer_parser(sub)
    _add_data_parser(sub)
    p = sub.add_parser(
        "train",
        help="pretrain a transformer on a prepared data folder",
        description="Train a llama-family transformer from scratch on DIR (made by "
        "`genforge data prepare`). Width, heads and learning rate follow from "
        "--depth. Checkpoints, metrics.jsonl and loss.png go to --out; --resume "
        "continues a stopped run exactly. Runs unchanged under torchrun (DDP, or "
        "FSDP2 with --fsdp).",
    )
    add_train_config_args(p)
    p.set_defaults(func=run_train, omp_wait_policy=OMP_WAIT_POLICY)


def _add_tokenizer_parser(sub) -> None:
    p = sub.add_parser(
        "tokenizer", help="train a tokenizer on your own text", description="Tokenizer tools."
    )
    tsub = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    t = tsub.add_parser(
        "train",
        help="train a byte-level BPE tokenizer",
        description="Train a byte-level BPE tokenizer (Hugging Face tokenizers) on "
        "SRC (files, folders, JSONL, or the named corpora pydocs, stdlib, kjv) and "
        "report its compression on a held-out split next to SmolLM2's.",
    )
    t.add_argument("sources", nargs="+", metavar="SRC", help="text files, folders or corpus names")
    t.add_argument("--out", required=True, metavar="DIR", help="tokenizer folder to write")
    t.add_argument(
        "--vocab-size",
        type=int,
        default=8192,
        metavar="N",
        help="tokens in the vocabulary, special tokens included (default: 8192)",
    )
    t.add_argument(
        "--min-frequency",
        type=int,
        default=2,
        metavar="N",
        help="merge only pairs seen at least N times (default: 2)",
    )
    t.add_argument(
        "--val-fraction",
        type=float,
        default=0.01,
        metavar="F",
        help="share of documents held out to measure compression (default: 0.01)",
    )
    t.set_defaults(func=run_tokenizer_train)


def _add_data_parser(sub) -> None:
    p = sub.add_parser("data", help="prepare a corpus for training", description="Data tools.")
    dsub = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    d = dsub.add_parser(
        "prepare",
        help="deduplicate, split and tokenize a corpus into shards",
        description="Read SRC (files, folders, JSONL with a text field or chat "
        "messages, or the named corpora pydocs, stdlib, kjv), drop exact duplicates, "
        "hold out a validation split and write memory-mapped token shards and a "
        "manifest to --out.",
    )
    d.add_argument("sources", nargs="+", metavar="SRC", help="text files, folders or corpus names")
    d.add_argument(
        "--tokenizer",
        required=True,
        metavar="DIR",
        help="a tokenizer folder (from `genforge tokenizer train`)",
    )
    d.add_argument("--out", required=True, metavar="DIR", help="data folder to write")
    d.add_argument(
        "--val-fraction",
        type=float,
        default=0.01,
        metavar="F",
        help="share of documents held out for validation (default: 0.01)",
    )
    d.set_defaults(func=run_data_prepare)


def add_train_config_args(parser: argparse.ArgumentParser) -> None:
    """One flag per TrainConfig field, its help text from the field's comment."""
    from genforge.train.config import TrainConfig  # dataclasses only: --help stays fast

    add_config_args(
        parser, TrainConfig, required={"data": "DIR"}, out_default="runs/NAME, NAME from --data"
    )


def config_fields(cls) -> list:
    """The fields of a config dataclass, its own before those of the classes it extends."""
    every = {f.name: f for f in fields(cls)}
    own = [name for name in cls.__annotations__ if name in every]  # in the order declared
    return [every[n] for n in own] + [f for n, f in every.items() if n not in own]


def add_config_args(
    parser: argparse.ArgumentParser, cls, required: dict[str, str], out_default: str
) -> None:
    """One flag per field of the config dataclass `cls`, its help text from the field's comment;
    `required` names the fields without a default (and their metavars), `out_default` says
    where --out goes without one."""
    help_text = field_comments(cls)
    for f in config_fields(cls):
        flag, text = "--" + f.name.replace("_", "-"), help_text[f.name].replace("%", "%%")
        if f.name in required:
            names = ("-m", flag) if f.name == "model" else (flag,)  # -m, as on every model verb
            parser.add_argument(*names, required=True, metavar=required[f.name], help=text)
        elif f.name == "out":
            parser.add_argument(
                flag,
                default=None,
                metavar="DIR",
                help=f"{text} (default: {out_default})",
            )
        elif f.name == "sample_prompts":
            parser.add_argument(
                "--sample-prompt",
                dest=f.name,
                action="append",
                metavar="TEXT",
                help=f"{text} (repeatable)",
            )
        elif f.type == "bool" and f.default is True:  # on unless --no-NAME
            parser.add_argument(
                flag, action=argparse.BooleanOptionalAction, default=True, help=text
            )
        elif f.type == "bool":
            parser.add_argument(flag, action="store_true", help=text)
        elif f.type.startswith("tuple"):  # e.g. LoRA targets: a comma-separated list
            item = int if f.type.startswith("tuple[int") else str
            parser.add_argument(
                flag,
                type=lambda v, item=item: tuple(item(x.strip()) for x in v.split(",") if x.strip()),
                default=f.default,
                metavar="A,B",
                help=f"{text} (default: {','.join(map(str, f.default))})",
            )
        else:
            kind = {"int": int, "float": float, "str": str}[f.type]
            default = f.default if f.default is not MISSING else None
            parser.add_argument(
                flag,
                type=kind,
                default=default,
                metavar="NAME" if kind is str else f.type.upper(),
                help=f"{text} (default: {default})",
            )


def field_comments(cls) -> dict[str, str]:
    """Each dataclass field's trailing comment (read from the class's source), for help texts."""
    import inspect

    out = {}
    for klass in reversed(cls.__mro__[:-1]):  # a subclass's comment wins
        for line in inspect.getsource(klass).splitlines():
            name, sep, rest = line.strip().partition(":")
            if sep and "#" in rest and name.isidentifier():
                out[name] = rest.split("#", 1)[1].strip()
    return {f.name: out.get(f.name, "") for f in fields(cls)}


def train_config(args: argparse.Namespace):
    """The TrainConfig the parsed flags describe; `out` defaults to runs/NAME."""
    from pathlib import Path

    from genforge.train.config import TrainConfig

    values = {f.name: getattr(args, f.name) for f in fields(TrainConfig)}
    values["out"] = values["out"] or str(Path("runs") / Path(args.data).resolve().name)
    values["sample_prompts"] = tuple(values["sample_prompts"] or ())
    return TrainConfig(**values)


def run_train(args: argparse.Namespace) -> int:
    cfg = train_config(args)
    cfg.check()
    from genforge.train.loop import train

    r = train(cfg)
    if not r["main"]:  # under torchrun, the first process speaks for all
        return 0
    if r.get("interrupted"):
        print(
            f"stopped at step {r['step']} of {r['steps']}; continue with --resume --out {r['run']}"
        )
        return 130
    if "val_bpb" in r:
        print(
            f"step {r['step']}: validation loss {r['val_loss']:.4f}, {r['val_bpb']:.3f} bits per byte"
        )
    print(f"run: {r['run']} (use it with `genforge chat -m {r['run']}` or `genforge export`)")
    return 0


def run_tokenizer_train(args: argparse.Namespace) -> int:
    from genforge.data.corpus import ReadStats, no_text_error, read_documents, split
    from genforge.tokenizer import bpe

    if not 0 <= args.val_fraction < 0.5:
        raise GenforgeError(f"--val-fraction must be in [0, 0.5), got {args.val_fraction}.")
    stats = ReadStats()
    docs = list(read_documents(args.sources, stats))
    if not docs:
        raise no_text_error(args.sources, stats)
    train, val = split(docs, args.val_fraction)
    tok = bpe.train_bpe((d.text for d in train), args.vocab_size, args.min_frequency, progress=True)
    out = bpe.save(tok, args.out)
    texts = [d.text for d in (val or train)]
    rows = [(f"this tokenizer ({tok.get_vocab_size()})", bpe.bytes_per_token(tok, texts))]
    if reference := _smollm2_tokenizer():
        rows.append(
            (f"SmolLM2 ({reference.get_vocab_size()})", bpe.bytes_per_token(reference, texts))
        )
    print(
        f"wrote {out} from {len(train)} documents ({stats.duplicates} duplicates dropped, "
        f"{len(stats.skipped_binary)} binary files skipped)"
    )
    print(f"bytes per token on {'the validation split' if val else 'the training text'}:")
    for name, value in rows:
        print(f"  {name:<28} {value:.2f}")
    return 0


def _smollm2_tokenizer():
    """SmolLM2's tokenizer (a GPT-2-style byte-level BPE) if that model is pulled, else None."""
    from genforge import hub

    path = hub.installed_path(DEFAULT_MODEL)
    if path is None:
        return None
    from genforge.tokenizer import Tokenizer
    from genforge.weights.gguf import read_gguf

    return Tokenizer.from_gguf_metadata(read_gguf(path).metadata).hf


def run_data_prepare(args: argparse.Namespace) -> int:
    from genforge.data.shards import prepare

    m = prepare(args.sources, args.out, args.tokenizer, args.val_fraction)
    print(
        f"wrote {args.out}: {m['documents']['train']} + {m['documents']['val']} documents, "
        f"{m['tokens']['train']:,} train + {m['tokens']['val']:,} validation tokens "
        f"({m['read']['duplicates']} duplicates dropped, {m['read']['skipped_binary']} binary "
        "files skipped)"
    )
    return 0
