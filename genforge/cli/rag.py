"""`genforge rag index | search | ask`: the command-line verbs over genforge.rag."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from genforge.cli.flags import (
    add_model_args,
    add_sampling_args,
    load_model,
    sampling_kwargs,
)
from genforge.errors import GenforgeError
from genforge.hub import ANSWER_MODEL


def add_parser(sub) -> None:
    p = sub.add_parser(
        "rag",
        help="index your documents, search them, ask questions with citations",
        description="Retrieval-augmented generation over your own files.",
    )
    rsub = p.add_subparsers(dest="rag_verb", metavar="VERB", required=True)
    _add_index_parser(rsub)
    _add_search_parser(rsub)
    _add_ask_parser(rsub)


def _store_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--store",
        required=True,
        metavar="FILE|URL",
        help="the index: a SQLite file (`rag index` creates it) or postgresql://user@host/db",
    )


def _search_args(p: argparse.ArgumentParser, k: int) -> None:
    p.add_argument("-k", type=int, default=k, help=f"how many chunks to retrieve (default: {k})")
    p.add_argument(
        "--mode",
        default="hybrid",
        choices=["hybrid", "dense", "bm25"],
        help="vectors, keywords (BM25), or both fused by reciprocal rank (default: hybrid)",
    )
    p.add_argument(
        "--path",
        default=None,
        metavar="GLOB",
        help="only chunks whose source path matches this glob, e.g. '*/docs/*.md'",
    )


def _add_index_parser(rsub) -> None:
    r = rsub.add_parser(
        "index",
        help="index files and folders (incremental: only changes are redone)",
        description="Read .txt .md .rst .html .pdf .jsonl and source files (with the ocr "
        "extra, also the text in .png and .jpg pictures and scanned PDF pages), chunk "
        "them by structure, embed and store them. Unchanged files are skipped, "
        "changed ones re-indexed, deleted ones removed.",
    )
    r.add_argument("paths", nargs="+", metavar="PATH", help="files or folders")
    _store_arg(r)
    r.add_argument(
        "--embedder",
        default=None,
        metavar="NAME|DIR",
        help="embedding model for a new store: all-minilm-l6-v2 (default) or a "
        "sentence-transformers folder",
    )
    r.add_argument(
        "--chunk-tokens",
        type=int,
        default=None,
        metavar="N",
        help="largest chunk, in the embedder's tokens, for a new store (default: 200)",
    )
    r.add_argument(
        "--overlap",
        type=int,
        default=None,
        metavar="N",
        help="tokens of whole lines a chunk repeats from the one before (default: 32)",
    )
    r.add_argument("--quiet", action="store_true", help="no progress bar")
    r.set_defaults(func=run_index)


def _add_search_parser(rsub) -> None:
    r = rsub.add_parser(
        "search",
        help="the chunks that best match a query",
        description="Search an index: prints the best chunks with their source and "
        "line span, or JSON with --json.",
    )
    r.add_argument("query")
    _store_arg(r)
    _search_args(r, k=5)
    r.add_argument(
        "--rerank",
        default=None,
        metavar="DIR",
        help="rerank the candidates with this cross-encoder model folder",
    )
    r.add_argument(
        "--json",
        action="store_true",
        help='print [{"source", "start_line", "end_line", "score", "text"}, ...]',
    )
    r.set_defaults(func=run_search)


def _add_ask_parser(rsub) -> None:
    r = rsub.add_parser(
        "ask",
        help="answer a question from the index, citing sources [1]",
        description="Retrieve chunks for the question and stream an answer grounded "
        "in them, with numbered citations mapped to file and lines.",
    )
    r.add_argument("question")
    _store_arg(r)
    add_model_args(r, default=ANSWER_MODEL)
    add_sampling_args(r)
    _search_args(r, k=4)
    r.add_argument(
        "--min-similarity",
        type=float,
        default=None,
        metavar="X",
        help='say "I don\'t know" without asking the model when the best chunk is less similar '
        "to the question than this (cosine; default: 0.40, calibrated in docs/rag.md)",
    )
    r.add_argument(
        "--json", action="store_true", help="print the answer, citations and chunks as JSON"
    )
    r.set_defaults(func=run_ask)


def _open(args: argparse.Namespace, create: bool = False):
    from genforge.rag.stores import open_store

    return open_store(args.store, create=create)


def _retriever(store, args: argparse.Namespace):
    from genforge.rag.retrieve import Retriever

    return Retriever(store, reranker=getattr(args, "rerank", None))


def run_index(args: argparse.Namespace) -> int:
    from genforge.rag.ingest import Settings, index

    given = (args.embedder, args.chunk_tokens, args.overlap)
    settings = None
    if any(v is not None for v in given):
        d = Settings()
        settings = Settings(
            args.embedder or d.embedder,
            args.chunk_tokens or d.max_tokens,
            d.overlap if args.overlap is None else args.overlap,
        )
    with _open(args, create=True) as store:
        report = index(args.paths, store, settings, progress=not args.quiet)
        print(report.summary(Path.cwd()))
        stats = store.stats()
    print(f"{args.store}: {stats['files']} files, {stats['chunks']} chunks")
    return 0


def run_search(args: argparse.Namespace) -> int:
    with _open(args) as store:
        hits = _retriever(store, args).search(args.query, k=args.k, mode=args.mode, path=args.path)
    if args.json:
        print(json.dumps([h.to_dict() for h in hits], indent=2, ensure_ascii=False))
        return 0
    if not hits:
        print("no matching chunks")
    for n, h in enumerate(hits, start=1):
        print(f"[{n}] {h.where(Path.cwd())}  score {h.score:.4f}  similarity {h.similarity:.3f}")
        print("    " + h.chunk.text.strip().replace("\n", "\n    ")[:600] + "\n")
    return 0


def run_ask(args: argparse.Namespace) -> int:
    from genforge.rag.answer import MIN_SIMILARITY, Answer, stream_answer

    if args.min_similarity is not None and not -1 <= args.min_similarity <= 1:
        raise GenforgeError(
            f"--min-similarity is a cosine similarity in [-1, 1], got {args.min_similarity}."
        )
    sampling = sampling_kwargs(args)
    with _open(args) as store:
        retriever = _retriever(store, args)
        llm = load_model(args)
        answer = None
        for item in stream_answer(
            llm,
            retriever,
            args.question,
            k=args.k,
            mode=args.mode,
            path=args.path,
            min_similarity=MIN_SIMILARITY if args.min_similarity is None else args.min_similarity,
            **sampling,
        ):
            if isinstance(item, Answer):
                answer = item
            elif not args.json:
                sys.stdout.write(item)
                sys.stdout.flush()
    if args.json:
        print(json.dumps(answer.to_dict(), indent=2, ensure_ascii=False))
        return 0
    print()
    if answer.chunks:
        print("\nSources:")
        how = {c.number: "supports the answer" if c.inferred else "cited" for c in answer.citations}
        for n, h in enumerate(answer.chunks, start=1):
            mark = how.get(n, "not cited")
            print(f"[{n}] {h.where(Path.cwd())} ({mark})")
    return 0
