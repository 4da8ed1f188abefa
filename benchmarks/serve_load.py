"""Serving under load: concurrent streaming chat clients against genforge's server and llama.cpp's own
`llama-server`.

    make bench-serve      # 8 and 32 clients for 60 s per server, then rewrites its section of RESULTS.md
                          # (`make bench` runs it for 30 s, after llama_bench.py)
    python benchmarks/serve_load.py --clients 8 --duration 10 --out /tmp/r.md
    python benchmarks/serve_load.py -m qwen2.5-coder-0.5b-instruct --clients 8,32

Each server runs alone, as a subprocess on a free local port with 2 threads, and is stopped before the
next starts; it is started again for each number of clients. The peer is llama.cpp's `llama-server`
(built by `benchmarks/llama_bench.py build`, cached) with `-np N` slots for N clients (continuous
batching) and the same context budget as genforge's KV cache (`-c` = `--ctx`), its weight repacking
on unless it crashes on this CPU. llama-cpp-python's server (one request at a time) can be added with
`--servers genforge,llama-server,llama-cpp-python-server`. Every client loops for --duration seconds: POST /v1/chat/completions with stream=true,
a short distinct question, temperature 0.7 and a seed of its own, end of sequence banned through
`logit_bias` so that every request makes --max-tokens tokens on both servers. After --duration no
client starts another request; the ones in flight finish, and throughput is their completion tokens
over the time from the first request to the last reply (the same work counted for both servers,
however they queue it). Memory is the resident set of the server and its children, sampled every
0.5 s from /proc.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import sys
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import bench_serving as serving
from bench_engine import MODEL, SERVE_LOAD_HEADING, provenance, write_section

HERE = Path(__file__).resolve().parent
SERVERS = ("genforge", "llama-server", "llama-cpp-python-server")
CONTEXT = 8192  # the context budget of both servers: genforge's KV cache, llama-server's -c
TEMPERATURE = 0.7
TOP_P = 0.95  # both servers' default top-k 40 and min-p 0.05 are left as they are
DRAIN_LIMIT_S = 600  # requests still running this long after --duration count as errors
PAGE_MB = os.sysconf("SC_PAGE_SIZE") / 2**20


@dataclass
class Load:
    """What the clients of one server saw."""

    ttft_s: list[float] = field(default_factory=list)  # per completed request
    tokens: int = 0  # completion tokens of the completed requests
    counted: dict[str, int] = field(default_factory=dict)  # how tokens were counted -> requests
    errors: list[str] = field(default_factory=list)
    wall_s: float = 0.0  # first request to last reply


def request_body(model: str, tag: str, i: int, max_tokens: int, end_ids: frozenset[int]) -> dict:
    """Request i of a client (the same for every server): a distinct question and seed."""
    return {
        "model": model,
        "messages": serving.chat(tag, i),
        "stream": True,
        "stream_options": {"include_usage": True},
        "max_tokens": max_tokens,
        "temperature": TEMPERATURE,
        "top_p": TOP_P,
        "seed": zlib.crc32(f"{tag}.{i}".encode()),
        # -100 (the OpenAI limit) never lets an end token through: every request runs to max_tokens
        "logit_bias": {str(t): -100 for t in sorted(end_ids)},
        # the same sampling work everywhere: no repetition penalties (llama-cpp-python's
        # repeat_penalty defaults to 1.1, genforge's DRY to 0.8 for this model's family)
        "repeat_penalty": 1.0,  # llama.cpp's name
        "repetition_penalty": 1.0,  # genforge's (vLLM's)
        "dry_multiplier": 0.0,
    }


async def stream_one(client, url: str, body: dict, load: Load) -> None:
    """One streamed chat completion; records its time to first token and tokens, or an error."""
    t0 = time.perf_counter()
    ttft, chunks, usage, finish = None, 0, None, None
    async with client.stream("POST", url + "/v1/chat/completions", json=body) as reply:
        if reply.status_code != 200:
            text = (await reply.aread()).decode(errors="replace")
            load.errors.append(f"HTTP {reply.status_code}: {text[:200]}")
            return
        async for line in reply.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            event = json.loads(line[6:])
            usage = event.get("usage") or usage
            for choice in event.get("choices", []):
                finish = choice.get("finish_reason") or finish
                if choice.get("delta", {}).get("content"):
                    chunks += 1
                    ttft = ttft if ttft is not None else time.perf_counter() - t0
    if ttft is None or finish is None:
        load.errors.append(f"stream ended after {chunks} chunks without a finish_reason")
        return
    # llama-cpp-python sends no usage chunk; with end tokens banned, "length" means max_tokens
    if usage:
        how, tokens = "usage", usage["completion_tokens"]
    elif finish == "length":
        how, tokens = "finish_reason length", body["max_tokens"]
    else:
        how, tokens = "content chunks", chunks
    load.counted[how] = load.counted.get(how, 0) + 1
    load.tokens += tokens
    load.ttft_s.append(ttft)


async def client_loop(client, url: str, tag: str, until: float, body, load: Load) -> None:
    i = 0
    while time.perf_counter() < until:
        try:
            await stream_one(client, url, body(tag, i), load)
        except Exception as e:  # a failed request is counted; the client goes on
            load.errors.append(f"{type(e).__name__}: {e}")
        i += 1


def tree_rss_mb(pid: int) -> float:
    """Resident memory of a process and all its descendants, from /proc."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue  # the process ended while we looked
        children.setdefault(ppid, []).append(int(stat.parent.name))
    pages, todo = 0, [pid]
    while todo:
        p = todo.pop()
        todo += children.get(p, [])
        with contextlib.suppress(OSError, IndexError):  # the process ended while we looked
            pages += int(Path(f"/proc/{p}/statm").read_text().split()[1])
    return pages * PAGE_MB


async def sample_peak_rss(pid: int, peak: list[float]) -> None:
    while True:
        peak[0] = max(peak[0], await asyncio.to_thread(tree_rss_mb, pid))
        await asyncio.sleep(0.5)


async def drive(url: str, pid: int, args, clients: int, end_ids: frozenset[int]) -> dict:
    import httpx

    def body(tag, i):
        return request_body(args.model, tag, i, args.max_tokens, end_ids)

    load, peak = Load(), [0.0]
    sampler = asyncio.create_task(sample_peak_rss(pid, peak))
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(timeout=httpx.Timeout(DRAIN_LIMIT_S), limits=limits) as client:
        # a warm-up request, not counted: first-call costs (lazy imports, allocations) are not load
        await stream_one(client, url, body("warm-up", 0), Load())
        idle_mb = tree_rss_mb(pid)
        t0 = time.perf_counter()
        until = t0 + args.duration
        clients = (client_loop(client, url, f"c{c}", until, body, load) for c in range(clients))
        try:
            await asyncio.wait_for(asyncio.gather(*clients), args.duration + DRAIN_LIMIT_S)
        except TimeoutError:
            load.errors.append(f"requests still running {DRAIN_LIMIT_S} s after the end")
        load.wall_s = time.perf_counter() - t0
    sampler.cancel()
    return summary(load, idle_mb, max(peak[0], tree_rss_mb(pid)))


def summary(load: Load, idle_mb: float, peak_mb: float) -> dict:
    ttft = sorted(load.ttft_s)
    p99 = statistics.quantiles(ttft, n=100, method="inclusive")[98] if len(ttft) > 1 else None
    return {
        "requests": len(ttft),
        "tokens": load.tokens,
        "wall_s": load.wall_s,
        "tps": load.tokens / load.wall_s if load.wall_s else 0.0,
        "ttft_p50_s": statistics.median(ttft) if ttft else None,
        "ttft_p99_s": p99 if p99 is not None else (ttft[0] if ttft else None),
        "errors": len(load.errors),
        "first_errors": load.errors[:5],
        "counted": load.counted,
        "idle_rss_mb": idle_mb,
        "peak_rss_mb": peak_mb,
    }


def genforge_command(model: str, port: int) -> list[str]:
    return [
        sys.executable,
        "-m",
        "genforge",
        "serve",
        "-m",
        model,
        "--threads",
        "2",
        "--ctx",
        str(CONTEXT),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]


def llama_server_command(gguf: Path, clients: int, port: int, repack: bool) -> list[str]:
    from llama_bench import build

    cmd = [str(build() / "llama-server"), "-m", str(gguf), "-t", "2", "-np", str(clients)]
    cmd += ["-c", str(CONTEXT), "--host", "127.0.0.1", "--port", str(port)]
    return cmd if repack else [*cmd, "--no-repack"]


def run_server(name: str, args, clients: int, gguf: Path, end_ids: frozenset[int]) -> dict:
    """Start the server, time it to ready, load it with `clients` streaming clients, stop it."""
    port = serving.free_port()
    url = f"http://127.0.0.1:{port}"
    # each peer with its own defaults: no OpenMP settings of ours
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OMP_", "GOMP_"))}
    if name == "genforge":
        server = serving.server_process(genforge_command(args.model, port), url, "/health", env)
    elif name == "llama-server":
        cmd = llama_server_command(gguf, clients, port, repack=not args.no_repack)
        server = serving.server_process(cmd, url, "/health", env)
    else:
        server = serving.llama_server(gguf, n_ctx=CONTEXT)
    t0 = time.perf_counter()
    with server as (url, pid):
        ready_s = time.perf_counter() - t0
        result = asyncio.run(drive(url, pid, args, clients, end_ids))
    return {**result, "ready_s": ready_s}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-m", "--model", default=MODEL, help=f"a named model (default: {MODEL})")
    ap.add_argument("--clients", default="8,32", help="concurrent streaming clients, e.g. 8,32")
    ap.add_argument("--duration", type=float, default=60, help="seconds each client keeps asking")
    ap.add_argument("--max-tokens", type=int, default=64, help="tokens generated per request")
    ap.add_argument("--servers", default="genforge,llama-server", help="comma-separated servers")
    ap.add_argument(
        "--no-repack", action="store_true", help="llama-server without weight repacking"
    )
    ap.add_argument(
        "--out", type=Path, default=HERE / "RESULTS.md", help="the RESULTS.md to update"
    )
    args = ap.parse_args()
    servers = [s for s in args.servers.split(",") if s]
    if unknown := sorted(set(servers) - set(SERVERS)):
        ap.error(f"unknown server {unknown[0]!r}; choose from {', '.join(SERVERS)}")
    try:
        counts = [int(c) for c in args.clients.split(",") if c]
    except ValueError:
        ap.error(f"--clients takes numbers separated by commas, got {args.clients!r}")
    load = os.getloadavg()[0]

    from genforge import hub
    from genforge.errors import GenforgeError
    from genforge.tokenizer import Tokenizer
    from genforge.weights.gguf import read_gguf

    try:
        gguf = hub.resolve(args.model)
    except GenforgeError as e:
        sys.exit(f"error: {e}")
    end_ids = Tokenizer.from_gguf_metadata(read_gguf(gguf).metadata).eos_ids
    results: dict[tuple[str, int], dict] = {}
    for clients in counts:
        for name in servers:
            print(f"loading: {name}, {clients} clients for {args.duration:g} s", file=sys.stderr)
            try:
                res = run_server(name, args, clients, gguf, end_ids)
            except RuntimeError as e:  # the server died: llama-server's repacking, on some CPUs
                if name != "llama-server" or args.no_repack:
                    raise
                print(f"{name} failed with weight repacking; again without:\n{e}", file=sys.stderr)
                args.no_repack = True
                res = run_server(name, args, clients, gguf, end_ids)
            results[name, clients] = res
            print(f"{name}: {json.dumps(res)}", file=sys.stderr)
            if name == "genforge" and res["errors"]:
                print(f"\n*** genforge: {res['errors']} FAILED REQUESTS ***", file=sys.stderr)
                print("\n".join(res["first_errors"]) + "\n", file=sys.stderr)
    write_section(args.out, SERVE_LOAD_HEADING, section(results, args, load))
    if any(r["errors"] for (name, _), r in results.items() if name == "genforge"):
        sys.exit(1)


# -- RESULTS.md -------------------------------------------------------------------------------


TARGET = (
    1.5  # genforge's aggregate tokens/s over llama-server's at the same clients (docs/engine.md)
)
READY_S = 5.0  # `genforge serve` ready within (docs/engine.md)


def memory_target_mb(model: str) -> tuple[float, float, float]:
    """(file MB, KV MB, target MB): peak RSS <= 1.3 x the GGUF file + the KV cache genforge
    configures (CONTEXT positions, fp16, its default) + 300 MB (docs/engine.md)."""
    from genforge import hub
    from genforge.weights.configs import config_from_gguf
    from genforge.weights.gguf import read_gguf

    path = hub.resolve(model)
    g = read_gguf(path)
    cfg = config_from_gguf(g.metadata, set(g.tensors))
    kv = cfg.n_layers * cfg.n_kv_heads * cfg.head_dim * 2 * 2 * CONTEXT / 1e6
    file_mb = path.stat().st_size / 1e6
    return file_mb, kv, 1.3 * file_mb + kv + 300


def section(results: dict, args, load: float) -> list[str]:
    from llama_bench import VERSION

    repack = "off (`--no-repack`: with it on, it crashed on this CPU)" if args.no_repack else "on"
    lines = [
        SERVE_LOAD_HEADING,
        "",
        provenance(load, "make bench-serve"),
        "",
        f"{args.model}, 2 threads, a context budget of {CONTEXT} tokens for each server. Each server "
        "alone, as a subprocess, started again for each number of clients N: genforge's "
        f"(`genforge serve --threads 2 --ctx {CONTEXT}`, otherwise its defaults: `--dtype auto`, "
        f"`--max-batch 32`) and llama.cpp's own `llama-server` (built from the llama.cpp sources in "
        f"llama-cpp-python {VERSION}; `-t 2 -np N -c {CONTEXT}`: N slots, continuous batching; weight "
        f"repacking {repack}). N clients each loop for {args.duration:g} s on streamed "
        f"`/v1/chat/completions`: a short distinct question, {args.max_tokens} tokens "
        f"(end tokens banned with `logit_bias` -100), temperature {TEMPERATURE}, top-p {TOP_P}, "
        "no repetition penalties, a seed per request; after that no new requests, the running "
        "ones finish.",
        "",
        "tokens/s: completion tokens of all requests / wall time from the first request to the last "
        "reply. TTFT: from sending a request to its first content chunk (for a server that queues, "
        "this includes the wait). Ready: from starting the process to its first answer on "
        "`/health` (genforge loads its model before it listens). Peak RSS: the server process and "
        "its children, sampled every 0.5 s; idle RSS: after one warm-up request, before the load.",
        "",
        "| server | clients | requests | tokens | wall s | tokens/s | TTFT p50 s | TTFT p99 s | "
        f"errors | ready s | idle RSS MB | peak RSS MB | tokens/s vs llama-server (target {TARGET}x) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for (name, n), r in results.items():
        base = results.get(("llama-server", n), {}).get("tps")
        vs = f"{r['tps'] / base:.2f}x" if base else "—"
        if name == "genforge" and base:
            vs += " met" if r["tps"] / base >= TARGET else " missed"
        p50, p99 = (f"{r[k]:.2f}" if r[k] else "—" for k in ("ttft_p50_s", "ttft_p99_s"))
        lines.append(
            f"| {name} | {n} | {r['requests']} | {r['tokens']} | {r['wall_s']:.1f} | "
            f"{r['tps']:.1f} | {p50} | {p99} | {r['errors']} | {r['ready_s']:.1f} | "
            f"{r['idle_rss_mb']:.0f} | {r['peak_rss_mb']:.0f} | {vs} |"
        )
    counted = {
        f"{name} ({n}): {', '.join(f'{how} ({k})' for how, k in r['counted'].items())}"
        for (name, n), r in results.items()
    }
    lines += ["", "Tokens counted from: " + "; ".join(sorted(counted)) + ".", ""]
    ours = [r for (name, _), r in results.items() if name == "genforge"]
    if ours:
        file_mb, kv_mb, target_mb = memory_target_mb(args.model)
        ready, peak = max(r["ready_s"] for r in ours), max(r["peak_rss_mb"] for r in ours)
        lines += [
            "| genforge target | measured (worst run) | target | met |",
            "|---|---|---|---|",
            f"| `genforge serve` ready | {ready:.1f} s | <= {READY_S:.0f} s | "
            f"{'met' if ready <= READY_S else 'missed'} |",
            f"| peak RSS | {peak:.0f} MB | <= {target_mb:.0f} MB (1.3 x {file_mb:.0f} MB file + "
            f"{kv_mb:.0f} MB fp16 KV + 300) | {'met' if peak <= target_mb else 'missed'} |",
            "",
        ]
    return lines


if __name__ == "__main__":
    main()
