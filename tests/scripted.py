"""A scripted model for agent tests: it plays back the turns it is given and records what it saw.

It stands in for the model only, so that a test of the loop, the tools or the sandbox is
deterministic; the code under test is real.
"""

from __future__ import annotations

import json
from collections.abc import Callable

from genforge.agents.backends import Call, Reply

Turn = str | list[tuple[str, dict]] | Callable[[list[dict]], "str | list[tuple[str, dict]]"]


class ScriptedModel:
    """Each turn is the answer text, a list of (tool name, arguments) calls, or a function of
    the messages so far that returns one of those."""

    def __init__(self, turns: list[Turn], context_length: int = 4096):
        self.turns = list(turns)
        self.context_length = context_length
        self.seen: list[dict] = []  # per turn: messages, tools, tool_choice, grammar

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
        self.seen.append(
            {
                "messages": json.loads(json.dumps(messages)),
                "tools": [t["function"]["name"] for t in tools],
                "tool_choice": tool_choice,
                "grammar": grammar,
                "max_tokens": max_tokens,
                "parallel": parallel,
            }
        )
        if not self.turns:
            raise AssertionError("the agent asked for more turns than the script has")
        turn = self.turns.pop(0)
        if callable(turn):
            turn = turn(messages)
        if isinstance(turn, str):
            return Reply(turn, [], self.count(messages, tools), len(turn.split()) + 1, "stop")
        calls = [Call(name, args) for name, args in turn]
        return Reply("", calls, self.count(messages, tools), 10 * len(calls), "tool_calls")

    def count(self, messages, tools) -> int:
        return len(json.dumps(messages)) // 4 + len(json.dumps(tools)) // 4
