"""`/v1/rag/stores`, `/v1/rag/search`, `/v1/rag/index`: the document stores of `--rag-store`
(see genforge/serve/rag.py; grounded chats are in routes/generation.py)."""

from __future__ import annotations

from fastapi import APIRouter, Request

from genforge.serve.errors import bad_request
from genforge.serve.rag import NO_STORE, DocumentStores
from genforge.serve.schemas import RagIndexRequest, RagSearchRequest

router = APIRouter()


def _stores(request: Request) -> DocumentStores:
    if request.app.state.documents is None:
        raise bad_request(NO_STORE)
    return request.app.state.documents


@router.get("/v1/rag/stores")
async def list_stores(request: Request):
    documents = request.app.state.documents
    if documents is None:
        return {"object": "list", "data": [], "root": None}
    return {"object": "list", "data": await documents.describe(), "root": str(documents.root)}


@router.post("/v1/rag/search")
async def rag_search(body: RagSearchRequest, request: Request):
    hits = await _stores(request).search(body.query, body.store, body.k, body.mode, body.path)
    return {"object": "list", "data": [h.to_dict() for h in hits]}


@router.post("/v1/rag/index")
async def rag_index(body: RagIndexRequest, request: Request):
    return await _stores(request).index(body.paths, body.store)
