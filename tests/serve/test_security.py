"""The server's guards against hostile clients and web pages, over real HTTP: the Host check of a
loopback server (DNS rebinding), caps on the work one request may ask for, and errors in OpenAI's
shape for hostile values."""

from __future__ import annotations

import json
import time

import httpx
from conftest import API_KEY, MODEL, Server, metric

AUTH = {"authorization": f"Bearer {API_KEY}"}


def _error(response, status) -> dict:
    assert response.status_code == status, response.text
    err = response.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"].endswith(".")
    return err


# -- Host check (DNS rebinding) ------------------------------------------------------------------


def test_a_loopback_server_answers_loopback_host_names_only(server):
    port = server.port
    for host in (
        "localhost",
        f"localhost:{port}",
        "LocalHost",
        "127.0.0.1",
        f"127.0.0.1:{port}",
        f"127.3.2.1:{port}",
        "[::1]",
        f"[::1]:{port}",
    ):
        r = httpx.get(f"{server.url}/health", headers={"host": host})
        assert r.status_code == 200, host
    # A page on another domain whose DNS name was re-pointed to 127.0.0.1 sends its own name.
    for host in (
        "evil.example",
        f"evil.example:{port}",
        "localhost.evil.example",
        "127.0.0.1.evil.example",
        "[::2]",
        "",
    ):
        for method, path in (("GET", "/health"), ("GET", "/v1/models"), ("GET", "/")):
            r = httpx.request(method, f"{server.url}{path}", headers={"host": host, **AUTH})
            err = _error(r, 400)
            assert err["code"] == "invalid_host" and "--allowed-host" in err["message"], host
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}
    r = httpx.post(
        f"{server.url}/v1/chat/completions", json=body, headers={"host": "evil.example", **AUTH}
    )
    assert _error(r, 400)["code"] == "invalid_host"


def test_allowed_host_adds_a_name(server):
    front = Server("--upstream", server.url, "--allowed-host", "gpu-box.lan")
    try:
        for host in ("gpu-box.lan", f"gpu-box.lan:{front.port}", "localhost"):
            assert httpx.get(f"{front.url}/health", headers={"host": host}).status_code == 200
        err = _error(httpx.get(f"{front.url}/health", headers={"host": "other.lan"}), 400)
        assert "gpu-box.lan" in err["message"]
    finally:
        front.stop()


def test_a_server_bound_to_every_address_answers_any_host():
    from fastapi.testclient import TestClient

    from genforge.serve.app import ServeConfig, create_app
    from genforge.serve.models import Registry

    config = ServeConfig(host="0.0.0.0")
    with TestClient(create_app(Registry([], allow_load=False), config)) as client:
        assert client.get("/health", headers={"host": "box.example"}).status_code == 200
    with TestClient(create_app(Registry([], allow_load=False), ServeConfig())) as client:
        _error(client.get("/health", headers={"host": "box.example"}), 400)


def test_host_names_and_loopback_addresses():
    from genforge.serve.middleware import host_name, is_loopback

    assert host_name("LocalHost:8000") == "localhost"
    assert host_name("[::1]:8000") == host_name("[::1]") == "::1"
    assert host_name("example.com.") == "example.com"
    assert all(map(is_loopback, ("127.0.0.1", "127.0.1.1", "::1", "localhost")))
    assert not any(map(is_loopback, ("0.0.0.0", "::", "192.0.2.7")))


# -- work per request ------------------------------------------------------------------------------


def test_prompt_and_input_lists_are_capped(server):
    prompts = {"model": MODEL, "prompt": ["x"] * 401, "max_tokens": 1}
    err = _error(httpx.post(f"{server.url}/v1/completions", json=prompts, headers=AUTH), 400)
    assert err["param"] == "prompt" and "401" in err["message"] and "400" in err["message"]
    texts = {"model": "all-minilm-l6-v2", "input": ["x"] * 401}
    err = _error(httpx.post(f"{server.url}/v1/embeddings", json=texts, headers=AUTH), 400)
    assert err["param"] == "input" and "401" in err["message"] and "400" in err["message"]
    # One prompt of token ids is one prompt, however long.
    ids = {"model": MODEL, "prompt": [1] * 500, "max_tokens": 1}
    r = httpx.post(f"{server.url}/v1/completions", json=ids, headers=AUTH, timeout=120)
    assert r.status_code == 200, r.text


def test_health_answers_while_a_large_request_runs(server):
    body = {
        "model": MODEL,
        "prompt": [f"Item {i}:" for i in range(400)],  # the most one request may hold
        "max_tokens": 500,
        "stream": True,
        "logit_bias": {"2": -100, "0": -100},  # no end of text: 200,000 tokens to generate
    }
    url = f"{server.url}/v1/completions"
    with httpx.stream("POST", url, json=body, headers=AUTH, timeout=120) as r:
        assert r.status_code == 200
        lines = r.iter_lines()  # kept: a dropped iterator closes the connection
        next(lines)
        health = httpx.get(f"{server.url}/health", timeout=120)
        assert health.status_code == 200 and health.json()["models"] == [MODEL]
        assert metric(server, "genforge_requests_in_flight") == 1  # still running
    assert _wait_idle(server)  # and cancelled when its client left


def _wait_idle(server, timeout=60) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        busy = metric(server, "genforge_requests_in_flight") + metric(
            server, "genforge_engine_requests", 'state="running"'
        )
        if busy == 0:
            return True
        time.sleep(0.2)
    return False


# -- hostile values --------------------------------------------------------------------------------


def test_seeds_outside_64_bits_are_a_400_naming_seed(server):
    chat = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    url = f"{server.url}/v1/chat/completions"
    for seed in (2**63, 2**64, 10**30, -(2**63) - 1):
        err = _error(httpx.post(url, json={**chat, "seed": seed}, headers=AUTH), 400)
        assert err["param"] == "seed", seed
    for seed in (2**63 - 1, -(2**63)):  # the edges, with choices whose seeds pass them
        r = httpx.post(url, json={**chat, "seed": seed, "n": 3}, headers=AUTH, timeout=120)
        assert r.status_code == 200, r.text
        assert len(r.json()["choices"]) == 3


def test_an_over_limit_body_is_a_413_with_or_without_content_length(server):
    url = f"{server.url}/v1/chat/completions"
    big = json.dumps(
        {"model": MODEL, "messages": [{"role": "user", "content": "x" * 70000}]}
    ).encode()

    def chunked():  # no Content-Length: the body arrives in chunks of unknown total
        for i in range(0, len(big), 8192):
            yield big[i : i + 8192]

    for content in (big, chunked()):
        r = httpx.post(url, content=content, headers={**AUTH, "content-type": "application/json"})
        assert _error(r, 413)["code"] == "request_too_large"
    small = json.dumps(
        {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
    )
    r = httpx.post(
        url,
        content=iter([small[:10].encode(), small[10:].encode()]),
        headers={**AUTH, "content-type": "application/json"},
        timeout=120,
    )
    assert r.status_code == 200, r.text


def test_invalid_json_names_no_param_and_says_where(server):
    url = f"{server.url}/v1/chat/completions"
    as_json = {**AUTH, "content-type": "application/json"}
    err = _error(httpx.post(url, content=b'{"model": x}', headers=as_json), 400)
    assert err["param"] is None and "not valid JSON" in err["message"]
    assert "character 10" in err["message"]
    for body, headers in ((b"[1]", as_json), (b"", as_json), (b'{"model": "m"}', AUTH)):
        err = _error(httpx.post(url, content=body, headers=headers), 400)
        assert err["param"] is None and "must be a JSON object" in err["message"], body
