"""Fine-tuning speed and memory: genforge's step next to transformers + peft (and TRL's SFTTrainer).

    make bench-finetune     # or: python benchmarks/finetune_speed.py [--batch 8 --seq 256]

Every variant fine-tunes the same model (SmolLM2-135M-Instruct) on the same micro-batches (chat
examples padded to --seq tokens, the loss on the answers only), with the same optimizer (AdamW,
lr 2e-4, betas 0.9/0.95, weight decay 0), LoRA rank 16 / alpha 32 / no dropout on all seven
linear layers, on the same number of threads, each in its own process so that its peak resident
memory is its own. Step times are the median of the steps after two warm-up steps.

- genforge: its own `FineTuner.train_step` (what `genforge finetune` runs: blocks compiled, under
  mimalloc where it is installed, GENFORGE_MALLOC=system for the system's malloc), LoRA on
  the default base (auto: int8 multiplied in int8 where the CPU has VNNI or AMX, else the file's
  own 4-bit blocks; also with --no-compile and --no-pack), on an int8 base (also with
  --checkpointing, and with --base-matmul float), on the 4-bit blocks, on float32, and full
  fine-tuning; each row says the base it ran;
- transformers + peft: the Hugging Face model (float32, the same weights, exported by genforge),
  `peft.get_peft_model`, a plain PyTorch loop (forward, the model's own loss, backward, step), with
  and without bf16 autocast, each also under torch.compile (the fastest counts as the peer: bf16
  where the CPU has it natively, float32 where it has not); the compiled ones also on batches
  padded to a multiple of 8 instead of 64 (`-pad8`: less padding, more distinct shapes);
- TRL's SFTTrainer over the same model and LoRA config, when trl is installed.

The section "Fine-tuning against transformers + peft" of RESULTS.md is rewritten.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench_engine import cpu_description, provenance, write_section

from genforge import allocator

# Every variant, the peers' too, with spinning OpenMP workers (what `genforge train` sets);
# `genforge finetune` itself keeps OpenMP's default policy (cli/finetune.py).
os.environ.setdefault("OMP_WAIT_POLICY", "ACTIVE")

HERE = Path(__file__).parent
HEADING = "## Fine-tuning against transformers + peft (finetune_speed.py)"
MIXED_HEADING = (
    "## Fine-tuning on examples of mixed lengths: packing against padding (finetune_speed.py)"
)
MODEL = "smollm2-135m-instruct"
PAD8 = "-pad8"  # a peer variant on batches padded to a multiple of 8 (HF's pad_to_multiple_of=8)
TARGETS_HF = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
RANK, ALPHA, DROPOUT, LR = 16, 32.0, 0.0, 2e-4  # genforge's and peft's defaults (no dropout)
VARIANTS = {
    "genforge-lora-auto": "genforge, LoRA, default",
    "genforge-lora-auto-eager": "genforge, LoRA, default, --no-compile",
    "genforge-lora-auto-padded": "genforge, LoRA, default, --no-pack",
    "genforge-lora-int8": "genforge, LoRA on an int8 base",
    "genforge-lora-int8-ckpt": "genforge, LoRA on an int8 base, --checkpointing",
    "genforge-lora-int8-float": "genforge, LoRA on an int8 base, --base-matmul float",
    "genforge-lora-int4": "genforge, LoRA on the 4-bit base",
    "genforge-lora-fp32": "genforge, LoRA on a float32 base",
    "genforge-full": "genforge, full fine-tuning",
    "hf-peft": "transformers + peft, LoRA (float32)",
    "hf-peft-compile": "transformers + peft, LoRA (float32, torch.compile)",
    "hf-peft-bf16": "transformers + peft, LoRA (bf16 autocast)",
    "hf-peft-bf16-compile": "transformers + peft, LoRA (bf16 autocast, torch.compile)",
    "hf-peft-compile-pad8": "transformers + peft, LoRA (float32, torch.compile), padded to 8",
    "hf-peft-bf16-compile-pad8": (
        "transformers + peft, LoRA (bf16 autocast, torch.compile), padded to 8"
    ),
    "hf-full": "transformers, full fine-tuning (float32)",
    "trl": "TRL SFTTrainer + peft, LoRA",
}


def write_data(path: Path, n: int, seq: int, mixed: bool = False) -> None:
    """`n` chat examples of about `seq` tokens: a question, then a long answer; `mixed`: of
    lengths spread from about seq / 8 to seq, as real chat data is."""
    import random

    rng = random.Random(0)
    words = [
        "the",
        "model",
        "learns",
        "a",
        "format",
        "from",
        "examples",
        "and",
        "answers",
        "in",
        "it",
        "every",
        "time",
        "we",
        "ask",
    ]
    lines = []
    for i in range(n):
        scale = rng.uniform(0.125, 1.0) if mixed else 1.0
        question = " ".join(rng.choice(words) for _ in range(int(seq * scale) // 6))
        answer = " ".join(rng.choice(words) for _ in range(int(seq * scale) // 2))
        lines.append(
            json.dumps(
                {
                    "messages": [
                        {"role": "user", "content": f"{i}: {question}"},
                        {"role": "assistant", "content": answer},
                    ]
                }
            )
        )
    path.write_text("\n".join(lines) + "\n")


def tuner(variant: str, data: Path, out: Path, args):
    from genforge.train.finetune import FineTuner

    return FineTuner(tuner_config(variant, data, out, args))


def tuner_config(variant: str, data: Path, out: Path, args):
    from genforge.train.config import FinetuneConfig

    method = "full" if variant == "genforge-full" else "lora"
    base = next((b for b in ("auto", "int8", "int4") if b in variant), "fp32")
    return FinetuneConfig(
        model=MODEL,
        data=str(data),
        out=str(out),
        method=method,
        base_dtype=base,
        base_matmul="float" if variant.endswith("-float") else "auto",
        rank=RANK,
        alpha=ALPHA,
        dropout=DROPOUT,
        lr=LR,
        batch_size=args.batch,
        seq_len=args.seq + 64,
        steps=args.steps + 2,
        val_fraction=0.0,
        warmup=0,
        dtype=args.dtype,
        checkpointing=variant.endswith("-ckpt"),
        compile=not variant.endswith("-eager"),
        pack=not variant.endswith("-padded"),
    )


def data_only(data: Path, args):
    """genforge's batches of the run (the same examples, order and padding) without its model."""
    from genforge import hub
    from genforge.train.distributed import World
    from genforge.train.finetune import FineTuner, _tokenizer
    from genforge.train.loader import StepOrder

    cfg = tuner_config("genforge-lora-fp32", data, Path(args.work) / "unused", args)
    t = FineTuner.__new__(FineTuner)
    t.cfg, t.world, t.dpo, t.template = cfg, World(), False, None
    t.path = hub.resolve(MODEL, progress=False)
    t.tokenizer = _tokenizer(t.path)
    t.train_items, t.val_items = t._read_data()
    t.order = StepOrder(len(t.train_items), cfg.seed, cfg.batch_size * cfg.grad_accum)
    return t


def child(variant: str, args) -> dict:
    """Run one variant in this process; its step times and peak memory."""
    import torch

    torch.set_num_threads(args.threads)
    if variant.endswith(PAD8):  # the peer's batches padded to a multiple of 8, not 64
        from genforge.train import finetune

        finetune.PAD_MULTIPLE = 8
        variant = variant.removesuffix(PAD8)
    work = Path(args.work)
    t = data_only(work / "data.jsonl", args)  # no weights: the peak memory is the variant's own
    batches = [t._collate(t.micro_batches(s)[0]) for s in range(args.steps + 2)]
    tokens = sum(len(e.ids) - 1 for s in range(args.steps + 2) for e in t.micro_batches(s)[0])
    base = None
    if variant.startswith("genforge"):
        t = tuner(variant, work / "data.jsonl", work / f"run-{variant}", args)
        step, base = t.train_step, t.base_dtype
    elif variant == "trl":
        return trl_child(batches, args)
    else:
        step = hf_step(variant, batches, args)
    times = []
    for _ in range(args.steps + 2):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {
        "step_s": statistics.median(times[2:]),
        "first_s": times[0],
        "peak_mb": peak,
        "tokens_per_step": tokens / (args.steps + 2),
        "base": base,
    }


def hf_step(variant: str, batches, args):
    import contextlib

    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(hf_folder(), dtype=torch.float32)
    if variant != "hf-full":
        lora = LoraConfig(r=RANK, lora_alpha=ALPHA, lora_dropout=DROPOUT, target_modules=TARGETS_HF)
        model = get_peft_model(model, lora)
    model.train()
    if variant.endswith("-compile"):
        model = torch.compile(model)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=LR, betas=(0.9, 0.95), weight_decay=0.0, fused=True)
    bf16 = variant.startswith("hf-peft-bf16")
    it = iter(batches)

    def step():
        x, y = next(it)
        ctx = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
        with ctx:  # labels are the next tokens already: prepend one ignored position for HF's shift
            labels = torch.cat([torch.full_like(y[:, :1], -100), y], dim=1)[:, :-1]
            loss = model(input_ids=x, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def trl_child(batches, args) -> dict:
    """TRL's SFTTrainer on the same examples (its own collator and padding), LoRA config alike."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import SFTConfig, SFTTrainer

    rows = [json.loads(line) for line in (Path(args.work) / "data.jsonl").read_text().splitlines()]
    n = args.batch * (args.steps + 2)
    dataset = Dataset.from_list(rows[:n])
    times, last = [], [0.0]

    class Clock(TrainerCallback):
        def on_step_begin(self, *a, **k):
            last[0] = time.perf_counter()

        def on_step_end(self, *a, **k):
            times.append(time.perf_counter() - last[0])

    config = SFTConfig(
        output_dir=str(Path(args.work) / "trl"),
        per_device_train_batch_size=args.batch,
        max_steps=args.steps + 2,
        learning_rate=LR,
        lr_scheduler_type="constant",
        warmup_steps=0,
        weight_decay=0.0,
        adam_beta2=0.95,
        max_length=args.seq + 64,
        assistant_only_loss=False,
        completion_only_loss=None,
        logging_steps=1000,
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        dataloader_num_workers=0,
        bf16=False,
    )
    lora = LoraConfig(r=RANK, lora_alpha=ALPHA, lora_dropout=DROPOUT, target_modules=TARGETS_HF)
    model = AutoModelForCausalLM.from_pretrained(hf_folder(), dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(hf_folder())
    trainer = SFTTrainer(
        model=model,
        args=config,
        train_dataset=dataset,
        processing_class=tok,
        peft_config=lora,
        callbacks=[Clock()],
    )
    trainer.train()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    tokens = sum(int((y != -100).sum()) * 0 + y.numel() for _, y in batches) / len(batches)
    return {
        "step_s": statistics.median(times[2:]),
        "first_s": times[0],
        "peak_mb": peak,
        "tokens_per_step": tokens,
    }


def hf_folder() -> Path:
    """SmolLM2 as a float32 Hugging Face folder (genforge's export of the GGUF), cached."""
    from genforge import hub

    folder = hub.home() / "bench" / "smollm2-135m-instruct-hf"
    if not (folder / "model.safetensors").is_file():
        from genforge.train.export import _base
        from genforge.weights.export import write_hf

        with tempfile.TemporaryDirectory() as scratch:
            tok_dir, ckpt = _base(MODEL, Path(scratch))
            write_hf(ckpt.state, ckpt.config, tok_dir, folder)
    return folder


def genforge_allocator() -> str:
    return "mimalloc" if allocator.wanted() else "the system's malloc"


def run_variant(variant: str, args) -> dict | None:
    cmd = [sys.executable, __file__, "--child", variant, *_passthrough(args)]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    if variant.startswith("genforge") and genforge_allocator() == "mimalloc":
        env = allocator.mimalloc_env(env)  # as `genforge finetune` runs (genforge/allocator.py)
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        print(f"{variant}: failed\n{proc.stderr[-2000:]}", file=sys.stderr)
        return None
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _passthrough(args) -> list[str]:
    return [
        "--batch",
        str(args.batch),
        "--seq",
        str(args.seq),
        "--steps",
        str(args.steps),
        "--threads",
        str(args.threads),
        "--dtype",
        args.dtype,
        "--work",
        args.work,
        *(["--mixed"] if args.mixed else []),
    ]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=8, help="examples per step (default: 8)")
    p.add_argument("--seq", type=int, default=256, help="tokens per example (default: 256)")
    p.add_argument("--steps", type=int, default=4, help="timed steps per variant (default: 4)")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--dtype", default="auto", help="genforge's autocast (default: auto)")
    p.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated")
    p.add_argument(
        "--mixed",
        action="store_true",
        help="examples of mixed lengths (seq / 8 to seq): packing against padding",
    )
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--work", help=argparse.SUPPRESS)
    p.add_argument("--out", default=str(HERE / "RESULTS.md"))
    args = p.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args)))
        return
    load0 = os.getloadavg()[0]
    print(f"CPU: {cpu_description()}; threads: {args.threads}")
    with tempfile.TemporaryDirectory(prefix="genforge-ftbench-") as work:
        args.work = work
        write_data(Path(work) / "data.jsonl", args.batch * (args.steps + 2), args.seq, args.mixed)
        hf_folder()
        results = {}
        for variant in args.variants.split(","):
            if variant == "trl":
                try:
                    import trl  # noqa: F401
                except ImportError:
                    continue
            results[variant] = run_variant(variant, args)
            print(variant, results[variant], flush=True)
    lines = section(results, args, load0)
    write_section(Path(args.out), lines[0], lines)


def section(results: dict, args, load0: float) -> list[str]:
    hf = [results.get(v) for v in VARIANTS if v.startswith("hf-peft")]
    peer = min((r["step_s"] for r in hf if r), default=None)
    full = results.get("genforge-full")
    tokens = next((r["tokens_per_step"] for r in results.values() if r), None)
    lengths = f"~{args.seq} tokens"
    if tokens:  # the chat template and tokenizer make them shorter than the text's sizing
        lengths = f"~{tokens / args.batch:.0f} tokens (sized for {args.seq})"
    if args.mixed:
        lengths = f"mixed lengths ({args.seq // 8} to {args.seq} tokens)"
    lines = [
        MIXED_HEADING if args.mixed else HEADING,
        "",
        provenance(
            load0, "make bench-finetune" + (" BENCH_FINETUNE_ARGS=--mixed" if args.mixed else "")
        ),
        "",
        f"SmolLM2-135M-Instruct, {args.batch} chat examples of {lengths} per step "
        "(padded to a multiple of 64, or of 8 in the rows that say so; genforge packs a "
        "micro-batch into one row unless --no-pack), "
        f"LoRA r={RANK} alpha={int(ALPHA)} on all linear layers, "
        f"AdamW lr {LR}, {args.threads} threads; median of {args.steps} steps after 2 warm-up "
        "steps; peak = the process's peak resident memory. The genforge rows run under "
        f"{genforge_allocator()} (what `genforge finetune` runs under, genforge/allocator.py), "
        "the others under the system's malloc.",
        "",
        "| variant | step (s) | vs transformers + peft | tokens/s | first step (s) "
        "| peak memory (MB) | vs genforge full |",
        "|---|---|---|---|---|---|---|",
    ]
    for variant, label in VARIANTS.items():
        r = results.get(variant)
        if variant not in results:
            continue
        if r is None:
            lines.append(f"| {label} | failed | | | | | |")
            continue
        if r.get("base") and variant != "genforge-full":
            label = f"{label} (base: {r['base']})"
        speed = f"{peer / r['step_s']:.2f}x" if peer else "—"
        mem = f"{r['peak_mb'] / full['peak_mb']:.2f}" if full else "—"
        lines.append(
            f"| {label} | {r['step_s']:.2f} | {speed} | {r['tokens_per_step'] / r['step_s']:,.0f} "
            f"| {r['first_s']:.1f} | {r['peak_mb']:,.0f} | {mem} |"
        )
    lines += [
        "",
        '"vs transformers + peft" is the fastest transformers + peft LoRA loop\'s step time '
        "over this row's (above 1 = genforge faster); targets: genforge's LoRA step at least "
        '1.5x, LoRA on an int8 base at most 0.5 of full fine-tuning\'s peak memory. "first step" '
        "includes torch.compile's work where the variant compiles (genforge fine-tuning does by "
        "default: its blocks, once for all layers; --no-compile turns it off). tokens/s counts the "
        "examples' own tokens (no padding).",
    ]
    return lines


if __name__ == "__main__":
    sys.path.insert(0, str(HERE))
    main()
