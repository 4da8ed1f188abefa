"""Serving under load: concurrent streaming chat clients against genforge's and llama-cpp-python's servers.

    make bench-serve      # 32 clients for 60 s per server, then rewrites its section of RESULTS.md
    python benchmarks/serve_load.py --clients 4 --duration 10 --out /tmp/r.md

Each server runs alone, as a subprocess on a free local port with 2 threads, and is stopped before the
next starts. Every client loops for --duration seconds: POST /v1/chat/completions with stream=true,
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
from bench_engine import MODEL, SERVE_LOAD_HEADING, llama_cpp_python, provenance, write_section

HERE = Path(__file__).resolve().parent
SERVERS = ("genforge", "llama-cpp-python server")
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


def request_body(tag: str, i: int, max_tokens: int, end_ids: frozenset[int]) -> dict:
    """Request i of a client (the same for both servers): a distinct question and seed."""
    return {
        "model": MODEL,
        "messages": serving.chat(tag, i),
        "stream": True,
        "stream_options": {"include_usage": True},
        "max_tokens": max_tokens,
        "temperature": TEMPERATURE,
        "top_p": TOP_P,
        "seed": zlib.crc32(f"{tag}.{i}".encode()),
        # -100 (the OpenAI limit) never lets an end token through: every request runs to max_tokens
        "logit_bias": {str(t): -100 for t in sorted(end_ids)},
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


async def drive(url: str, pid: int, args, end_ids: frozenset[int], extra: dict) -> dict:
    import httpx

    def body(tag, i):
        return {**request_body(tag, i, args.max_tokens, end_ids), **extra}

    load, peak = Load(), [0.0]
    sampler = asyncio.create_task(sample_peak_rss(pid, peak))
    limits = httpx.Limits(max_connections=args.clients, max_keepalive_connections=args.clients)
    async with httpx.AsyncClient(timeout=httpx.Timeout(DRAIN_LIMIT_S), limits=limits) as client:
        # a warm-up request, not counted: first-call costs (lazy imports, allocations) are not load
        await stream_one(client, url, body("warm-up", 0), Load())
        idle_mb = tree_rss_mb(pid)
        t0 = time.perf_counter()
        until = t0 + args.duration
        clients = (
            client_loop(client, url, f"c{c}", until, body, load) for c in range(args.clients)
        )
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


def genforge_command(port: int) -> list[str]:
    return [
        sys.executable,
        "-m",
        "genforge",
        "serve",
        "-m",
        MODEL,
        "--threads",
        "2",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]


def run_server(name: str, args, gguf: Path, end_ids: frozenset[int]) -> dict:
    extra = {}
    if name == "genforge":
        port = serving.free_port()
        env = {**os.environ, "OMP_NUM_THREADS": "2", "HF_HUB_OFFLINE": "1"}
        server = serving.server_process(
            genforge_command(port), f"http://127.0.0.1:{port}", "/health", env
        )
    else:
        server = serving.llama_server(gguf, n_ctx=2048)
        extra = {"repeat_penalty": 1.0}  # its default is 1.1; genforge's is 1.0 (off)
    with server as (url, pid):
        return asyncio.run(drive(url, pid, args, end_ids, extra))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", type=int, default=32, help="concurrent streaming clients")
    ap.add_argument("--duration", type=float, default=60, help="seconds each client keeps asking")
    ap.add_argument("--max-tokens", type=int, default=64, help="tokens generated per request")
    ap.add_argument("--servers", default=",".join(SERVERS), help="comma-separated servers to load")
    ap.add_argument(
        "--out", type=Path, default=HERE / "RESULTS.md", help="the RESULTS.md to update"
    )
    args = ap.parse_args()
    servers = [s for s in args.servers.split(",") if s]
    if unknown := sorted(set(servers) - set(SERVERS)):
        ap.error(f"unknown server {unknown[0]!r}; choose from {', '.join(SERVERS)}")
    load = os.getloadavg()[0]

    from genforge import hub
    from genforge.tokenizer import Tokenizer
    from genforge.weights.gguf import read_gguf

    gguf = hub.resolve(MODEL)
    end_ids = Tokenizer.from_gguf_metadata(read_gguf(gguf).metadata).eos_ids
    results = {}
    for name in servers:
        print(f"loading: {name}, {args.clients} clients for {args.duration:g} s", file=sys.stderr)
        results[name] = res = run_server(name, args, gguf, end_ids)
        print(f"{name}: {json.dumps(res)}", file=sys.stderr)
        if name == "genforge" and res["errors"]:
            print(f"\n*** genforge: {res['errors']} FAILED REQUESTS ***", file=sys.stderr)
            print("\n".join(res["first_errors"]) + "\n", file=sys.stderr)
    write_section(args.out, SERVE_LOAD_HEADING, section(results, args, load))
    if results.get("genforge", {}).get("errors"):
        sys.exit(1)


# -- RESULTS.md -------------------------------------------------------------------------------


def section(results: dict, args, load: float) -> list[str]:
    base = results.get("llama-cpp-python server", {}).get("tps")
    lines = [
        SERVE_LOAD_HEADING,
        "",
        provenance(load, "make bench-serve"),
        "",
        f"{MODEL}, 2 threads. Each server alone, as a subprocess: genforge's "
        "(`genforge serve --threads 2`, its defaults: `--dtype auto`, `--max-batch 32`) and "
        f"the server of {llama_cpp_python()} (`benchmarks/llama_server.py`, "
        "`--interrupt_requests False`; it serves one request at a time; not llama.cpp's own "
        "`llama-server`). "
        f"{args.clients} clients each loop for {args.duration:g} s on streamed "
        f"`/v1/chat/completions`: a short distinct question, {args.max_tokens} tokens "
        f"(end tokens banned with `logit_bias` -100), temperature {TEMPERATURE}, a seed per "
        "request; after that no new requests, the running ones finish.",
        "",
        "tokens/s: completion tokens of all requests / wall time from the first request to the last "
        "reply. TTFT: from sending a request to its first content chunk (for a server that queues, "
        "this includes the wait). Peak RSS: the server process and its children, sampled every "
        "0.5 s; idle RSS: after one warm-up request, before the load.",
        "",
        "| server | requests | tokens | wall s | tokens/s | TTFT p50 s | TTFT p99 s | errors | "
        "idle RSS MB | peak RSS MB | tokens/s vs llama-cpp-python server |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in results.items():
        vs = f"{r['tps'] / base:.2f}x" if base else "—"
        p50, p99 = (f"{r[k]:.2f}" if r[k] else "—" for k in ("ttft_p50_s", "ttft_p99_s"))
        lines.append(
            f"| {name} | {r['requests']} | {r['tokens']} | {r['wall_s']:.1f} | {r['tps']:.1f} | "
            f"{p50} | {p99} | {r['errors']} | {r['idle_rss_mb']:.0f} | {r['peak_rss_mb']:.0f} | {vs} |"
        )
    counted = {
        f"{name}: {', '.join(f'{how} ({n})' for how, n in r['counted'].items())}"
        for name, r in results.items()
    }
    return [*lines, "", "Tokens counted from: " + "; ".join(sorted(counted)) + ".", ""]


if __name__ == "__main__":
    main()
