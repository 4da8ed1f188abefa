"""`genforge eval tools`: does the model call the right function with the right arguments?

160 requests ("Is 2024 a leap year?") each with one right call (`calendar_isleap(year=2024)`) to one
of 32 standard-library functions (genforge/evals/stdlib_tools.py). A request is asked through the
chat template with its tool's group of eight on offer, and answered twice from the same prompt:
- `grammar`: decoded under the tool-call grammar (`LLM.chat_prompt(tool_choice="auto",
  bare_calls=True, parallel_tool_calls=False)`): the model may still answer in words, but a call
  it begins is held to the offered tools' names and argument schemas;
- `free`: the same prompt ids, decoded without the grammar: a call that does not parse, or names
  no offered tool, is simply wrong.
Both greedy, at most `max_tokens` tokens, all requests of a run batched in the engine. Each answer
is parsed by `parse_tool_calls(bare=True)` and scored for:
- `parsed`: it is exactly one call;
- `name`: ... to the right function;
- `acc`: ... with the right arguments: equal after normalisation (numbers as numbers, strings
  stripped, an optional argument left out equal to its default).
"""

from __future__ import annotations

import functools
import math
import random
import time
from dataclasses import dataclass
from typing import Any

from genforge.evals.stdlib_tools import GROUPS, TOOLS, describe
from genforge.generate.structured import parse_tool_calls

VERSION = 1
CASES_PER_TOOL = 5
MODES = ("grammar", "free")
VERDICTS = ("acc", "parsed", "name")


@dataclass(frozen=True)
class Case:
    id: str
    group: str  # the group of tools offered with it
    request: str  # the user's message
    name: str  # the right call: function name ...
    arguments: dict[str, Any]  # ... and its arguments


@dataclass(frozen=True)
class ToolCalls:
    name: str
    title: str
    version: int = VERSION
    shots: int = 0
    kind: str = "tool_calls"
    max_tokens: int = 96
    prompt_format: str = (
        "the chat template, one user turn, the tool's group of 8 offered as tools; greedy, "
        "once under the tool-call grammar (tool_choice auto, bare calls) and once without"
    )

    def cases(self, limit: int | None = None) -> list[Case]:
        """The cases, grouped; with `limit`, the first `limit` of each group."""
        out = cases()
        if limit is None:
            return out
        seen: dict[str, int] = {}
        kept = []
        for case in out:
            seen[case.group] = seen.get(case.group, 0) + 1
            if seen[case.group] <= limit:
                kept.append(case)
        return kept


TOOL_TASKS = [
    ToolCalls(
        "tools",
        "Tool calls to 32 stdlib functions: right name and arguments, with and without the grammar",
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


def score(case: Case, text: str, parameters: dict) -> dict:
    """The verdicts on one answer: one parsed call (`parsed`) to the right function (`name`)
    with the right arguments (`acc`), and the call as parsed (None if it was not one call)."""
    _, calls = parse_tool_calls(text, bare=True)
    call = calls[0] if len(calls) == 1 else None
    name = call is not None and call["name"] == case.name
    return {
        "call": call,
        "parsed": call is not None,
        "name": name,
        "acc": name and same_arguments(case.arguments, call["arguments"], parameters),
    }


def summarize(records: list[dict]) -> dict:
    """Each verdict's share in each mode (`acc_grammar`, `parsed_free`, ...), with binomial
    standard errors."""
    metrics, stderr = {}, {}
    n = len(records)
    for verdict in VERDICTS:
        for mode in MODES:
            key = f"{verdict}_{mode}"
            p = sum(r[mode][verdict] for r in records) / n if n else 0.0
            metrics[key] = p
            stderr[key] = math.sqrt(p * (1 - p) / (n - 1)) if n > 1 else None
    return {"metrics": metrics, "stderr": stderr}


# -- running -----------------------------------------------------------------------------------


def run(llm, task: ToolCalls, *, limit, shots, seed, chat, bar, workers):
    """The harness runner: (summary with metrics and stderr, one record per case)."""
    chosen = task.cases(limit)
    specs = {g: group_specs(g) for g in GROUPS}
    prompts = [
        llm.chat_prompt(
            [{"role": "user", "content": c.request}],
            tools=specs[c.group],
            tool_choice="auto",
            parallel_tool_calls=False,
            bare_calls=True,
        )
        for c in chosen
    ]
    ids = [p.ids for p in prompts]
    bar.reset(total=2 * len(chosen))
    outputs, seconds = {}, {}
    for mode in MODES:
        grammars = [p.grammar for p in prompts] if mode == "grammar" else None
        t0 = time.perf_counter()
        outputs[mode] = []
        for done in llm.complete_many(
            ids, grammars=grammars, temperature=0, max_tokens=task.max_tokens
        ):
            outputs[mode].append(done)
            bar.update()
        seconds[mode] = round(time.perf_counter() - t0, 2)
    tools = toolset()
    records = []
    for i, case in enumerate(chosen):
        record = {
            "id": case.id,
            "group": case.group,
            "request": case.request,
            "expected": {"name": case.name, "arguments": case.arguments},
            "prompt_tokens": len(ids[i]),
        }
        for mode in MODES:
            done = outputs[mode][i]
            record[mode] = {
                "output": done.text,
                "finish_reason": done.finish_reason,
                "tokens": done.completion_tokens,
                **score(case, done.text, tools[case.name].parameters),
            }
        records.append(record)
    return {**summarize(records), "mode_seconds": seconds}, records
