"""llama.cpp's own tools as the peer: `llama-bench` and `llama-server`, built from the llama.cpp
sources vendored in llama-cpp-python's sdist, next to genforge's engine on the same GGUF file.

    python benchmarks/llama_bench.py build           # once: ~10 minutes on 2 cores, cached
    python benchmarks/llama_bench.py bench           # both models, into RESULTS.md (make bench)
    python benchmarks/llama_bench.py bench -m qwen2.5-coder-0.5b-instruct --dtype int4 --out F

The build goes to the genforge cache (`$GENFORGE_HOME/bench/llama.cpp-VERSION`), outside the repo,
with llama.cpp's defaults (`GGML_NATIVE`: kernels for this CPU, weight repacking where it allows).
`bench` runs `llama-bench -p 512 -n 128 -d 0,512 -t THREADS` and takes its prefill of a 512-token
prompt on an empty cache (pp512 at depth 0) and its 128 new tokens after a 512-token prompt (tg128
at depth 512; its tg128 on an empty cache is printed too), and genforge's engine the same way: a
512-token prompt of documentation prose, prefilled cold, then 128 greedy tokens with the end of
sequence ignored; medians of --runs. Then genforge's cold start (`genforge generate -m MODEL "Hi"
--max-tokens 1`, process start to exit) and its peak RSS. Rewrites its section of RESULTS.md: every
target of docs/engine.md ("Where it stands") it measures, with the CPU's flags, met or missed.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tarfile
import time
from pathlib import Path

from bench_engine import provenance, pydocs_text, write_section

from genforge import hub
from genforge.errors import GenforgeError

VERSION = "0.3.36"  # llama-cpp-python, vendoring llama.cpp 0c1e57098
VENDORED = "0c1e570"  # what llama-bench reports where its build had no git history to read
TOOLS = ("llama-bench", "llama-server")
PROMPT, NEW = 512, 128
TARGETS = {"decode": 1.0, "prefill": 1.5}  # genforge / llama.cpp, docs/engine.md
COLD_START_S, COLD_START_MODEL = 3.0, "smollm2-135m-instruct"
MODELS = ("smollm2-135m-instruct", "qwen2.5-coder-0.5b-instruct")
HEADING = "## Against llama.cpp's llama-bench (llama_bench.py)"
HERE = Path(__file__).resolve().parent


def build_dir() -> Path:
    return hub.home() / "bench" / f"llama.cpp-{VERSION}"


def build() -> Path:
    """The folder holding llama-bench and llama-server, built once and then reused."""
    root = build_dir()
    bin_dir = root / "src" / "build" / "bin"
    if all((bin_dir / t).is_file() for t in TOOLS):
        return bin_dir
    root.mkdir(parents=True, exist_ok=True)
    sdist = root / f"llama_cpp_python-{VERSION}.tar.gz"
    if not sdist.is_file():
        pip = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:"]
        subprocess.run([*pip, f"llama-cpp-python=={VERSION}", "-d", str(root)], check=True)
    src = root / "src"
    if not (src / "CMakeLists.txt").is_file():
        with tarfile.open(sdist) as tar:
            tar.extractall(root / "unpacked", filter="data")
        (root / "unpacked" / f"llama_cpp_python-{VERSION}" / "vendor" / "llama.cpp").rename(src)
    flags = [
        "-DLLAMA_CURL=OFF",
        "-DLLAMA_OPENSSL=OFF",
        "-DGGML_NATIVE=ON",
        "-DCMAKE_BUILD_TYPE=Release",
    ]
    subprocess.run(["cmake", "-S", str(src), "-B", str(src / "build"), *flags], check=True)
    targets = [a for t in TOOLS for a in ("--target", t)]
    subprocess.run(["cmake", "--build", str(src / "build"), *targets, "-j2"], check=True)
    return bin_dir


def llama_bench(bin_dir: Path, model: Path, threads: int, runs: int) -> dict:
    """pp and tg tokens/s with llama.cpp's defaults; with weight repacking off only where it crashes
    (its AMX path does on some Xeons: SIGSEGV, PEERS.md)."""
    base = [str(bin_dir / "llama-bench"), "-m", str(model), "-t", str(threads)]
    base += ["-p", str(PROMPT), "-n", str(NEW), "-d", f"0,{PROMPT}", "-r", str(runs), "-o", "json"]
    # its defaults: no OpenMP settings of ours (OMP_WAIT_POLICY=PASSIVE cuts its decode by 3x)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OMP_", "GOMP_"))}
    out = subprocess.run(base, capture_output=True, text=True, env=env)
    repack = "on (default)"
    if out.returncode < 0:  # killed by a signal
        repack = f"off: with it on, llama-bench died of signal {-out.returncode} on this CPU"
        out = subprocess.run([*base, "--repack", "0"], capture_output=True, text=True, env=env)
    if out.returncode != 0:
        sys.exit(f"llama-bench failed ({out.returncode}): {out.stderr[-500:]}")
    rows = json.loads(out.stdout)

    def row(n_prompt: int, n_gen: int, depth: int) -> dict:
        return next(
            r
            for r in rows
            if (r["n_prompt"], r["n_gen"], r.get("n_depth", 0)) == (n_prompt, n_gen, depth)
        )

    return {
        "prefill": row(PROMPT, 0, 0)["avg_ts"],
        "decode": row(0, NEW, PROMPT)["avg_ts"],  # after a 512-token prompt, as genforge's
        "decode_empty": row(0, NEW, 0)["avg_ts"],
        "build": rows[0].get("build_commit")
        if rows[0].get("build_commit") != "unknown"
        else VENDORED,
        "repack": repack,
    }


def genforge_bench(name: str, dtype: str, threads: int, runs: int) -> dict:
    """genforge's prefill and decode, in this process (run as `_genforge` in a child of its own, so
    that its peak RSS is genforge's alone), with the configured KV cache's size."""
    import genforge
    from genforge.generate.sampling import SamplingParams
    from genforge.model import kernels

    llm = genforge.load(name, dtype=dtype, threads=threads)
    ids = llm.tokenizer.encode(pydocs_text()[:40000], add_special=False)[:PROMPT]
    greedy = SamplingParams(temperature=0, max_tokens=NEW + 1)
    prefill, decode = [], []
    for _ in range(runs + 1):  # the first is a warm-up
        llm.engine.reset_prefix_cache()
        t0 = time.perf_counter()
        stamps = [time.perf_counter() for _ in llm.engine.generate(ids, greedy, frozenset())]
        prefill.append(PROMPT / (stamps[0] - t0))
        decode.append(NEW / (stamps[-1] - stamps[0]))
    cache = llm.engine.cache
    kv = sum(t.numel() * t.element_size() for t in (*cache.k, *cache.v))
    return {
        "isa": kernels.ops.isa() if kernels.ops is not None else "none (PyTorch's)",
        "prefill": statistics.median(prefill[1:]),
        "decode": statistics.median(decode[1:]),
        "dtype": llm.dtype,
        "kv_mb": kv / 1e6,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e3,
    }


def in_child(argv: list[str]) -> tuple[float, float, str]:
    """Run argv in a child process of its own: (wall seconds, its peak RSS in MB, its stdout)."""
    code = (
        "import json, resource, subprocess, sys, time\n"
        "t = time.perf_counter()\n"
        "r = subprocess.run(sys.argv[1:], capture_output=True, text=True)\n"
        "wall = time.perf_counter() - t\n"
        "if r.returncode: sys.exit(r.stderr[-2000:])\n"
        "rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1e3\n"
        "print(json.dumps([wall, rss, r.stdout]))\n"
    )
    out = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True)
    if out.returncode:
        sys.exit(f"{argv[:4]} failed: {out.stderr[-2000:]}")
    wall, rss, stdout = json.loads(out.stdout)
    return wall, rss, stdout


def cold_start(name: str, dtype: str, threads: int, runs: int) -> tuple[float, float]:
    """`genforge generate -m NAME "Hi" --max-tokens 1`, process start to exit: median seconds and
    the highest peak RSS (MB) over `runs`."""
    cli = [sys.executable, "-m", "genforge", "generate", "-m", name, "Hi", "--max-tokens", "1"]
    cli += ["--dtype", dtype, "--threads", str(threads)]
    runs_ = [in_child(cli)[:2] for _ in range(runs)]
    return statistics.median(w for w, _ in runs_), max(r for _, r in runs_)


def bench_model(bin_dir: Path, name: str, args) -> dict:
    path = hub.resolve(name)
    peer = llama_bench(bin_dir, path, args.threads, args.runs)
    child = [sys.executable, __file__, "_genforge", "-m", name, "--dtype", args.dtype]
    child += ["--threads", str(args.threads), "--runs", str(args.runs)]
    ours = json.loads(in_child(child)[2])
    cold_s, cold_mb = cold_start(name, args.dtype, args.threads, args.runs)
    file_mb = path.stat().st_size / 1e6
    return {
        "name": name,
        "file": path.name,
        "file_mb": file_mb,
        "peer": peer,
        "ours": ours,
        "cold_s": cold_s,
        "cold_mb": cold_mb,
        "rss_target_mb": 1.3 * file_mb + ours["kv_mb"] + 300,
    }


def met(ok: bool) -> str:
    return "met" if ok else "missed"


def section(results: list[dict], args, load: float) -> list[str]:
    peer = results[0]["peer"]
    lines = [
        HEADING,
        "",
        provenance(load, "make bench"),
        "",
        f"llama.cpp {peer['build']}'s own `llama-bench` (built from the llama.cpp sources in "
        f"llama-cpp-python {VERSION}, its defaults; weight repacking {peer['repack']}) against "
        f"genforge's engine on the same GGUF file, {args.threads} threads, medians of "
        f"{args.runs} runs; genforge's kernel path: {results[0]['ours']['isa']}. Prefill: a {PROMPT}-token prompt on an empty cache (llama-bench "
        f"pp{PROMPT}). Decode: {NEW} new tokens after a {PROMPT}-token prompt (llama-bench tg{NEW} "
        f"at `-d {PROMPT}`; its tg{NEW} on an empty cache is given for reference). Cold start: "
        '`genforge generate -m MODEL "Hi" --max-tokens 1`, process start to exit. Peak RSS: '
        "genforge's process for the prefill/decode runs (KV: the cache it configures, fp16 by "
        "default; pages it never touches cost nothing).",
        "",
        "| model (file) | genforge dtype | part | llama.cpp | genforge | measured | target | met |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        p, o = r["peer"], r["ours"]
        cold_target, cold_met = "— (a target for the default model)", "—"
        if r["name"] == COLD_START_MODEL:
            cold_target, cold_met = f"<= {COLD_START_S:.0f} s", met(r["cold_s"] <= COLD_START_S)
        head = f"{r['name']} ({r['file']}, {r['file_mb']:.0f} MB) | {o['dtype']}"
        pp, tg = o["prefill"] / p["prefill"], o["decode"] / p["decode"]
        lines += [
            f"| {head} | prefill tokens/s | {p['prefill']:.1f} | {o['prefill']:.1f} | {pp:.2f}x "
            f"| >= {TARGETS['prefill']:.1f}x | {met(pp >= TARGETS['prefill'])} |",
            f"| {head} | decode tokens/s after {PROMPT} | {p['decode']:.1f} (empty cache: "
            f"{p['decode_empty']:.1f}) | {o['decode']:.1f} | {tg:.2f}x (empty cache: "
            f"{o['decode'] / p['decode_empty']:.2f}x) | >= {TARGETS['decode']:.1f}x | "
            f"{met(tg >= TARGETS['decode'])} |",
            f"| {head} | cold start s | — | {r['cold_s']:.2f} ({r['cold_mb']:.0f} MB) | "
            f"{r['cold_s']:.2f} s | {cold_target} | {cold_met} |",
            f"| {head} | peak RSS MB (KV {o['kv_mb']:.0f} MB) | — | {o['peak_rss_mb']:.0f} | "
            f"{o['peak_rss_mb']:.0f} MB | <= {r['rss_target_mb']:.0f} MB (1.3 x file + KV + 300) | "
            f"{met(o['peak_rss_mb'] <= r['rss_target_mb'])} |",
        ]
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("what", choices=["build", "bench", "_genforge"])
    ap.add_argument("-m", "--model", default=",".join(MODELS), help="comma-separated models")
    ap.add_argument("--dtype", default="auto", help="genforge's --dtype (default: auto)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument(
        "--out", type=Path, default=HERE / "RESULTS.md", help="the RESULTS.md to update"
    )
    args = ap.parse_args()
    names = args.model.split(",")
    if args.what == "_genforge":  # the child that measures genforge alone
        print(json.dumps(genforge_bench(names[0], args.dtype, args.threads, args.runs)))
        return
    try:
        for name in names:
            hub.resolve(name)  # a bad name fails before a ten-minute build
    except GenforgeError as e:
        sys.exit(f"error: {e}")
    bin_dir = build()
    if args.what == "build":
        print(bin_dir)
        return
    load = os.getloadavg()[0]
    results = [bench_model(bin_dir, name, args) for name in names]
    write_section(args.out, HEADING, section(results, args, load))


if __name__ == "__main__":
    main()
