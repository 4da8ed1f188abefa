"""Speed, memory and quality of genforge's engine next to llama-cpp-python and transformers.

    make bench-engine     # installs the peers, then runs this and rewrites benchmarks/RESULTS.md
    python benchmarks/bench_engine.py --only batch,prefix --runs 1 --out /tmp/r.md

Parts (--only): single (one stream: prefill, decode, time to first token), batch (aggregate decode
throughput with 1-16 concurrent requests), prefix (time to first token with a long system prompt,
cold and warm), quality (perplexity and greedy agreement of each --dtype). Peak resident memory of
every process is reported against the memory target.

Every peer runs in its own process (so peak resident memory is its own), on the same GGUF file, the
same token ids and the same thread count, in one invocation: compare the ratios, not the absolute
figures, which drift between runs on a shared machine. Reported figures are medians over --runs.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shlex
import statistics
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

import bench_serving as serving

HERE = Path(__file__).resolve().parent
MODEL = "smollm2-135m-instruct"
PROMPT_TOKENS = 256
PARTS = ("single", "batch", "prefix", "quality")
DTYPES = {  # genforge dtypes measured in each part
    "single": ("fp32", "bf16", "int8", "int4"),
    "batch": ("fp32", "int8", "int4"),
    "prefix": ("fp32", "int8"),
    "quality": ("fp32", "bf16", "int8", "int4"),
}
# llama-cpp-python: llama.cpp through its Python binding, in-process (`Llama`) or through its
# OpenAI-compatible server, which runs one request at a time. Not llama.cpp's own `llama-server`.
LLAMA_CPP_PEER = {
    "single": "llama-cpp-python",
    "batch": "llama-cpp-python server",
    "prefix": "llama-cpp-python",
}
# The llama.cpp commit each llama-cpp-python release vendors (from its CHANGELOG).
LLAMA_CPP_COMMITS = {"0.3.36": "0c1e57098"}
PREFIX_WARM_TARGET = 0.2  # warm TTFT <= this x cold (issue 3)
# RESULTS.md: each script rewrites only its own "## ... (script.py)" section (to the next "## "
# heading); hand-written notes live under "## Notes: ..." headings after them, untouched by scripts.
HEADING = "## Engine: speed, memory and quality (bench_engine.py)"
NOTES_PREFIX = "\n## Notes: "
SERVE_LOAD_HEADING = "## Serving under load (serve_load.py)"
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


def timed_stream(tokens, new_tokens: int) -> dict:
    """Time to first token and decode rate from an iterator of generated tokens."""
    t0 = time.perf_counter()
    stamps = []
    for _ in tokens:
        stamps.append(time.perf_counter())
        if len(stamps) == new_tokens:
            break
    ttft = stamps[0] - t0
    decode = (len(stamps) - 1) / (stamps[-1] - stamps[0]) if len(stamps) > 1 else float("nan")
    return {"ttft_s": ttft, "prefill_tps": PROMPT_TOKENS / ttft, "decode_tps": decode}


def run_genforge(llm, ids: list[int], runs: int, new_tokens: int) -> list[dict]:
    from genforge.generate.sampling import SamplingParams

    greedy = SamplingParams(temperature=0, max_tokens=new_tokens)

    def stream():
        llm.engine.reset_prefix_cache()  # every run prefills the whole prompt, as the peers' do
        return llm.engine.generate(ids, greedy, frozenset())

    return [timed_stream(stream(), new_tokens) for _ in range(runs + 1)][1:]


def load_llama_cpp(path: Path, n_ctx: int):
    import llama_cpp
    from llama_server import disable_repack

    disable_repack()  # its AMX repacking crashes on this CPU (see PEERS.md)
    return llama_cpp.Llama(
        str(path), n_ctx=n_ctx, n_threads=2, n_threads_batch=2, n_batch=512, verbose=False
    )


def run_llama_cpp(llm, ids: list[int], runs: int, new_tokens: int) -> list[dict]:
    def stream():
        llm.reset()
        return llm.generate(ids, temp=0.0, top_k=1, reset=True)

    return [timed_stream(stream(), new_tokens) for _ in range(runs + 1)][1:]


def run_transformers(path: Path, ids: list[int], runs: int, new_tokens: int) -> list[dict]:
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(
        path.parent, gguf_file=path.name, dtype=torch.float32
    )
    model.eval()

    @torch.inference_mode()
    def stream():
        out = model(torch.tensor([ids]), use_cache=True)
        for _ in range(new_tokens):
            token = out.logits[0, -1].argmax()
            yield int(token)
            out = model(token.view(1, 1), past_key_values=out.past_key_values, use_cache=True)

    return [timed_stream(stream(), new_tokens) for _ in range(runs + 1)][1:]


def quality(llm, max_tokens_eval: int) -> dict:
    """Perplexity on held-out pydocs prose and greedy agreement with fp32 on fixed prompts."""
    import torch

    from genforge.generate.sampling import SamplingParams

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
    """Measure one (part, peer, dtype) in this process and print its result as a RESULT line."""
    import torch

    torch.set_num_threads(2)
    import genforge
    from genforge import hub
    from genforge.tokenizer import Tokenizer
    from genforge.weights.gguf import read_gguf

    path = hub.resolve(MODEL)
    meta = read_gguf(path).metadata
    tok = Tokenizer.from_gguf_metadata(meta)
    part, peer, runs, new = args.part, args.worker, args.runs, args.new_tokens
    batch_sizes = [int(n) for n in args.batch_sizes.split(",")]
    if part == "prefix":
        chars = args.system_tokens * runs * 8
        systems = serving.system_prompts(
            tok, pydocs_text()[1_000_000 : 1_000_000 + chars], args.system_tokens, runs
        )
    result: dict = {}
    if peer == "genforge":
        llm = genforge.load(MODEL, dtype=args.dtype, progress=False)
        if part == "single":
            result["runs"] = run_genforge(llm, prompt_ids(tok), runs, new)
        elif part == "batch":
            result = serving.genforge_aggregate(llm, batch_sizes, new, runs)
        elif part == "prefix":
            result["runs"] = serving.genforge_prefix(llm, systems)
        else:
            result = quality(llm, args.eval_tokens)
        result["kv_mb"] = serving.genforge_kv_mb(llm.engine)
    elif peer == "llama-cpp-python server":
        result = serving.llama_server_aggregate(path, tok, batch_sizes, new, runs)
        result["kv_mb"] = result["n_ctx"] * serving.kv_bytes_per_token_f16(meta) / 1e6
    elif peer == "llama-cpp-python":
        n_ctx = max(1024, args.system_tokens + 512) if part == "prefix" else 1024
        llm = load_llama_cpp(path, n_ctx)
        if part == "single":
            result["runs"] = run_llama_cpp(llm, prompt_ids(tok), runs, new)
        else:
            result["runs"] = serving.llama_cpp_prefix(llm, tok, systems)
        result["kv_mb"] = n_ctx * serving.kv_bytes_per_token_f16(meta) / 1e6
    else:
        result["runs"] = run_transformers(path, prompt_ids(tok), runs, new)
    result.setdefault("peak_rss_mb", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    print("RESULT " + json.dumps(result))


def spawn(part: str, peer: str, dtype: str, args) -> dict:
    cmd = [
        sys.executable,
        __file__,
        "--worker",
        peer,
        "--part",
        part,
        "--dtype",
        dtype,
        "--runs",
        str(args.runs),
        "--new-tokens",
        str(args.new_tokens),
        "--batch-sizes",
        args.batch_sizes,
        "--system-tokens",
        str(args.system_tokens),
        "--eval-tokens",
        str(args.eval_tokens),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "2", "HF_HUB_OFFLINE": "1"}
    out = subprocess.run(cmd, capture_output=True, text=True, env=env)
    for line in out.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    raise RuntimeError(f"{part} {peer} {dtype} failed:\n{out.stderr[-3000:]}")


def median(runs: list[dict], key: str) -> float:
    return statistics.median(r[key] for r in runs)


def plan(parts: list[str], dtypes: list[str], quant: str) -> list[tuple[str, str, str]]:
    """(part, peer, dtype) for every process to run, peers first within a part."""
    jobs = []
    for part in parts:
        if part in LLAMA_CPP_PEER:
            jobs.append((part, LLAMA_CPP_PEER[part], quant))
        if part == "single":
            jobs.append((part, "transformers", "fp32"))
        jobs += [(part, "genforge", d) for d in DTYPES[part] if d in dtypes]
    return jobs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", default=",".join(PARTS), help="comma-separated parts to run")
    ap.add_argument("--dtypes", default="fp32,bf16,int8,int4", help="genforge dtypes to measure")
    ap.add_argument("--runs", type=int, default=3, help="timed runs per peer (after one warm-up)")
    ap.add_argument("--new-tokens", type=int, default=128, help="tokens generated per request")
    ap.add_argument("--batch-sizes", default="1,4,8,16", help="concurrent requests (batch part)")
    ap.add_argument(
        "--system-tokens", type=int, default=1000, help="system prompt length (prefix part)"
    )
    ap.add_argument("--eval-tokens", type=int, default=20480, help="held-out tokens for perplexity")
    ap.add_argument(
        "--out", type=Path, default=HERE / "RESULTS.md", help="where to write the tables"
    )
    ap.add_argument(
        "--skip-quality", action="store_true", help="same as leaving quality out of --only"
    )
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--part", default="single", help=argparse.SUPPRESS)
    ap.add_argument("--dtype", default="fp32", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return worker(args)

    from genforge import hub

    parts = [p for p in args.only.split(",") if p and not (p == "quality" and args.skip_quality)]
    if unknown := sorted(set(parts) - set(PARTS)):
        ap.error(f"unknown part {unknown[0]!r}; choose from {', '.join(PARTS)}")
    load = os.getloadavg()[0]
    results = {}
    for job in plan(parts, args.dtypes.split(","), hub.KNOWN[MODEL].quantization.lower()):
        print("running: " + " ".join(job), file=sys.stderr)
        results[job] = spawn(*job, args)
    write_results(args.out, results, args, load)


# -- RESULTS.md -------------------------------------------------------------------------------


def cpu_description() -> str:
    """CPU model and the vector extensions that decide which dtype is fast (bf16 needs AVX512-BF16/AMX)."""
    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    model = next(
        (ln.split(":", 1)[1].strip() for ln in info.splitlines() if "model name" in ln), "?"
    )
    wanted = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16")
    flags = [f for f in wanted if f" {f}" in info]
    return f"{model}, {os.cpu_count()} cores, flags: {', '.join(flags) or 'none of ' + '/'.join(wanted)}"


def provenance(load_at_start: float, make_target: str) -> str:
    """The first line of a generated section: when, by which command, on which CPU, under what load.

    `load_at_start` is the 1-minute load average read when the run began; the one at the end is read
    here. Figures from a loaded machine are slower, and all peers alike only if timed interleaved.
    """
    command = shlex.join(["python", f"benchmarks/{Path(sys.argv[0]).name}", *sys.argv[1:]])
    return (
        f"Generated on {time.strftime('%Y-%m-%d')} by `{command}` (`{make_target}`); CPU: "
        f"{cpu_description()}; load average {load_at_start:.1f} at the start and "
        f"{os.getloadavg()[0]:.1f} at the end (a shared machine)."
    )


def llama_cpp_python() -> str:
    """The llama.cpp peer named exactly: the Python binding's version and the llama.cpp it vendors."""
    try:
        version = metadata.version("llama-cpp-python")
    except metadata.PackageNotFoundError:
        return "llama-cpp-python (not installed)"
    commit = LLAMA_CPP_COMMITS.get(version, "commit unknown")
    return f"llama-cpp-python {version} (llama.cpp {commit}, via its Python binding)"


def write_section(out: Path, heading: str, lines: list[str]) -> None:
    """Replace the section `heading` of RESULTS.md (up to the next `## ` heading), or add it before
    the hand-written notes; everything else is kept as it is. Written atomically (copy, rename)."""
    text = out.read_text() if out.exists() else "# Benchmark results\n"
    new = "\n".join(lines).rstrip() + "\n"
    at = text.find("\n" + heading + "\n")
    if at >= 0:
        end = text.find("\n## ", at + 1)
        text = text[: at + 1] + new + (text[end:] if end >= 0 else "")
    elif (notes := text.find(NOTES_PREFIX)) >= 0:
        text = text[: notes + 1] + new + text[notes:]
    else:
        text = text.rstrip() + "\n\n" + new
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    tmp.write_text(text.rstrip() + "\n")
    os.replace(tmp, out)
    print(new)


def ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.2f}x" if a and b else "—"


def single_section(results: dict, args) -> list[str]:
    speed = {(peer, d): r for (part, peer, d), r in results.items() if part == "single"}
    if not speed:
        return []
    base = {p: median(r["runs"], "decode_tps") for (p, _), r in speed.items() if p != "genforge"}
    lc = next((r["runs"] for (p, _), r in speed.items() if p == "llama-cpp-python"), None)
    lines = [
        f"### Single stream: {PROMPT_TOKENS}-token prompt, {args.new_tokens} new tokens",
        "",
        "Ratios are against llama-cpp-python (in-process `Llama`, same GGUF file) and transformers "
        "(the GGUF dequantized to fp32).",
        "",
        "| peer | weights | prefill tok/s | decode tok/s | TTFT s | peak RSS MB | decode vs llama-cpp-python | decode vs transformers | prefill vs llama-cpp-python |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for (peer, dtype), res in speed.items():
        r = res["runs"]
        decode, prefill = median(r, "decode_tps"), median(r, "prefill_tps")
        lines.append(
            f"| {peer} | {dtype} | {prefill:.0f} | {decode:.1f} | {median(r, 'ttft_s'):.2f} | "
            f"{res['peak_rss_mb']:.0f} | {ratio(decode, base.get('llama-cpp-python'))} | "
            f"{ratio(decode, base.get('transformers'))} | "
            f"{ratio(prefill, lc and median(lc, 'prefill_tps'))} |"
        )
    return [*lines, ""]


def quality_section(results: dict) -> list[str]:
    qual = {d: r for (part, _, d), r in results.items() if part == "quality"}
    if not qual:
        return []
    ref = qual.get("fp32", {}).get("greedy")
    first = next(iter(qual.values()))
    lines = [
        "### Quality of each `--dtype`",
        "",
        f"Perplexity on {first['tokens']:,} held-out tokens of Python documentation prose "
        "(Debian python3.11-doc, library reference), 512-token windows; greedy agreement: how many of "
        f"{len(QUALITY_PROMPTS)} fixed prompts keep the fp32 greedy output for 32 tokens.",
        "",
        "| dtype | perplexity | same greedy 32 tokens as fp32 | peak RSS MB |",
        "|---|---|---|---|",
    ]
    for dtype, res in qual.items():
        same = "—"
        if ref:
            same = f"{sum(a == b for a, b in zip(res['greedy'], ref, strict=True))}/{len(ref)}"
        lines.append(f"| {dtype} | {res['perplexity']:.3f} | {same} | {res['peak_rss_mb']:.0f} |")
    return [*lines, ""]


def memory_target_mb(file_mb: float, kv_mb: float) -> float:
    return 1.3 * file_mb + kv_mb + 300


def memory_section(results: dict, file_mb: float) -> list[str]:
    lines = [
        "### Peak resident memory",
        "",
        "Peak resident memory of each process (`ru_maxrss`; for llama-cpp-python's server, `VmHWM` of its "
        f"process). Target: at most 1.3 x the GGUF file ({file_mb:.0f} MB) + KV cache + 300 MB, where "
        "the KV cache is the *configured* one, not the part actually touched: genforge's whole paged "
        "pool (`engine.cache`, all key and value tensors; allocated with `torch.empty`, so pages "
        "never used cost no memory and the real footprint is lower), llama-cpp-python's n_ctx positions at "
        "f16. transformers' cache grows with the request: no target. The quality processes compute "
        "full 512-token logits for perplexity, more than serving needs.",
        "",
        "| part | peer | weights | peak RSS MB | KV configured MB | target MB | within target |",
        "|---|---|---|---|---|---|---|",
    ]
    for (part, peer, dtype), res in results.items():
        kv = res.get("kv_mb")
        target = memory_target_mb(file_mb, kv) if kv is not None else None
        lines.append(
            f"| {part} | {peer} | {dtype} | {res['peak_rss_mb']:.0f} | "
            + (
                f"{kv:.0f} | {target:.0f} | {'yes' if res['peak_rss_mb'] <= target else 'no'} |"
                if target
                else "— | — | — |"
            )
        )
    return [*lines, ""]


def targets_section(results: dict, file_mb: float) -> list[str]:
    rows = []
    for (part, peer, dtype), res in results.items():
        if part == "prefix" and peer == "genforge":
            measured = statistics.median(r["ratio"] for r in res["runs"])
            rows.append(
                (
                    f"prefix cache: warm TTFT <= {PREFIX_WARM_TARGET}x cold",
                    dtype,
                    f"{measured:.2f}x",
                    f"<= {PREFIX_WARM_TARGET:.2f}x",
                    measured <= PREFIX_WARM_TARGET,
                )
            )
    serving = {}  # dtype -> (part, result) of the genforge process with the highest peak
    candidates = [
        (d, part, r)
        for (part, peer, d), r in results.items()
        if peer == "genforge" and part != "quality"
    ]
    for dtype, part, res in sorted(candidates, key=lambda c: c[2]["peak_rss_mb"]):
        serving[dtype] = (part, res)
    for dtype, (part, res) in serving.items():
        target = memory_target_mb(file_mb, res["kv_mb"])
        rows.append(
            (
                "peak RSS <= 1.3 x GGUF + KV + 300 MB",
                dtype,
                f"{res['peak_rss_mb']:.0f} MB ({part})",
                f"<= {target:.0f} MB",
                res["peak_rss_mb"] <= target,
            )
        )
    if not rows:
        return []
    lines = [
        "### Targets",
        "",
        "genforge against the targets of issue 3. Memory: the highest peak among its single, batch "
        "and prefix processes for that dtype (part in brackets).",
        "",
        "| target | genforge weights | measured | target | met |",
        "|---|---|---|---|---|",
    ]
    lines += [f"| {t} | {d} | {m} | {g} | {'met' if ok else 'missed'} |" for t, d, m, g, ok in rows]
    return [*lines, ""]


def write_results(out: Path, results: dict, args, load: float) -> None:
    from genforge import hub

    known = hub.KNOWN[MODEL]
    file_mb = known.size / 1e6
    lines = [
        HEADING,
        "",
        provenance(load, "make bench"),
        "",
        f"{MODEL}, 2 threads, every peer in a process of its own, all in one invocation; medians of "
        f"{args.runs} runs after a warm-up. The llama.cpp peer is {llama_cpp_python()}, on the "
        f"same GGUF file ({known.quantization}, {file_mb:.0f} MB); its server runs one request at "
        "a time (it is not llama.cpp's own `llama-server`). Compare ratios within this section, not "
        "absolute figures across runs: they drift on shared machines.",
        "",
    ]
    lines += single_section(results, args)
    lines += serving.aggregate_section(results, args.batch_sizes, args.new_tokens)
    lines += serving.prefix_section(results, args.system_tokens)
    lines += quality_section(results)
    lines += memory_section(results, file_mb)
    lines += targets_section(results, file_mb)
    write_section(out, HEADING, lines)


if __name__ == "__main__":
    main()
