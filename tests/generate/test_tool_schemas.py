"""Tool calls decoded under the grammar parse and validate, whatever the tool's schema.

500 random but valid function tools (strings, integers, numbers, booleans, enums, arrays of
primitives, nested objects; required and optional parameters) drawn from a seeded generator. The
fast test compiles every one's call grammar against a real tokenizer; the slow one decodes a call
to each with SmolLM2 sampling at temperature 1, all in flight at once, and checks that every call
that ended parses and validates against its schema with jsonschema.
"""

from __future__ import annotations

import json
import random
import time

import pytest
from components import require_module

from genforge.generate.structured import parse_tool_calls, tool_call_grammar

jsonschema = require_module("jsonschema")

N_TOOLS = 500
VERBS = (
    "get",
    "find",
    "list",
    "create",
    "update",
    "send",
    "fetch",
    "convert",
    "schedule",
    "cancel",
)
NOUNS = ("weather", "user", "invoice", "meeting", "flight", "order", "report", "recipe", "ticket")
WORDS = (
    "city",
    "count",
    "limit",
    "email",
    "date",
    "price",
    "tags",
    "verbose",
    "unit",
    "title",
    "priority",
    "address",
    "items",
    "offset",
    "query",
    "language",
    "amount",
    "notes",
    "enabled",
    "radius",
    "colour",
    "owner",
)
PRIMITIVES = ("string", "integer", "number", "boolean", "enum")


def _primitive(rng: random.Random, kind: str) -> dict:
    if kind == "string":  # bounded: sampled at temperature 1, a string can run on to max_tokens
        schema = {"type": "string", "maxLength": rng.randint(2, 12)}
        if rng.random() < 0.3:
            schema["minLength"] = 1
        return schema
    if kind == "integer":
        low = rng.randint(-100, 100)
        return {"type": "integer", "minimum": low, "maximum": low + rng.randint(1, 10_000)}
    if kind == "number":  # a step, or sampled fraction digits can run on to max_tokens too
        return {
            "type": "number",
            "minimum": 0,
            "maximum": rng.choice((1, 100, 1e6)),
            "multipleOf": 0.25,
        }
    if kind == "boolean":
        return {"type": "boolean"}
    values = rng.sample(("red", "green", "blue", "low", "high", "metric", "imperial", "asc"), 3)
    return {"type": "string", "enum": values}


def _property(rng: random.Random, depth: int) -> dict:
    kinds = [*PRIMITIVES, "array"] + (["object"] if depth == 0 else [])
    kind = rng.choice(kinds)
    if kind == "array":
        schema = {"type": "array", "items": _primitive(rng, rng.choice(PRIMITIVES))}
        schema["maxItems"] = rng.randint(1, 3)
        if rng.random() < 0.5:
            schema["minItems"] = 1
    elif kind == "object":
        schema = _object(rng, depth + 1, rng.randint(1, 3))
    else:
        schema = _primitive(rng, kind)
    if rng.random() < 0.6:
        schema["description"] = f"the {rng.choice(WORDS)} to use"
    return schema


def _object(rng: random.Random, depth: int, n: int) -> dict:
    names = rng.sample(WORDS, n)
    properties = {name: _property(rng, depth) for name in names}
    required = [name for name in names if rng.random() < 0.6]
    schema = {"type": "object", "properties": properties}
    if required:
        schema["required"] = required
    return schema


def random_tool(rng: random.Random, i: int) -> dict:
    """One function tool with 1-5 parameters, named like a real one (`find_invoice_17`)."""
    name = f"{rng.choice(VERBS)}_{rng.choice(NOUNS)}_{i}"
    return {
        "type": "function",
        "function": {
            "name": name,
            "description": f"{name.split('_')[0].capitalize()} a {name.split('_')[1]}.",
            "parameters": _object(rng, 0, rng.randint(1, 5)),
        },
    }


def random_tools(n: int = N_TOOLS, seed: int = 20_250) -> list[dict]:
    rng = random.Random(seed)
    return [random_tool(rng, i) for i in range(n)]


@pytest.fixture(scope="module")
def smollm2_tokenizer(smollm2_path):
    from genforge.tokenizer import Tokenizer
    from genforge.weights.gguf import read_gguf

    return Tokenizer.from_gguf_metadata(read_gguf(smollm2_path).metadata)


def test_random_tools_are_valid_and_varied():
    tools = random_tools()
    assert random_tools() == tools  # seeded: the same 500 every run
    kinds = set()
    for t in tools:
        params = t["function"]["parameters"]
        jsonschema.Draft202012Validator.check_schema(params)
        assert 1 <= len(params["properties"]) <= 5
        for p in params["properties"].values():
            kinds.add("enum" if "enum" in p else p["type"])
    assert kinds == {"string", "integer", "number", "boolean", "enum", "array", "object"}
    assert len({t["function"]["name"] for t in tools}) == N_TOOLS
    assert any("required" not in t["function"]["parameters"] for t in tools)


def test_every_random_tool_grammar_compiles(smollm2_tokenizer):
    """No model: each of the 500 call grammars is accepted by llguidance for this tokenizer."""
    vocab = smollm2_tokenizer.hf.get_vocab_size()
    for t in random_tools():
        tool_call_grammar([t], required=True, tokenizer=smollm2_tokenizer).check(
            smollm2_tokenizer, vocab
        )


@pytest.mark.slow
def test_sampled_calls_to_random_tools_parse_and_validate(smollm2_path):
    import genforge

    # 128 requests in flight at once, each decode step serving them all, and a KV cache that
    # holds them all (the default, one context of 8,192 positions, holds ~40 of these)
    llm = genforge.load(str(smollm2_path), progress=False, max_batch=128, kv_tokens=128 * 256)
    tools = random_tools()
    prompts, grammars = [], []
    for t in tools:
        name = t["function"]["name"]
        messages = [{"role": "user", "content": f"Call {name} with example arguments."}]
        prompts.append(llm.tokenizer.encode_chat(messages, add_generation_prompt=True))
        # one call: allowed more, a small model repeats its call until max_tokens
        grammars.append(
            tool_call_grammar([t], required=True, tokenizer=llm.tokenizer, parallel=False)
        )
    t0 = time.perf_counter()
    done = list(
        llm.complete_many(prompts, grammars=grammars, temperature=1.0, seed=7, max_tokens=160)
    )
    seconds = time.perf_counter() - t0
    ended = [(t, d) for t, d in zip(tools, done, strict=True) if d.finish_reason == "stop"]
    assert len(ended) >= 0.95 * N_TOOLS, f"{len(ended)} of {N_TOOLS} calls ended"
    texts = set()
    for t, d in ended:
        _, calls = parse_tool_calls(d.text)
        assert len(calls) == 1, d.text
        for call in calls:
            assert call["name"] == t["function"]["name"], d.text
            jsonschema.validate(call["arguments"], t["function"]["parameters"])
        texts.add(d.text)
    assert len(texts) == len(ended)  # sampled: no two tools got the same call
    print(f"{N_TOOLS} calls in {seconds:.1f} s, {len(ended)} ended")


def _accepts(grammar, tokenizer, text: str) -> bool:
    """Whether `grammar` lets `text` be written, token by token."""
    constraint = grammar.constraint(tokenizer, tokenizer.hf.get_vocab_size())
    for token in tokenizer.encode(text, add_special=False):
        if not constraint.matcher.compute_logit_bias()[token]:
            return False
        constraint.advance(token)
    return True


def test_a_bare_call_may_be_fenced(smollm2_tokenizer):
    """Qwen2.5-Coder-0.5B writes its calls in a ```json fence: with bare calls on, the fence is a
    call, held to the tools' schema from its "{", and parsed as one."""
    params = {"type": "object", "properties": {"query": {"type": "string"}}, "required": ["query"]}
    tool = {"type": "function", "function": {"name": "search", "parameters": params}}
    grammar = tool_call_grammar([tool], required=False, tokenizer=smollm2_tokenizer, bare=True)
    args = {"name": "search", "arguments": {"query": "tea"}}
    fenced = f"```json\n{json.dumps(args)}\n```"
    assert _accepts(grammar, smollm2_tokenizer, fenced)
    assert not _accepts(grammar, smollm2_tokenizer, fenced.replace("search", "find"))
    assert not _accepts(grammar, smollm2_tokenizer, fenced.replace('"tea"', "5"))
    assert _accepts(grammar, smollm2_tokenizer, "```python\nprint(1)\n```")  # other fences: text
    assert parse_tool_calls(fenced, bare=True) == ("", [args])
    assert parse_tool_calls(f"```\n{json.dumps(args, indent=2)}\n```  ", bare=True)[1] == [args]
    assert parse_tool_calls(fenced) == (fenced, [])  # without bare calls: text
    assert parse_tool_calls(fenced[:-3], bare=True)[1] == []  # not closed
