"""`genforge eval tools`: the cases, the scoring, and the runner with a scripted model.

The cases and the scorer are what is under test here: every expected call must be one the tool
accepts and can run, and each verdict must come out as written (a wrong argument, a wrong name, a
malformed call are wrong; a call where none was wanted is wrong). One slow test runs
Qwen2.5-Coder-0.5B on 8 cases in the five modes.
"""

from __future__ import annotations

import inspect
import json
import math

import pytest
from components import require_module
from tqdm import tqdm

from genforge.evals import harness, stdlib_tools, tool_calls
from genforge.evals.tool_calls import MODES, Case, read_calls, same_arguments, score
from genforge.generate.llm import ChatPrompt, Completion
from genforge.generate.structured import Grammar

jsonschema = require_module("jsonschema")

GCD = Case("numbers/math_gcd/0", "numbers", "GCD of 12 and 18?", "math_gcd", {"a": 12, "b": 18})
NONE = Case("numbers/none/0", "numbers", "Who wrote Hamlet?", None, None)
AUTO_BEFORE, AUTO = (m for m in MODES if m.name in ("auto_before", "auto_parse"))


def _call(name: str, arguments: dict) -> str:
    return json.dumps({"name": name, "arguments": arguments})


def _params(name: str) -> dict:
    return tool_calls.toolset()[name].parameters


def _specs() -> list[dict]:
    return tool_calls.group_specs("numbers")


# -- the cases -----------------------------------------------------------------------------------


def test_cases_are_fixed_grouped_and_each_offers_its_tool():
    cases = tool_calls.cases()
    assert cases == tool_calls.cases()  # the same on every run
    calls = [c for c in cases if c.name]
    assert len(calls) == len(stdlib_tools.TOOLS) * tool_calls.CASES_PER_TOOL == 160
    assert len(cases) - len(calls) == 32  # 8 requests per group that no tool fits
    assert len({c.id for c in cases}) == len(cases)
    assert len({c.request for c in cases}) > 0.9 * len(cases)  # values vary
    for group in stdlib_tools.GROUPS:
        names = [t["function"]["name"] for t in tool_calls.group_specs(group)]
        assert len(names) == 8
        assert all(c.name in names for c in calls if c.group == group)
    # grouped: each group's cases run together, so they share the group's cached prompt
    groups = [c.group for c in cases]
    assert groups == sorted(groups, key=stdlib_tools.GROUPS.index)


def test_every_expected_call_validates_and_runs():
    tools = tool_calls.toolset()
    for case in (c for c in tool_calls.cases() if c.name):
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
    assert len(chosen) == 2 * 2 * len(stdlib_tools.GROUPS)  # 2 calls and 2 no-calls each
    assert chosen[:2] == tool_calls.cases()[:2]
    assert [c.name for c in chosen[:4]] == ["math_gcd", "math_gcd", None, None]


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
    verdict = score(GCD, read_calls(AUTO, text, _specs()), _params("math_gcd"))
    assert (verdict["parsed"], verdict["name"], verdict["acc"]) == (True, True, True)
    assert verdict["call"]["name"] == "math_gcd"


@pytest.mark.parametrize(
    ("text", "parsed", "name"),
    [
        (_call("math_gcd", {"a": 12, "b": 19}), True, True),  # a wrong argument
        (_call("math_lcm", {"a": 12, "b": 18}), True, False),  # the neighbour
        # bare calls the schema refuses are text: a missing argument, an extra one, strings
        (_call("math_gcd", {"a": 12}), False, False),
        (_call("math_gcd", {"a": 12, "b": 18, "c": 1}), False, False),
        (_call("math_gcd", {"a": "12", "b": "18"}), False, False),
        (_call("gcd", {"a": 12, "b": 18}), False, False),  # a name not offered
        ('{"name": "math_gcd", "arguments": {"a": 12, "b": 18}', False, False),  # cut off
        ("<tool_call>\n" + _call("math_gcd", {"a": 12, "b": 18}), False, False),  # not closed
        ('```json\n{"name": "math_gcd", "arguments": {"a": 12, b: 18}}\n```', False, False),
        ("The greatest common divisor of 12 and 18 is 6.", False, False),  # an answer in words
        (  # two calls where one was asked for
            "\n".join(
                f"<tool_call>\n{_call('math_gcd', {'a': 12, 'b': b})}\n</tool_call>"
                for b in (18, 19)
            ),
            False,
            False,
        ),
    ],
)
def test_wrong_and_malformed_calls_are_wrong(text, parsed, name):
    verdict = score(GCD, read_calls(AUTO, text, _specs()), _params("math_gcd"))
    assert (verdict["parsed"], verdict["name"], verdict["acc"]) == (parsed, name, False)


def test_before_and_after_read_the_same_answers_differently():
    tagged = f"<tool_call>\n{_call('math_gcd', {'a': 12, 'b': 18})}\n</tool_call>"
    repeated = "\n".join([tagged] * 3)
    cut = repeated + '\n<tool_call>\n{"name": "math_g'
    fenced = f"```json\n{_call('math_gcd', {'a': 12, 'b': 18})}\n```"
    required = next(m for m in MODES if m.name == "required")
    for text, before, after in [
        (repeated, 3, 1),  # a repeated call is one call now
        (cut, 0, 1),  # a cut call no longer loses the complete ones
        (fenced, 0, 1),  # auto reads fenced calls now
    ]:
        assert len(read_calls(AUTO_BEFORE, text, _specs())) == before, text
        assert len(read_calls(AUTO, text, _specs())) == after, text
    assert read_calls(required, fenced, _specs()) == []  # required asks for tags, and gets them
    assert score(GCD, read_calls(AUTO, cut, _specs()), _params("math_gcd"))["acc"]


def test_no_call_is_right_where_none_was_wanted():
    assert score(NONE, read_calls(AUTO, "Shakespeare wrote it.", _specs()), None)["text"]
    example = '```json\n{"name": "Hamlet", "author": "Shakespeare"}\n```'  # JSON, but no call
    assert score(NONE, read_calls(AUTO, example, _specs()), None)["text"]
    call = _call("math_gcd", {"a": 12, "b": 18})
    assert not score(NONE, read_calls(AUTO, call, _specs()), None)["text"]


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


def test_summary_has_each_verdict_in_each_mode_with_standard_errors():
    right = {"acc": True, "parsed": True, "name": True}
    wrong = {"acc": False, "parsed": False, "name": False}
    records = [
        {"expected": {}, "auto_parse": right, "required": right if i < 1 else wrong}
        for i in range(4)
    ]
    records.append({"expected": None, "auto_parse": {"text": True}})
    s = tool_calls.summarize(records)
    assert s["metrics"]["acc_auto_parse"] == 1.0 and s["stderr"]["acc_auto_parse"] == 0.0
    assert s["metrics"]["parsed_required"] == 0.25
    assert s["stderr"]["parsed_required"] == pytest.approx(math.sqrt(0.25 * 0.75 / 3))
    assert s["metrics"]["text_auto_parse"] == 1.0 and "text_required" not in s["metrics"]


# -- the runner with a scripted model --------------------------------------------------------------


class ScriptedLLM:
    """Writes the right call to a request that wants one (fenced under "auto", tagged under
    "required") and a word to one that does not; without the bare grammar, the calls of two
    groups of four are cut short."""

    name = "scripted"

    def __init__(self):
        self.prompts = []  # (messages, tools, options)
        self.runs = []  # (grammars, sampling) per complete_many

    def chat_prompt(self, messages, tools=None, **options):
        self.prompts.append((messages, tools, options))
        return ChatPrompt([len(self.prompts) - 1], Grammar("spec", "lark", calls=True), tools)

    def complete_many(self, prompts, *, grammars=None, **sampling):
        self.runs.append((grammars, sampling))
        cases = {c.request: c for c in tool_calls.cases()}
        for (i,) in prompts:
            messages, _, options = self.prompts[i]
            case = cases[messages[-1]["content"]]
            if case.name is None:
                yield Completion("Words.", "stop", 700, 2)
                continue
            call = _call(case.name, case.arguments)
            text = f"```json\n{call}\n```"
            if options["tool_choice"] == "required":
                text = f"<tool_call>\n{call}\n</tool_call>"
            if not options["bare_calls"] and case.group in ("text", "files"):
                text = text[:-5]
            yield Completion(text, "stop", 700, 20)


def test_runner_asks_every_mode_from_the_same_prompts():
    llm = ScriptedLLM()
    task = tool_calls.TOOL_TASKS[0]
    with tqdm(disable=True) as bar:
        summary, records = tool_calls.run(
            llm, task, limit=1, shots=0, seed=1, chat=True, bar=bar, workers=1
        )
    assert len(records) == 8
    assert len(llm.runs) == len(MODES)
    # the group's tools on offer; each mode's tool_choice; the no-call requests in auto only
    asked = {}
    for messages, tools, options in llm.prompts:
        assert tools == tool_calls.group_specs(
            next(c.group for c in tool_calls.cases() if c.request == messages[-1]["content"])
        )
        key = (options["tool_choice"], options["bare_calls"], options["parallel_tool_calls"])
        asked.setdefault(key, []).append(messages)
    assert len(asked[("auto", False, True)]) == len(asked[("auto", False, False)]) == 8
    assert len(asked[("auto", True, False)]) == 8
    assert len(asked[("required", False, True)]) == len(asked[("required", False, False)]) == 4
    for (grammars, sampling), mode in zip(llm.runs, MODES, strict=True):
        assert sampling == {"temperature": 0, "max_tokens": 96}
        assert not (mode.before and any(g.calls for g in grammars))  # before: not stopped
    m = summary["metrics"]
    assert m["acc_auto_grammar"] == m["text_auto_grammar"] == 1.0
    assert m["acc_auto_parse"] == 0.5 and m["acc_auto_before"] == 0.0
    assert m["acc_required"] == m["acc_required_before"] == 0.5
    assert set(summary["mode_seconds"]) == {m.name for m in MODES}


def test_tools_is_a_task_of_the_harness():
    assert harness.resolve("tools") == tool_calls.TOOL_TASKS
    assert "tools" in harness.describe_tasks()


# -- the real model ------------------------------------------------------------------------------


def test_smollm2_in_every_mode(smollm2):
    results = harness.evaluate(smollm2, "tools", limit=1, progress=False)
    task, items = results["tasks"]["tools"], results["items"]["tools"]
    assert task["n"] == 8 and set(task["mode_seconds"]) == {m.name for m in MODES}
    for r in items:
        # auto under the bare grammar: an answer that begins a call and ends is a call
        auto = r["auto_grammar"]
        began = auto["output"].lstrip().startswith(("```json", "{", "<tool_call>"))
        if began and auto["finish_reason"] == "stop":
            assert auto["calls"] >= 1, auto["output"]
        if r["expected"] is None:
            assert "required" not in r  # required must call: not asked
            continue
        # required: the answer is calls, and ends at a repeated one or is cut in one
        required = r["required"]
        assert required["calls"] >= 1 or required["finish_reason"] == "length", required
        assert required["tokens"] <= r["required_before"]["tokens"] + 8
    assert "| tools | acc_auto_before |" in harness.markdown_table(results)
