"""Where should `rag ask` say "I don't know"? The best retrieved chunk's similarity, measured.

    python benchmarks/rag_refusal.py            # prints the table; --out FILE writes it too

Indexes the documents of `genforge eval rag_pydocs` (the Python tutorial and eight library pages)
and retrieves, as `rag ask` does (hybrid, k=4), for the calibration questions of
genforge/evals/everyday_prompts.py: 20 the documents answer, 10 off-topic and 10 on-topic that they
do not answer (other libraries, other versions). These are not the evaluation's questions, so the
threshold chosen here is then measured on questions it was not chosen on. For each threshold: the
share of unanswerable questions refused (correct refusals) and of answerable ones refused (false
refusals) when the answer is attempted only if the best chunk reaches it.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
from pathlib import Path

from genforge.evals.everyday import pydocs_paths
from genforge.evals.everyday_prompts import CALIBRATION
from genforge.rag.ingest import index
from genforge.rag.retrieve import Retriever
from genforge.rag.stores import open_store

THRESHOLDS = [round(0.20 + 0.025 * i, 3) for i in range(13)]  # 0.20 .. 0.50


def best_similarities() -> dict[str, list[tuple[float, str]]]:
    """kind -> (best similarity among the k=4 hybrid hits, question) for every question."""
    out: dict[str, list[tuple[float, str]]] = {}
    with tempfile.TemporaryDirectory() as tmp, open_store(Path(tmp) / "docs.sqlite") as store:
        index(pydocs_paths(), store, progress=False)
        retriever = Retriever(store)
        for item in CALIBRATION:
            hits = retriever.search(item["prompt"], k=4, mode="hybrid")
            best = max((h.similarity for h in hits), default=0.0)
            out.setdefault(item["kind"], []).append((best, item["prompt"]))
    return out


def table(best: dict[str, list[tuple[float, str]]]) -> str:
    rows = [
        "| threshold | answerable refused (false) | off-topic refused | on-topic unanswerable refused |",
        "|---|---|---|---|",
    ]
    for t in THRESHOLDS:
        cells = []
        for kind in ("answerable", "off_topic", "on_topic"):
            sims = [s for s, _ in best[kind]]
            cells.append(f"{sum(s < t for s in sims)}/{len(sims)}")
        rows.append(f"| {t:.3f} | " + " | ".join(cells) + " |")
    ranges = [
        f"- {kind}: best similarity {min(s for s, _ in v):.3f} .. {max(s for s, _ in v):.3f}"
        for kind, v in best.items()
    ]
    return "\n".join(rows + [""] + ranges)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, help="also write the table to this file")
    args = ap.parse_args()
    best = best_similarities()
    text = f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs\n\n{table(best)}\n"
    for kind, v in best.items():
        for s, q in sorted(v):
            text += f"\n{kind:10} {s:.3f}  {q}"
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
