"""`genforge finetune`: adapt a model to your own examples (LoRA or full, SFT or DPO).

One flag per `FinetuneConfig` field, its help text the field's comment, as `genforge train`.
"""

from __future__ import annotations

import argparse
from dataclasses import fields

from genforge.cli.train import add_config_args


def add_parser(sub) -> None:
    p = sub.add_parser(
        "finetune",
        help="fine-tune a model on your own examples (LoRA or full, SFT or DPO)",
        description="Fine-tune MODEL on --data (JSONL: chat messages, prompt/completion "
        "pairs or text; with --objective dpo, prompt/chosen/rejected). The loss covers "
        "the answers only. LoRA (the default) writes peft adapter folders that "
        "`genforge chat|generate|serve --adapter` and peft load; --method full writes "
        "model folders. Checkpoints, metrics.jsonl and loss.png go to --out; --resume "
        "continues a stopped run exactly. Runs unchanged under torchrun.",
    )
    from genforge.train.config import FinetuneConfig  # dataclasses only: --help stays fast

    add_config_args(
        p,
        FinetuneConfig,
        required={"model": "MODEL", "data": "FILE"},
        out_default="runs/DATA-METHOD",
    )
    # OpenMP's default wait policy: spinning workers (what `genforge train` sets) starved a
    # fine-tuning run 50x on a busy 2-core machine (step 1 s -> 55 s) for ~10 % on a quiet one.
    p.set_defaults(func=run)


def config(args: argparse.Namespace):
    from pathlib import Path

    from genforge.train.config import FinetuneConfig

    values = {f.name: getattr(args, f.name) for f in fields(FinetuneConfig)}
    values["out"] = values["out"] or str(Path("runs") / f"{Path(args.data).stem}-{args.method}")
    values["sample_prompts"] = tuple(values["sample_prompts"] or ())
    return FinetuneConfig(**values)


def run(args: argparse.Namespace) -> int:
    cfg = config(args)
    cfg.check()
    if args.command_line:  # training's memory stays flat under mimalloc (genforge.allocator)
        from genforge.allocator import restart_under_mimalloc

        restart_under_mimalloc()
    from genforge.train.finetune import finetune

    r = finetune(cfg)
    if not r["main"]:  # under torchrun, the first process speaks for all
        return 0
    if r.get("skipped"):
        print(f"skipped {r['skipped']} bad lines of {cfg.data} (--skip-bad)")
    if r.get("interrupted"):
        print(
            f"stopped at step {r['step']} of {r['steps']}; continue with --resume --out {r['run']}"
        )
        return 130
    if "val_loss" in r:
        line = f"step {r['step']}: validation loss {r['val_loss']:.4f}"
        if "val_accuracy" in r:
            line += f", preference accuracy {r['val_accuracy']:.3f}"
        print(line)
    if cfg.method == "lora":
        print(
            f"adapter: {r['checkpoint']} (use it with `genforge chat -m {cfg.model} --adapter "
            f"{r['run']}`)"
        )
    else:
        print(f"run: {r['run']} (use it with `genforge chat -m {r['run']}` or `genforge export`)")
    return 0
