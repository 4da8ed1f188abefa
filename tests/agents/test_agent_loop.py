"""The agent loop with a scripted model: steps, tool results, approvals, limits, compaction, code."""

from __future__ import annotations

import time

import pytest
from scripted import ScriptedModel

from genforge.agents.builtin import calculator, workspace_tools
from genforge.agents.loop import ANSWER_NOW, Agent, FinalAnswer, ModelStep, ToolStep, trace_line
from genforge.agents.tools import tool
from genforge.errors import GenforgeError


@tool
def lookup(city: str) -> str:
    """The weather in a city."""
    if city == "Atlantis":
        raise KeyError("no such city")
    return {"Oslo": "snow, -3 C", "Rome": "sun, 18 C"}[city]


def kinds(steps):
    return [s.type for s in steps]


def test_a_call_its_result_and_the_answer_come_as_typed_steps():
    model = ScriptedModel([[("calculator", {"expression": "6 * 7"})], "It is 42."])
    steps = list(Agent(model, [calculator()]).run("What is 6 times 7?"))
    assert kinds(steps) == ["model", "tool", "model", "final"]
    call, result, final = steps[0], steps[1], steps[-1]
    assert isinstance(call, ModelStep) and call.calls[0].name == "calculator"
    assert isinstance(result, ToolStep) and result.output == "42" and not result.error
    assert result.call.id == call.calls[0].id
    assert isinstance(final, FinalAnswer) and final.text == "It is 42." and final.reason == "answer"
    assert (
        final.steps == 2
        and final.completion_tokens == call.completion_tokens + steps[2].completion_tokens
    )
    # The model saw the tool, then its own call and the result, as OpenAI messages.
    second = model.seen[1]["messages"]
    assert second[-2]["tool_calls"][0]["function"]["name"] == "calculator"
    assert second[-1] == {"role": "tool", "tool_call_id": call.calls[0].id, "content": "42"}
    assert model.seen[0]["tools"] == ["calculator"]
    assert trace_line(final).startswith('{"text": "It is 42."')


def test_parallel_calls_run_together_and_answer_in_order():
    @tool
    def slow(n: int) -> int:
        """Sleep a little, then give n back."""
        time.sleep(0.3 if n == 1 else 0.0)
        return n

    model = ScriptedModel([[("slow", {"n": 1}), ("slow", {"n": 2}), ("slow", {"n": 3})], "done"])
    start = time.monotonic()
    steps = list(Agent(model, [slow]).run("count"))
    results = [s for s in steps if isinstance(s, ToolStep)]
    assert [r.output for r in results] == ["1", "2", "3"]
    assert time.monotonic() - start < 0.9  # one slow call's wait, not the sum


def test_a_tool_error_goes_back_to_the_model_which_can_correct_itself():
    model = ScriptedModel(
        [[("lookup", {"city": "Atlantis"})], [("lookup", {"city": "Oslo"})], "Snow in Oslo."]
    )
    steps = list(Agent(model, [lookup]).run("weather?"))
    errors = [s for s in steps if isinstance(s, ToolStep) and s.error]
    assert len(errors) == 1 and "KeyError" in errors[0].output
    assert steps[-1].text == "Snow in Oslo."
    assert "KeyError" in model.seen[1]["messages"][-1]["content"]


def test_a_tool_that_is_not_enabled_cannot_be_called():
    # As a remote endpoint without grammar might: the model names a tool it was not given.
    model = ScriptedModel([[("write_file", {"path": "x", "content": "pwned"})], "ok"])
    steps = list(Agent(model, [lookup]).run("weather?"))
    refused = steps[1]
    assert refused.error and "no tool named 'write_file'" in refused.output
    assert "lookup" in refused.output


def test_malformed_arguments_from_a_remote_model_become_an_error_result():
    model = ScriptedModel([[("lookup", '{"city": "Oslo"')], "sorry"])  # raw, unparsed text
    steps = list(Agent(model, [lookup]).run("weather?"))
    assert steps[1].error and "not valid JSON" in steps[1].output


def test_dangerous_tools_ask_and_run_only_on_a_yes(tmp_path):
    tools = list(workspace_tools(tmp_path).values())
    call = [("write_file", {"path": "a.txt", "content": "hello"})]
    asked = []

    def approve(tool, call):
        asked.append((tool.name, call.arguments["path"]))
        return False

    steps = list(Agent(ScriptedModel([call, "ok"]), tools, approve=approve).run("write"))
    assert asked == [("write_file", "a.txt")]
    assert steps[1].error and steps[1].approved is False and "did not approve" in steps[1].output
    assert not (tmp_path / "a.txt").exists()
    # Without an approval callback, nobody said yes: refused too.
    steps = list(Agent(ScriptedModel([call, "ok"]), tools).run("write"))
    assert steps[1].approved is False and not (tmp_path / "a.txt").exists()
    steps = list(Agent(ScriptedModel([call, "ok"]), tools, approve=lambda t, c: True).run("w"))
    assert steps[1].approved is True and (tmp_path / "a.txt").read_text() == "hello"
    # A tool that needs no approval says so.
    steps = list(Agent(ScriptedModel([[("list_dir", {})], "ok"]), tools).run("ls"))
    assert steps[1].approved is None


def test_max_steps_makes_the_last_turn_answer_without_tools():
    model = ScriptedModel([[("lookup", {"city": "Oslo"})], [("lookup", {"city": "Rome"})], "Both."])
    steps = list(Agent(model, [lookup], max_steps=3).run("weather?"))
    assert steps[-1].text == "Both."
    assert [s["tool_choice"] for s in model.seen] == ["auto", "auto", "none"]
    assert model.seen[2]["messages"][-1]["content"] == ANSWER_NOW
    assert model.seen[2]["tools"] == ["lookup"]  # still shown, so the results make sense


def test_repeating_a_call_makes_the_next_turn_answer():
    again = [("lookup", {"city": "Oslo"})]
    model = ScriptedModel([again, again, "Snow."])
    steps = list(Agent(model, [lookup]).run("weather?"))
    assert [s["tool_choice"] for s in model.seen] == ["auto", "auto", "none"]
    assert steps[-1].reason == "answer" and steps[-1].text == "Snow."


def test_the_token_and_time_limits_end_the_run():
    endless = [[("lookup", {"city": "Oslo"})], [("lookup", {"city": "Rome"})]] * 5
    final = Agent(ScriptedModel(endless), [lookup], max_tokens=15).answer("weather?")
    assert final.reason == "max_tokens" and final.steps == 2
    final = Agent(ScriptedModel(endless), [lookup], time_limit=1e-9).answer("weather?")
    assert final.reason == "time_limit" and final.steps == 0


def test_bad_settings_and_an_empty_task_are_clear_errors():
    with pytest.raises(GenforgeError, match="style"):
        Agent(ScriptedModel([]), [], style="chain")
    with pytest.raises(GenforgeError, match="positive"):
        Agent(ScriptedModel([]), [], max_steps=0)
    with pytest.raises(GenforgeError, match="empty"):
        list(Agent(ScriptedModel([]), []).run("  "))


def test_a_long_history_is_compacted_before_the_context_fills():
    @tool
    def page(n: int) -> str:
        """A long page."""
        return f"page {n}: " + "lorem ipsum " * 150

    turns = [[("page", {"n": i})] for i in range(8)] + ["summary"]
    model = ScriptedModel(turns, context_length=2000)
    steps = list(Agent(model, [page], max_steps=10, max_new_tokens=200).run("read them all"))
    assert steps[-1].text == "summary"
    for seen in model.seen:
        assert model.count(seen["messages"], [{"function": {"name": "page"}}]) <= 2000
    last = model.seen[-1]["messages"]
    assert last[0]["role"] == "system" and last[1]["content"] == "read them all"  # kept
    assert "earlier steps were left out" in last[2]["content"]
    assert "lorem ipsum " * 100 in last[-1]["content"]  # the newest result is whole


def test_a_task_that_cannot_fit_the_context_is_a_clear_error():
    model = ScriptedModel(["never"], context_length=100)
    with pytest.raises(GenforgeError, match="do not fit"):
        list(Agent(model, [lookup]).run("x " * 1000))


# -- code actions ------------------------------------------------------------------------------


def code_turn(code: str) -> str:
    return f"Thought: compute it.\n```python\n{code}\n```"


def test_code_actions_call_tools_as_functions_in_the_sandbox():
    model = ScriptedModel(
        [
            code_turn("x = calculator(expression='6 * 7')\nprint('got', x)"),
            code_turn("final_answer(int(calculator(expression='6 * 7')) + 1)"),
        ]
    )
    agent = Agent(model, [calculator()], style="code")
    steps = list(agent.run("6 times 7, plus one"))
    assert kinds(steps) == ["model", "tool", "model", "tool", "final"]
    assert steps[0].code == "x = calculator(expression='6 * 7')\nprint('got', x)"
    assert steps[1].output == "got 42" and not steps[1].error
    assert steps[-1].text == "43" and steps[-1].reason == "answer"
    assert "def calculator(expression: str)" in agent.system
    assert model.seen[0]["grammar"] is not None  # local models are held to the format


def test_code_actions_see_their_errors_and_cannot_reach_other_tools(tmp_path):
    files = workspace_tools(tmp_path)
    model = ScriptedModel(
        [
            code_turn("print(lookup(city='Atlantis'))"),
            code_turn("write_file(path='a.txt', content='x')"),
            code_turn("import os\nprint(os.listdir('/'))"),
            "I give up.",
        ]
    )
    agent = Agent(model, [lookup, files["write_file"]], style="code")
    steps = list(agent.run("try things"))
    results = [s for s in steps if isinstance(s, ToolStep)]
    assert "ToolError" in results[0].output and "no such city" in results[0].output
    assert "did not approve" in results[1].output and not (tmp_path / "a.txt").exists()
    assert results[2].error and "refused" in results[2].output
    assert steps[-1].text == "I give up."


def test_repeated_code_makes_the_next_turn_answer_in_words():
    same = code_turn("print(6 * 7)")
    model = ScriptedModel([same, same, "It is 42."])
    steps = list(Agent(model, [calculator()], style="code").run("6 times 7?"))
    assert steps[-1].text == "It is 42." and steps[-1].reason == "answer"
    assert [s["grammar"] is not None for s in model.seen] == [True, True, False]
    assert model.seen[2]["messages"][-1]["content"] == ANSWER_NOW
