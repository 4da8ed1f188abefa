"""Where a decode step's time goes: the engine's own step, profiled by operator.

    python benchmarks/profile_decode.py                      # smollm2-135m-instruct, int8, 2 threads
    python benchmarks/profile_decode.py -m qwen2.5-coder-0.5b-instruct --dtype int4 --steps 64

One request decodes `--steps` tokens after a short prompt, through `Engine.step` as every caller
does, under `torch.profiler`; the table groups self CPU time by operator (matmuls of each kind,
attention, norms, RoPE, sampling, the Python around them) and gives the share of the wall time each
takes, so that what to speed up next is measured, not guessed. Prints the CPU flags it ran on.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import defaultdict

from bench_engine import cpu_description
from torch.profiler import ProfilerActivity, profile

import genforge
from genforge.errors import GenforgeError
from genforge.generate.sampling import SamplingParams

# operator name -> group; the first group whose key the name contains
GROUPS = (
    ("_weight_int4pack_mm", "matmul int4 (weight-only)"),
    ("_weight_int8pack_mm", "matmul int8 (weight-only)"),
    ("mkldnn", "matmul (oneDNN)"),
    ("addmm", "matmul fp32/bf16"),
    ("mm", "matmul fp32/bf16"),
    ("linear", "matmul fp32/bf16"),
    ("scaled_dot_product", "attention"),
    ("softmax", "attention"),
    ("index", "KV cache gather/scatter"),
    ("scatter", "KV cache gather/scatter"),
    ("gather", "KV cache gather/scatter"),
    ("rsqrt", "norms"),
    ("pow", "norms"),
    ("mean", "norms"),
    ("topk", "sampling"),
    ("sort", "sampling"),
    ("multinomial", "sampling"),
    ("argmax", "sampling"),
    ("silu", "activation"),
    ("gelu", "activation"),
)


def group(name: str) -> str:
    return next((g for key, g in GROUPS if key in name), "elementwise and other ops")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-m", "--model", default="smollm2-135m-instruct")
    ap.add_argument("--dtype", default="int8")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=64)
    ap.add_argument(
        "--prompt-tokens", type=int, default=0, help="a prompt this long (default: one sentence)"
    )
    args = ap.parse_args()
    try:
        llm = genforge.load(args.model, dtype=args.dtype, threads=args.threads)
    except GenforgeError as e:
        sys.exit(f"error: {e}")
    engine = llm.engine
    prompt = llm.tokenizer.encode("The history of the printing press begins")
    if args.prompt_tokens:
        from bench_engine import pydocs_text

        prompt = llm.tokenizer.encode(pydocs_text()[:40000])[: args.prompt_tokens]
    params = SamplingParams(temperature=0, max_tokens=args.steps + 8)
    # warm up, and prefill the request before profiling
    engine.add_request(prompt, params)
    while not engine.step():  # the prompt's prefill, in chunks until its first token
        pass
    for _ in range(4):
        engine.step()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        t0 = time.perf_counter()
        for _ in range(args.steps):
            engine.step()
        wall = time.perf_counter() - t0
    totals: dict[str, float] = defaultdict(float)
    for event in prof.key_averages():
        totals[group(event.key)] += event.self_cpu_time_total / 1e6  # seconds
    per_step = wall / args.steps * 1000
    print(f"{args.model} {args.dtype}, {args.threads} threads; CPU: {cpu_description()}")
    print(
        f"{args.steps} decode steps: {per_step:.1f} ms per token ({1000 / per_step:.1f} tokens/s)"
    )
    print("(self CPU time summed over threads; the profiler itself adds overhead)\n")
    print("| group | ms per step | share of wall |")
    print("|---|---|---|")
    for name, seconds in sorted(totals.items(), key=lambda kv: -kv[1]):
        ms = seconds / args.steps * 1000
        print(f"| {name} | {ms:.2f} | {ms / per_step:.0%} |")
    print("\ntop operators:")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))


if __name__ == "__main__":
    main()
