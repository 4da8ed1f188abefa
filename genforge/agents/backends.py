"""Where an agent's model runs: the in-process engine, or any OpenAI-compatible endpoint.

Both take OpenAI-style chat messages and tool specs and give back a `Reply`: the text, the tool
calls and the token counts. In process, calls are decoded under the grammar of the offered tools'
schemas, so they always parse and their arguments always match; a remote endpoint is trusted to do
the same where it can (genforge serve does; vLLM does with its guided decoding), and anything it
returns that does not parse becomes a result the model reads.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from typing import Any, Protocol

from genforge.errors import GenforgeError


@dataclass
class Call:
    """One tool call the model made."""

    name: str
    arguments: Any  # a dict when it parsed; the raw text when it did not
    id: str = field(default_factory=lambda: f"call_{uuid.uuid4().hex[:12]}")

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "arguments": self.arguments}

    def message(self) -> dict[str, Any]:
        """The call as an assistant message's `tool_calls` entry."""
        args = self.arguments if isinstance(self.arguments, str) else json.dumps(self.arguments)
        return {
            "id": self.id,
            "type": "function",
            "function": {"name": self.name, "arguments": args},
        }


@dataclass
class Reply:
    text: str
    calls: list[Call]
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str  # "stop", "length" or "tool_calls"


class Backend(Protocol):
    context_length: int

    def respond(
        self,
        messages: list[dict[str, Any]],
        tools: list[dict[str, Any]],
        *,
        tool_choice: str = "auto",
        grammar: str | None = None,
        max_tokens: int = 512,
        sampling: dict[str, Any] | None = None,
        parallel: bool = True,
    ) -> Reply:
        """The model's next turn. grammar: a Lark grammar the text must follow (code actions),
        where the backend can enforce one; parallel=False: at most one call."""
        ...

    def count(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]]) -> int:
        """Tokens of the prompt these messages and tools make."""
        ...


class LocalBackend:
    """The in-process engine (`genforge.load(...)`): calls are grammar-constrained."""

    def __init__(self, llm):
        self.llm = llm
        self.context_length = llm.context_length

    def _prompt(self, messages, tools, tool_choice="auto", grammar=None, parallel=True):
        return self.llm.chat_prompt(
            messages,
            tools=tools or None,
            tool_choice=tool_choice if tools else "auto",
            grammar=grammar,
            parallel_tool_calls=parallel,
            bare_calls=True,
        )

    def respond(
        self,
        messages,
        tools,
        *,
        tool_choice="auto",
        grammar=None,
        max_tokens=512,
        sampling=None,
        parallel=True,
    ) -> Reply:
        from genforge.generate.structured import parse_tool_calls

        prompt = self._prompt(messages, tools, tool_choice, grammar, parallel)
        out = self.llm.complete(
            prompt.ids, grammar=prompt.grammar, max_tokens=max_tokens, **(sampling or {})
        )
        # A call cut short after complete ones drops out; the complete ones count.
        text, calls = (
            parse_tool_calls(out.text, prompt.bare, prompt.tools)
            if prompt.tools
            else (out.text, [])
        )
        reason = "tool_calls" if calls else out.finish_reason
        return Reply(
            text,
            [Call(c["name"], c["arguments"]) for c in calls],
            out.prompt_tokens,
            out.completion_tokens,
            reason,
        )

    def count(self, messages, tools) -> int:
        return len(self._prompt(messages, tools).ids)


class OpenAIBackend:
    """Any OpenAI-compatible chat endpoint (genforge serve, vLLM, llama-server, ...)."""

    def __init__(
        self,
        base_url: str,
        model: str | None = None,
        api_key: str | None = None,
        context_length: int = 8192,
        timeout: float = 600.0,
    ):
        import httpx

        self.base_url = base_url.rstrip("/")
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.client = httpx.Client(base_url=self.base_url, headers=headers, timeout=timeout)
        self.model = model or self._first_model()
        self.context_length = context_length
        self._chars_per_token = 4.0  # refined from each response's usage

    def _post(self, path: str, body: dict | None = None) -> dict:
        import httpx

        try:
            r = self.client.post(path, json=body) if body is not None else self.client.get(path)
        except httpx.HTTPError as e:
            raise GenforgeError(
                f"cannot reach {self.base_url}{path}: {e}; is the server up?"
            ) from None
        if r.status_code >= 400:
            try:
                detail = r.json().get("error", {}).get("message") or r.text
            except ValueError:
                detail = r.text
            raise GenforgeError(
                f"{self.base_url}{path} answered {r.status_code}: {detail.strip()[:300]}"
            )
        return r.json()

    def _first_model(self) -> str:
        models = self._post("/models").get("data") or []
        if not models:
            raise GenforgeError(f"{self.base_url} serves no model; pass one with -m.")
        return models[0]["id"]

    def respond(
        self,
        messages,
        tools,
        *,
        tool_choice="auto",
        grammar=None,
        max_tokens=512,
        sampling=None,
        parallel=True,
    ) -> Reply:
        body: dict[str, Any] = {"model": self.model, "messages": messages, "max_tokens": max_tokens}
        body.update(sampling or {})
        if tools:
            body.update(tools=tools, tool_choice=tool_choice, parallel_tool_calls=parallel)
        data = self._post("/chat/completions", body)
        choice = data["choices"][0]
        message = choice.get("message") or {}
        calls = []
        for c in message.get("tool_calls") or []:
            fn = c.get("function") or {}
            try:
                args = json.loads(fn.get("arguments") or "{}")
            except json.JSONDecodeError:
                args = fn.get("arguments") or ""
            call = Call(fn.get("name", ""), args)
            call.id = c.get("id") or call.id  # the server's id, when it gives one
            calls.append(call)
        usage = data.get("usage") or {}
        prompt_tokens = usage.get("prompt_tokens", 0)
        if prompt_tokens:
            chars = len(json.dumps(messages)) + len(json.dumps(tools or []))
            self._chars_per_token = max(1.0, chars / prompt_tokens)
        return Reply(
            message.get("content") or "",
            calls,
            prompt_tokens,
            usage.get("completion_tokens", 0),
            choice.get("finish_reason") or "stop",
        )

    def count(self, messages, tools) -> int:
        """An estimate: the endpoint's tokenizer is not here; characters per token as its last
        answer measured them."""
        chars = len(json.dumps(messages)) + len(json.dumps(tools or []))
        return int(chars / self._chars_per_token)
