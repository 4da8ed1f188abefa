"""`/v1/embeddings`: the packaged embedding model (all-MiniLM-L6-v2), or an upstream server's."""

from __future__ import annotations

import asyncio
import base64

from fastapi import APIRouter, Request

from genforge.errors import GenforgeError
from genforge.serve.errors import bad_request
from genforge.serve.schemas import MAX_ITEMS, EmbeddingRequest

router = APIRouter()


@router.post("/v1/embeddings")
async def create_embeddings(body: EmbeddingRequest, request: Request):
    registry = request.app.state.registry
    if up := registry.upstream_for(body.model):
        return await request.app.state.forwarder.forward(up, "/embeddings", await request.body())
    embedder = await registry.embedder(body.model)
    texts = [body.input] if isinstance(body.input, str) else body.input
    if not texts or not all(isinstance(t, str) for t in texts):
        raise bad_request(
            "input must be a non-empty string or list of strings (token ids are not accepted "
            "for this model).",
            param="input",
        )
    if len(texts) > MAX_ITEMS:
        raise bad_request(
            f"input holds {len(texts)} texts; this server embeds at most {MAX_ITEMS} in one "
            "request: send the rest in further requests.",
            param="input",
        )
    if body.dimensions not in (None, embedder.dimensions):
        raise bad_request(
            f"{body.model} gives {embedder.dimensions} dimensions; they cannot be changed.",
            param="dimensions",
        )
    try:
        vectors, n_tokens = await asyncio.to_thread(embedder.embed, texts)
    except GenforgeError as e:
        raise bad_request(str(e), param="input") from None
    data = [
        {"object": "embedding", "index": i, "embedding": _encode(v, body.encoding_format)}
        for i, v in enumerate(vectors)
    ]
    usage = {"prompt_tokens": n_tokens, "total_tokens": n_tokens}
    return {"object": "list", "data": data, "model": body.model, "usage": usage}


def _encode(vector, fmt: str):
    if fmt == "base64":
        return base64.b64encode(vector.astype("<f4").tobytes()).decode()
    return vector.tolist()
