"""`/v1/agents/runs` and `/v1/agents/tools`, black-box over HTTP against a real `genforge serve`.

The runs use the session's server (SmolLM2-135M, greedy, few steps and tokens). What the model
says is not asserted, only the shape of a run: model steps, the tool steps that answer their
calls, and one final step that ends it; streamed and not streamed alike.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time

import httpx
import pytest
from conftest import API_KEY, MODEL, Server, metric

AUTH = {"authorization": f"Bearer {API_KEY}"}
# A task on which the tiny model, greedy, writes code and runs it (code style) for several steps.
TASK = "Compute sqrt(2) * 17 with the calculator."
SMALL = {"max_steps": 3, "max_tokens": 96}


def _run(server, timeout: float = 60, **body) -> httpx.Response:
    body = {"model": MODEL, "task": TASK, **SMALL, **body}
    return httpx.post(f"{server.url}/v1/agents/runs", json=body, headers=AUTH, timeout=timeout)


def _events(response: httpx.Response) -> list:
    """The `data:` payloads of an SSE body, parsed; `[DONE]` kept as the string."""
    out = []
    for event in response.text.split("\n\n"):
        if event.strip():
            assert event.startswith("data: "), event
            data = event.removeprefix("data: ")
            out.append(data if data == "[DONE]" else json.loads(data))
    return out


def _check_run(steps: list[dict], style: str) -> None:
    """A run's shape: it starts with the model, each tool step answers a call of the model step
    before it, and one final step ends it with the run's totals."""
    *middle, final = steps
    assert final["type"] == "final" and final["reason"] in ("answer", "max_steps", "max_tokens")
    assert middle and middle[0]["type"] == "model"
    model_steps = [s for s in middle if s["type"] == "model"]
    assert {s["type"] for s in middle} <= {"model", "tool"}
    assert [s["index"] for s in model_steps] == list(range(1, len(model_steps) + 1))
    turn = None
    for step in middle:
        if step["type"] == "model":
            turn = step
            continue
        assert step["index"] == turn["index"]
        assert isinstance(step["output"], str) and isinstance(step["error"], bool)
        if style == "tools":
            assert step["call"]["id"] in {c["id"] for c in turn["calls"]}
        else:  # the turn's code block, run in the sandbox
            assert step["call"]["name"] == "python"
            assert step["call"]["arguments"] == {"code": turn["code"]}
    assert final["steps"] == len(model_steps)
    assert final["completion_tokens"] == sum(s["completion_tokens"] for s in model_steps)
    assert final["prompt_tokens"] == sum(s["prompt_tokens"] for s in model_steps)


def test_a_run_streams_its_steps_and_ends_with_the_final_answer(server):
    response = _run(server, style="code")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/event-stream")
    *steps, done = _events(response)
    assert done == "[DONE]"
    _check_run(steps, "code")
    assert any(s["type"] == "tool" for s in steps)  # greedy: this task makes it run code


@pytest.mark.parametrize("style", ["tools", "code"])
def test_a_run_without_streaming_gives_its_steps_in_one_answer(server, style):
    # Not compared with a streamed run: a cold prompt and one in the prefix cache go through
    # other kernels, whose rounding can part two greedy answers of this tiny model.
    response = _run(server, style=style, tools=["calculator"], stream=False)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    data = response.json()
    assert data["object"] == "agent.run"
    _check_run([*data["steps"], data["final"]], style)


def test_the_enabled_tools_are_listed(server):
    response = httpx.get(f"{server.url}/v1/agents/tools", headers=AUTH)
    tools = response.json()["data"]
    assert [t["name"] for t in tools] == ["calculator", "python"]  # --agent-tools' default
    assert all(t["description"] and t["dangerous"] is False for t in tools)


@pytest.mark.parametrize(
    ("body", "param", "words"),
    [
        ({"tools": ["calculator", "web_get"]}, "tools", "'web_get' is not enabled"),
        ({"tools": ["write_file"]}, "tools", "'write_file' is not enabled"),
        ({"task": "   "}, "task", "task is empty"),
        ({"max_steps": 0}, "max_steps", "max_steps"),
        ({"style": "plan"}, "style", "style"),
        ({"max_tokens": 100_000}, "max_tokens", "above this server's limit of 512"),
    ],
)
def test_bad_requests_get_one_clear_error(server, body, param, words):
    response = _run(server, timeout=10, **body)
    assert response.status_code == 400
    error = response.json()["error"]
    assert words in error["message"] and error["param"] == param


def test_runs_need_the_api_key(server):
    body = {"model": MODEL, "task": TASK}
    response = httpx.post(f"{server.url}/v1/agents/runs", json=body, timeout=10)
    assert response.status_code == 401
    assert httpx.get(f"{server.url}/v1/agents/tools").status_code == 401


def test_a_client_that_leaves_releases_the_run(server):
    body = {"model": MODEL, "task": TASK, "style": "code", "max_steps": 32, "max_tokens": 128}
    with httpx.stream(
        "POST", f"{server.url}/v1/agents/runs", json=body, headers=AUTH, timeout=120
    ) as response:
        assert response.status_code == 200
        next(response.iter_lines())  # the first step, then the client is gone
    deadline = time.monotonic() + 60  # at most the turn it was in
    while metric(server, "genforge_requests_in_flight") or metric(
        server, "genforge_engine_requests", 'state="running"'
    ):
        assert time.monotonic() < deadline, "the run goes on after its client left"
        time.sleep(0.2)


def test_a_server_without_agents_says_how_to_enable_them():
    # No local model (an upstream that is never asked): it starts at once.
    s = Server("--upstream", "remote=http://127.0.0.1:9", "--agent-tools", "none")
    try:
        assert httpx.get(f"{s.url}/v1/agents/tools").json()["data"] == []
        response = httpx.post(f"{s.url}/v1/agents/runs", json={"model": "remote", "task": "hi"})
    finally:
        s.stop()
    assert response.status_code == 400
    error = response.json()["error"]
    assert (
        error["code"] == "agents_disabled" and "--agent-tools calculator,python" in error["message"]
    )


@pytest.mark.parametrize(
    ("tools", "words"),
    [
        ("write_file", "asks for approval"),
        ("rag_search", "needs a document store: add --rag-store"),
        ("calculator,shell", "shell is not a tool"),
    ],
)
def test_serve_refuses_tools_it_cannot_offer(tools, words):
    result = subprocess.run(
        [sys.executable, "-m", "genforge", "serve", "--port", "0", "--agent-tools", tools],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert words in result.stderr and "Traceback" not in result.stderr
