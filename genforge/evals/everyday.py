"""`genforge eval everyday` and `rag_pydocs`: does an answer end by itself, and is it right?

A hundred everyday requests (genforge/evals/everyday_prompts.py): short chat questions with a
checkable answer, open chat requests, JSON answers under a schema, questions over the Python
documentation with a known answer and source file, and questions that documentation cannot answer.
Each answer is scored for:
- `ended`: it stopped by itself (finish reason "stop"), not at the `max_tokens` cap;
- `loops`: some run of `LOOP_N` words occurs `LOOP_TIMES` times or more (`max_repeats`);
- `correct`: one of the expected answers appears as a word (items that have one);
- `json_valid`: the answer parses and conforms to its schema (json items);
- `cited_right`: the expected documentation file is among the citations (answerable rag items);
- `refused` / `false_refusal`: the answer says it doesn't know, on unanswerable / answerable ones;
and its generated tokens and seconds. The sampling settings under test are the task's `sampling`
(`genforge eval --max-tokens ... --temperature ...`), so that defaults can be compared.
"""

from __future__ import annotations

import json
import math
import re
import time
from collections import Counter
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

from genforge import hub
from genforge.errors import GenforgeError
from genforge.evals.data import SETUP
from genforge.evals.everyday_prompts import PROMPTS

VERSION = 1
LOOP_N = 4  # words in a repeated run
LOOP_TIMES = 3  # occurrences of one run that make a loop
DEFAULT_MAX_TOKENS = 512  # per answer, unless --max-tokens says otherwise
PYDOCS = Path("/usr/share/doc/python3.11/html/_sources")
# The documents indexed for rag_pydocs: the tutorial and the library pages the questions are about,
# which are also distractors for each other (indexing the whole documentation takes too long here).
PYDOCS_FILES = (
    "tutorial",
    *(
        f"library/{name}.rst.txt"
        for name in (
            "functools",
            "itertools",
            "collections",
            "json",
            "dataclasses",
            "os.path",
            "random",
            "functions",
        )
    ),
)
# How an answer says it doesn't know: genforge.rag.answer.NO_ANSWER and what models write.
REFUSALS = re.compile(
    r"\b(i do not know|i don't know|i don’t know|not (?:mentioned|provided|specified|covered)|"
    r"(?:do|does) not (?:contain|mention|say|provide|include)|no information|cannot answer|"
    r"can't answer|unable to answer)\b",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class Everyday:
    name: str
    title: str
    kinds: tuple[str, ...]  # the kinds of everyday_prompts.PROMPTS this task asks
    sampling: dict = field(default_factory=dict)  # settings under test (max_tokens, temperature...)
    version: int = VERSION
    shots: int = 0
    kind: str = "everyday"
    prompt_format: str = "the chat template, one user turn (and a system turn where given)"

    def check(self) -> None:
        """Refuse to start when the documents the questions are about are missing."""
        if any(k.startswith("rag") for k in self.kinds):
            pydocs_paths()

    def items(self, limit: int | None = None) -> list[dict]:
        """The task's prompts, numbered; with `limit`, the first `limit` of each kind."""
        seen: Counter = Counter()
        out = []
        for i, p in enumerate(PROMPTS):
            if p["kind"] in self.kinds:
                seen[p["kind"]] += 1
                if limit is None or seen[p["kind"]] <= limit:
                    out.append({"id": f"{p['kind']}/{i}", **p})
        return out


EVERYDAY_TASKS = [
    Everyday(
        "everyday", "Everyday chat and JSON requests: do they end, are they right", ("chat", "json")
    ),
    Everyday(
        "rag_pydocs",
        "Questions over the Python docs, answerable or not: cited right, refused right",
        ("rag", "rag_unanswerable"),
        prompt_format="genforge.rag.answer.ask (hybrid, k=4) over the Python tutorial and 8 "
        "library pages of python3.11-doc",
    ),
    Everyday(
        "rag_pydocs_beyond",
        "On-topic questions the Python docs do not answer (other libraries): refused right",
        ("rag_beyond",),
        prompt_format="as rag_pydocs",
    ),
]


# -- scoring: pure functions -------------------------------------------------------------------


def max_repeats(text: str, n: int = LOOP_N) -> int:
    """How often the most frequent run of `n` words occurs in `text` (0 if it has fewer words)."""
    words = re.findall(r"\w+", text.lower())
    runs = Counter(tuple(words[i : i + n]) for i in range(len(words) - n + 1))
    return max(runs.values(), default=0)


def loops(text: str, n: int = LOOP_N, times: int = LOOP_TIMES) -> bool:
    """Whether some run of `n` words occurs `times` times or more: the answer is going round."""
    return max_repeats(text, n) >= times


def mentions(text: str, expected: list[str]) -> bool:
    """Whether one of `expected` appears in `text`, case-folded, as a whole word or number (a
    trailing `*` allows any ending: "cach*" matches "caches")."""
    for e in expected:
        stem = e.endswith("*")
        e = e.removesuffix("*")
        head = r"(?<![\w.,])" if e[:1].isalnum() else ""
        tail = r"(?![\w]|[.,]\d)" if e[-1:].isalnum() and not stem else ""
        if re.search(head + re.escape(e) + tail, text, re.IGNORECASE):
            return True
    return False


def refused(text: str) -> bool:
    """Whether the answer says it doesn't know (genforge.rag.answer.NO_ANSWER, or in other words)."""
    return bool(REFUSALS.search(text))


def conforms(value, schema: dict) -> bool:
    """Whether `value` is valid under the JSON Schema `schema` (jsonschema, of the eval extra)."""
    try:
        import jsonschema
    except ImportError:
        raise GenforgeError(f"checking JSON answers needs jsonschema; {SETUP}.") from None
    return jsonschema.Draft202012Validator(schema).is_valid(value)


def json_verdict(text: str, schema: dict, expect: dict) -> tuple[bool, bool, bool | None]:
    """(parses, conforms to the schema, holds the expected values or None if nothing expected)."""
    try:
        value = json.loads(text)
    except ValueError:
        return False, False, False if expect else None
    valid = conforms(value, schema)
    if not expect:
        return True, valid, None
    right = isinstance(value, dict) and all(
        k in value and _same(v, value[k]) for k, v in expect.items()
    )
    return True, valid, right


def _same(expected, got) -> bool:
    if isinstance(expected, str) and isinstance(got, str):
        return expected.casefold() == got.casefold()
    return isinstance(got, bool) == isinstance(expected, bool) and expected == got


def score(item: dict, text: str, finish_reason: str, citations: list[str] = ()) -> dict:
    """The verdicts on one answer; a verdict that does not apply to the item's kind is None."""
    kind = item["kind"]
    verdict = {
        "ended": finish_reason == "stop",
        "max_repeats": max_repeats(text),
        "loops": loops(text),
        "correct": None,
        "json_parses": None,
        "json_valid": None,
        "cited_right": None,
        "refused": None,
        "false_refusal": None,
    }
    if kind == "chat" and item["expect"]:
        verdict["correct"] = mentions(text, item["expect"])
    elif kind == "json":
        parses, valid, right = json_verdict(text, item["schema"], item["expect"])
        verdict.update(json_parses=parses, json_valid=valid, correct=right)
    elif kind == "rag":
        said_no = refused(text)
        verdict["false_refusal"] = said_no
        verdict["correct"] = not said_no and mentions(text, item["expect"])
        verdict["cited_right"] = any(c.endswith(item["source"]) for c in citations)
    elif kind in ("rag_unanswerable", "rag_beyond"):
        verdict["refused"] = refused(text)
        verdict["correct"] = verdict["refused"]
    return verdict


METRICS = (
    "ended",
    "loops",
    "correct",
    "json_parses",
    "json_valid",
    "cited_right",
    "refused",
    "false_refusal",
)


def summarize(records: list[dict]) -> dict:
    """Each verdict's share over the items it applies to (with binomial standard errors and, in
    `counts`, how many those are), and the mean tokens and seconds per answer."""
    metrics, stderr, counts = {}, {}, {}
    for name in METRICS:
        values = [r[name] for r in records if r[name] is not None]
        if not values:
            continue
        p = sum(values) / len(values)
        metrics[name] = p
        stderr[name] = math.sqrt(p * (1 - p) / (len(values) - 1)) if len(values) > 1 else None
        counts[name] = len(values)
    for name in ("tokens", "seconds"):
        if records:
            metrics[f"mean_{name}"] = sum(r[name] for r in records) / len(records)
    return {"metrics": metrics, "stderr": stderr, "counts": counts}


# -- running -----------------------------------------------------------------------------------


class _Recorder:
    """The model as `genforge.rag.answer` sees it, keeping each answer's finish reason and tokens."""

    def __init__(self, llm):
        self.llm = llm
        self.completions = []

    def __getattr__(self, name):  # the rest of the model (tokenizer, complete, ...) as it is
        return getattr(self.llm, name)

    def chat(self, messages, *, stream: bool = False, **sampling):
        done = self.llm.complete(self.llm.chat_prompt(messages).ids, **sampling)
        self.completions.append(done)
        return iter([done.text]) if stream else done.text


def _sampling(task: Everyday, seed: int) -> dict:
    return {"max_tokens": DEFAULT_MAX_TOKENS, "seed": seed, **task.sampling}


def pydocs_paths() -> list[Path]:
    if not PYDOCS.is_dir():
        raise GenforgeError(
            f"rag_pydocs needs the Python documentation in {PYDOCS}; install it with "
            "`apt-get install python3.11-doc`."
        )
    return [PYDOCS / p for p in PYDOCS_FILES]


def run(llm, task: Everyday, *, limit, shots, seed, chat, bar, workers, home: Path | None = None):
    """The harness runner: (summary with metrics and stderr, one record per item)."""
    items = task.items(limit)
    sampling = _sampling(task, seed)
    retriever = None
    records = []
    with ExitStack() as stack:
        if any(i["kind"].startswith("rag") for i in items):
            from genforge.rag.ingest import index
            from genforge.rag.retrieve import Retriever
            from genforge.rag.stores import open_store

            paths = pydocs_paths()
            home = home or hub.home() / "evals"
            home.mkdir(parents=True, exist_ok=True)
            # one index of the documents for every task over them
            store = stack.enter_context(open_store(home / f"rag_pydocs-v{task.version}.sqlite"))
            index(paths, store, progress=False)
            retriever = Retriever(store)
        bar.reset(total=len(items))
        for item in items:
            records.append(_answer(llm, item, sampling, retriever))
            bar.update(1)
    return summarize(records), records


def _answer(llm, item: dict, sampling: dict, retriever) -> dict:
    t0 = time.perf_counter()
    citations: list[str] = []
    if item["kind"].startswith("rag"):
        from genforge.rag.answer import ask

        model = _Recorder(llm)
        answer = ask(model, retriever, item["prompt"], **sampling)
        text, citations = answer.text, [c.source for c in answer.citations]
        done = model.completions
        # No completion: the retriever found nothing relevant and the answer is the refusal.
        finish = done[-1].finish_reason if done else "stop"
        tokens = sum(d.completion_tokens for d in done)
    else:
        messages = [{"role": "user", "content": item["prompt"]}]
        if item.get("system"):
            messages.insert(0, {"role": "system", "content": item["system"]})
        prompt = llm.chat_prompt(messages, json_schema=item.get("schema"))
        done = llm.complete(prompt.ids, grammar=prompt.grammar, **sampling)
        text, finish, tokens = done.text, done.finish_reason, done.completion_tokens
    seconds = time.perf_counter() - t0
    return {
        "id": item["id"],
        "kind": item["kind"],
        "prompt": item["prompt"],
        "expect": item["expect"],
        "output": text,
        "finish_reason": finish,
        "citations": citations,
        "tokens": tokens,
        "seconds": round(seconds, 3),
        **score(item, text, finish, citations),
    }
