"""End-to-end recipes: corpus -> tokenizer -> data -> pretraining -> samples, in one command.

    python recipes/run.py pydocs-tiny     # or: make recipe RECIPE=pydocs-tiny
    python recipes/run.py stdlib-code

Each recipe runs the same steps a user types (`genforge tokenizer train`, `genforge data prepare`,
`genforge train`), then loads the trained run like any model and samples from it. Its final
validation bits per byte and the samples go into recipes/RESULTS.md (its own section, rewritten).
Work goes to runs/RECIPE/; a recipe interrupted during training continues where it stopped when run
again.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).parent


@dataclass
class Recipe:
    corpus: str  # a named corpus (see `genforge data prepare --help`)
    about: str  # one line for RESULTS.md
    vocab_size: int
    train: dict  # `genforge train` flags (name -> value)
    prompts: list[str] = field(default_factory=list)  # sampled from the final model
    max_tokens: int = 80
    val_fraction: float = 0.05  # documents held out: enough validation text for a steady figure


# Both recipes train the same small model; they differ in corpus, steps and prompts.
SMALL = {
    "depth": 4,
    "seq-len": 256,
    "batch-size": 16,
    "eval-every": 100,
    "eval-tokens": 32768,
    "sample-tokens": 40,
}

RECIPES = {
    "pydocs-tiny": Recipe(
        corpus="pydocs",
        about="A 4-layer model on the Python 3.11 documentation (reStructuredText prose, 12 MB)",
        vocab_size=4096,
        train=SMALL | {"steps": 700, "sample-prompt": ["The ", "This module provides"]},
        prompts=["The ", "This module provides", "To create a new", "The following example"],
    ),
    "stdlib-code": Recipe(
        corpus="stdlib",
        about="A 4-layer code model on CPython's standard library (Python source)",
        vocab_size=4096,
        train=SMALL | {"steps": 500, "sample-prompt": ["def ", "import os\n"]},
        prompts=["def __init__(self", "import os\n", "    for i in range(", "class Queue"],
    ),
}


def genforge(*args: str) -> None:
    cmd = [sys.executable, "-m", "genforge", *args]
    print("$ genforge " + " ".join(args), flush=True)
    subprocess.run(cmd, check=True)


def flags(options: dict) -> list[str]:
    out = []
    for name, value in options.items():
        for v in value if isinstance(value, list) else [value]:
            out += [f"--{name}", str(v)]
    return out


def run(name: str, root: Path) -> dict:
    recipe = RECIPES[name]
    work = root / name
    tok, data, run_dir = work / "tokenizer", work / "data", work / "run"
    t0 = time.perf_counter()
    if not (tok / "tokenizer.json").exists():
        genforge(
            "tokenizer",
            "train",
            recipe.corpus,
            "--vocab-size",
            str(recipe.vocab_size),
            "--out",
            str(tok),
        )
    if not (data / "manifest.json").exists():
        genforge(
            "data",
            "prepare",
            recipe.corpus,
            "--tokenizer",
            str(tok),
            "--out",
            str(data),
            "--val-fraction",
            str(recipe.val_fraction),
        )
    resume = ["--resume"] if (run_dir / "checkpoints").is_dir() else []
    genforge("train", "--data", str(data), "--out", str(run_dir), *flags(recipe.train), *resume)
    minutes = (time.perf_counter() - t0) / 60
    return {"minutes": minutes, "run": run_dir} | evaluate(recipe, run_dir)


def evaluate(recipe: Recipe, run_dir: Path) -> dict:
    import json

    import genforge as gf

    records = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    final = [r for r in records if r["kind"] == "eval"][-1]
    train = [r for r in records if r["kind"] == "train"][-1]
    llm = gf.load(str(run_dir), dtype="fp32", progress=False)
    samples = [
        llm.generate(p, max_tokens=recipe.max_tokens, temperature=0.8, top_k=40, seed=i)
        for i, p in enumerate(recipe.prompts)
    ]
    return {
        "val_bpb": final["val_bpb"],
        "val_loss": final["val_loss"],
        "step": final["step"],
        "tokens": train["tokens"],
        "tokens_per_s": train["tokens_per_s"],
        "params": llm.config.n_params,
        "samples": list(zip(recipe.prompts, samples, strict=True)),
    }


def section(name: str, r: dict) -> list[str]:
    recipe = RECIPES[name]
    command = f"python recipes/run.py {name}"
    lines = [
        f"## {name}",
        "",
        f"{recipe.about}. `{command}` (`make recipe RECIPE={name}`) on {time.strftime('%Y-%m-%d')}, "
        f"{cpu_name()}, {os.cpu_count()} CPU threads: **{r['minutes']:.1f} minutes** "
        f"end to end (tokenizer, data, training). {r['params'] / 1e6:.1f}M parameters, "
        f"{r['step']} steps, {r['tokens']:,} training tokens at {r['tokens_per_s']:,.0f} tokens/s.",
        "",
        f"Final validation: **{r['val_bpb']:.3f} bits per byte** (loss {r['val_loss']:.3f} nats "
        "per token).",
        "",
        f"![loss curve]({name}-loss.png)",
        "",
        "Samples (temperature 0.8, top-k 40; the prompt in brackets):",
        "",
    ]
    for prompt, text in r["samples"]:
        body = text.replace("```", "'''")
        lines += ["```", f"[{prompt}]{body}", "```", ""]
    return lines


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.machine()


def write_section(name: str, lines: list[str], out: Path) -> None:
    heading = f"## {name}"
    text = out.read_text() if out.exists() else "# Recipe results\n"
    new = "\n".join(lines).rstrip() + "\n"
    if heading + "\n" in text:
        start = text.index(heading + "\n")
        end = text.find("\n## ", start + 1)
        text = text[:start] + new + (text[end:] if end >= 0 else "")
    else:
        text = text.rstrip() + "\n\n" + new
    out.write_text(text.rstrip() + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("recipe", choices=sorted(RECIPES))
    ap.add_argument("--root", type=Path, default=Path("runs"), help="where the work goes")
    ap.add_argument("--results", type=Path, default=HERE / "RESULTS.md")
    args = ap.parse_args()
    result = run(args.recipe, args.root)
    shutil.copyfile(result["run"] / "loss.png", args.results.parent / f"{args.recipe}-loss.png")
    lines = section(args.recipe, result)
    write_section(args.recipe, lines, args.results)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
