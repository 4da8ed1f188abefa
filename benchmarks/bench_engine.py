"""Single-stream speed, memory and quality of genforge's engine next to llama.cpp and transformers.

    make bench            # installs the peers, then runs this and rewrites benchmarks/RESULTS.md

Every peer runs in its own process (so peak resident memory is its own), on the same GGUF file, the
same token ids and the same thread count, in one invocation: compare the ratios, not the absolute
figures, which drift between runs on a shared machine. Reported figures are medians over --runs.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
MODEL = "smollm2-135m-instruct"
PROMPT_TOKENS, NEW_TOKENS = 256, 128
QUALITY_PROMPTS = [
    "The capital of France is",
    "def quicksort(arr):\n",
    "In Python, a list comprehension",
    "<|im_start|>user\nGive me three tips for sleeping well.<|im_end|>\n<|im_start|>assistant\n",
    "The theory of relativity",
]


def pydocs_text() -> str:
    """Held-out English prose: the Python documentation sources (Debian's python3.11-doc)."""
    root = Path("/usr/share/doc/python3.11/html/_sources")
    files = sorted(root.rglob("*.rst.txt"))
    if not files:
        sys.exit("benchmarks need Debian's python3.11-doc (make bench installs it)")
    return "\n\n".join(f.read_text(errors="replace") for f in files if "library" in f.parts)


def prompt_ids(tokenizer) -> list[int]:
    ids = tokenizer.encode(pydocs_text()[:20000], add_special=False)
    return ids[:PROMPT_TOKENS]


def timed_stream(tokens) -> dict:
    """Time to first token and decode rate from an iterator of generated tokens."""
    t0 = time.perf_counter()
    stamps = []
    for _ in tokens:
        stamps.append(time.perf_counter())
        if len(stamps) == NEW_TOKENS:
            break
    ttft = stamps[0] - t0
    return {
        "ttft_s": ttft,
        "prefill_tps": PROMPT_TOKENS / ttft,
        "decode_tps": (len(stamps) - 1) / (stamps[-1] - stamps[0]),
    }


def run_genforge(dtype: str, ids: list[int], runs: int) -> list[dict]:
    import genforge
    from genforge.generate.sampling import SamplingParams

    llm = genforge.load(MODEL, dtype=dtype, progress=False)
    greedy = SamplingParams(temperature=0, max_tokens=NEW_TOKENS)
    return [timed_stream(llm.engine.generate(ids, greedy)) for _ in range(runs + 1)][1:]


def run_llama_cpp(ids: list[int], runs: int) -> list[dict]:
    import llama_cpp
    from llama_cpp import llama_cpp as lib

    default_params = lib.llama_model_default_params

    def without_repack():  # its AMX repacking crashes on this CPU (see PEERS.md)
        params = default_params()
        params.use_extra_bufts = False
        return params

    lib.llama_model_default_params = without_repack
    from genforge import hub

    llm = llama_cpp.Llama(
        str(hub.resolve(MODEL)), n_ctx=1024, n_threads=2, n_threads_batch=2, n_batch=512,
        verbose=False,
    )  # fmt: skip

    def stream():
        llm.reset()
        return llm.generate(ids, temp=0.0, top_k=1, reset=True)

    return [timed_stream(stream()) for _ in range(runs + 1)][1:]


def run_transformers(ids: list[int], runs: int) -> list[dict]:
    import torch
    from transformers import AutoModelForCausalLM

    from genforge import hub

    path = hub.resolve(MODEL)
    model = AutoModelForCausalLM.from_pretrained(
        path.parent, gguf_file=path.name, dtype=torch.float32
    )
    model.eval()

    @torch.inference_mode()
    def stream():
        out = model(torch.tensor([ids]), use_cache=True)
        for _ in range(NEW_TOKENS):
            token = out.logits[0, -1].argmax()
            yield int(token)
            out = model(token.view(1, 1), past_key_values=out.past_key_values, use_cache=True)

    return [timed_stream(stream()) for _ in range(runs + 1)][1:]


def quality(dtype: str, max_tokens_eval: int) -> dict:
    """Perplexity on held-out pydocs prose and greedy agreement with fp32 on fixed prompts."""
    import torch

    import genforge
    from genforge.generate.sampling import SamplingParams

    llm = genforge.load(MODEL, dtype=dtype, progress=False)
    ids = llm.tokenizer.encode(pydocs_text()[20000:], add_special=False)[:max_tokens_eval]
    nll, count, window = 0.0, 0, 512
    with torch.inference_mode():
        for start in range(0, len(ids) - 1, window):
            chunk = torch.tensor([ids[start : start + window + 1]])
            logits = llm.model(chunk[:, :-1]).float()
            nll += torch.nn.functional.cross_entropy(
                logits[0], chunk[0, 1:], reduction="sum"
            ).item()
            count += chunk.shape[1] - 1
    greedy = SamplingParams(temperature=0, max_tokens=32)
    outputs = [
        list(llm.engine.generate(llm.tokenizer.encode(p), greedy, frozenset()))
        for p in QUALITY_PROMPTS
    ]
    return {
        "perplexity": float(torch.tensor(nll / count).exp()),
        "tokens": count,
        "greedy": outputs,
    }


def worker(args) -> None:
    torch_threads = 2
    try:
        import torch

        torch.set_num_threads(torch_threads)
    except ImportError:
        pass
    from genforge import hub
    from genforge.tokenizer import Tokenizer
    from genforge.weights.gguf import read_gguf

    tok = Tokenizer.from_gguf_metadata(read_gguf(hub.resolve(MODEL)).metadata)
    ids = prompt_ids(tok)
    peer, dtype = args.worker, args.dtype
    if args.quality:
        result = quality(dtype, args.eval_tokens)
    elif peer == "genforge":
        result = {"runs": run_genforge(dtype, ids, args.runs)}
    elif peer == "llama.cpp":
        result = {"runs": run_llama_cpp(ids, args.runs)}
    else:
        result = {"runs": run_transformers(ids, args.runs)}
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print("RESULT " + json.dumps(result))


def spawn(*extra: str) -> dict:
    cmd = [sys.executable, __file__, *extra]
    env = {**os.environ, "OMP_NUM_THREADS": "2", "HF_HUB_OFFLINE": "1"}
    out = subprocess.run(cmd, capture_output=True, text=True, env=env)
    for line in out.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    raise RuntimeError(f"{' '.join(extra)} failed:\n{out.stderr[-3000:]}")


def median(runs: list[dict], key: str) -> float:
    return statistics.median(r[key] for r in runs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3, help="timed runs per peer (after one warm-up)")
    ap.add_argument("--eval-tokens", type=int, default=20480, help="held-out tokens for perplexity")
    ap.add_argument("--out", type=Path, default=HERE / "RESULTS.md")
    ap.add_argument("--skip-quality", action="store_true")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--dtype", default="fp32", help=argparse.SUPPRESS)
    ap.add_argument("--quality", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return worker(args)

    peers = [("llama.cpp", "q4_1"), ("transformers", "fp32")]
    peers += [("genforge", d) for d in ("fp32", "bf16", "int8", "int4")]
    speed = {}
    for peer, dtype in peers:
        print(f"speed: {peer} {dtype}", file=sys.stderr)
        speed[(peer, dtype)] = spawn("--worker", peer, "--dtype", dtype, "--runs", str(args.runs))
    qual = {}
    if not args.skip_quality:
        for dtype in ("fp32", "bf16", "int8", "int4"):
            print(f"quality: genforge {dtype}", file=sys.stderr)
            qual[dtype] = spawn("--worker", "genforge", "--dtype", dtype, "--quality",
                                "--eval-tokens", str(args.eval_tokens))  # fmt: skip
    write_results(args.out, speed, qual, args.runs)


def cpu_description() -> str:
    """CPU model and the vector extensions that decide which dtype is fast (bf16 needs AVX512-BF16/AMX)."""
    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    model = next(
        (ln.split(":", 1)[1].strip() for ln in info.splitlines() if "model name" in ln), "?"
    )
    wanted = ("avx2", "avx512f", "avx512_bf16", "amx_bf16")
    flags = [f for f in wanted if f" {f}" in info]
    return f"{model}, {os.cpu_count()} cores, flags: {', '.join(flags) or 'none of ' + '/'.join(wanted)}"


def write_results(out: Path, speed: dict, qual: dict, runs: int) -> None:
    from genforge import hub

    file_mb = hub.KNOWN[MODEL].size / 1e6
    lc = speed[("llama.cpp", "q4_1")]["runs"]
    hf = speed[("transformers", "fp32")]["runs"]
    lines = [
        "# Benchmark results",
        "",
        f"## Single stream: {MODEL}, 2 threads, {PROMPT_TOKENS}-token prompt, {NEW_TOKENS} new tokens",
        "",
        f"Written by `benchmarks/bench_engine.py` on {time.strftime('%Y-%m-%d')}; medians of {runs} "
        "runs after a warm-up, all peers in one invocation. Ratios are against llama.cpp "
        "(llama-cpp-python 0.3.36, same GGUF file) and transformers (the GGUF dequantized to fp32).",
        "",
        f"CPU: {cpu_description()}.",
        "",
        "| peer | weights | prefill tok/s | decode tok/s | TTFT s | peak RSS MB | decode vs llama.cpp | decode vs transformers | prefill vs llama.cpp |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for (peer, dtype), res in speed.items():
        r = res["runs"]
        lines.append(
            f"| {peer} | {dtype} | {median(r, 'prefill_tps'):.0f} | {median(r, 'decode_tps'):.1f} | "
            f"{median(r, 'ttft_s'):.2f} | {res['peak_rss_mb']:.0f} | "
            f"{median(r, 'decode_tps') / median(lc, 'decode_tps'):.2f}x | "
            f"{median(r, 'decode_tps') / median(hf, 'decode_tps'):.2f}x | "
            f"{median(r, 'prefill_tps') / median(lc, 'prefill_tps'):.2f}x |"
        )
    lines += ["", f"GGUF file: {file_mb:.0f} MB.", ""]
    if qual:
        ref = qual["fp32"]["greedy"]
        lines += [
            "## Quality of each `--dtype`",
            "",
            f"Perplexity on {qual['fp32']['tokens']:,} held-out tokens of Python documentation prose "
            "(Debian python3.11-doc, library reference), 512-token windows; greedy agreement: how many of "
            f"{len(QUALITY_PROMPTS)} fixed prompts keep the fp32 greedy output for 32 tokens.",
            "",
            "| dtype | perplexity | same greedy 32 tokens as fp32 | peak RSS MB |",
            "|---|---|---|---|",
        ]
        for dtype, res in qual.items():
            same = sum(a == b for a, b in zip(res["greedy"], ref, strict=True))
            lines.append(
                f"| {dtype} | {res['perplexity']:.3f} | {same}/{len(ref)} | {res['peak_rss_mb']:.0f} |"
            )
    out.write_text("\n".join(lines) + "\n")
    print(out.read_text())


if __name__ == "__main__":
    main()
