"""Tool calls from the embedded tool model, Qwen2.5-Coder-0.5B, through `genforge serve` and the
official `openai` client, greedy: the requests a new user would send.

- `required` (or a named function) gives one call: parallel calls are off unless asked for (as
  llama.cpp's server; OpenAI's default is on, and then this model goes on writing calls);
- parallel calls when asked for, each call once;
- a call cut by `max_tokens` does not throw away the complete calls before it;
- `auto`: the model writes its calls as JSON in a ```json fence or bare, not in the template's
  tags; they come back as `tool_calls` when they name an offered function with arguments its
  schema accepts;
- a plain answer that shows JSON stays text.
"""

from __future__ import annotations

import json

import pytest
from conftest import Server

from genforge.evals import tool_calls

pytestmark = pytest.mark.slow

QWEN = "qwen2.5-coder-0.5b-instruct"
AREA = {  # the function of a new user's first try
    "type": "function",
    "function": {
        "name": "calculate_triangle_area",
        "description": "Calculate the area of a triangle given its base and height.",
        "parameters": {
            "type": "object",
            "properties": {
                "base": {"type": "integer", "description": "The base of the triangle."},
                "height": {"type": "integer", "description": "The height of the triangle."},
                "unit": {"type": "string", "description": "The unit of measure."},
            },
            "required": ["base", "height"],
        },
    },
}
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The current weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}
TRIANGLE = [
    {
        "role": "user",
        "content": "Find the area of a triangle with a base of 10 units and height of 5 units.",
    }
]
TWO_CITIES = [
    {"role": "user", "content": "What is the weather in Paris and in Rome? One call per city."}
]


@pytest.fixture(scope="module")
def qwen(qwen_path):
    openai = pytest.importorskip("openai")
    s = Server("-m", QWEN, "--ctx", "2048")
    yield openai.OpenAI(base_url=f"{s.url}/v1", api_key="none", max_retries=0, timeout=300)
    s.stop()


def _calls(choice) -> list[tuple[str, dict]]:
    calls = choice.message.tool_calls or []
    return [(c.function.name, json.loads(c.function.arguments)) for c in calls]


def _ask(client, messages, tools, **options):
    return client.chat.completions.create(
        model=QWEN, messages=messages, tools=tools, temperature=0, **options
    ).choices[0]


def test_required_gives_one_call(qwen):
    choice = _ask(qwen, TRIANGLE, [AREA], tool_choice="required", max_tokens=256)
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    [(name, args)] = _calls(choice)
    assert name == "calculate_triangle_area" and (args["base"], args["height"]) == (10, 5)
    named = {"type": "function", "function": {"name": "calculate_triangle_area"}}
    choice = _ask(qwen, TRIANGLE, [AREA, WEATHER], tool_choice=named, max_tokens=256)
    assert [name for name, _ in _calls(choice)] == ["calculate_triangle_area"]


def test_parallel_calls_when_asked_for_and_a_cut_call_keeps_the_others(qwen):
    one = qwen.chat.completions.create(
        model=QWEN,
        messages=TWO_CITIES,
        tools=[WEATHER],
        tool_choice="required",
        temperature=0,
        max_tokens=200,
    )
    assert [args["city"] for _, args in _calls(one.choices[0])] == ["Paris"]
    # the model asks for Paris and Rome, then goes on to cities nobody asked for: cut by
    # max_tokens, the complete calls stand, each once
    both = _ask(
        qwen,
        TWO_CITIES,
        [WEATHER],
        tool_choice="required",
        parallel_tool_calls=True,
        max_tokens=120,
    )
    cities = [args["city"] for _, args in _calls(both)]
    assert cities[:2] == ["Paris", "Rome"] and len(set(cities)) == len(cities)
    # room for the first call and a few tokens of the second
    cut = _ask(
        qwen,
        TWO_CITIES,
        [WEATHER],
        tool_choice="required",
        parallel_tool_calls=True,
        max_tokens=one.usage.completion_tokens + 4,
    )
    assert cut.finish_reason == "length"
    assert [args["city"] for _, args in _calls(cut)] == ["Paris"]


def test_auto_reads_the_calls_the_model_writes(qwen):
    choice = _ask(qwen, TRIANGLE, [AREA], max_tokens=256)  # tool_choice "auto"
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    [(name, args)] = _calls(choice)
    assert name == "calculate_triangle_area" and (args["base"], args["height"]) == (10, 5)
    # streamed: the call comes as a tool_calls delta, its JSON never as content
    chunks = list(
        qwen.chat.completions.create(
            model=QWEN, messages=TRIANGLE, tools=[AREA], temperature=0, max_tokens=256, stream=True
        )
    )
    deltas = [c.choices[0].delta for c in chunks if c.choices]
    assert not "".join(d.content or "" for d in deltas).strip()
    streamed = [tc for d in deltas for tc in (d.tool_calls or [])]
    assert [tc.function.name for tc in streamed] == ["calculate_triangle_area"]
    assert json.loads(streamed[0].function.arguments) == args
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


def test_auto_reads_a_bare_json_call_to_an_offered_function_only(qwen):
    # asked a question with eight text tools on offer, the model calls one in bare JSON
    text_tools = tool_calls.group_specs("text")
    tomato = [{"role": "user", "content": "Is a tomato a fruit or a vegetable?"}]
    choice = _ask(qwen, tomato, text_tools, max_tokens=80)
    assert choice.finish_reason == "tool_calls"
    # "tomato", "Tomato" or "a tomato": which, is a near-tie that moves with the CPU's kernel path
    [(name, args)] = _calls(choice)
    assert name == "string_capwords" and "tomato" in args["s"].lower()
    # with one on offer it invents a function: JSON, but not a call to an offered one, so text
    capwords = [t for t in text_tools if t["function"]["name"] == "string_capwords"]
    choice = _ask(qwen, tomato, capwords, max_tokens=80)
    assert not choice.message.tool_calls and choice.finish_reason == "stop"
    assert json.loads(choice.message.content)["name"] != "string_capwords"


def test_a_plain_answer_that_shows_json_stays_text(qwen):
    ask = [{"role": "user", "content": "Show an example JSON object for a book: title, author."}]
    choice = _ask(qwen, ask, [WEATHER], max_tokens=120)
    assert choice.finish_reason == "stop" and not choice.message.tool_calls
    assert "{" in choice.message.content and "title" in choice.message.content
