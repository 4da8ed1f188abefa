"""Agents behind the API: which tools the server lets them call, and a run as an async stream.

Design choices:
- The server enables its tools once, at start (`genforge serve --agent-tools`); a request picks
  among those only. Tools marked dangerous (`write_file`) ask for approval before each call, and
  HTTP has no channel to ask on, so they cannot be enabled at all: the server offers `python`,
  `calculator` and `rag_search` (the last only with a document store).
- `rag_search` searches the server's default `--rag-store` through the same `DocumentStores` (and
  so the same opened store and embedding model) as `/v1/rag/search`.
- `Agent.run` is a blocking generator: it runs in a thread of its own, which hands each step to the
  event loop. When the client leaves, the thread stops at the next step; the turn the model is
  writing then is finished first (at most `max_new_tokens`).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator, Callable
from typing import Any

from genforge.agents.builtin import BUILTIN, builtin_tools, passages
from genforge.agents.tools import Tool, tool
from genforge.errors import GenforgeError
from genforge.serve.rag import DocumentStores

SERVED = ("calculator", "python", "rag_search")  # the tools genforge serve can enable
DEFAULT_TOOLS = ["calculator", "python"]
RAG_K = 4  # passages one rag_search call returns
SEARCH_TIMEOUT_S = 120  # a search handed to the event loop; the loop is gone if it takes longer


def parse_agent_tools(spec: str, has_store: bool) -> list[str]:
    """`--agent-tools a,b` as a list of names ("none": no agents), refusing what cannot be served."""
    names = [n.strip() for n in spec.split(",") if n.strip()]
    if names == ["none"]:
        return []
    for name in names:
        if name == "write_file":
            raise GenforgeError(
                "--agent-tools write_file cannot be enabled: it asks for approval before each "
                "call, and the HTTP API has no way to give it."
            )
        if name not in SERVED:
            offered = "a tool of the command line only" if name in BUILTIN else "not a tool"
            raise GenforgeError(
                f"--agent-tools {name} is {offered}; genforge serve offers "
                f"{', '.join(SERVED)} (or none)."
            )
    if "rag_search" in names and not has_store:
        raise GenforgeError(
            "--agent-tools rag_search needs a document store: add --rag-store FILE."
        )
    if not names:
        raise GenforgeError(
            "--agent-tools is empty; name tools such as calculator,python, or none."
        )
    return list(dict.fromkeys(names))


def make_tools(
    names: list[str], documents: DocumentStores | None, loop: asyncio.AbstractEventLoop
) -> list[Tool]:
    """The tools `names` (all enabled on this server), made for one run."""
    made = {t.name: t for t in builtin_tools([n for n in names if n != "rag_search"])}
    if "rag_search" in names:
        if documents is None:  # parse_agent_tools refuses this at start
            raise GenforgeError("rag_search needs a document store (--rag-store FILE).")
        made["rag_search"] = _rag_search(documents, loop)
    return [made[n] for n in names]


def describe(names: list[str], documents: DocumentStores | None) -> list[dict[str, Any]]:
    """The enabled tools as `GET /v1/agents/tools` lists them."""
    loop = asyncio.get_running_loop()
    return [
        {"name": t.name, "description": t.description, "dangerous": t.dangerous}
        for t in make_tools(names, documents, loop)
    ]


def _rag_search(documents: DocumentStores, loop: asyncio.AbstractEventLoop) -> Tool:
    @tool
    def rag_search(query: str) -> str:
        """Search the user's documents and return the most relevant passages with their sources.

        Args:
            query: what to look for, in a few words.
        """
        future = asyncio.run_coroutine_threadsafe(documents.search(query, k=RAG_K), loop)
        return passages(future.result(timeout=SEARCH_TIMEOUT_S), documents.root)

    return rag_search


_END = object()


async def steps(agent, task: str, done: Callable[[], None]) -> AsyncIterator[dict[str, Any]]:
    """The steps of `agent.run(task)` as dicts, the run going on in a thread of its own.

    Leaving the iteration (a client that disconnects, an error) stops the run at its next step;
    `done` is called on the event loop once the thread has finished, however it ended."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue = asyncio.Queue()
    stop = threading.Event()

    def put(item) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is listening
            loop.call_soon_threadsafe(queue.put_nowait, item)

    def work() -> None:
        run = agent.run(task)
        try:
            for step in run:
                put(step.to_dict())
                if stop.is_set():
                    break
        except BaseException as e:  # noqa: BLE001 - raised again on the event loop
            put(e)
        finally:
            run.close()
            put(_END)
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(done)

    threading.Thread(target=work, name="genforge-agent", daemon=True).start()
    try:
        while (item := await queue.get()) is not _END:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
