"""Forwarding to an upstream OpenAI-compatible server (vLLM, llama.cpp, another genforge): the
request body goes through unchanged, the response (streamed or not) comes back unchanged."""

from __future__ import annotations

import logging

import httpx
from fastapi.responses import Response, StreamingResponse

from genforge.serve.errors import APIError
from genforge.serve.models import Upstream

log = logging.getLogger(__name__)


class Forwarder:
    def __init__(self, timeout: float = 600.0):
        self.client = httpx.AsyncClient(timeout=httpx.Timeout(timeout, connect=10.0))

    def _headers(self, up: Upstream) -> dict:
        headers = {"content-type": "application/json"}
        if up.api_key:
            headers["authorization"] = f"Bearer {up.api_key}"
        return headers

    async def refresh(self, up: Upstream) -> None:
        """Re-read the models an upstream serves (kept as they were if it does not answer)."""
        if up.model is not None:
            up.listed = [{"id": up.model, "object": "model", "owned_by": "upstream"}]
            return
        try:
            r = await self.client.get(f"{up.url}/models", headers=self._headers(up), timeout=5.0)
            r.raise_for_status()
            up.listed = [m for m in r.json().get("data", []) if isinstance(m, dict) and "id" in m]
        except (httpx.HTTPError, ValueError) as e:
            log.warning("upstream %s did not list its models: %s", up.url, e)

    async def forward(self, up: Upstream, path: str, body: bytes) -> Response:
        request = self.client.build_request(
            "POST", f"{up.url}{path}", content=body, headers=self._headers(up)
        )
        try:
            response = await self.client.send(request, stream=True)
        except httpx.HTTPError as e:
            raise APIError(
                502, f"the upstream server {up.url} did not answer: {e or type(e).__name__}."
            ) from None
        headers = {
            k: v
            for k, v in response.headers.items()
            if k.lower() in ("content-type", "cache-control", "x-request-id")
        }

        async def body():
            try:
                async for chunk in response.aiter_raw():
                    yield chunk
            finally:  # also when our client disconnects: the upstream request ends with it
                await response.aclose()

        return StreamingResponse(body(), status_code=response.status_code, headers=headers)

    async def close(self) -> None:
        await self.client.aclose()
