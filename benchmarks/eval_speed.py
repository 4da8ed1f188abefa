"""Evaluation speed: HellaSwag items/s of `genforge eval` next to transformers on the same pairs.

    make bench-eval       # or: python benchmarks/eval_speed.py [--items 100 --rounds 3]

genforge runs `harness.evaluate(llm, "hellaswag", limit=N)`, the call `genforge eval` makes, timed
whole (items read, pairs tokenized and scored, records built), with its prefix cache emptied first
so that every round starts cold. transformers loads the same GGUF file dequantized to fp32 and
scores the same token ids (`LLM.encode_pair` on the harness's pairs) the way lm-evaluation-harness
does: every choice one context+continuation sequence, sequences sorted by length and run in
right-padded batches of 16 (as many as 4 items' endings), one forward, log_softmax, gather at the
continuation's positions; also timed whole. Both run in this process on the same threads, in
interleaved rounds (genforge, transformers, genforge, ...) so that the machine's drift hits them
alike; the median round counts. The section "Evaluation speed" of RESULTS.md is rewritten.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from bench_engine import provenance, write_section

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the model comes from genforge's cache

HERE = Path(__file__).parent
HEADING = "## Evaluation speed (eval_speed.py)"
MODEL = "smollm2-135m-instruct"
TASK = "hellaswag"


@dataclass
class Engine:
    name: str
    dtype: str
    run: Callable[[int], list[int]]  # n items -> the predicted choice of each; timed
    prepare: Callable[[], None] = lambda: None  # before each timed call, untimed
    stats: dict = field(default_factory=dict)  # what the last call computed
    speeds: list[float] = field(default_factory=list)  # items/s, one per round
    predictions: list[int] = field(default_factory=list)


def genforge_engine(llm) -> Engine:
    from genforge.evals import harness

    def run(n: int) -> list[int]:
        results = harness.evaluate(llm, TASK, limit=n, progress=False)
        return [r["prediction"] for r in results["items"][TASK]]

    # An emptied prefix cache, else later rounds find every context cached by the first.
    return Engine("genforge", llm.dtype, run, llm.engine.reset_prefix_cache)


def transformers_engine(batch: int, encode_pair) -> Engine:
    import torch
    from transformers import AutoModelForCausalLM

    from genforge import hub
    from genforge.evals import harness
    from genforge.evals.tasks import TASKS

    path = hub.resolve(MODEL)
    model = AutoModelForCausalLM.from_pretrained(
        path.parent, gguf_file=path.name, dtype=torch.float32
    ).eval()
    task = TASKS[TASK]
    stats: dict = {}

    @torch.inference_mode()
    def run(n: int) -> list[int]:
        every = task.items()
        items = harness._limited(every, n)
        prefix = harness._shots_for(task, every, task.shots, seed=1234)
        requests = []  # (item, choice, context + continuation ids, continuation length)
        stats.update(positions=0, padding=0, shared=0)
        for k, item in enumerate(items):
            contexts = set()
            for j, (context, continuation) in enumerate(item.pairs):
                ctx, cont = encode_pair(prefix(item) + context, continuation)
                requests.append((k, j, ctx + cont, len(cont)))
                contexts.add(tuple(ctx))
                stats["shared"] += len(cont) - 1  # what genforge runs: each context once
            stats["shared"] += sum(map(len, contexts))
        # As lm-evaluation-harness does: longest first, so that batches pad less.
        requests.sort(key=lambda r: -len(r[2]))
        scores = [[0.0] * len(item.pairs) for item in items]
        for b in range(0, len(requests), batch):
            chunk = requests[b : b + batch]
            width = len(chunk[0][2]) - 1  # the model reads all but the last token
            ids = torch.zeros(len(chunk), width, dtype=torch.long)  # (B, T), right-padded
            mask = torch.zeros(len(chunk), width, dtype=torch.long)
            for r, (_, _, seq, _) in enumerate(chunk):
                ids[r, : len(seq) - 1] = torch.tensor(seq[:-1])
                mask[r, : len(seq) - 1] = 1
            logprobs = torch.log_softmax(model(ids, attention_mask=mask).logits, -1)  # (B, T, V)
            for r, (k, j, seq, m) in enumerate(chunk):
                end = len(seq) - 1  # row t predicts token t + 1: the continuation's rows end here
                target = torch.tensor(seq[-m:])
                scores[k][j] = logprobs[r, end - m : end].gather(1, target[:, None]).sum().item()
            stats["positions"] += ids.numel()
            stats["padding"] += ids.numel() - int(mask.sum())
        return [max(range(len(s)), key=s.__getitem__) for s in scores]

    return Engine("transformers", "fp32", run, stats=stats)


def measure(engines: list[Engine], items: int, rounds: int, warmup: int) -> None:
    for e in engines:
        e.prepare()
        e.run(warmup)  # first calls pay one-time costs (thread pools, kernels, reading the data)
    for r in range(rounds):
        for e in engines:
            e.prepare()
            t0 = time.perf_counter()
            predictions = e.run(items)
            e.speeds.append(items / (time.perf_counter() - t0))
            if e.predictions and predictions != e.predictions:
                sys.exit(f"{e.name} {e.dtype} predicted differently in round {r + 1}")
            e.predictions = predictions
        print(
            f"round {r + 1}: "
            + ", ".join(f"{e.name} {e.dtype} {e.speeds[-1]:.2f} items/s" for e in engines),
            file=sys.stderr,
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--items", type=int, default=100, help="HellaSwag items per round")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds (median counts)")
    ap.add_argument("--warmup", type=int, default=4, help="items of an untimed first call")
    ap.add_argument("--threads", type=int, default=2, help="torch threads")
    ap.add_argument("--batch", type=int, default=16, help="transformers: sequences per forward")
    ap.add_argument("--dtypes", default="fp32,int8", help="genforge dtypes (comma-separated)")
    ap.add_argument("--out", type=Path, default=HERE / "RESULTS.md", help="RESULTS.md to update")
    args = ap.parse_args()

    import genforge  # before torch: the OpenMP wait policy `genforge eval` runs with
    from genforge.evals.tasks import TASKS

    load = os.getloadavg()[0]
    llms = [
        genforge.load(MODEL, dtype=d, threads=args.threads, progress=False)
        for d in args.dtypes.split(",")
    ]
    hf = transformers_engine(args.batch, llms[0].encode_pair)  # both score the same token ids
    ours = [genforge_engine(llm) for llm in llms]
    engines = [ours[0], hf, *ours[1:]]
    measure(engines, args.items, args.rounds, args.warmup)
    gold = [item.gold for item in TASKS[TASK].items()[: args.items]]
    write_section(args.out, HEADING, section(engines, hf, gold, args, load))
    fp32 = next((e for e in ours if e.dtype == "fp32"), None)
    if fp32 and accuracy(fp32.predictions, gold) != accuracy(hf.predictions, gold):
        sys.exit("genforge fp32 and transformers disagree on accuracy: a scoring bug?")


def accuracy(predictions: list[int], gold: list[int]) -> float:
    return sum(p == g for p, g in zip(predictions, gold, strict=True)) / len(gold)


def section(engines: list[Engine], hf: Engine, gold: list[int], args, load: float) -> list[str]:
    from genforge.generate.loading import AUTO_DTYPE

    base = statistics.median(hf.speeds)
    lines = [
        HEADING,
        "",
        provenance(load, "make bench-eval"),
        "",
        f"The first {args.items} HellaSwag validation items (4 endings each, zero-shot), {MODEL}, "
        f"{args.threads} threads. Median of {args.rounds} interleaved rounds after an untimed "
        f"{args.warmup}-item call; each timed call covers reading the items, tokenizing and "
        "scoring. genforge: `harness.evaluate` (what `genforge eval hellaswag` runs), its prefix "
        "cache emptied before each round. transformers: the same GGUF dequantized to fp32, the "
        f"same token ids, scored the lm-evaluation-harness way (each ending as a full sequence, "
        f"sorted by length, right-padded batches of {args.batch}, log_softmax, gather).",
        "",
        "| engine | dtype | items/s (median) | min-max | vs transformers | acc |",
        "|---|---|---|---|---|---|",
    ]
    for e in engines:
        mid = statistics.median(e.speeds)
        lines.append(
            f"| {e.name} | {e.dtype} | {mid:.2f} | {min(e.speeds):.2f}-{max(e.speeds):.2f} "
            f"| {mid / base:.2f}x | {accuracy(e.predictions, gold):.2f} |"
        )
    fp32 = next((e for e in engines if e.name == "genforge" and e.dtype == "fp32"), None)
    if fp32:
        same = sum(a == b for a, b in zip(fp32.predictions, hf.predictions, strict=True))
        lines += [
            "",
            f"genforge fp32 and transformers pick the same ending on {same}/{len(gold)} items.",
        ]
    auto = next((e for e in engines if e.name == "genforge" and e.dtype == AUTO_DTYPE), None)
    if fp32 and auto and auto is not fp32:
        r = statistics.median(auto.speeds) / statistics.median(fp32.speeds)
        lines += [
            "",
            f"`--dtype auto` ({AUTO_DTYPE}) scores at {r:.2f}x the speed of fp32"
            + (
                ": scoring is prompt processing, where this CPU runs fp32 fastest (compare "
                "the prefill column of the single-stream table)."
                if r < 1
                else "."
            ),
        ]
    lines += [
        "",
        "Why they differ: genforge scores each context once and its four endings together in one "
        "pass that attends to the context's cached keys and values, with no padding (a batch is "
        "one packed sequence); transformers recomputes the context for every ending and pads. "
        f"Per round, genforge runs at most {hf.stats['shared']:,} token positions through the "
        f"model, transformers {hf.stats['positions']:,} "
        f"({hf.stats['padding'] / hf.stats['positions']:.0%} of them padding).",
        "",
    ]
    return lines


if __name__ == "__main__":
    main()
