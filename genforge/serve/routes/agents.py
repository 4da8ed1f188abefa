"""`/v1/agents/tools` and `/v1/agents/runs`: an agent (genforge.agents.loop) on a local model, with
the tools the server enabled (`genforge serve --agent-tools`; see genforge/serve/agents.py).

A run streams its steps as server-sent events, one `data: {step}` each (the dicts of
`ModelStep`, `ToolStep` and, last, `FinalAnswer`), then `data: [DONE]`; with `"stream": false` the
answer is `{"steps": [...], "final": {...}}`.
"""

from __future__ import annotations

import asyncio
import time

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse

from genforge.agents.loop import Agent
from genforge.errors import GenforgeError
from genforge.serve import agents, openai
from genforge.serve.errors import APIError, bad_request, error_body
from genforge.serve.routes.generation import SSE_HEADERS, until_disconnect
from genforge.serve.schemas import AgentRunRequest

ROUTE = "/v1/agents/runs"
DISABLED = (
    "Agents are disabled on this server (genforge serve --agent-tools none); start it with "
    "--agent-tools calculator,python to run them."
)
MAX_TURN_TOKENS = 512  # what the model may write in one turn

router = APIRouter()


@router.get("/v1/agents/tools")
async def list_tools(request: Request):
    state = request.app.state
    return {"object": "list", "data": agents.describe(state.config.agent_tools, state.documents)}


@router.post(ROUTE)
async def run_agent(body: AgentRunRequest, request: Request):
    agent, model = await _agent(body, request)
    state = request.app.state
    registry, metrics = state.registry, state.metrics
    started = time.perf_counter()
    metrics.in_flight.inc()

    def done() -> None:  # on the event loop, once the run's thread has ended
        registry.release(model)
        metrics.in_flight.dec()
        metrics.duration.labels(ROUTE).observe(time.perf_counter() - started)

    def count(step: dict) -> dict:
        if step["type"] == "model":
            metrics.prompt_tokens.labels(model).inc(step["prompt_tokens"])
            metrics.completion_tokens.labels(model).inc(step["completion_tokens"])
        return step

    run = agents.steps(agent, body.task, done)
    if body.stream:
        # The first step is awaited here, so that the run's thread is started (and so ends, and
        # releases the model) however the response goes, and an error before it is a plain one.
        first = await until_disconnect(request, anext(run))
        if not isinstance(first, dict):  # the client left
            return first
        return StreamingResponse(
            _events(first, run, count), media_type="text/event-stream", headers=SSE_HEADERS
        )

    async def collect() -> dict:
        taken = [count(step) async for step in run]
        return {"object": "agent.run", "steps": taken[:-1], "final": taken[-1]}

    return await until_disconnect(request, collect())


async def _agent(body: AgentRunRequest, request: Request) -> tuple[Agent, str]:
    """The request's agent on its model, acquired from the registry (released by the caller)."""
    state = request.app.state
    enabled, registry = state.config.agent_tools, state.registry
    if not enabled:
        raise bad_request(DISABLED, code="agents_disabled")
    if not body.task.strip():
        raise bad_request("task is empty; say what the agent should do.", param="task")
    names = list(enabled) if body.tools is None else list(dict.fromkeys(body.tools))
    if refused := [n for n in names if n not in enabled]:
        raise bad_request(
            f"The tool {refused[0]!r} is not enabled on this server; it enables "
            f"{', '.join(enabled)} (genforge serve --agent-tools).",
            param="tools",
        )
    if body.style == "code" and "python" not in enabled:
        raise bad_request(
            'style "code" runs the model\'s Python in the sandbox, and this server does not '
            'enable python (--agent-tools); use style "tools".',
            param="style",
        )
    limit = state.config.max_tokens
    max_tokens = body.max_tokens or limit
    if max_tokens > limit:
        raise bad_request(
            f"max_tokens is {max_tokens}, above this server's limit of {limit}; ask for fewer "
            "(the limit is set with genforge serve --max-tokens).",
            param="max_tokens",
        )
    if up := registry.upstream_for(body.model):
        raise bad_request(
            f"Agents run on local models only; {body.model} is forwarded to {up.url}.",
            param="model",
        )
    tools = agents.make_tools(names, state.documents, asyncio.get_running_loop())
    llm = await registry.acquire(body.model)
    try:
        agent = Agent(
            llm,
            tools,
            style=body.style,
            max_steps=body.max_steps,
            max_tokens=max_tokens,
            time_limit=body.time_limit,
            max_new_tokens=min(MAX_TURN_TOKENS, max_tokens),
            approve=None,  # no approval over HTTP: dangerous tools are refused
            sampling=None if body.temperature is None else {"temperature": body.temperature},
        )
    except BaseException:
        registry.release(body.model)
        raise
    return agent, body.model


async def _events(first: dict, run, count):
    """The SSE body: an error after the headers went out is sent as an error event."""
    try:
        yield openai.sse(count(first))
        async for step in run:
            yield openai.sse(count(step))
        yield openai.SSE_DONE
    except (APIError, GenforgeError) as e:
        status, message = (e.status, e.message) if isinstance(e, APIError) else (400, str(e))
        yield openai.sse(error_body(status, message))
