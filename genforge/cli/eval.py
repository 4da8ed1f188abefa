"""`genforge eval`: benchmarks and perplexity through genforge.evals.harness."""

from __future__ import annotations

import argparse
from pathlib import Path

from genforge.cli.flags import SAMPLING_FLAGS, add_model_args, add_sampling_args, load_model
from genforge.errors import GenforgeError
from genforge.evals.everyday import DEFAULT_MAX_TOKENS as EVERYDAY_MAX_TOKENS  # stdlib only


def add_parser(sub) -> None:
    p = sub.add_parser(
        "eval",
        help="measure a model on benchmarks (HellaSwag, MMLU, GSM8K, HumanEval, ...) or perplexity",
        description="Run evaluation tasks on a model: multiple choice by "
        "log-likelihood, generation with a checker, code run in a sandbox, or "
        "bits per byte of a text file / prepared data set. Prints a markdown "
        "table; --output keeps every item's prompt, scores and verdict.",
    )
    p.add_argument(
        "tasks",
        nargs="?",
        metavar="TASK[,TASK...]",
        help="task names (see --list), or a text file / folder / prepared data set for perplexity",
    )
    add_model_args(p, dtype="fp32")
    _add_eval_args(p)
    p.set_defaults(func=run)


def _add_eval_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--limit",
        type=int,
        default=None,
        metavar="N",
        help="the first N items of each task (of each subject for MMLU; documents "
        "for perplexity); default: all",
    )
    p.add_argument(
        "--shots",
        type=int,
        default=None,
        metavar="K",
        help="few-shot examples in each prompt (default: the task's own, see --list)",
    )
    p.add_argument(
        "--seed",
        type=int,
        default=1234,
        help="seed for choosing few-shot examples, and for sampling in the everyday tasks "
        "(default: 1234)",
    )
    p.add_argument(
        "--chat",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="prompt generation tasks through the model's chat template (default: "
        "on for code tasks when the model has a template, off otherwise)",
    )
    p.add_argument(
        "--workers",
        type=int,
        default=2,
        metavar="N",
        help="sandboxed programs run at once for code tasks (default: 2)",
    )
    p.add_argument(
        "--output", metavar="FILE", help="write the results and every item's record as JSON"
    )
    p.add_argument("--list", action="store_true", help="list the tasks and exit")
    add_sampling_args(
        p,
        "settings under test (everyday, rag_pydocs)",
        "defaults: the model's own sampling, at most "
        f"{EVERYDAY_MAX_TOKENS} tokens per answer, --seed as the sampling seed",
        max_tokens_help="most new tokens per answer",
        seed_and_stop=False,
    )


# The sampling group without --seed and --stop (eval's --seed seeds the items and the sampling).
SETTINGS = tuple(f for f in SAMPLING_FLAGS if f not in ("seed", "stop"))


def run(args: argparse.Namespace) -> int:
    from genforge.evals import harness

    if args.list:
        print(harness.describe_tasks())
        return 0
    if not args.tasks:
        raise GenforgeError(
            "name the tasks to run (e.g. `genforge eval hellaswag,arc_easy`); "
            "`genforge eval --list` shows them."
        )
    tasks = harness.resolve(args.tasks)  # a bad task name fails before the model loads
    sampling = {n: getattr(args, n) for n in SETTINGS if getattr(args, n) is not None}
    if sampling:
        from genforge.generate.sampling import SamplingParams

        SamplingParams.from_kwargs(**sampling)  # a bad value fails before the model loads
    if args.output and not Path(args.output).parent.is_dir():
        raise GenforgeError(f"cannot write {args.output}: its folder does not exist.")
    llm = load_model(args)
    results = harness.evaluate(
        llm,
        tasks,
        limit=args.limit,
        shots=args.shots,
        seed=args.seed,
        chat=args.chat,
        workers=args.workers,
        sampling=sampling,
    )
    print(harness.markdown_table(results))
    if args.output:
        print(f"wrote {harness.write_results(results, args.output)} (every item, with its scores)")
    return 0
