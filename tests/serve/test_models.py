"""The server's model registry without a server: upstream specs, idle unloading, not-found errors."""

from __future__ import annotations

import asyncio

import pytest

from genforge.errors import GenforgeError
from genforge.serve.errors import APIError
from genforge.serve.models import Registry, Upstream, _Loaded


def test_upstream_spec():
    assert Upstream.parse("http://a:8000") == Upstream("http://a:8000/v1")
    assert Upstream.parse("big=http://a:8000/v1/", "k") == Upstream("http://a:8000/v1", "big", "k")
    with pytest.raises(GenforgeError, match="http"):
        Upstream.parse("a:8000")


class _FakeEngine:
    closed = False

    def close(self):
        self.closed = True


class _FakeLLM:
    def __init__(self):
        self.engine = _FakeEngine()


def test_idle_models_are_unloaded_and_busy_ones_kept():
    reg = Registry([], idle_unload=60, allow_load=False)
    idle, busy = _FakeLLM(), _FakeLLM()
    reg.loaded = {"idle": _Loaded(idle, last_used=0), "busy": _Loaded(busy, last_used=0, active=1)}
    assert reg.unload_idle(now=30) == []
    assert reg.unload_idle(now=61) == ["idle"]
    assert idle.engine.closed and not busy.engine.closed and list(reg.loaded) == ["busy"]
    reg.release("busy")
    assert reg.unload_idle(now=reg.loaded["busy"].last_used + 61) == ["busy"]
    assert Registry([], allow_load=False).unload_idle(now=1e9) == []  # no idle limit: keep all


def test_unknown_model_is_a_404_listing_the_served_ones():
    reg = Registry([], upstreams=[Upstream("http://x/v1", "remote")], allow_load=False)
    with pytest.raises(APIError) as e:
        asyncio.run(reg.acquire("nope"))
    assert e.value.status == 404 and e.value.code == "model_not_found"
    assert "remote" in e.value.message
    assert reg.upstream_for("remote").url == "http://x/v1" and reg.upstream_for("nope") is None
