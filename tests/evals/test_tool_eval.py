"""`genforge eval tools`: the cases, the scoring, and the runner with a scripted model.

The cases and the scorer are what is under test here: every expected call must be one the tool
accepts and can run, and each verdict must come out as written (a wrong argument, a wrong name, a
malformed call are wrong). One slow test runs Qwen2.5-Coder-0.5B on 4 cases both ways.
"""

from __future__ import annotations

import inspect
import json
import math

import pytest
from components import require_module
from tqdm import tqdm

from genforge.evals import harness, stdlib_tools, tool_calls
from genforge.evals.tool_calls import Case, same_arguments, score
from genforge.generate.llm import ChatPrompt, Completion

jsonschema = require_module("jsonschema")

GCD = Case("numbers/math_gcd/0", "numbers", "GCD of 12 and 18?", "math_gcd", {"a": 12, "b": 18})


def _call(name: str, arguments: dict) -> str:
    return json.dumps({"name": name, "arguments": arguments})


def _params(name: str) -> dict:
    return tool_calls.toolset()[name].parameters


# -- the cases -----------------------------------------------------------------------------------


def test_cases_are_fixed_grouped_and_each_offers_its_tool():
    cases = tool_calls.cases()
    assert cases == tool_calls.cases()  # the same on every run
    assert len(cases) == len(stdlib_tools.TOOLS) * tool_calls.CASES_PER_TOOL == 160
    assert len({c.id for c in cases}) == len(cases)
    assert len({c.request for c in cases}) > 0.9 * len(cases)  # values vary
    for group in stdlib_tools.GROUPS:
        names = [t["function"]["name"] for t in tool_calls.group_specs(group)]
        assert len(names) == 8
        assert all(c.name in names for c in cases if c.group == group)
    # grouped: each group's cases run together, so they share the group's cached prompt
    groups = [c.group for c in cases]
    assert groups == sorted(groups, key=stdlib_tools.GROUPS.index)


def test_every_expected_call_validates_and_runs():
    tools = tool_calls.toolset()
    for case in tool_calls.cases():
        tool = tools[case.name]
        jsonschema.validate(case.arguments, tool.parameters)
        tool(**case.arguments)  # pydantic validation, then the real function
        # the request states what the call needs (a month by its name, a die's lowest side not)
        for key, value in case.arguments.items():
            shown = key != "month" and not (case.name == "random_randint" and key == "a")
            if shown and isinstance(value, int | str) and not isinstance(value, bool):
                assert str(value) in case.request, case


def test_descriptions_come_from_the_real_docstrings():
    tools = tool_calls.toolset()
    assert (
        tools["calendar_isleap"].description
        == "Return True for leap years, False for non-leap years."
    )
    # a signature paragraph is skipped; "e.g." does not end the sentence
    assert tools["math_hypot"].description.startswith("Multidimensional Euclidean distance")
    assert "e.g. the path info" in tools["urllib_parse_quote"].description
    for t in stdlib_tools.TOOLS:
        assert tools[t.name].description.split()[0] in inspect.getdoc(t.source)


def test_limit_takes_the_first_of_each_group():
    task = tool_calls.TOOL_TASKS[0]
    chosen = task.cases(limit=2)
    assert len(chosen) == 2 * len(stdlib_tools.GROUPS)
    assert chosen[:2] == tool_calls.cases()[:2]


# -- scoring -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        f"<tool_call>\n{_call('math_gcd', {'a': 12, 'b': 18})}\n</tool_call>",
        _call("math_gcd", {"a": 12, "b": 18}),  # bare
        f"```json\n{json.dumps({'name': 'math_gcd', 'arguments': {'a': 12, 'b': 18}}, indent=2)}\n```",
        _call("math_gcd", {"b": 18.0, "a": 12}),  # numbers as numbers, any key order
    ],
)
def test_a_right_call_is_right_however_it_is_written(text):
    verdict = score(GCD, text, _params("math_gcd"))
    assert (verdict["parsed"], verdict["name"], verdict["acc"]) == (True, True, True)
    assert verdict["call"]["name"] == "math_gcd"


@pytest.mark.parametrize(
    ("text", "parsed", "name"),
    [
        (_call("math_gcd", {"a": 12, "b": 19}), True, True),  # a wrong argument
        (_call("math_gcd", {"a": 12}), True, True),  # a missing one
        (_call("math_gcd", {"a": 12, "b": 18, "c": 1}), True, True),  # an extra one
        (_call("math_gcd", {"a": "12", "b": "18"}), True, True),  # numbers as strings
        (_call("math_lcm", {"a": 12, "b": 18}), True, False),  # the neighbour
        ('{"name": "math_gcd", "arguments": {"a": 12, "b": 18}', False, False),  # cut off
        ("<tool_call>\n" + _call("math_gcd", {"a": 12, "b": 18}), False, False),  # not closed
        ('```json\n{"name": "math_gcd", "arguments": {"a": 12, b: 18}}\n```', False, False),
        ("The greatest common divisor of 12 and 18 is 6.", False, False),  # an answer in words
        (  # two calls where one was asked for
            "\n".join(
                f"<tool_call>\n{_call('math_gcd', {'a': 12, 'b': 18})}\n</tool_call>" for _ in "ab"
            ),
            False,
            False,
        ),
    ],
)
def test_wrong_and_malformed_calls_are_wrong(text, parsed, name):
    verdict = score(GCD, text, _params("math_gcd"))
    assert (verdict["parsed"], verdict["name"], verdict["acc"]) == (parsed, name, False)


def test_arguments_are_compared_after_normalisation():
    shorten = _params("textwrap_shorten")
    expected = {"text": "Hello there", "width": 20}
    assert same_arguments(expected, {"text": "  Hello there ", "width": 20.0}, shorten)
    # an optional argument left out is its default, written out or not
    assert same_arguments(expected, {**expected, "placeholder": " [...]"}, shorten)
    assert not same_arguments(expected, {**expected, "placeholder": "..."}, shorten)
    assert not same_arguments(expected, {"text": "hello there", "width": 20}, shorten)  # case
    assert not same_arguments(expected, ["Hello there", 20], shorten)
    dumps = _params("json_dumps")
    assert same_arguments({"obj": {"a": 1}}, {"obj": {"a": 1.0}, "indent": None}, dumps)
    assert not same_arguments({"obj": {"a": 1}, "sort_keys": True}, {"obj": {"a": 1}}, dumps)
    assert not same_arguments({"obj": {"a": 1}}, {"obj": {"a": True}}, dumps)  # True is not 1
    mean = _params("statistics_mean")
    assert same_arguments({"data": [1, 2]}, {"data": [1.0, 2.0]}, mean)
    assert not same_arguments({"data": [1, 2]}, {"data": [2, 1]}, mean)


def test_summary_has_each_verdict_both_ways_with_standard_errors():
    right = {"acc": True, "parsed": True, "name": True}
    wrong = {"acc": False, "parsed": False, "name": False}
    records = [{"grammar": right, "free": right if i < 1 else wrong} for i in range(4)]
    s = tool_calls.summarize(records)
    assert s["metrics"]["acc_grammar"] == 1.0 and s["stderr"]["acc_grammar"] == 0.0
    assert s["metrics"]["parsed_free"] == 0.25
    assert s["stderr"]["parsed_free"] == pytest.approx(math.sqrt(0.25 * 0.75 / 3))


# -- the runner with a scripted model --------------------------------------------------------------


class ScriptedLLM:
    """Calls right under the grammar; without it, writes a malformed call to every other case."""

    name = "scripted"

    def __init__(self):
        self.prompts = []  # (messages, tools, options)
        self.runs = []  # (grammars, sampling) per complete_many

    def chat_prompt(self, messages, tools=None, **options):
        self.prompts.append((messages, tools, options))
        return ChatPrompt(ids=[len(self.prompts) - 1], grammar=f"grammar {len(self.prompts)}")

    def complete_many(self, prompts, *, grammars=None, **sampling):
        self.runs.append((grammars, sampling))
        cases = {c.request: c for c in tool_calls.cases()}
        for (i,) in prompts:
            case = cases[self.prompts[i][0][-1]["content"]]
            text = _call(case.name, case.arguments)
            if grammars is None and i % 2:
                text = text[:-1]
            yield Completion(text, "stop", 700, 20)


def test_runner_asks_both_ways_from_the_same_prompts():
    llm = ScriptedLLM()
    task = tool_calls.TOOL_TASKS[0]
    with tqdm(disable=True) as bar:
        summary, records = tool_calls.run(
            llm, task, limit=2, shots=0, seed=1, chat=True, bar=bar, workers=1
        )
    assert len(records) == 8
    # the group's tools on offer, calls held to them under "auto", bare calls counted
    messages, tools, options = llm.prompts[0]
    assert tools == tool_calls.group_specs("numbers")
    assert options == {"tool_choice": "auto", "parallel_tool_calls": False, "bare_calls": True}
    (grammars, sampling), (free, free_sampling) = llm.runs
    assert grammars == [f"grammar {i + 1}" for i in range(8)] and free is None
    assert sampling == free_sampling == {"temperature": 0, "max_tokens": 96}
    m = summary["metrics"]
    assert m["acc_grammar"] == m["parsed_grammar"] == 1.0
    assert m["acc_free"] == m["parsed_free"] == 0.5
    assert records[1]["free"]["parsed"] is False and records[1]["grammar"]["acc"] is True
    assert set(summary["mode_seconds"]) == {"grammar", "free"}


def test_tools_is_a_task_of_the_harness():
    assert harness.resolve("tools") == tool_calls.TOOL_TASKS
    assert "tools" in harness.describe_tasks()


# -- the real model ------------------------------------------------------------------------------


@pytest.mark.slow
def test_qwen_calls_tools_with_and_without_the_grammar(qwen_path):
    import genforge

    llm = genforge.load(str(qwen_path), dtype="fp32", progress=False)
    results = harness.evaluate(llm, "tools", limit=1, progress=False)
    task = results["tasks"]["tools"]
    m = task["metrics"]
    assert task["n"] == 4
    # tool_choice "auto": the model may answer in words (it does, on 8 of the 160 cases), but an
    # answer that begins a call is held to the schema, so it parses and names an offered tool
    for r in results["items"]["tools"]:
        began = r["grammar"]["output"].lstrip().startswith(("```json", "{", "<tool_call>"))
        if began and r["grammar"]["finish_reason"] == "stop":
            assert r["grammar"]["parsed"], r["grammar"]["output"]
            assert r["grammar"]["call"]["name"] in tool_calls.toolset()
    assert m["parsed_grammar"] >= 0.75, results["items"]["tools"]
    assert m["acc_grammar"] > 0.3
    assert "| tools | acc_free |" in harness.markdown_table(results)
