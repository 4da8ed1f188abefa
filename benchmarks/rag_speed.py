"""Retrieval speed: ingest next to the raw speed of its embedder, and query latency on 100k chunks.

    make bench-rag        # or: python benchmarks/rag_speed.py [--rounds 3 --quick]

Ingest: `ingest.index` (what `genforge rag index` runs) into a fresh SQLite store, timed whole, on
files spread over the stdlib's .py files and the Python docs; its peer is the limit it cannot beat,
`Embedder().encode` (batch 64) of the texts it embedded. They alternate (the order flips each round)
so that the machine's drift hits both; medians count. Where the ingest's time goes: a chunk-only
pass, and an ingest whose encode looks the vectors up (no model), are timed too.

Queries: an index of >= --index-chunks real chunks (stdlib, docs, stdlib tests, site-packages),
built by `ingest.index` with the real embedder once and kept in --index-dir; an interrupted build
resumes. At ~10-20 chunks/s on a 2-core CPU the 100k build takes hours, once. Each query (a
docstring's first sentence) goes through every path in turn, one client thread; dense search's peer
is exact numpy top-k over the same vectors in RAM. RESULTS.md's "Retrieval speed" is rewritten.
"""

from __future__ import annotations

import argparse
import ast
import copy
import functools
import hashlib
import json
import os
import re
import shutil
import statistics
import sys
import sysconfig
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

from bench_engine import cpu_description, provenance, write_section

HERE = Path(__file__).parent
HEADING = "## Retrieval speed (rag_speed.py)"
DOCS = Path("/usr/share/doc/python3.11/html/_sources")
STDLIB = Path(sysconfig.get_paths()["stdlib"])
QUICK = {"ingest_files": 6, "index_chunks": 400, "queries": 20}  # embedding: ~10 chunks/s here


# -- corpora --------------------------------------------------------------------------------------


def stdlib_files(tests: bool = False) -> list[Path]:
    """The stdlib's .py files without site-packages; tests=True: only test/ and idlelib/."""
    parts = {f: set(f.relative_to(STDLIB).parts[:-1]) for f in sorted(STDLIB.rglob("*.py"))}
    return [
        f
        for f, p in parts.items()
        if "site-packages" not in p and bool(p & {"test", "idlelib"}) == tests
    ]


def docs_files() -> list[Path]:
    return sorted(DOCS.rglob("*.rst.txt")) if DOCS.is_dir() else []


def spread(items: list, n: int) -> list:
    """n items evenly spaced over the list (all of them if it is shorter)."""
    return items if len(items) <= n else [items[i * len(items) // n] for i in range(n)]


def ingest_corpus(n: int) -> list[Path]:
    docs = docs_files()
    half = n // 2 if docs else 0
    return spread(stdlib_files(), n - half) + spread(docs, half)


def index_corpus() -> list[Path]:
    site = sorted(Path(sysconfig.get_paths()["purelib"]).rglob("*.py"))
    return stdlib_files() + docs_files() + stdlib_files(tests=True) + site


def docstring_queries(n: int) -> list[str]:
    """First sentences (4-25 words) of public stdlib docstrings: real questions' vocabulary."""
    found = []
    for f in spread(stdlib_files(), 200):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                tree = ast.parse(f.read_bytes())
            except (SyntaxError, ValueError):
                continue  # lib2to3's Python 2 examples
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.ClassDef) and not node.name.startswith("_"):
                doc = ast.get_docstring(node) or ""
                first = " ".join(re.split(r"(?<=\.)\s|\n\s*\n", doc.strip(), maxsplit=1)[0].split())
                if 4 <= len(first.split()) <= 25:
                    found.append(first)
    return spread(list(dict.fromkeys(found)), n)


# -- 1: ingest next to the raw embedding throughput -----------------------------------------------


def chunk_pass(files: list[Path], embedder) -> tuple[list[tuple], float]:
    """What ingest does before embedding (read, hash, parse, chunk): [(path, sha, kind, chunks)]."""
    from genforge.rag.chunk import chunk_blocks
    from genforge.rag.documents import DocumentError, kind_of, read_blocks
    from genforge.rag.ingest import Settings

    s, out = Settings(), []
    t0 = time.perf_counter()
    for f in files:
        data = f.read_bytes()
        try:
            blocks = read_blocks(f, data)
        except DocumentError:
            continue  # ingest skips it too
        chunks = chunk_blocks(blocks, embedder.count_tokens, s.max_tokens, s.overlap)
        out.append((str(f), hashlib.sha256(data).hexdigest(), kind_of(f), chunks))
    return out, time.perf_counter() - t0


def looked_up(known: dict, texts: list[str], batch_size: int = 64):
    """An encode that looks the vectors up: ingest without the model."""
    import numpy as np

    return np.stack([known[t] for t in texts])


def timed_ingest(files: list[Path], path: Path, embedder, chunks: int, texts: int) -> float:
    from genforge.rag.ingest import index
    from genforge.rag.stores import open_store

    with open_store(path) as store:
        report = index(files, store, embedder=embedder, progress=False)
    if report.chunks != chunks or report.embedded != texts or report.skipped:
        sys.exit(
            f"ingest wrote {report.chunks} chunks ({report.embedded} embedded, "
            f"{len(report.skipped)} skipped), the chunk pass {chunks} ({texts})"
        )
    return report.seconds


def measure_ingest(files: list[Path], embedder, rounds: int, tmp: Path) -> tuple[list, list]:
    """Per round: seconds of ingest, raw encode, ingest without the model, chunking; the files."""
    from genforge.rag.ingest import embed_text

    prepared, _ = chunk_pass(files, embedder)  # untimed: warms the file cache and the tokenizer
    files = [Path(p[0]) for p in prepared]
    texts = list(dict.fromkeys(embed_text(c) for p in prepared for c in p[3]))
    n = sum(len(p[3]) for p in prepared)
    embedder.encode(texts[:64])  # loads the model, starts the thread pool
    rows = []
    for r in range(rounds):
        row: dict = {"chunks": n, "texts": len(texts)}
        for step in ("ingest", "raw") if r % 2 == 0 else ("raw", "ingest"):
            if step == "ingest":
                row["ingest_s"] = timed_ingest(
                    files, tmp / f"ingest-{r}.sqlite", embedder, n, len(texts)
                )
            else:
                t0 = time.perf_counter()
                vectors = embedder.encode(texts, batch_size=64)
                row["embed_s"] = time.perf_counter() - t0
        no_model = copy.copy(embedder)  # the same tokenizer, so the same chunks
        no_model.encode = functools.partial(looked_up, dict(zip(texts, vectors, strict=True)))
        row["no_model_s"] = timed_ingest(
            files, tmp / f"no-model-{r}.sqlite", no_model, n, len(texts)
        )
        _, row["chunk_s"] = chunk_pass(files, embedder)
        row["share"] = (n / row["ingest_s"]) / (len(texts) / row["embed_s"])
        rows.append(row)
        print(
            f"round {r + 1}: ingest {n / row['ingest_s']:.1f} chunks/s, raw encode "
            f"{len(texts) / row['embed_s']:.1f}, share {row['share']:.2f}",
            file=sys.stderr,
        )
    return rows, files


# -- 2: query latency on the big index ------------------------------------------------------------


def random_vectors(seed: int = 0) -> Callable:
    """An `encode` giving unit vectors at random: for an index whose search time is measured only.

    Exact k-NN reads every vector whatever its values, so the scan's latency does not depend on
    them; embedding 100,000 real 200-token chunks takes hours on a 2-core CPU (see the ingest rows).
    """
    import numpy as np

    rng = np.random.default_rng(seed)

    def encode(texts, batch_size: int = 64):
        v = rng.standard_normal((len(texts), 384), dtype=np.float32)
        return v / np.linalg.norm(v, axis=1, keepdims=True)

    return encode


def build_index(
    folder: Path, target: int, embedder, batch: int, rebuild: bool, vectors: str
) -> dict:
    """Index real files until the store holds >= target chunks; resumes an interrupted build."""
    from tqdm import tqdm

    from genforge.rag.ingest import index
    from genforge.rag.stores import open_store

    info_file, db = folder / "build.json", folder / "index.sqlite"
    if rebuild:
        shutil.rmtree(folder, ignore_errors=True)
    info = json.loads(info_file.read_text()) if info_file.exists() else {}
    if info.get("complete") and info["chunks"] >= target:
        return info  # a larger --index-chunks extends the index: indexed files are skipped
    folder.mkdir(parents=True, exist_ok=True)
    info.setdefault("seconds", 0.0)
    info.update(
        batch=batch, started=info.get("started") or time.strftime("%Y-%m-%d"), vectors=vectors
    )
    embedder, files, at = copy.copy(embedder), index_corpus(), 0
    if vectors == "random":
        embedder.encode = random_vectors()
    else:
        embedder.encode = functools.partial(embedder.encode, batch_size=batch)  # texts per forward
    with open_store(db) as store:
        bar = tqdm(total=target, initial=store.stats()["chunks"], desc="build index", unit="chunk")
        while at < len(files) and (have := store.stats()["chunks"]) < target:
            step = 8 if target - have > 2000 else 1  # file by file near the target
            report = index(files[at : at + step], store, embedder=embedder, progress=False)
            at += step
            bar.update(report.chunks)
            info["seconds"] += report.seconds
            info_file.write_text(json.dumps(info))
        bar.close()
        info.update(store.stats(), complete=True, cpu=cpu_description(), folder=str(folder))
    info["bytes"] = db.stat().st_size  # closed: the WAL is checkpointed into the file
    info_file.write_text(json.dumps(info, indent=1))
    return info


NUMPY, VEC = "numpy exact top-k in RAM (reference)", "sqlite-vec k-NN alone (`store.dense`, vec0)"


def measure_queries(store, embedder, queries: list[str], k: int, warmup: int) -> dict:
    """Milliseconds per query of each path, interleaved query by query."""
    import numpy as np

    from genforge.rag.retrieve import Retriever

    rows = list(store.db.execute("SELECT rowid, embedding FROM chunks_vec"))  # SQLite only
    ids = np.array([r[0] for r in rows])
    matrix = np.stack([np.frombuffer(r[1], dtype=np.float32) for r in rows])  # (N, D)
    retriever = Retriever(store, embedder)

    def numpy_topk(v):
        scores = matrix @ v  # (N,): cosine similarity, the vectors are unit length
        top = np.argpartition(-scores, k)[:k]
        return [(int(ids[i]), float(scores[i])) for i in top[np.argsort(-scores[top])]]

    def search(mode: str) -> Callable:
        return lambda q, v: retriever.search(q, k, mode)

    paths: dict[str, Callable] = {
        "query embedding alone (`Embedder.encode`, 1 text)": lambda q, v: embedder.encode([q]),
        VEC: lambda q, v: store.dense(v, k),
        NUMPY: lambda q, v: numpy_topk(v),
        **{f"`Retriever.search` {m}": search(m) for m in ("dense", "bm25", "hybrid")},
    }
    ms: dict[str, list[float]] = {name: [] for name in paths}
    same = 0  # queries where sqlite-vec and numpy agree (by similarity: duplicate texts tie)
    for i, q in enumerate(queries[:warmup] + queries):
        v, got = embedder.encode([q])[0], {}
        for name, run in paths.items():
            t0 = time.perf_counter()
            got[name] = run(q, v)
            if i >= warmup:
                ms[name].append(1000 * (time.perf_counter() - t0))
        if i >= warmup:
            same += np.allclose([s for _, s in got[VEC]], [s for _, s in got[NUMPY]], atol=1e-4)
    return {"ms": ms, "same": same, "vector_mb": matrix.nbytes / 2**20}


# -- RESULTS.md -----------------------------------------------------------------------------------


def ingest_lines(rows: list[dict], files: list[Path]) -> list[str]:
    n, t = rows[0]["chunks"], rows[0]["texts"]
    ingest, raw = [n / r["ingest_s"] for r in rows], [t / r["embed_s"] for r in rows]
    docs = sum(f.is_relative_to(DOCS) for f in files)
    m = {key: statistics.median(r[key] for r in rows) for key in rows[0]}
    whole, raw_s, chunk_s = m["ingest_s"], m["embed_s"], m["chunk_s"]
    write_s, embed_s = m["no_model_s"] - chunk_s, whole - m["no_model_s"]
    return [
        f"Ingest corpus: {len(files) - docs} stdlib .py files and {docs} Python docs reST files "
        f"(spread evenly over each), {n:,} chunks ({t:,} distinct texts).",
        "",
        "| pass | chunks/s (median) | min-max | seconds (median) |",
        "|---|---|---|---|",
        f"| `ingest.index` into a fresh SQLite store (read, chunk, embed, write) | "
        f"{statistics.median(ingest):.1f} | {min(ingest):.1f}-{max(ingest):.1f} | {whole:.1f} |",
        f"| raw `Embedder().encode`, batch 64, the same texts in one call (the limit) | "
        f"{statistics.median(raw):.1f} | {min(raw):.1f}-{max(raw):.1f} | {raw_s:.1f} |",
        "",
        f"Share of the embedding limit (ingest / raw, median of the rounds' ratios): "
        f"**{m['share']:.2f}**. Where the ingest's {whole:.1f} s go (medians): reading and "
        f"chunking {chunk_s:.1f} s ({chunk_s / whole:.0%}; a chunk-only pass), hashing and store "
        f"writes {write_s:.1f} s ({write_s / whole:.0%}; an ingest whose encode looks the vectors "
        f"up, less the chunking), embedding {embed_s:.1f} s ({embed_s / whole:.0%}; the rest, in "
        f"calls of ~256 chunks: raw encode took {raw_s:.1f} s).",
    ]


def query_lines(q: dict, info: dict, n: int, k: int, warmup: int, examples: list[str]) -> list[str]:
    import numpy as np

    ms = q["ms"]
    ref = statistics.median(ms[NUMPY])
    lines = [
        f"Index: {info['chunks']:,} chunks of {info['files']:,} real files (stdlib .py, Python docs, "
        f"stdlib tests, then site-packages .py), {info['bytes'] / 2**20:,.0f} MB on disk (SQLite + "
        f"FTS5 + sqlite-vec; the vectors alone {q['vector_mb']:,.0f} MB), built by `ingest.index` "
        + (
            "(genforge's reader, chunker and store; the chunks' vectors are random unit vectors, "
            "`--index-vectors random`: the exact scans' time does not depend on their values, and "
            "embedding this many chunks takes hours here) "
            if info.get("vectors") == "random"
            else f"with all-MiniLM-L6-v2 (fp32, batch {info['batch']}) "
        )
        + f"in {info['seconds'] / 60:,.1f} min "
        f"(started {info['started']}, CPU: {info['cpu']}), kept in `{info['folder']}`.",
        "",
        f'{n} queries (first sentences of stdlib docstrings, e.g. "{examples[0]}"), k={k}, one '
        f"client thread, every query through each path in turn, after {warmup} warm-up queries. "
        "A search embeds the query (in every mode: each hit carries its cosine similarity), asks "
        "the store for 50 candidates per list, then fetches the chunks' text.",
        "",
        "| query path | p50 ms | p99 ms | mean ms | p50 vs numpy |",
        "|---|---|---|---|---|",
    ]
    for name, xs in ms.items():
        p50, p99 = np.percentile(xs, 50), np.percentile(xs, 99)
        vs = f"{p50 / ref:.1f}x" if name in (VEC, NUMPY) else "—"  # the like-for-like pair
        lines.append(f"| {name} | {p50:.1f} | {p99:.1f} | {statistics.mean(xs):.1f} | {vs} |")
    return lines + [
        "",
        f"sqlite-vec and numpy find the same top-{k} similarities on "
        f"{q['same']}/{n} queries (both are exact searches).",
    ]


def section(args, threads, load, rows, files, q, info, queries) -> list[str]:
    return [
        HEADING,
        "",
        provenance(load, "make bench-rag"),
        "",
        f"torch threads {threads}; {args.ingest_files} ingest files, {args.rounds} rounds, "
        f"{len(queries)} queries, index vectors: {args.index_vectors}. Embedder: all-MiniLM-L6-v2 "
        "(genforge's default), chunks of <= 200 tokens with 32 of overlap. Ingest figures are "
        f"medians of {args.rounds} rounds alternating ingest and raw encoding (the order flips "
        "each round).",
        "",
        *ingest_lines(rows, files),
        "",
        *query_lines(q, info, len(queries), args.k, args.warmup, queries),
        "",
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ingest-files", type=int, default=70, help="files in the ingest corpus")
    ap.add_argument("--rounds", type=int, default=2, help="alternating ingest/raw rounds")
    ap.add_argument("--index-chunks", type=int, default=100_000, help="chunks in the query index")
    ap.add_argument("--index-dir", type=Path, default=Path("~/.cache/genforge/bench/rag-100k"))
    ap.add_argument("--rebuild", action="store_true", help="build the query index anew")
    ap.add_argument("--build-batch", type=int, default=64, help="texts per forward, index build")
    ap.add_argument(
        "--index-vectors",
        choices=["model", "random"],
        default="model",
        help="the query index's chunk vectors: the embedder's, or random unit vectors "
        "(search time is the same; the build takes minutes instead of hours)",
    )
    ap.add_argument("--queries", type=int, default=200, help="timed queries")
    ap.add_argument("--warmup", type=int, default=5, help="untimed queries first")
    ap.add_argument("-k", type=int, default=5, help="hits per query")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--quick", action="store_true", help="tiny sizes, temp index, print only")
    ap.add_argument("--out", type=Path, default=HERE / "RESULTS.md", help="RESULTS.md to update")
    args = ap.parse_args()
    if args.quick:
        vars(args).update(QUICK)

    import genforge  # noqa: F401  before torch: the OpenMP policy `genforge rag index` runs with

    # isort: split
    import torch

    from genforge.rag.embed import Embedder
    from genforge.rag.stores import open_store

    if args.threads:
        torch.set_num_threads(args.threads)
    threads, load, embedder = torch.get_num_threads(), os.getloadavg()[0], Embedder()
    with tempfile.TemporaryDirectory() as tmp:
        rows, files = measure_ingest(
            ingest_corpus(args.ingest_files), embedder, args.rounds, Path(tmp)
        )
        folder = Path(tmp, "index") if args.quick else args.index_dir.expanduser()
        if args.index_vectors == "random" and not args.quick:
            folder = folder.with_name(folder.name + "-random")
        info = build_index(
            folder, args.index_chunks, embedder, args.build_batch, args.rebuild, args.index_vectors
        )
        queries = docstring_queries(args.queries)
        with open_store(folder / "index.sqlite") as store:
            q = measure_queries(store, embedder, queries, args.k, args.warmup)
    lines = section(args, threads, load, rows, files, q, info, queries)
    if args.quick:
        print("\n".join(lines))
    else:
        write_section(args.out, HEADING, lines)  # atomic; prints the section too


if __name__ == "__main__":
    main()
