"""genforge's training kernels against PyTorch's on the same inputs, in one process, interleaved.

    make bench-training-kernels     # or: python benchmarks/training_kernels.py [--rounds 9]

- attention (genforge/model/kernels/attention.cpp): `genforge::flash_attention` forward and
  backward at SmolLM2-135M's shapes (9 query heads, 3 key/value heads of 64) on 8 rows of 256
  tokens in bf16, on genforge's kernels and on PyTorch's own CPU flash attention kernels
  (`aten::_scaled_dot_product_flash_attention_for_cpu` and its backward, what the operator runs
  where genforge's do not);
- the frozen head's loss (genforge/model/kernels/loss.cpp): one 32 MB block of bf16 logits (170 x
  49,152) turned into its gradient, by genforge's kernel and by the PyTorch passes it replaces.

Each figure is the median of --rounds rounds, the two sides alternating. The section "Training
kernels" of RESULTS.md is rewritten. It needs a CPU with AVX512-BF16 (genforge's kernels' ISA).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch
from bench_engine import cpu_description, provenance, write_section

from genforge.generate.loading import cpu_kernels
from genforge.model import attention, kernels

HERE = Path(__file__).parent
HEADING = "## Training kernels (training_kernels.py)"


def timed(fn, rounds: int) -> list[float]:
    fn()
    out = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def passes(logits: torch.Tensor, targets: torch.Tensor, scale: float) -> torch.Tensor:
    """What genforge/model/loss.py does to a block without the kernel."""
    x = logits.float()
    rows = torch.arange(len(targets))
    picked = x[rows, targets]
    top = x.amax(dim=-1)
    probs = x.sub_(top[:, None]).exp_()
    norm = probs.sum(dim=-1)
    loss = top + norm.log() - picked
    probs.div_((norm / scale)[:, None])
    probs[rows, targets] -= scale
    return loss, probs.to(torch.bfloat16)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=9)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--out", default=str(HERE / "RESULTS.md"))
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    load = os.getloadavg()[0]
    print(f"CPU: {cpu_description()}; threads: {args.threads}", flush=True)
    if cpu_kernels() is None or not kernels.training_kernels():
        sys.exit("genforge's training kernels do not run here (they need AVX512-BF16)")
    g = torch.Generator().manual_seed(0)
    S, W, H, Hkv, D = 8, 256, 9, 3, 64
    q, k, v, grad = (torch.randn(S, W, h, D, generator=g).bfloat16() for h in (H, Hkv, Hkv, H))
    scale = D**-0.5
    out, lse = kernels.ops.flash_forward(q, k, v, scale)
    flops = 4 * S * H * W * W * D / 2  # causal: half of QK^T and PV
    ops = torch.ops.genforge
    sides = {"genforge": lambda: True, "PyTorch": lambda: False}
    results: dict[str, dict[str, list[float]]] = {name: {} for name in sides}
    for _ in range(args.rounds):
        for name, own in sides.items():
            attention._own_kernels_here = own
            r = results[name]
            r.setdefault("fwd", []).extend(
                timed(lambda: ops.flash_attention(q, k, v, None, scale), 1)
            )
            r.setdefault("bwd", []).extend(
                timed(lambda: ops.flash_attention_backward(grad, q, k, v, out, lse, None, scale), 1)
            )
    logits = (torch.randn(170, 49_152, generator=g) * 3).bfloat16()
    targets = torch.randint(0, 49_152, (170,), generator=g)
    for _ in range(args.rounds):
        results["genforge"].setdefault("loss", []).extend(
            timed(lambda: kernels.ops.softmax_xent_(logits.clone(), targets, 1e-3), 1)
        )
        results["PyTorch"].setdefault("loss", []).extend(
            timed(lambda: passes(logits.clone(), targets, 1e-3), 1)
        )
    med = {n: {k: statistics.median(v) * 1e3 for k, v in r.items()} for n, r in results.items()}
    rows = [
        ("attention forward", "fwd", flops),
        ("attention backward", "bwd", 2.5 * flops),
        ("loss: a block of bf16 logits into its gradient", "loss", None),
    ]
    lines = [
        HEADING,
        "",
        provenance(load, "make bench-training-kernels"),
        "",
        f"Attention: {S} rows of {W} tokens, {H} query and {Hkv} key/value heads of {D}, bf16, "
        "causal. Loss: 170 x 49,152 bf16 logits (SmolLM2's vocabulary, a 32 MB block of "
        f"fine-tuning's loss). {args.threads} threads; median of {args.rounds} interleaved rounds, "
        "each side the same inputs (the loss's copied afresh each time, as it works in place).",
        "",
        "| | genforge (ms) | PyTorch (ms) | genforge vs PyTorch | genforge GFLOP/s | PyTorch GFLOP/s |",
        "|---|---|---|---|---|---|",
    ]
    for label, key, work in rows:
        ours, theirs = med["genforge"][key], med["PyTorch"][key]
        rate = (f"{work / ours / 1e6:.0f}", f"{work / theirs / 1e6:.0f}") if work else ("—", "—")
        lines.append(
            f"| {label} | {ours:.2f} | {theirs:.2f} | {theirs / ours:.2f}x | {rate[0]} | {rate[1]} |"
        )
        print(lines[-1], flush=True)
    lines += [
        "",
        "PyTorch here: its CPU flash attention kernels (`aten::_scaled_dot_product_flash_attention"
        "_for_cpu` and backward), and for the loss the passes genforge/model/loss.py runs without "
        "the kernel (a float32 copy, max, exp, sum, scale, bf16). The backward's GFLOP/s count "
        "its five products (the scores again, dP, dV, dK, dQ).",
    ]
    write_section(Path(args.out), HEADING, lines)


if __name__ == "__main__":
    main()
