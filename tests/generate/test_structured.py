"""Structured output in the library: grammars from JSON schemas and Lark, tool calls, and parsing."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
from components import require_module

from genforge.errors import GenforgeError
from genforge.generate.structured import (
    Grammar,
    call_start,
    inline_tools,
    parse_tool_calls,
    tool_call_grammar,
)

jsonschema = require_module("jsonschema")

SCHEMA = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "maxLength": 30},
        "population": {"type": "integer", "minimum": 0},
        "coastal": {"type": "boolean"},
    },
    "required": ["city", "population", "coastal"],
    "additionalProperties": False,
}
TOOL = {
    "type": "function",
    "function": {
        "name": "search",
        "parameters": {
            "type": "object",
            "properties": {"query": {"type": "string", "maxLength": 40}},
            "required": ["query"],
            "additionalProperties": False,
        },
    },
}


def test_schema_output_always_validates(smollm2):
    prompt = [{"role": "user", "content": "Describe a city as JSON."}]
    for seed in range(12):
        out = smollm2.chat(prompt, json_schema=SCHEMA, temperature=1.0, seed=seed, max_tokens=120)
        jsonschema.validate(json.loads(out), SCHEMA)


def test_lark_grammar_limits_the_answer(smollm2):
    for seed in range(4):
        out = smollm2.chat(
            "Is the sky blue?", grammar='start: "yes" | "no"', temperature=1.0, seed=seed
        )
        assert out in ("yes", "no")


def test_streamed_schema_output(smollm2):
    pieces = list(smollm2.generate("A city: ", json_schema=SCHEMA, stream=True, temperature=0))
    jsonschema.validate(json.loads("".join(pieces)), SCHEMA)


def test_required_tool_call_parses(smollm2):
    out = smollm2.chat(
        "Search the web for the tallest mountain.",
        tools=[TOOL],
        tool_choice="required",
        temperature=1.0,
        seed=3,
        max_tokens=200,
    )
    text, calls = parse_tool_calls(out)
    assert text == "" and calls
    for call in calls:
        assert call["name"] == "search"
        jsonschema.validate(call["arguments"], TOOL["function"]["parameters"])


def test_auto_tools_answer_is_text_or_calls(smollm2):
    for seed in range(6):
        out = smollm2.chat(
            "Hello! Who are you?", tools=[TOOL], temperature=1.0, seed=seed, max_tokens=60
        )
        text, calls = parse_tool_calls(out)
        if "<tool_call>" in out.lstrip()[:11]:
            assert calls and text == ""
        else:
            assert not calls and text == out


def test_unsupported_schema_names_the_feature(smollm2):
    g = Grammar.json_schema({"type": "object", "if": {"required": ["a"]}})
    with pytest.raises(GenforgeError, match='"if"'):
        smollm2.constraint(g)
    with pytest.raises(GenforgeError, match="not valid JSON"):
        Grammar.json_schema("{nope")
    with pytest.raises(GenforgeError, match="json_schema or grammar"):
        smollm2.chat("hi", json_schema=SCHEMA, grammar='start: "x"')
    with pytest.raises(GenforgeError, match="not one of the tools"):
        smollm2.chat_prompt("hi", tools=[TOOL], tool_choice={"function": {"name": "nope"}})


def test_tool_grammar_checks_tools():
    with pytest.raises(GenforgeError, match="non-empty name"):
        tool_call_grammar([{"type": "function", "function": {}}], required=True)


def test_parse_tool_calls():
    one = '<tool_call>\n{"name": "f", "arguments": {"x": 1}}\n</tool_call>'
    assert parse_tool_calls(one) == ("", [{"name": "f", "arguments": {"x": 1}}])
    two = one + "\n" + one.replace('"f"', '"g"')
    assert [c["name"] for c in parse_tool_calls(two)[1]] == ["f", "g"]
    assert parse_tool_calls("Let me check.\n" + one)[0] == "Let me check."
    for broken in ("plain text", "<tool_call>\n{oops}\n</tool_call>", "<tool_call>{}", one + " x"):
        assert parse_tool_calls(broken) == (broken, [])
    # a repeated call counts once; a call cut short after complete ones leaves them standing
    assert parse_tool_calls(one + "\n" + one) == ("", [{"name": "f", "arguments": {"x": 1}}])
    for cut in ('\n<tool_call>\n{"name": "g', "\n<tool_", "\n<tool_call>"):
        assert [c["name"] for c in parse_tool_calls(two + cut)[1]] == ["f", "g"], cut
    assert parse_tool_calls(one + "\nmore words") == (one + "\nmore words", [])


def test_bare_calls_count_when_they_fit_an_offered_tool():
    call = {"name": "search", "arguments": {"query": "cats"}}
    for text in (
        json.dumps(call),
        f"```json\n{json.dumps(call, indent=2)}\n```",
        "```\n" + json.dumps(call) + "\n```",
        json.dumps({"name": "search", "parameters": {"query": "cats"}}),  # as some models write
    ):
        assert parse_tool_calls(text, bare=True, tools=[TOOL]) == ("", [call]), text
    for text in (
        json.dumps({"name": "Alice", "age": 3}),  # JSON, not a call
        json.dumps({"name": "search", "arguments": {"q": "cats"}}),  # an argument the tool lacks
        json.dumps({"name": "browse", "arguments": {"query": "cats"}}),  # not offered
        "```python\nprint(1)\n```",
        'The JSON {"name": "search"} is a call.',
    ):
        assert parse_tool_calls(text, bare=True, tools=[TOOL]) == (text, []), text
    assert parse_tool_calls(json.dumps(call)) == (json.dumps(call), [])  # bare=False: text


@pytest.mark.parametrize(
    ("text", "bare", "starts"),
    [
        ("", True, None),
        ("  <tool", False, None),
        ("<tool_call>", False, True),
        ("{", False, False),
        ("{", True, True),
        ("`", True, None),
        ("```js", True, None),
        ("```json\n", True, None),
        ("```json\n{", True, True),
        ("```\n {", True, True),
        ("```python", True, False),
        ("Hello", True, False),
    ],
)
def test_call_start_decides_as_soon_as_it_can(text, bare, starts):
    assert call_start(text, bare) is starts


def test_a_repeated_call_ends_the_answer(smollm2):
    """Under a grammar of several calls, only the end of the answer may follow a call that repeats
    an earlier one (Qwen2.5-Coder repeats its call greedily until max_tokens without this)."""
    import torch

    prompt = smollm2.chat_prompt(
        "Search for cats.", tools=[TOOL], tool_choice="required", parallel_tool_calls=True
    )
    assert prompt.grammar.calls
    call = '<tool_call>\n{"name": "search", "arguments": {"query": "%s"}}\n</tool_call>'
    eos = smollm2.tokenizer.eos_ids
    for other, ends in (("dogs", False), ("cats", True)):
        constraint = smollm2.constraint(prompt.grammar)
        logits = torch.zeros(smollm2.config.vocab_size)
        for token in smollm2.tokenizer.encode(call % "cats" + "\n" + call % other):
            assert torch.isfinite(constraint.mask(logits)[token])
            constraint.advance(token)
        allowed = set(torch.isfinite(constraint.mask(logits)).nonzero().flatten().tolist())
        assert allowed & eos  # the answer may end after any complete call ...
        assert (allowed <= eos) is ends  # ... and must after a repeat
    unstopped = smollm2.constraint(dataclasses.replace(prompt.grammar, calls=False))
    for token in smollm2.tokenizer.encode(call % "cats" + "\n" + call % "cats"):
        unstopped.advance(token)
    assert not set(torch.isfinite(unstopped.mask(logits)).nonzero().flatten().tolist()) <= eos


def test_inline_tools_for_templates_without_tool_support():
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Find cats."},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "1",
                    "type": "function",
                    "function": {"name": "search", "arguments": '{"query": "cats"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "1", "content": "many cats"},
    ]
    out = inline_tools(messages, [TOOL])
    assert out[0]["content"].startswith("Be brief.") and '"name": "search"' in out[0]["content"]
    assert json.loads(out[2]["content"].split("\n")[1]) == {
        "name": "search",
        "arguments": {"query": "cats"},
    }
    assert out[3] == {"role": "user", "content": "<tool_response>\nmany cats\n</tool_response>"}


def test_logprobs_recorded_per_token(smollm2):
    from genforge.generate.sampling import SamplingParams

    ids = smollm2.tokenizer.encode("The sky is", add_special=True)
    params = SamplingParams(temperature=0, max_tokens=5)
    stream = smollm2.engine.generate(ids, params, logprobs=2)
    tokens = list(stream)
    lps = stream.request.state.token_logprobs
    assert tokens and [t.token for t in lps] == tokens
    for t in lps:
        assert t.top[0][0] == t.token and t.logprob == pytest.approx(t.top[0][1])
        assert t.logprob <= 0 and len(t.top) == 2


# -- what a JSON schema grammar guarantees ---------------------------------------------------------

USER = {  # the README's "Invent a user." schema: no additionalProperties, as users write it
    "type": "object",
    "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
    "required": ["name", "age"],
}


def _accepts(llm, grammar: Grammar, text: str) -> bool:
    """Whether the grammar takes `text` token by token and may end after it (EOS allowed)."""
    c = llm.constraint(grammar)
    for token in llm.tokenizer.encode(text, add_special=False):
        if not c.matcher.consume_token(token):
            return False
    eos = min(llm.tokenizer.eos_ids)
    return bool(np.frombuffer(c.matcher.compute_logit_bias(), dtype=np.uint8)[eos])


def test_schema_grammar_refuses_extra_repeated_and_reordered_keys(smollm2):
    g = Grammar.json_schema(USER)
    assert _accepts(smollm2, g, '{"name": "Ada", "age": 36}')
    for bad in (
        '{"name": "Ada", "age": 36, "description": "x"}',  # a key the schema does not list
        '{"name": "Ada", "name": "Bo", "age": 36}',  # a key twice
        '{"name": "Ada", "age": 36, "age": 37}',
        '{"age": 36, "name": "Ada"}',  # required keys in the schema's order
        '{"name": "Ada"}',  # a required key missing: no end here
        '{"name":"Ada","age":36}',  # json.dumps' separators, no others
        '{"name" : "Ada",  "age": 36}',
        '{"name": "Ada", "age": 36} ',
    ):
        assert not _accepts(smollm2, g, bad), bad
    nested = {"type": "object", "properties": {"home": USER}, "required": ["home"]}
    bad_nested = '{"home": {"name": "A", "age": 1, "x": 2}}'
    assert not _accepts(smollm2, Grammar.json_schema(nested), bad_nested)


def test_schema_grammar_keeps_extra_keys_the_schema_allows(smollm2):
    open_user = {**USER, "additionalProperties": {"type": "string"}}
    g = Grammar.json_schema(open_user)
    assert _accepts(smollm2, g, '{"name": "A", "age": 1, "x": "y"}')
    assert not _accepts(smollm2, g, '{"name": "A", "age": 1, "x": 2}')
    assert _accepts(smollm2, Grammar.json_object(), '{"anything": [1, {"goes": true}]}')


def test_strict_schema_closes_only_listed_objects():
    from genforge.generate.structured import strict_schema

    out = strict_schema({"type": "array", "items": USER, "$defs": {"u": USER}})
    assert out["items"]["additionalProperties"] is False
    assert out["$defs"]["u"]["additionalProperties"] is False
    assert out["x-guidance"] == {
        "whitespace_flexible": False,
        "key_separator": ": ",
        "item_separator": ", ",
    }
    assert "additionalProperties" not in strict_schema({"type": "object"})
    wants_extra = {**USER, "required": ["name", "id"]}  # requires a key it does not list
    assert "additionalProperties" not in strict_schema(wants_extra)
    both = strict_schema({"allOf": [USER, {"properties": {"id": {"type": "integer"}}}]})
    assert all(
        "additionalProperties" not in s for s in both["allOf"]
    )  # closing one forbids the other
    assert USER.get("additionalProperties") is None  # the caller's schema is not modified


def test_schema_output_ends_and_validates(smollm2):
    """The README's "Invent a user.": every answer ends by itself well before the cap."""
    prompt = smollm2.chat_prompt("Invent a user.", json_schema=USER)
    for seed in range(6):
        c = smollm2.complete(prompt.ids, grammar=prompt.grammar, seed=seed, max_tokens=100)
        assert c.finish_reason == "stop", (seed, c.text)
        jsonschema.validate(json.loads(c.text), USER)


def test_schema_output_cut_by_max_tokens_is_the_start_of_valid_json(smollm2):
    pydantic_core = require_module("pydantic_core")
    prompt = smollm2.chat_prompt("Invent a user.", json_schema=USER)
    c = smollm2.complete(prompt.ids, grammar=prompt.grammar, temperature=0, max_tokens=5)
    assert c.finish_reason == "length"
    with pytest.raises(json.JSONDecodeError):
        json.loads(c.text)
    partial = pydantic_core.from_json(c.text, allow_partial="trailing-strings")
    assert isinstance(partial, dict) and set(partial) <= set(USER["properties"])


def test_tool_arguments_and_tool_answers_are_strict_too(smollm2):
    loose_tool = {  # parameters as tools are usually written: no additionalProperties
        "type": "function",
        "function": {
            "name": "search",
            "parameters": {"type": "object", "properties": {"query": {"type": "string"}}},
        },
    }
    calls = tool_call_grammar([loose_tool], required=True, tokenizer=smollm2.tokenizer)
    call = '<tool_call>\n{"name": "search", "arguments": {"query": "x"%s}}\n</tool_call>'
    assert _accepts(smollm2, calls, call % "")
    assert not _accepts(smollm2, calls, call % ', "page": 2')
    answer = Grammar.json_schema(USER)
    either = tool_call_grammar([loose_tool], False, answer, smollm2.tokenizer)
    assert _accepts(smollm2, either, '{"name": "A", "age": 1}')
    assert not _accepts(smollm2, either, '{"name": "A", "age": 1, "x": 1}')
