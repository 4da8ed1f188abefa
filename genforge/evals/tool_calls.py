"""`genforge eval tools`: does the model call the right function with the right arguments, and
answer in words when no offered function fits?

160 requests ("Is 2024 a leap year?") each with one right call (`calendar_isleap(year=2024)`) to one
of 32 standard-library functions (genforge/evals/stdlib_tools.py), and 32 requests no offered
function fits ("Who painted the Mona Lisa?", "Give me an example JSON object for a book"), where
the right answer is no call. A request is asked through the chat template with its group's eight
tools on offer, and answered in five modes from the same prompt ids, greedily, at most
`max_tokens` tokens, all requests of a mode batched in the engine:
- `auto_before`, `required_before`: as genforge answered before it read small models' calls
  (`tool_choice` "auto" or "required", parallel calls allowed, OpenAI's default): calls only in
  the template's `<tool_call>` tags, and an answer cut in a call read as no call at all;
- `auto_parse`: "auto" as now: the tag grammar, one call (parallel calls are off unless asked
  for), and an answer that is a bare or ```json-fenced JSON call read as a call when it names an
  offered tool with arguments its schema accepts (decoded freely, it may not);
- `auto_grammar`: "auto" under `tool_call_grammar(bare=True)`: an answer that begins "{" or a
  fenced "{" is held to the offered tools' schemas from its first token (llama.cpp's lazy
  grammars do the same with their triggers);
- `required`: "required" as now: one call.
The requests no tool fits are asked in the auto modes only ("required" must call).

Verdicts on a request that wants a call: `parsed` (exactly one call), `name` (... to the right
function), `acc` (... with the right arguments: equal after normalisation, numbers as numbers,
strings stripped, an optional argument left out equal to its default). On one that wants none:
`text` (no call). Metrics are `VERDICT_MODE` (`acc_auto_grammar`, `text_auto_parse`, ...).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import random
import re
import time
from dataclasses import dataclass
from typing import Any

from genforge.evals.stdlib_tools import GROUPS, TOOLS, describe
from genforge.generate.structured import TOOL_CALL_CLOSE, TOOL_CALL_OPEN, parse_tool_calls

VERSION = 2
CASES_PER_TOOL = 5
VERDICTS = ("acc", "parsed", "name")


@dataclass(frozen=True)
class Mode:
    """One way of answering every request."""

    name: str
    tool_choice: str  # "auto" or "required"
    bare_grammar: bool = False  # bare and fenced calls held to the schemas by the grammar
    before: bool = False  # read as before: tags only, repeats not stopped, a cut call loses all


MODES = (
    Mode("auto_before", "auto", before=True),
    Mode("auto_parse", "auto"),
    Mode("auto_grammar", "auto", bare_grammar=True),
    Mode("required_before", "required", before=True),
    Mode("required", "required"),
)


@dataclass(frozen=True)
class Case:
    id: str
    group: str  # the group of tools offered with it
    request: str  # the user's message
    name: str | None  # the right call: function name (None: the right answer is no call) ...
    arguments: dict[str, Any] | None  # ... and its arguments


# Requests none of their group's tools fits: the right answer is words, not a call. Some ask
# for JSON, which a grammar that takes any "{" for a call would turn into one.
NO_CALL = {
    "numbers": (
        "Who wrote the novel Pride and Prejudice?",
        "Write a two-line poem about the sea.",
        "What does the name JSON stand for? Answer in one sentence.",
        "Give me an example JSON object for a book with a title and an author.",
        "Translate 'good morning' into French.",
        "What is the capital of Canada?",
        "Thanks, that is all I needed!",
        "Explain in one sentence what a prime number is.",
    ),
    "text": (
        "What is the boiling point of water at sea level?",
        "Suggest a name for a pet goldfish.",
        "Write a JSON object describing a cat named Tom who is 3 years old.",
        "What is the difference between a list and a tuple in Python?",
        "Hello! How are you today?",
        "Name three primary colours.",
        "Is a tomato a fruit or a vegetable?",
        "Summarize the plot of Romeo and Juliet in one sentence.",
    ),
    "dates_and_data": (
        "Who painted the Mona Lisa?",
        "What is the chemical symbol for gold?",
        'Reply with a JSON object with the keys "status" and "message" saying all is well.',
        "What does HTTP stand for?",
        "Write one sentence to encourage a friend before an exam.",
        "How many legs does a spider have?",
        "What language is spoken in Brazil?",
        "Tell me a short joke about computers.",
    ),
    "files": (
        "What is the largest planet in the solar system?",
        "Explain in one sentence what a file system is.",
        "In what year did people first walk on the Moon?",
        "Recommend a good habit for staying healthy.",
        "What is the opposite of 'ancient'?",
        "Good night!",
        "What is the plural of 'mouse'?",
        "Describe the colour of the sky on a clear day.",
    ),
}


@dataclass(frozen=True)
class ToolCalls:
    name: str
    title: str
    version: int = VERSION
    shots: int = 0
    kind: str = "tool_calls"
    max_tokens: int = 96
    prompt_format: str = (
        "the chat template, one user turn, the request's group of 8 tools offered; greedy, in "
        "five modes: auto and required as before, auto reading bare calls, auto holding them "
        "to the schemas, required ending at a repeated call"
    )

    def cases(self, limit: int | None = None) -> list[Case]:
        """The cases, grouped; with `limit`, the first `limit` of each group that want a call and
        the first `limit` that want none."""
        out = cases()
        if limit is None:
            return out
        seen: dict[tuple[str, bool], int] = {}
        kept = []
        for case in out:
            key = (case.group, case.name is None)
            seen[key] = seen.get(key, 0) + 1
            if seen[key] <= limit:
                kept.append(case)
        return kept


TOOL_TASKS = [
    ToolCalls(
        "tools",
        "Tool calls to 32 stdlib functions and requests no tool fits, before and after, "
        "auto and required",
    )
]


# -- the tools and the cases ---------------------------------------------------------------------


@functools.cache
def toolset() -> dict[str, Any]:
    """name -> `genforge.agents.tools.Tool` of each stdlib function (pydantic builds the schemas,
    so this is done once and not at import)."""
    from genforge.agents.tools import tool

    return {t.name: tool(t.wrapper, description=describe(t.source)) for t in TOOLS}


def group_specs(group: str) -> list[dict[str, Any]]:
    """The OpenAI-style function tools offered with every case of `group`, in a fixed order."""
    return [toolset()[t.name].spec() for t in TOOLS if t.group == group]


@functools.cache
def _all_cases(seed: int) -> tuple[Case, ...]:
    out = []
    for group in GROUPS:  # grouped, so the prompts of a group run one after another
        for stdlib in (t for t in TOOLS if t.group == group):
            for i in range(CASES_PER_TOOL):
                template = stdlib.templates[i % len(stdlib.templates)]
                rng = random.Random(f"{seed}:{stdlib.name}:{i}")
                values = template.values(rng)
                arguments = {k: v for k, v in values.items() if not k.startswith("_")}
                out.append(
                    Case(
                        f"{group}/{stdlib.name}/{i}",
                        group,
                        template.text.format(**values),
                        stdlib.name,
                        arguments,
                    )
                )
        for i, request in enumerate(NO_CALL[group]):
            out.append(Case(f"{group}/none/{i}", group, request, None, None))
    return tuple(out)


def cases(seed: int = 0) -> list[Case]:
    """Every case, the same ones on every run (values drawn from generators seeded by case)."""
    return list(_all_cases(seed))


# -- scoring: pure functions -----------------------------------------------------------------------


def normalize(value: Any) -> Any:
    """A value as arguments are compared: numbers as floats, strings stripped, booleans apart from
    numbers (True is not 1), lists and objects element by element."""
    if isinstance(value, bool):
        return ("bool", value)
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        return value.strip()
    if isinstance(value, list | tuple):
        return [normalize(v) for v in value]
    if isinstance(value, dict):
        return {k: normalize(v) for k, v in value.items()}
    return value


def same_arguments(expected: dict, got: Any, parameters: dict) -> bool:
    """Whether `got` are `expected`, after normalisation; an optional argument that one of them
    leaves out stands for its default."""
    if not isinstance(got, dict):
        return False
    defaults = {
        k: p["default"]
        for k, p in parameters.get("properties", {}).items()
        if isinstance(p, dict) and "default" in p
    }
    return normalize({**defaults, **expected}) == normalize({**defaults, **got})


_TAGGED = re.compile(
    re.escape(TOOL_CALL_OPEN) + r"(.*?)" + re.escape(TOOL_CALL_CLOSE), flags=re.DOTALL
)


def calls_before(text: str) -> list[dict[str, Any]]:
    """The calls in `text` as genforge read them before: `<tool_call>` blocks only, every one
    closed (an answer cut in its last call had none), repeats kept."""
    start = text.find(TOOL_CALL_OPEN)
    if start < 0 or _TAGGED.sub("", text[start:]).strip():
        return []
    calls = []
    for body in _TAGGED.findall(text[start:]):
        try:
            call = json.loads(body)
        except json.JSONDecodeError:
            return []
        if not isinstance(call, dict) or not isinstance(call.get("name"), str):
            return []
        calls.append({"name": call["name"], "arguments": call.get("arguments", {})})
    return calls


def read_calls(mode: Mode, text: str, tools: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The calls an answer makes, read as `mode` reads them."""
    if mode.before:
        return calls_before(text)
    return parse_tool_calls(text, bare=mode.tool_choice == "auto", tools=tools)[1]


def score(case: Case, calls: list[dict[str, Any]], parameters: dict | None) -> dict:
    """The verdicts on one answer's calls: for a case that wants a call, one call (`parsed`) to
    the right function (`name`) with the right arguments (`acc`); for one that wants none, `text`
    (no call). With the call as read (None if it was not one call)."""
    call = calls[0] if len(calls) == 1 else None
    if case.name is None:
        return {"call": call, "calls": len(calls), "text": not calls}
    name = call is not None and call["name"] == case.name
    return {
        "call": call,
        "calls": len(calls),
        "parsed": call is not None,
        "name": name,
        "acc": name and same_arguments(case.arguments, call["arguments"], parameters),
    }


def summarize(records: list[dict]) -> dict:
    """Each verdict's share in each mode (`acc_auto_grammar`, `text_auto_parse`, ...) over the
    cases that mode answered, with binomial standard errors."""
    metrics, stderr = {}, {}

    def share(key: str, values: list[bool]) -> None:
        n = len(values)
        p = sum(values) / n if n else 0.0
        metrics[key], stderr[key] = p, math.sqrt(p * (1 - p) / (n - 1)) if n > 1 else None

    for mode in MODES:
        answered = [r for r in records if mode.name in r]
        calls = [r[mode.name] for r in answered if r["expected"] is not None]
        for verdict in VERDICTS:
            share(f"{verdict}_{mode.name}", [v[verdict] for v in calls])
        if mode.tool_choice == "auto":
            share(
                f"text_{mode.name}",
                [r[mode.name]["text"] for r in answered if r["expected"] is None],
            )
    return {"metrics": metrics, "stderr": stderr}


# -- running -----------------------------------------------------------------------------------


def run(llm, task: ToolCalls, *, limit, shots, seed, chat, bar, workers):
    """The harness runner: (summary with metrics and stderr, one record per case)."""
    chosen = task.cases(limit)
    specs = {g: group_specs(g) for g in GROUPS}
    messages = [[{"role": "user", "content": c.request}] for c in chosen]
    asked = {
        m.name: [i for i, c in enumerate(chosen) if m.tool_choice == "auto" or c.name]
        for m in MODES
    }
    bar.reset(total=sum(len(v) for v in asked.values()))
    tools = toolset()
    records = [
        {
            "id": c.id,
            "group": c.group,
            "request": c.request,
            "expected": {"name": c.name, "arguments": c.arguments} if c.name else None,
        }
        for c in chosen
    ]
    seconds, tokens = {}, {}
    for mode in MODES:
        prompts = {
            i: llm.chat_prompt(
                messages[i],
                tools=specs[chosen[i].group],
                tool_choice=mode.tool_choice,
                parallel_tool_calls=mode.before,  # before: OpenAI's default; now: one call
                bare_calls=mode.bare_grammar,
            )
            for i in asked[mode.name]
        }
        grammars = [
            dataclasses.replace(p.grammar, calls=False) if mode.before else p.grammar
            for p in prompts.values()
        ]
        t0 = time.perf_counter()
        outputs = []
        for done in llm.complete_many(
            [p.ids for p in prompts.values()],
            grammars=grammars,
            temperature=0,
            max_tokens=task.max_tokens,
        ):
            outputs.append(done)
            bar.update()
        seconds[mode.name] = round(time.perf_counter() - t0, 2)
        tokens[mode.name] = sum(d.completion_tokens for d in outputs)
        for i, done in zip(prompts, outputs, strict=True):
            case = chosen[i]
            records[i]["prompt_tokens"] = len(prompts[i].ids)
            calls = read_calls(mode, done.text, specs[case.group])
            params = tools[case.name].parameters if case.name else None
            records[i][mode.name] = {
                "output": done.text,
                "finish_reason": done.finish_reason,
                "tokens": done.completion_tokens,
                **score(case, calls, params),
            }
    return {**summarize(records), "mode_seconds": seconds, "mode_tokens": tokens}, records
