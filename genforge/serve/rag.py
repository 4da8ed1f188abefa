"""Document stores behind the API: `/v1/rag/stores`, `/v1/rag/search`, `/v1/rag/index`, and the
`rag` option of `/v1/chat/completions`, which grounds the last user message in retrieved passages.

Design choices:
- Stores open on first use, each with one Retriever; the embedding model loads on first use too
  (shared with `/v1/embeddings`). Whatever blocks (opening, embedding, searching, indexing) runs in
  a worker thread, never on the event loop.
- Indexing reads only under `--rag-root`: a path is resolved (symlinks, `..`) before it is checked,
  and a symlinked file inside the folder that points outside it refuses the run. One index run per
  store at a time; a run outlives a client that goes away (what it committed stays committed).
- Retrieved text only ever goes into the user turn, quoted by `genforge.rag.answer.build_messages`;
  the system message gets the instructions only, so it never carries document text (tools are
  described there by templates without native tool support).
- `rag_chunks` are the passages the model was shown, in prompt order: citation `[n]` is
  `rag_chunks[n - 1]`. When none is relevant the model does not run and the answer is `NO_ANSWER`.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit, urlunsplit

from genforge.data.files import walk
from genforge.errors import GenforgeError
from genforge.rag.answer import (
    MIN_SIMILARITY,
    SYSTEM,
    build_messages,
    citations,
    meaning,
    relevant,
)
from genforge.rag.embed import NAME, Embedder
from genforge.rag.ingest import Report, index
from genforge.rag.retrieve import Hit, Retriever
from genforge.rag.store import Store
from genforge.rag.stores import open_store
from genforge.serve.errors import APIError, bad_request
from genforge.serve.schemas import ChatRequest, ContentPart, Message

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

log = logging.getLogger(__name__)

NO_STORE = "this server has no document store; start it with --rag-store FILE."


@dataclass(frozen=True)
class StoreSpec:
    """One `--rag-store [NAME=]FILE|URL`."""

    name: str
    location: str  # a SQLite file path or a postgresql:// URL

    @classmethod
    def parse(cls, spec: str) -> StoreSpec:
        name, sep, location = spec.partition("=")
        if not sep or not re.fullmatch(r"[\w.-]+", name):  # `a=b.sqlite` is a path
            name, location = "", spec
        if not location:
            raise GenforgeError(f"--rag-store wants [NAME=]FILE|URL, got {spec!r}.")
        if _is_url(location):
            return cls(name or urlsplit(location).path.strip("/") or "postgres", location)
        path = Path(location).expanduser()
        if path.is_dir():
            raise GenforgeError(
                f"--rag-store {location} is a folder; give a file name such as docs.sqlite."
            )
        if not path.parent.is_dir():
            raise GenforgeError(
                f"the folder of --rag-store {location} does not exist; create it first."
            )
        return cls(name or path.stem, str(path.resolve()))


def parse_stores(specs: list[str]) -> list[StoreSpec]:
    stores = [StoreSpec.parse(s) for s in specs]
    names = [s.name for s in stores]
    if dupes := sorted({n for n in names if names.count(n) > 1}):
        raise GenforgeError(f"two --rag-store share the name {dupes[0]!r}; name them: NAME=FILE.")
    return stores


def parse_root(root: str) -> Path:
    path = Path(root).expanduser().resolve()
    if not path.is_dir():
        raise GenforgeError(f"--rag-root {root} is not a folder.")
    return path


def _is_url(location: str) -> bool:
    return location.startswith(("postgresql://", "postgres://"))


def public_location(location: str) -> str:
    """The location fit to show to clients: a file's name, not where it is on the server; a URL
    without its password."""
    if not _is_url(location):
        return Path(location).name
    parts = urlsplit(location)
    if parts.password is None:
        return location
    netloc = f"{parts.username}:***@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


@dataclass
class _Entry:
    spec: StoreSpec
    store: Store | None = None
    retriever: Retriever | None = None
    opening: asyncio.Lock = field(default_factory=asyncio.Lock)
    indexing: threading.Lock = field(default_factory=threading.Lock)  # released by the worker


class DocumentStores:
    """The server's named stores (the first is the default) and the folder it may index."""

    def __init__(
        self,
        specs: list[StoreSpec],
        root: Path,
        shared_embedder: Callable[[str], Awaitable[Embedder]],
    ):
        self.root = Path(root).resolve()
        self.entries = {s.name: _Entry(s) for s in specs}
        self.default = specs[0].name
        self._shared_embedder = shared_embedder  # the registry's, for the packaged model
        self._embedders: dict[str, Embedder] = {}
        self._embedder_lock = asyncio.Lock()

    def entry(self, name: str | None) -> _Entry:
        name = self.default if name is None else name
        if name not in self.entries:
            raise APIError(
                404,
                f"There is no document store {name!r}; this server has "
                f"{', '.join(map(repr, self.entries))}.",
                param="store",
                code="store_not_found",
            )
        return self.entries[name]

    async def _store(self, entry: _Entry) -> Store:
        async with entry.opening:
            if entry.store is None:
                try:
                    entry.store = await asyncio.to_thread(open_store, entry.spec.location)
                except GenforgeError as e:
                    raise APIError(
                        500, f"The document store {entry.spec.name!r} could not be opened: {e}"
                    ) from None
        return entry.store

    async def embedder(self, name: str) -> Embedder:
        """The embedding model `name` with its weights loaded (in a thread, once)."""
        async with self._embedder_lock:
            if name not in self._embedders:
                if name == NAME:
                    embedder = await self._shared_embedder(name)
                else:
                    embedder = await asyncio.to_thread(Embedder, name)
                await asyncio.to_thread(getattr, embedder, "model")
                self._embedders[name] = embedder
        return self._embedders[name]

    async def _retriever(self, name: str | None) -> Retriever:
        entry = self.entry(name)
        store = await self._store(entry)
        async with entry.opening:
            if entry.retriever is None:
                meta = await asyncio.to_thread(store.meta)
                if "embedder" not in meta:
                    raise bad_request(
                        f"The document store {entry.spec.name!r} is empty; index a folder first "
                        "(POST /v1/rag/index, or Documents in the web UI).",
                        param="store",
                    )
                embedder = await self.embedder(meta["embedder"])
                entry.retriever = await asyncio.to_thread(Retriever, store, embedder)
        return entry.retriever

    def glob(self, path: str | None) -> str | None:
        """A path filter; a relative one (not starting with a wildcard) is taken under the root."""
        if path is None or path.startswith(("/", "*", "?", "[")):
            return path
        return f"{self.root}{os.sep}{path}"

    async def search(
        self,
        query: str,
        store: str | None = None,
        k: int = 5,
        mode: str = "hybrid",
        path: str | None = None,
    ) -> list[Hit]:
        retriever = await self._retriever(store)
        return await asyncio.to_thread(
            retriever.search, query, k=k, mode=mode, path=self.glob(path)
        )

    async def meaning(self, store: str | None):
        """`similarity` for attributing answers grounded in `store`, from its own embedder."""
        return meaning((await self._retriever(store)).embedder)

    async def describe(self) -> list[dict]:
        out = []
        for name, entry in self.entries.items():
            stats = await asyncio.to_thread((await self._store(entry)).stats)
            out.append(
                {
                    "id": name,
                    "location": public_location(entry.spec.location),
                    **stats,
                    "default": name == self.default,
                    "indexing": entry.indexing.locked(),
                }
            )
        return out

    async def index(self, paths: list[str], name: str | None = None) -> dict:
        """Index `paths` (relative to the root, or absolute under it) into a store; the report."""
        entry = self.entry(name)
        store = await self._store(entry)
        if not entry.indexing.acquire(blocking=False):
            raise APIError(
                409,
                f"The document store {entry.spec.name!r} is already indexing; try again when "
                "that run has finished.",
                param="store",
                code="already_indexing",
            )
        try:
            meta = await asyncio.to_thread(store.meta)
            embedder = await self.embedder(meta.get("embedder", NAME))
        except BaseException:
            entry.indexing.release()
            raise

        def run() -> tuple[Report, dict]:
            try:
                files = [self.checked(p) for p in paths]
                report = index(files, store, embedder=embedder, progress=False)
                log.info(
                    "indexed %s into %s: %s", ", ".join(paths), entry.spec.name, report.summary()
                )
                return report, store.stats()
            finally:
                entry.indexing.release()

        # Shielded: a client that leaves does not stop the run (nor leave the store locked).
        report, stats = await asyncio.shield(asyncio.to_thread(run))
        return {
            "store": entry.spec.name,
            "summary": report.summary(),
            "added": len(report.added),
            "updated": len(report.updated),
            "renamed": len(report.renamed),
            "removed": len(report.removed),
            "unchanged": report.unchanged,
            "skipped": [{"path": p, "reason": why} for p, why in report.skipped],
            "partly_read": [{"path": p, "reason": why} for p, why in report.notes],
            "chunks": report.chunks,
            "embedded": report.embedded,
            "seconds": round(report.seconds, 3),
            "files": stats["files"],
            "total_chunks": stats["chunks"],
        }

    def checked(self, given: str) -> Path:
        """`given` resolved under the root: 403 outside it, 400 if missing (in a worker thread)."""
        if not given.strip() or "\0" in given:
            raise bad_request("paths must be non-empty path names.", param="paths")
        path = (self.root / given).resolve()  # an absolute `given` replaces the root
        if not path.is_relative_to(self.root):
            raise APIError(
                403,
                f"{given} is outside the folder this server may index ({self.root}); "
                "give a path under it.",
                param="paths",
                code="outside_root",
            )
        if not path.exists():
            raise bad_request(f"{given} does not exist under {self.root}.", param="paths")
        if link := self._link_out(path):
            raise APIError(
                403,
                f"{link} links to a file outside {self.root}; remove the link or index a "
                "folder without it.",
                param="paths",
                code="outside_root",
            )
        return path

    def _link_out(self, folder: Path) -> Path | None:
        """A symlinked file under `folder` (as ingest walks it) that points outside the root."""
        if not folder.is_dir():
            return None
        others: list[Path] = []  # not regular files: ingest skips them, but a link out still counts
        files = list(walk(folder, lambda f, _why: others.append(f)))
        for f in files + others:
            if f.is_symlink() and not f.resolve().is_relative_to(self.root):
                return f
        return None

    # -- chat grounding ------------------------------------------------------------------------

    async def ground(self, body: ChatRequest) -> tuple[ChatRequest, list[Hit]]:
        """The request with its last user message grounded, and the passages it was given
        (none: nothing relevant, and the request is returned as it came)."""
        opts = body.rag
        _, question = last_question(body.messages)
        hits = await self.search(question, opts.store, opts.k, opts.mode, opts.path)
        hits = relevant(
            hits, MIN_SIMILARITY if opts.min_similarity is None else opts.min_similarity
        )
        if not hits:
            return body, []
        grounded = grounded_messages(body.messages, hits)
        return body.model_copy(update={"messages": grounded, "rag": None}), hits

    def close(self) -> None:
        for entry in self.entries.values():
            if entry.store is not None:
                entry.store.close()
                entry.store = entry.retriever = None


def last_question(messages: list[Message]) -> tuple[int, str]:
    """(index, text) of the last user message: the question a grounded chat answers."""
    for i in range(len(messages) - 1, -1, -1):
        m = messages[i]
        if m.role != "user":
            continue
        if isinstance(m.content, list):
            if any(p.type != "text" for p in m.content):
                raise bad_request(
                    "rag answers text questions; the last user message has other parts.",
                    param="messages",
                )
            return i, "".join(p.text or "" for p in m.content)
        return i, m.content or ""
    raise bad_request("rag needs a user message to answer.", param="messages")


def grounded_messages(messages: list[Message], hits: list[Hit]) -> list[Message]:
    """The conversation with its last user message replaced by the sources and the question, and
    the answering rules in the system message (the first one, or a new one in front)."""
    i, question = last_question(messages)
    system, user = build_messages(question, hits)
    out = list(messages)
    out[i] = messages[i].model_copy(update={"content": user["content"]})
    first = next((j for j, m in enumerate(out) if m.role in ("system", "developer")), None)
    if first is None:
        return [Message(role="system", content=system["content"]), *out]
    content = out[first].content
    if isinstance(content, list):
        content = [*content, ContentPart(type="text", text="\n\n" + SYSTEM)]
    else:
        content = f"{content}\n\n{SYSTEM}" if content else SYSTEM
    out[first] = out[first].model_copy(update={"content": content})
    return out


def rag_fields(hits: list[Hit], answer: str, similarity=None) -> dict:
    """The extra response fields: the sources `answer` cites and the passages the model was given."""
    return {
        "citations": [c.to_dict() for c in citations(answer, hits, similarity)],
        "rag_chunks": [h.to_dict() for h in hits],
    }
