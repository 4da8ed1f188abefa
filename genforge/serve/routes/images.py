"""`/v1/images/generations`: pictures from a caption, in OpenAI's shape (`b64_json` PNGs), drawn by
the server's image models (genforge/serve/images.py).

Besides OpenAI's fields the body takes `steps`, `guidance`, `seed` and `sampler`; picture i draws
from seed `seed + i`, so the same request with the same seed gives the same PNGs. The answer adds
`size`, `output_format` and a `genforge` object: the model, the seed used (random when none was
given), and the words of the prompt the model never trained on.
"""

from __future__ import annotations

import asyncio
import secrets
import time

from fastapi import APIRouter, Request

from genforge.serve import images
from genforge.serve.routes.generation import until_disconnect
from genforge.serve.schemas import ImageRequest

ROUTE = "/v1/images/generations"

router = APIRouter()


@router.post(ROUTE)
async def generate_images(body: ImageRequest, request: Request):
    images.check(body)
    gen = await request.app.state.images.acquire(body.model)
    side = gen.cfg.out_size
    scale = images.scale_for(body.size, side)
    return await until_disconnect(request, _answer(request, gen, body, scale))


async def _answer(request: Request, gen, body: ImageRequest, scale: int) -> dict:
    metrics = request.app.state.metrics
    seed = body.seed if body.seed is not None else secrets.randbelow(2**31)
    started = time.perf_counter()
    metrics.in_flight.inc()
    try:
        pngs = await asyncio.to_thread(images.draw, gen, body, seed, scale)
    finally:
        metrics.in_flight.dec()
        metrics.duration.labels(ROUTE).observe(time.perf_counter() - started)
    metrics.images.labels(gen.name).inc(len(pngs))
    revised = images.read_as(gen, body.prompt)
    side = gen.cfg.out_size * scale
    return {
        "created": int(time.time()),
        "data": [
            {"b64_json": png} | ({"revised_prompt": revised} if revised is not None else {})
            for png in pngs
        ],
        "size": f"{side}x{side}",
        "output_format": "png",
        "genforge": {
            "model": gen.name,
            "seed": seed,
            "steps": body.steps,
            "guidance": body.guidance,
            "sampler": body.sampler,
            "unknown_words": gen.unknown_words(body.prompt),
        },
    }
