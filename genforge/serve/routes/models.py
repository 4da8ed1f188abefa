"""`/v1/models`: the local models, the embedding model, the image and speech models, then those of upstream
servers (re-read on each listing); a local model wins over an upstream one of the same name."""

from __future__ import annotations

from fastapi import APIRouter, Request

router = APIRouter()


@router.get("/v1/models")
async def list_models(request: Request):
    return {"object": "list", "data": await _listed(request)}


@router.get("/v1/models/{name:path}")
async def get_model(name: str, request: Request):
    for m in await _listed(request):
        if m["id"] == name:
            return m
    raise request.app.state.registry.not_found(name)


async def _listed(request: Request) -> list[dict]:
    registry, forwarder = request.app.state.registry, request.app.state.forwarder
    for up in registry.upstreams:
        await forwarder.refresh(up)
    data = registry.local_entries() + request.app.state.images.entries()
    data += request.app.state.speech.entries()
    seen = {m["id"] for m in data}
    for up in registry.upstreams:
        data += [m for m in up.listed if m["id"] not in seen]
    return data
