"""Serving measurements for bench_engine.py: throughput under concurrency and the prefix cache.

- aggregate: N requests at once, each `new_tokens` greedy tokens with end-of-sequence ignored, each a
  distinct short chat (they share only the chat template's default system prompt). genforge runs
  them through its engine in-process, N threads calling `engine.generate` (no HTTP);
  llama-cpp-python (llama.cpp through its Python binding) through its OpenAI-compatible server,
  N HTTP clients posting /v1/completions.
  Aggregate tokens/s = completion tokens of all N requests / wall time from first post to last reply.
- prefix: time to first token of a chat with a long system prompt (cold), then of a second chat with
  the same system prompt and another question (warm). Each run uses a new system prompt, so the cold
  request never finds it cached.

bench_engine.py runs each function here in a worker process of its own and writes the tables.
"""

from __future__ import annotations

import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

HERE = Path(__file__).resolve().parent
QUESTIONS = [
    "What is a hash table?",
    "Name three rivers in Europe.",
    "How do I reverse a list in Python?",
    "Why is the sky blue?",
    "Write a haiku about autumn.",
    "What does a compiler do?",
    "Give me a tip for learning French.",
    "How many legs does a spider have?",
    "Explain recursion to a child.",
    "What is the boiling point of water?",
    "Suggest a name for a grey cat.",
    "What is the difference between TCP and UDP?",
    "How do vaccines work?",
    "Describe a good breakfast.",
    "What is a prime number?",
    "Why do we have seasons?",
]


def chat(tag: str, i: int, system: str | None = None) -> list[dict]:
    """Request i of a group: a distinct question; the tag keeps groups (runs) apart in the cache."""
    user = {"role": "user", "content": f"({tag}.{i}) {QUESTIONS[i % len(QUESTIONS)]}"}
    return [{"role": "system", "content": system}, user] if system else [user]


def concurrently(fn: Callable[[int], int], n: int) -> dict:
    """Run fn(0..n-1) on n threads at once; fn returns the tokens it got."""
    with ThreadPoolExecutor(max_workers=n) as pool:
        t0 = time.perf_counter()
        tokens = sum(pool.map(fn, range(n)))
        wall = time.perf_counter() - t0
    return {"tokens": tokens, "wall_s": wall, "tps": tokens / wall}


# -- aggregate throughput ---------------------------------------------------------------------


def genforge_aggregate(llm, batch_sizes: list[int], new_tokens: int, runs: int) -> dict:
    from genforge.generate.sampling import SamplingParams

    params = SamplingParams(temperature=0, max_tokens=new_tokens)

    def group(tag: str, n: int) -> dict:
        prompts = [llm.tokenizer.encode_chat(chat(tag, i)) for i in range(n)]
        # no end-of-sequence ids: every request makes exactly new_tokens tokens
        generate = llm.engine.generate
        return concurrently(lambda i: sum(1 for _ in generate(prompts[i], params, frozenset())), n)

    group("warm-up", 1)
    return {"aggregate": {str(n): [group(f"{n}/{r}", n) for r in range(runs)] for n in batch_sizes}}


def llama_server_aggregate(
    gguf: Path, tokenizer, batch_sizes: list[int], new_tokens: int, runs: int
) -> dict:
    # The server has no ignore_eos; a -1e9 bias on the end tokens does the same (a Python logits
    # processor on its side). Its default repeat_penalty is 1.1; 1.0 keeps it plain greedy.
    body = {
        "max_tokens": new_tokens,
        "temperature": 0,
        "repeat_penalty": 1.0,
        "logit_bias": {str(t): -1e9 for t in tokenizer.eos_ids},
    }
    with llama_server(gguf, n_ctx=2048) as (url, pid):

        def group(tag: str, n: int) -> dict:
            texts = [tokenizer.apply_chat_template(chat(tag, i)) for i in range(n)]
            return concurrently(lambda i: post_completion(url, {**body, "prompt": texts[i]}), n)

        group("warm-up", 1)
        result = {str(n): [group(f"{n}/{r}", n) for r in range(runs)] for n in batch_sizes}
        peak = vm_hwm_mb(pid)
    return {"aggregate": result, "peak_rss_mb": peak, "n_ctx": 2048}


def post_completion(url: str, body: dict) -> int:
    req = urllib.request.Request(
        url + "/v1/completions", json.dumps(body).encode(), {"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=3600) as reply:
        return json.load(reply)["usage"]["completion_tokens"]


@contextmanager
def llama_server(gguf: Path, n_ctx: int) -> Iterator[tuple[str, int]]:
    """Start llama-cpp-python's server on a free local port; yield its URL and pid."""
    port = free_port()
    cmd = [
        sys.executable,
        str(HERE / "llama_server.py"),
        "--model",
        str(gguf),
        "--n_threads",
        "2",
        "--n_threads_batch",
        "2",
        "--n_ctx",
        str(n_ctx),
        "--interrupt_requests",
        "False",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    with server_process(cmd, f"http://127.0.0.1:{port}") as (url, pid):
        yield url, pid


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def server_process(
    cmd: list[str], url: str, ready: str = "/v1/models", env: dict | None = None
) -> Iterator[tuple[str, int]]:
    """Run a server, wait until GET url+ready answers, yield its URL and pid; stop it on exit."""
    with tempfile.TemporaryFile("w+") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
        try:
            wait_until_up(proc, url + ready, log)
            yield url, proc.pid
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def wait_until_up(proc: subprocess.Popen, url: str, log, timeout_s: float = 180) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            log.seek(0)
            raise RuntimeError(
                f"{' '.join(proc.args)} exited ({proc.returncode}):\n{log.read()[-3000:]}"
            )
        try:
            with urllib.request.urlopen(url, timeout=5):
                return
        except (urllib.error.URLError, ConnectionError):
            time.sleep(0.1)  # the time to ready is reported to a tenth of a second
    raise RuntimeError(f"no answer from {url} within {timeout_s:.0f} s")


def vm_hwm_mb(pid: int) -> float:
    """Peak resident memory of a running process (VmHWM in /proc/<pid>/status)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmHWM for pid {pid}")


# -- prefix cache ---------------------------------------------------------------------------


def system_prompts(tokenizer, text: str, n_tokens: int, count: int) -> list[str]:
    """`count` different system prompts of about n_tokens tokens each, cut from `text`."""
    ids = tokenizer.encode(text, add_special=False)
    if len(ids) < n_tokens * count:
        sys.exit(f"not enough held-out text for {count} system prompts of {n_tokens} tokens")
    return [tokenizer.decode(ids[i * n_tokens : (i + 1) * n_tokens]) for i in range(count)]


def prefix_runs(ttft: Callable[[list[int]], dict], tokenizer, systems: list[str]) -> list[dict]:
    """Per system prompt: TTFT of a first (cold) and a second (warm) chat that share it."""
    ttft(tokenizer.encode_chat(chat("warm-up", 0)))
    runs = []
    for r, system in enumerate(systems):
        cold = ttft(tokenizer.encode_chat(chat(f"cold{r}", 0, system)))
        warm = ttft(tokenizer.encode_chat(chat(f"warm{r}", 1, system)))
        runs.append(
            {
                "cold_s": cold["ttft_s"],
                "warm_s": warm["ttft_s"],
                "ratio": warm["ttft_s"] / cold["ttft_s"],
                "prompt_tokens": warm["prompt_tokens"],
                "cold_reused": cold["reused"],
                "warm_reused": warm["reused"],
            }
        )
    return runs


def genforge_prefix(llm, systems: list[str]) -> list[dict]:
    from genforge.generate.sampling import SamplingParams

    engine, first = llm.engine, SamplingParams(temperature=0, max_tokens=1)

    def ttft(ids: list[int]) -> dict:
        hits = engine.pool.hits
        t0 = time.perf_counter()
        tokens = engine.generate(ids, first)
        next(tokens)
        dt = time.perf_counter() - t0
        tokens.close()
        return {"ttft_s": dt, "prompt_tokens": len(ids), "reused": engine.pool.hits - hits}

    return prefix_runs(ttft, llm.tokenizer, systems)


def llama_cpp_prefix(llm, tokenizer, systems: list[str]) -> list[dict]:
    """llama-cpp-python's `Llama.generate` keeps the previous prompt's cache, reusing its common prefix."""
    previous: list[int] = []

    def ttft(ids: list[int]) -> dict:
        nonlocal previous
        reused = len(os.path.commonprefix([previous, ids]))
        t0 = time.perf_counter()
        tokens = llm.generate(ids, temp=0.0, top_k=1, repeat_penalty=1.0, reset=True)
        next(tokens)
        dt = time.perf_counter() - t0
        tokens.close()
        previous = ids
        return {"ttft_s": dt, "prompt_tokens": len(ids), "reused": reused}

    return prefix_runs(ttft, tokenizer, systems)


def kv_bytes_per_token_f16(metadata: dict) -> int:
    """llama.cpp's KV cache per position (f16 keys and values, its default), from GGUF metadata."""
    arch = metadata["general.architecture"]
    heads = metadata[f"{arch}.attention.head_count"]
    head_dim = metadata.get(f"{arch}.attention.key_length") or (
        metadata[f"{arch}.embedding_length"] // heads
    )
    return (
        2
        * metadata[f"{arch}.block_count"]
        * metadata[f"{arch}.attention.head_count_kv"]
        * head_dim
        * 2
    )


def genforge_kv_mb(engine) -> float:
    """The engine's configured KV pool (torch.empty: pages never touched cost no memory)."""
    cache = engine.cache
    return sum(t.numel() * t.element_size() for t in (*cache.k, *cache.v)) / 1e6


# -- RESULTS.md sections ------------------------------------------------------------------------


def aggregate_section(results: dict, batch_sizes: str, new_tokens: int) -> list[str]:
    rows = {(peer, d): r for (part, peer, d), r in results.items() if part == "batch"}
    if not rows:
        return []
    sizes = batch_sizes.split(",")
    tps = {
        key: {n: statistics.median(r["tps"] for r in res["aggregate"][n]) for n in sizes}
        for key, res in rows.items()
    }
    base = next((t for (peer, _), t in tps.items() if peer == "llama-cpp-python server"), {})
    lines = [
        f"### Aggregate decode throughput: N concurrent requests of {new_tokens} new tokens",
        "",
        "Greedy, end of sequence ignored so that every request makes all its tokens; each request a "
        "distinct short chat (only the chat template's default system prompt is shared). genforge: "
        "N threads calling `engine.generate` in-process, batched by its engine; **this excludes "
        "HTTP** (serve_load.py measures both servers over HTTP). llama-cpp-python's server "
        "(`benchmarks/llama_server.py`: `--n_threads 2 --interrupt_requests False`, weight repacking "
        "off), N HTTP clients posting `/v1/completions` at once; it serves one request at a time. "
        "End of sequence is ignored there with a -1e9 `logit_bias` on the end tokens (the server has "
        "no `ignore_eos`), and `repeat_penalty` is set to 1.0 (its default is 1.1).",
        "",
        "Cells: completion tokens of all N requests / wall time from the first request to the last "
        "reply, in tokens/s (the short prompts are prefilled within that time); in brackets, the ratio to llama-cpp-python's server at the same N.",
        "",
        "| peer | weights | "
        + " | ".join(f"N={n}" for n in sizes)
        + f" | N={sizes[-1]} vs N={sizes[0]} |",
        "|---|---|" + "---|" * (len(sizes) + 1),
    ]
    for (peer, dtype), t in tps.items():
        cells = [f"{t[n]:.1f} ({t[n] / base[n]:.2f}x)" if base else f"{t[n]:.1f}" for n in sizes]
        lines.append(
            f"| {peer} | {dtype} | " + " | ".join(cells) + f" | {t[sizes[-1]] / t[sizes[0]]:.2f}x |"
        )
    short = [
        f"{peer} {dtype} N={n}: {r['tokens']} of {int(n) * new_tokens} tokens"
        for (peer, dtype), res in rows.items()
        for n in sizes
        for r in res["aggregate"][n]
        if r["tokens"] < int(n) * new_tokens
    ]
    if short:
        lines += [
            "",
            "Runs that made fewer tokens than asked (counted as made): " + "; ".join(short) + ".",
        ]
    return [*lines, ""]


def prefix_section(results: dict, system_tokens: int) -> list[str]:
    rows = {(peer, d): r["runs"] for (part, peer, d), r in results.items() if part == "prefix"}
    if not rows:
        return []
    keys = ("cold_s", "warm_s", "ratio", "prompt_tokens", "cold_reused", "warm_reused")
    med = {
        key: {k: statistics.median(r[k] for r in runs) for k in keys} for key, runs in rows.items()
    }
    base = next((m for (peer, _), m in med.items() if peer == "llama-cpp-python"), None)
    lines = [
        f"### Prefix cache: time to first token with a ~{system_tokens}-token system prompt",
        "",
        "Cold: a chat with a new system prompt (held-out Python documentation prose); warm: a second "
        "chat with the same system prompt and another question. Each run uses a new system prompt. "
        "warm / cold is the median of each run's ratio. Reused: prompt tokens whose keys and values "
        "came from the cache — for genforge the engine's automatic prefix cache (`engine.pool.hits`, "
        "whole 16-token blocks); for llama-cpp-python (in-process `Llama.generate`) the common prefix "
        "with the previous prompt, the only one whose cache it keeps. Speed vs llama-cpp-python: its "
        "time / this peer's time (above 1 = faster than llama-cpp-python).",
        "",
        "| peer | weights | prompt tokens | cold TTFT s | warm TTFT s | warm / cold | reused cold / warm | cold speed vs llama-cpp-python | warm speed vs llama-cpp-python |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for (peer, dtype), m in med.items():
        vs = [f"{base[k] / m[k]:.2f}x" if base else "—" for k in ("cold_s", "warm_s")]
        lines.append(
            f"| {peer} | {dtype} | {m['prompt_tokens']:.0f} | {m['cold_s']:.3f} | {m['warm_s']:.3f} | "
            f"{m['ratio']:.2f}x | {m['cold_reused']:.0f} / {m['warm_reused']:.0f} | {vs[0]} | {vs[1]} |"
        )
    return [*lines, ""]
