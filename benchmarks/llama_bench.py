"""llama.cpp's own tools as the peer: `llama-bench` and `llama-server`, built from the llama.cpp
sources vendored in llama-cpp-python's sdist, next to genforge's engine on the same GGUF file.

    python benchmarks/llama_bench.py build           # once: ~10 minutes on 2 cores, cached
    python benchmarks/llama_bench.py bench           # pp512 / tg128, llama-bench vs genforge
    python benchmarks/llama_bench.py bench -m qwen2.5-coder-0.5b-instruct --dtype int4

The build goes to the genforge cache (`$GENFORGE_HOME/bench/llama.cpp-VERSION`), outside the repo,
with llama.cpp's defaults (`GGML_NATIVE`: kernels for this CPU, weight repacking where it allows).
`bench` runs `llama-bench -p 512 -n 128 -d 0,512 -t THREADS` and takes its prefill of a 512-token
prompt on an empty cache (pp512 at depth 0) and its 128 new tokens after a 512-token prompt (tg128
at depth 512; its tg128 on an empty cache is printed too), and genforge's engine the same way: a
512-token prompt of documentation prose, prefilled cold, then 128 greedy tokens with the end of
sequence ignored; medians of --runs. Prints the CPU and
its flags, both peers' figures and the ratios against the targets of docs/engine.md.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tarfile
import time
from pathlib import Path

from bench_engine import cpu_description, pydocs_text

from genforge import hub
from genforge.errors import GenforgeError

VERSION = "0.3.36"  # llama-cpp-python, vendoring llama.cpp 0c1e57098
TOOLS = ("llama-bench", "llama-server")
PROMPT, NEW = 512, 128
TARGETS = {"decode": 1.0, "prefill": 1.5}  # genforge / llama.cpp, docs/engine.md


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
        "build": rows[0].get("build_commit"),
        "repack": repack,
    }


def genforge_bench(name: str, dtype: str, threads: int, runs: int) -> dict:
    import genforge
    from genforge.generate.sampling import SamplingParams

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
    return {"prefill": statistics.median(prefill[1:]), "decode": statistics.median(decode[1:])}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("what", choices=["build", "bench"])
    ap.add_argument("-m", "--model", default="smollm2-135m-instruct")
    ap.add_argument("--dtype", default="auto", help="genforge's --dtype (default: auto)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    try:
        model = hub.resolve(args.model)  # a bad name fails before a ten-minute build
    except GenforgeError as e:
        sys.exit(f"error: {e}")
    bin_dir = build()
    if args.what == "build":
        print(bin_dir)
        return
    peer = llama_bench(bin_dir, model, args.threads, args.runs)
    ours = genforge_bench(args.model, args.dtype, args.threads, args.runs)
    print(f"{args.model} ({model.name}), {args.threads} threads; CPU: {cpu_description()}")
    print(
        f"llama.cpp {peer['build']} (llama-bench, built from llama-cpp-python {VERSION}'s "
        f"sources); weight repacking {peer['repack']}; its tg{NEW} on an empty cache: "
        f"{peer['decode_empty']:.1f} tokens/s\n"
    )
    print(
        "| | llama-bench tokens/s | genforge " + args.dtype + " tokens/s | ratio | target | met |"
    )
    print("|---|---|---|---|---|---|")
    parts = (("prefill", f"prefill (pp{PROMPT})"), ("decode", f"decode (tg{NEW} after {PROMPT})"))
    for part, label in parts:
        r = ours[part] / peer[part]
        met = "met" if r >= TARGETS[part] else "missed"
        print(
            f"| {label} | {peer[part]:.1f} | {ours[part]:.1f} | {r:.2f}x | "
            f"{TARGETS[part]:.1f}x | {met} |"
        )


if __name__ == "__main__":
    main()
