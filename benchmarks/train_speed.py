"""Training throughput: genforge's training step next to a minimal nanoGPT-style reference loop.

    make bench-train      # or: python benchmarks/train_speed.py [--steps 6 --rounds 3]

Both train the same size of model (6 layers, 384 wide, 6 heads, vocab 50,304, tied embeddings) on
batches of 8 x 256 tokens, on the same number of threads, in one process, with the optimizer
settings of genforge's loop (`Trainer._optimizer`): fused AdamW, betas 0.9/0.95, eps 1e-8, weight
decay 0.1 on matrices only, gradients clipped to norm 1.0. The reference is written here the way
nanoGPT writes it (LayerNorm, learned positions, GELU MLP, one fused qkv projection, SDPA, logits
then `F.cross_entropy`); genforge runs its own `Trainer.train_step` (the step `genforge train`
runs) on a data folder of random tokens. Variants are timed in interleaved rounds (each round times
every variant once) and the median round counts, so that the machine's drift hits all of them
alike. The section "Training speed" of RESULTS.md is rewritten; nothing else in it is touched.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from bench_engine import provenance, write_section

# What `genforge train` runs with (genforge.cli.train.OMP_WAIT_POLICY), for both loops alike.
os.environ.setdefault("OMP_WAIT_POLICY", "ACTIVE")

HERE = Path(__file__).parent
HEADING = "## Training speed (train_speed.py)"
VOCAB, DEPTH, WIDTH, HEADS, BATCH, SEQ = 50304, 6, 384, 6, 8, 256


# -- the reference: a nanoGPT-style GPT and loop --------------------------------------------------


def reference_model():
    import torch
    import torch.nn.functional as F
    from torch import nn

    class Attention(nn.Module):
        def __init__(self):
            super().__init__()
            self.c_attn = nn.Linear(WIDTH, 3 * WIDTH)
            self.c_proj = nn.Linear(WIDTH, WIDTH)

        def forward(self, x):
            B, T, C = x.shape
            q, k, v = self.c_attn(x).split(WIDTH, dim=2)
            q, k, v = (t.view(B, T, HEADS, C // HEADS).transpose(1, 2) for t in (q, k, v))
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            return self.c_proj(y.transpose(1, 2).contiguous().view(B, T, C))

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.ln_1, self.attn = nn.LayerNorm(WIDTH), Attention()
            self.ln_2 = nn.LayerNorm(WIDTH)
            self.mlp = nn.Sequential(
                nn.Linear(WIDTH, 4 * WIDTH), nn.GELU(), nn.Linear(4 * WIDTH, WIDTH)
            )

        def forward(self, x):
            x = x + self.attn(self.ln_1(x))
            return x + self.mlp(self.ln_2(x))

    class GPT(nn.Module):
        def __init__(self):
            super().__init__()
            self.wte, self.wpe = nn.Embedding(VOCAB, WIDTH), nn.Embedding(SEQ, WIDTH)
            self.h = nn.ModuleList(Block() for _ in range(DEPTH))
            self.ln_f = nn.LayerNorm(WIDTH)
            self.lm_head = nn.Linear(WIDTH, VOCAB, bias=False)
            self.wte.weight = self.lm_head.weight  # tied, as in GPT-2
            for name, p in self.named_parameters():
                if p.dim() == 2:
                    std = 0.02 / math.sqrt(2 * DEPTH) if name.endswith("c_proj.weight") else 0.02
                    nn.init.normal_(p, 0.0, std)

        def forward(self, idx, targets):
            pos = torch.arange(idx.shape[1])
            x = self.wte(idx) + self.wpe(pos)
            for block in self.h:
                x = block(x)
            logits = self.lm_head(self.ln_f(x))
            return F.cross_entropy(logits.view(-1, VOCAB), targets.reshape(-1))

    return GPT()


@dataclass
class Variant:
    name: str
    step: object  # () -> None: one optimizer step on a fresh batch
    first_s: float = 0.0  # the first step (compilation included)


def reference_variant(name: str, compile: bool, bf16: bool) -> Variant:
    import contextlib

    import torch

    from genforge.train.config import TrainConfig

    torch.manual_seed(0)
    model = reference_model()
    decay = [p for p in model.parameters() if p.dim() >= 2]
    rest = [p for p in model.parameters() if p.dim() < 2]
    # genforge's optimizer settings (Trainer._optimizer, TrainConfig's defaults), so that the loops
    # differ in their model and loss code, not in the optimizer: fused AdamW is one kernel per step.
    opt = torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": TrainConfig.weight_decay},
            {"params": rest, "weight_decay": 0.0},
        ],
        lr=6e-4,
        betas=(0.9, 0.95),
        eps=1e-8,
        fused=True,
    )
    net = torch.compile(model) if compile else model
    gen = torch.Generator().manual_seed(0)

    def step():
        rows = torch.randint(0, VOCAB, (BATCH, SEQ + 1), generator=gen)
        amp = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
        with amp:
            loss = net(rows[:, :-1], rows[:, 1:])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), TrainConfig.clip)
        opt.step()
        opt.zero_grad(set_to_none=True)

    return Variant(name, step)


# -- genforge -------------------------------------------------------------------------------------


def random_data_folder(root: Path) -> Path:
    """A prepared-data folder of random token ids over a 50,304-token vocabulary.

    The tokenizer in it is a small one trained here (the loop reads it only for samples and bits
    per byte, which the benchmark does not run); the manifest's vocabulary sets the model size.
    """
    import numpy as np

    from genforge.tokenizer import bpe

    data = root / "data"
    data.mkdir()
    text = [f"line {i} of a small corpus for the tokenizer" for i in range(200)]
    bpe.save(bpe.train_bpe(text, 300), data / "tokenizer")
    rng = np.random.default_rng(0)
    for split, n in (("train", 1 << 21), ("val", 1 << 14)):
        rng.integers(0, VOCAB, n, dtype=np.uint16).tofile(data / f"{split}_000.bin")
    manifest = {
        "version": 1,
        "dtype": "uint16",
        "vocab_size": VOCAB,
        "eos_id": 0,
        "tokenizer": "tokenizer",
        "shards": {
            s: [{"file": f"{s}_000.bin", "tokens": n}]
            for s, n in (("train", 1 << 21), ("val", 1 << 14))
        },
    }
    (data / "manifest.json").write_text(json.dumps(manifest))
    return data


def genforge_variant(name: str, data: Path, root: Path, **options) -> Variant:
    from genforge.train.config import TrainConfig
    from genforge.train.loop import Trainer

    cfg = TrainConfig(
        data=str(data),
        out=str(root / name.replace(" ", "_")),
        depth=DEPTH,
        seq_len=SEQ,
        batch_size=BATCH,
        steps=10_000,
        **options,
    )
    trainer = Trainer(cfg)
    assert trainer.model_cfg.dim == WIDTH and trainer.model_cfg.n_heads == HEADS
    return Variant(name, trainer.train_step)


# -- timing ---------------------------------------------------------------------------------------


def measure(variants: list[Variant], steps: int, rounds: int, warmup: int) -> dict[str, dict]:
    for v in variants:
        t = time.perf_counter()
        v.step()
        v.first_s = time.perf_counter() - t
        for _ in range(warmup - 1):
            v.step()
        print(f"{v.name}: first step {v.first_s:.1f} s", file=sys.stderr)
    speeds: dict[str, list[float]] = {v.name: [] for v in variants}
    for r in range(rounds):
        for v in variants:
            t = time.perf_counter()
            for _ in range(steps):
                v.step()
            speeds[v.name].append(steps * BATCH * SEQ / (time.perf_counter() - t))
        print(
            f"round {r + 1}: " + ", ".join(f"{k} {s[-1]:.0f}" for k, s in speeds.items()),
            file=sys.stderr,
        )
    return {
        v.name: {
            "tokens_per_s": statistics.median(speeds[v.name]),
            "first_s": v.first_s,
            "rounds": speeds[v.name],
        }
        for v in variants
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=5, help="timed steps per variant and round")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds (median counts)")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    ap.add_argument("--threads", type=int, default=2, help="torch threads")
    ap.add_argument("--no-compile", action="store_true", help="skip the torch.compile variants")
    ap.add_argument(
        "--bf16",
        choices=["auto", "yes", "no"],
        default="auto",
        help="bf16 autocast variants: auto = only where the CPU has native bf16",
    )
    ap.add_argument("--out", type=Path, default=HERE / "RESULTS.md", help="RESULTS.md to update")
    args = ap.parse_args()
    load = os.getloadavg()[0]

    import torch

    from genforge.train.loop import native_bf16

    torch.set_num_threads(args.threads)
    bf16 = args.bf16 == "yes" or (args.bf16 == "auto" and native_bf16(torch.device("cpu")))
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        data = random_data_folder(root)
        variants = [
            reference_variant("reference fp32 eager", compile=False, bf16=False),
            genforge_variant("genforge defaults", data, root),
        ]
        if not args.no_compile:
            variants.append(reference_variant("reference fp32 compile", compile=True, bf16=False))
            variants.append(
                genforge_variant("genforge fp32 compile", data, root, compile=True, dtype="fp32")
            )
        if bf16:
            variants.append(reference_variant("reference bf16 eager", compile=False, bf16=True))
            variants.append(genforge_variant("genforge bf16", data, root, dtype="bf16"))
        results = measure(variants, args.steps, args.rounds, args.warmup)
    write_section(args.out, HEADING, section(results, args, bf16, load))


def section(results: dict, args, bf16: bool, load: float) -> list[str]:
    ref = results["reference fp32 eager"]["tokens_per_s"]
    best_ref = max(v["tokens_per_s"] for k, v in results.items() if k.startswith("reference"))
    best_gf = max(v["tokens_per_s"] for k, v in results.items() if k.startswith("genforge"))
    gf = results["genforge defaults"]["tokens_per_s"]
    lines = [
        HEADING,
        "",
        provenance(load, "make bench-train"),
        "",
        f"{DEPTH} layers, {WIDTH} wide, {HEADS} heads, vocab {VOCAB:,}, batch {BATCH} x {SEQ} "
        f"tokens, {args.threads} threads; both loops with genforge's optimizer settings (fused "
        "AdamW, betas 0.9/0.95, eps 1e-8, weight decay 0.1 on matrices, gradient norm clipped to "
        "1.0). "
        f"Median of {args.rounds} interleaved rounds of {args.steps} steps after {args.warmup} "
        "warm-up steps."
        + (
            ""
            if bf16
            else " No bf16 variants: this CPU has no native bf16 "
            "(emulated bf16 autocast is several times slower than fp32 here)."
        ),
        "",
        "| variant | tokens/s (median) | min-max of the rounds | vs reference fp32 eager | "
        "first step s |",
        "|---|---|---|---|---|",
    ]
    for name, r in results.items():
        lines.append(
            f"| {name} | {r['tokens_per_s']:,.0f} | {min(r['rounds']):,.0f}-{max(r['rounds']):,.0f} "
            f"| {r['tokens_per_s'] / ref:.2f}x | {r['first_s']:.1f} |"
        )
    lines += [
        "",
        f"Targets: genforge's defaults >= 1.3x the fp32-eager reference: **{gf / ref:.2f}x** "
        f"({'met' if gf / ref >= 1.3 else 'missed'}); genforge's best >= 1.0x the reference's best: "
        f"**{best_gf / best_ref:.2f}x** ({'met' if best_gf >= best_ref else 'missed'}).",
        "",
    ]
    return lines


if __name__ == "__main__":
    main()
