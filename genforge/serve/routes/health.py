"""`/health` (open even with an API key) and `/metrics` (Prometheus text)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

router = APIRouter()


@router.get("/health")
async def health(request: Request):
    return {"status": "ok", "models": list(request.app.state.registry.loaded)}


@router.get("/metrics")
async def prometheus(request: Request):
    state = request.app.state
    data = state.metrics.render(state.registry.engines())
    return Response(data, media_type="text/plain; version=0.0.4")
