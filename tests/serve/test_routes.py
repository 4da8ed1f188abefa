"""Routers mounted alone on a bare FastAPI app, with only the `app.state` they read: no model, no
middleware, no server process."""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.testclient import TestClient

from genforge.serve.audio import SpeechModels
from genforge.serve.errors import APIError
from genforge.serve.images import ImageModels
from genforge.serve.metrics import Metrics
from genforge.serve.models import Registry, Upstream
from genforge.serve.rag import DocumentStores, StoreSpec
from genforge.serve.routes import health, models, rag
from genforge.serve.upstream import Forwarder


def _app(*routers, **state) -> FastAPI:
    app = FastAPI()
    for router in routers:
        app.include_router(router)
    for name, value in state.items():
        setattr(app.state, name, value)
    app.add_exception_handler(APIError, lambda request, exc: exc.response())
    return app


def test_health_and_metrics_alone():
    app = _app(health.router, registry=Registry([], allow_load=False), metrics=Metrics())
    with TestClient(app) as client:
        assert client.get("/health").json() == {"status": "ok", "models": []}
        assert "genforge_models_loaded 0.0" in client.get("/metrics").text


def test_models_alone():
    # An upstream that names its model is listed without being asked (nothing listens there).
    reg = Registry([], upstreams=[Upstream("http://127.0.0.1:9/v1", "remote")], allow_load=False)
    app = _app(
        models.router,
        registry=reg,
        forwarder=Forwarder(),
        images=ImageModels(enabled=False),
        speech=SpeechModels(enabled=False),
    )
    with TestClient(app) as client:
        listed = client.get("/v1/models").json()["data"]
        assert [m for m in listed if m["id"] == "remote"] == [
            {"id": "remote", "object": "model", "owned_by": "upstream"}
        ]
        assert client.get("/v1/models/remote").json()["id"] == "remote"
        err = client.get("/v1/models/nope").json()["error"]
        assert err["code"] == "model_not_found" and "remote" in err["message"]


def test_rag_stores_alone(tmp_path):
    async def unused(name):
        raise AssertionError("listing stores needs no embedder")

    documents = DocumentStores([StoreSpec("notes", str(tmp_path / "n.sqlite"))], tmp_path, unused)
    with TestClient(_app(rag.router, documents=documents)) as client:
        stores = client.get("/v1/rag/stores").json()
    documents.close()
    assert stores["root"] == str(tmp_path)
    assert [(s["id"], s["location"], s["files"]) for s in stores["data"]] == [
        ("notes", "n.sqlite", 0)
    ]
    with TestClient(_app(rag.router, documents=None)) as client:
        assert client.post("/v1/rag/search", json={"query": "x"}).status_code == 400


def test_a_pulled_speech_model_is_not_served_as_a_language_model():
    from genforge import hub

    hub.named_path("whisper-base")  # pulled, as after `genforge pull whisper-base`
    reg = Registry([], allow_load=True)
    assert "whisper-base" not in [e["id"] for e in reg.local_entries()]
    assert not reg.loadable("whisper-base")
