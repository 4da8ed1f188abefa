"""Soak: a real `genforge serve` process under 500 streamed chats, about half abandoned mid-stream.

A client that goes away must cancel its engine request and release what it held: after the load the
server is idle again (nothing in flight, nothing running or waiting in the engine) and its resident
memory has not grown by more than RSS_GROWTH_MB since a warm-up of the same mix. Memory, not timing:
the deadlines below only keep a broken server from hanging the test.
"""

from __future__ import annotations

import asyncio
import random
import time
from pathlib import Path

import httpx
import pytest
from conftest import MODEL, Server

pytestmark = pytest.mark.slow

WARM_UP, REQUESTS, CONCURRENCY, MAX_TOKENS = 50, 500, 16, 24
RSS_GROWTH_MB = 64
IDLE_GAUGES = (
    "genforge_requests_in_flight",
    'genforge_engine_requests{state="running"}',
    'genforge_engine_requests{state="waiting"}',
)
QUESTIONS = [
    "What is a hash table?",
    "Name three rivers.",
    "Why is the sky blue?",
    "Write a haiku about rain.",
    "What does a compiler do?",
    "Explain recursion.",
]


@pytest.fixture(scope="module")
def soak_server(smollm2_path):
    """A server of its own, so that the memory measured is this load's alone.

    Its KV pool is allocated untouched and its pages become resident block by block as the prefix
    cache fills them (by design, up to the whole pool). A 1,024-token context keeps the pool at 64
    blocks, all touched during the warm-up, so what grows after it is not the cache.
    """
    s = Server("-m", MODEL, "--threads", "2", "--ctx", "1024")
    yield s
    s.stop()


def rss_mb(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    return next(int(ln.split()[1]) for ln in status.splitlines() if ln.startswith("VmRSS:")) / 1024


def gauges(url: str) -> dict[str, float]:
    text = httpx.get(url + "/metrics", timeout=10).text
    values = {}
    for line in text.splitlines():
        name, _, value = line.rpartition(" ")
        if name in IDLE_GAUGES:
            values[name] = float(value)
    assert set(values) == set(IDLE_GAUGES), f"/metrics lacks {set(IDLE_GAUGES) - set(values)}"
    return values


def wait_until_idle(url: str) -> dict[str, float]:
    """The gauges once all are 0, or as they still are after a generous wait."""
    deadline = time.monotonic() + 30
    while any((values := gauges(url)).values()) and time.monotonic() < deadline:
        time.sleep(0.2)
    return values


async def one_chat(client, url: str, rng: random.Random, ban: dict, outcome: dict) -> None:
    """A streamed chat; about half the time the client closes it after a random number of chunks."""
    body = {
        "model": MODEL,
        "stream": True,
        "max_tokens": MAX_TOKENS,
        "temperature": 0.7,
        "seed": rng.randrange(2**31),
        "logit_bias": ban,
        "messages": [{"role": "user", "content": rng.choice(QUESTIONS)}],
    }
    # end tokens are banned, so every reply has MAX_TOKENS chunks or more and a cut lands mid-stream
    cut = rng.randint(1, MAX_TOKENS // 2) if rng.random() < 0.5 else None
    chunks = 0
    async with client.stream("POST", url + "/v1/chat/completions", json=body) as reply:
        if reply.status_code != 200:
            outcome["failed"].append(f"HTTP {reply.status_code}: {(await reply.aread())[:200]!r}")
            return
        async for line in reply.aiter_lines():
            if line == "data: [DONE]":
                outcome["done"] += 1
                return
            if line.startswith("data: "):
                chunks += 1
                if chunks == cut:
                    outcome["abandoned"] += 1
                    return  # leaving the block closes the connection mid-stream
    outcome["failed"].append(f"stream ended after {chunks} chunks without [DONE]")


def run_load(url: str, n: int, seed: int, ban: dict) -> dict:
    async def main():
        rng, outcome = random.Random(seed), {"done": 0, "abandoned": 0, "failed": []}
        todo = iter(range(n))
        async with httpx.AsyncClient(timeout=httpx.Timeout(300)) as client:

            async def worker():
                for _ in todo:
                    await one_chat(client, url, rng, ban, outcome)

            await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
        return outcome

    return asyncio.run(main())


def test_abandoned_streams_leave_the_server_idle_and_memory_flat(soak_server, smollm2_path):
    from genforge.tokenizer import Tokenizer
    from genforge.weights.gguf import read_gguf

    url, pid = soak_server.url, soak_server.proc.pid
    end_ids = Tokenizer.from_gguf_metadata(read_gguf(smollm2_path).metadata).eos_ids
    ban = {str(t): -100 for t in sorted(end_ids)}

    warm = run_load(url, WARM_UP, seed=1, ban=ban)
    assert warm["failed"] == []
    assert wait_until_idle(url) == dict.fromkeys(IDLE_GAUGES, 0.0)
    warm_rss = rss_mb(pid)

    soak = run_load(url, REQUESTS, seed=2, ban=ban)
    assert soak["failed"] == [], f"{len(soak['failed'])} failed, e.g. {soak['failed'][:3]}"
    assert soak["done"] + soak["abandoned"] == REQUESTS
    assert REQUESTS // 4 < soak["abandoned"] < REQUESTS * 3 // 4  # the mix really was mixed
    assert wait_until_idle(url) == dict.fromkeys(IDLE_GAUGES, 0.0)
    growth = rss_mb(pid) - warm_rss
    assert growth <= RSS_GROWTH_MB, f"RSS grew {growth:.0f} MB over {REQUESTS} requests"
