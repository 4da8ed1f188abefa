"""`genforge eval`: run tasks on a loaded model, with a record of every item.

`evaluate(llm, ["hellaswag", "gsm8k", "notes.txt"], limit=100)` returns a results dict: the model
(name, sha256 of its weights, dtype), the settings, and per task its metrics (with standard errors),
its version and prompt format, and per item what was asked, scored or generated and whether it was
right, so that any number can be audited. The same call gives the same numbers: decoding is greedy,
few-shot examples are drawn from a seeded generator per item, and batches are formed the same way.
"""

from __future__ import annotations

import bisect
import hashlib
import itertools
import json
import math
import os
import random
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

from tqdm import tqdm

from genforge.agents.sandbox import run_python
from genforge.data.corpus import read_documents
from genforge.errors import GenforgeError
from genforge.evals import everyday, rag, tool_calls
from genforge.evals.tasks import (
    CODE_ANSWER_PREFIX,
    Code,
    Generation,
    Item,
    MultipleChoice,
    Perplexity,
)
from genforge.evals.tasks import TASKS as BENCHMARKS

TASKS = {
    **BENCHMARKS,
    **{t.name: t for t in rag.RAG_TASKS},
    **{t.name: t for t in everyday.EVERYDAY_TASKS},
    **{t.name: t for t in tool_calls.TOOL_TASKS},
}

WINDOW = 2048  # perplexity: tokens scored per window at most


def resolve(spec: str | list) -> list:
    """Task objects for names like "hellaswag,mmlu"; an existing file or folder is a perplexity task."""
    names = spec.split(",") if isinstance(spec, str) else list(spec)
    out = []
    for name in (n.strip() if isinstance(n, str) else n for n in names):
        if not isinstance(name, str):  # already a task
            out.append(name)
        elif not name:
            continue
        elif name in TASKS:
            out.append(TASKS[name])
        elif name == "rag":  # both question sets
            out += rag.RAG_TASKS
        elif Path(name).exists():
            out.append(Perplexity(f"perplexity:{Path(name).name}", str(Path(name))))
        else:
            raise GenforgeError(
                f"unknown task {name!r}; choose from {', '.join(TASKS)} or give a text file or "
                "folder (perplexity)."
            )
    for task in out:
        if hasattr(task, "check"):  # data a task needs beyond the package: missing is one sentence
            task.check()
    if not out:
        raise GenforgeError("no task given; name one or more, e.g. `genforge eval hellaswag`.")
    return out


def evaluate(
    llm,
    tasks: str | list,
    *,
    limit: int | None = None,
    shots: int | None = None,
    seed: int = 1234,
    chat: bool | None = None,
    progress: bool = True,
    workers: int = 2,
    sampling: dict | None = None,
) -> dict:
    """Run `tasks` on `llm`; see the module docstring for what comes back.

    limit: items per task (per subject for MMLU, documents for perplexity); shots: few-shot
    examples (default: each task's own); chat: use the model's chat template (default: for code
    tasks when the model has one); workers: sandboxed programs run at once; sampling: the settings
    under test in the everyday tasks (max_tokens, temperature, penalties; default: the model's).
    """
    if limit is not None and limit < 1:
        raise GenforgeError(f"--limit must be at least 1, got {limit}.")
    if shots is not None and shots < 0:
        raise GenforgeError(f"--shots must be 0 or more, got {shots}.")
    if workers < 1:
        raise GenforgeError(f"--workers must be at least 1, got {workers}.")
    tasks = resolve(tasks)
    if sampling:
        from genforge.generate.sampling import SamplingParams

        SamplingParams.from_kwargs(**sampling)  # a bad value fails before any task runs
        tasks = [replace(t, sampling=sampling) if t.kind == "everyday" else t for t in tasks]
    results = {
        "genforge_version": _version(),
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "model": model_record(llm),
        "settings": {
            "limit": limit,
            "shots": shots,
            "seed": seed,
            "chat": chat,
            "sampling": sampling or {},
        },
        "tasks": {},
        "items": {},
    }
    runners = {
        "multiple_choice": _multiple_choice,
        "generation": _generation,
        "code": _code,
        "perplexity": _perplexity,
        "retrieval": rag.run,
        "everyday": everyday.run,
        "tool_calls": tool_calls.run,
    }
    for task in tasks:
        k = task.shots if shots is None else shots
        use_chat = _wants_chat(llm, task, chat)
        # Cached prefixes from earlier work change float summation order: start each task clean.
        llm.engine.reset_prefix_cache()
        t0 = time.perf_counter()
        with tqdm(desc=task.name, unit="item", disable=not progress, leave=False) as bar:
            summary, records = runners[task.kind](
                llm, task, limit=limit, shots=k, seed=seed, chat=use_chat, bar=bar, workers=workers
            )
        seconds = time.perf_counter() - t0
        results["tasks"][task.name] = {
            "title": task.title,
            "kind": task.kind,
            "version": task.version,
            "prompt_format": task.prompt_format,
            "shots": k,
            "chat": use_chat,
            "n": len(records),
            **summary,
            "seconds": round(seconds, 2),
            "items_per_second": round(len(records) / seconds, 3) if seconds else None,
        }
        results["items"][task.name] = records
    return results


def _wants_chat(llm, task, chat: bool | None) -> bool:
    if task.kind == "tool_calls":  # tools are offered through the chat template
        return True
    if task.kind not in ("generation", "code"):
        return False
    has_template = bool(llm.tokenizer.chat_template)
    if chat and not has_template:
        raise GenforgeError(f"{llm.name} has no chat template; run without --chat.")
    return has_template and task.kind == "code" if chat is None else chat


# -- multiple choice ---------------------------------------------------------------------------


def _limited(items: list[Item], limit: int | None) -> list[Item]:
    """The first `limit` items of each group (each MMLU subject), in order."""
    if limit is None:
        return items
    seen: dict[str, int] = {}
    out = []
    for item in items:
        seen[item.group] = seen.get(item.group, 0) + 1
        if seen[item.group] <= limit:
            out.append(item)
    return out


def _shots_for(task: MultipleChoice, items: list[Item], k: int, seed: int):
    """item -> the few-shot prefix written before each of its choices."""
    pools: dict[str, list[Item]] = {}
    for item in task.items(task.shots_source) if task.shots_source and k else items if k else []:
        pools.setdefault(item.group, []).append(item)
    # From the item's own split, an item is never its own example: one fewer to choose from.
    most = min((len(p) for p in pools.values()), default=k) - (0 if task.shots_source else 1)
    if k and k > most:
        raise GenforgeError(
            f"{task.name} has {most} examples per group for few-shot prompts; "
            f"use --shots {most} or fewer."
        )

    def prefix(item: Item) -> str:
        head = task.header(item.group) if task.header else ""
        if not k:
            return head
        if task.shots_source:  # the standard: the first k of the subject's dev split
            examples = pools[item.group][:k]
        else:  # k other items of the split, the same ones on every run whatever --limit is
            rng = random.Random(f"{seed}:{task.name}:{item.id}")
            examples = [o for o in rng.sample(pools[item.group], k + 1) if o.id != item.id][:k]
        return head + "".join(e.shot() + "\n\n" for e in examples)

    return prefix


def _multiple_choice(llm, task: MultipleChoice, *, limit, shots, seed, chat, bar, workers):
    every = task.items()
    items = _limited(every, limit)
    prefix = _shots_for(task, every, shots, seed)
    pairs = []
    for item in items:
        p = prefix(item)
        pairs += [(p + context, continuation) for context, continuation in item.pairs]
    bar.reset(total=len(items))
    ends = list(itertools.accumulate(len(item.pairs) for item in items))
    scored = 0

    def tick(n_pairs: int) -> None:  # pairs finish in order: show the items they complete
        nonlocal scored
        scored += n_pairs
        bar.n = bisect.bisect_right(ends, scored)
        bar.refresh()

    scores = llm.loglikelihood(pairs, progress=tick)
    records, by_group = [], {}
    i = 0
    for item in items:
        got = scores[i : i + len(item.pairs)]
        i += len(item.pairs)
        lls = [s.logprob for s in got]
        norm = [s.logprob / max(1, len(c)) for s, (_, c) in zip(got, item.pairs, strict=True)]
        pred, pred_norm = _argmax(lls), _argmax(norm)
        contexts = {ctx for ctx, _ in item.pairs}
        records.append(
            {
                "id": item.id,
                "group": item.group,
                "prompt": pairs[i - len(item.pairs)][0]
                if len(contexts) == 1
                else [pairs[j][0] for j in range(i - len(item.pairs), i)],
                "choices": [c for _, c in item.pairs],
                "logprobs": lls,
                "logprobs_per_char": norm,
                "greedy": [s.greedy for s in got],
                "gold": item.gold,
                "prediction": pred,
                "prediction_norm": pred_norm,
                "correct": pred == item.gold,
                "correct_norm": pred_norm == item.gold,
            }
        )
        by_group.setdefault(item.group, []).append(records[-1])
    summary = _accuracy(records, ("correct", "correct_norm"), ("acc", "acc_norm"))
    if len(by_group) > 1:
        groups = {
            g: _accuracy(r, ("correct",), ("acc",))["metrics"]["acc"] for g, r in by_group.items()
        }
        summary["groups"] = groups
        summary["metrics"]["acc_macro"] = sum(groups.values()) / len(groups)
        summary["metrics"]["acc_micro"] = summary["metrics"]["acc"]
    return summary, records


def _argmax(values: list[float]) -> int:
    return max(range(len(values)), key=values.__getitem__)


def _accuracy(records: list[dict], fields: tuple, names: tuple) -> dict:
    metrics, stderr = {}, {}
    n = len(records)
    for field, name in zip(fields, names, strict=True):
        p = sum(r[field] for r in records) / n if n else 0.0
        metrics[name] = p
        stderr[name] = math.sqrt(p * (1 - p) / (n - 1)) if n > 1 else None
    return {"metrics": metrics, "stderr": stderr}


# -- generation and code ---------------------------------------------------------------------


def _chat_ids(llm, messages: list[dict], answer_prefix: str = "") -> list[int]:
    ids = llm.tokenizer.encode_chat(messages, add_generation_prompt=True)
    return ids + llm.tokenizer.encode(answer_prefix, add_special=False) if answer_prefix else ids


def _generation(llm, task: Generation, *, limit, shots, seed, chat, bar, workers):
    items, examples = task.load()
    items = items[:limit] if limit else items
    if shots > len(examples):
        raise GenforgeError(
            f"{task.name} has {len(examples)} few-shot examples; use --shots {len(examples)} or fewer."
        )
    examples = examples[:shots]
    prompts, texts = [], []
    for item in items:
        if chat:
            messages = []
            for ex in examples:
                question, answer = ex.split("\nAnswer:", 1)
                messages += [
                    {"role": "user", "content": question},
                    {"role": "assistant", "content": answer.strip()},
                ]
            question = item.prompt.removesuffix("\nAnswer:")
            prompts.append(_chat_ids(llm, [*messages, {"role": "user", "content": question}]))
            texts.append(question)
        else:
            text = "".join(ex + "\n\n" for ex in examples) + item.prompt
            prompts.append(llm.tokenizer.encode(text))
            texts.append(text)
    bar.reset(total=len(items))
    stop = [s for s in task.stop if not chat or s != "\n\n"]
    records = []
    runs = llm.complete_many(prompts, temperature=0, max_tokens=task.max_tokens, stop=stop)
    for item, text, done in zip(items, texts, runs, strict=True):
        found, correct = task.check(done.text, item)
        records.append(
            {
                "id": item.id,
                "prompt": text,
                "output": done.text,
                "finish_reason": done.finish_reason,
                "extracted": found,
                "gold": item.gold,
                "correct": correct,
            }
        )
        bar.update()
    return _accuracy(records, ("correct",), ("exact_match",)), records


def _code(llm, task: Code, *, limit, shots, seed, chat, bar, workers):
    items = task.load()
    items = items[:limit] if limit else items
    if chat:
        texts = [item.prompt for item in items]
        prompts = [
            _chat_ids(llm, [{"role": "user", "content": t}], CODE_ANSWER_PREFIX) for t in texts
        ]
        stop = ["\n```"]
    else:
        texts = [task.raw_prompt(item) for item in items]
        prompts = [llm.tokenizer.encode(t) for t in texts]
        stop = list(task.stop)
    bar.reset(total=len(items))
    runs = llm.complete_many(prompts, temperature=0, max_tokens=task.max_tokens, stop=stop)
    with ThreadPoolExecutor(workers) as pool:
        pending = []
        for item, text, done in zip(items, texts, runs, strict=True):
            program = task.program(item, done.text, chat)
            # Programs run while later answers are still being generated.
            pending.append((item, text, done, program, pool.submit(run_python, program)))
            bar.update()
        records = []
        for item, text, done, program, future in pending:
            result = future.result()
            records.append(
                {
                    "id": item.id,
                    "prompt": text,
                    "completion": done.text,
                    "program": program,
                    "status": result.status,
                    "stderr": result.stderr[-2000:],
                    "correct": result.passed,
                }
            )
    return _accuracy(records, ("correct",), ("pass@1",)), records


# -- perplexity ----------------------------------------------------------------------------------


def _documents(path: Path) -> list[tuple[str, str]]:
    """(name, text) of a text file, the text files of a folder, or a prepared data set's
    validation split (its token ids decoded back to text, split at end-of-text)."""
    # numpy and tokenizers: imported here so that `genforge eval --help` stays fast
    from genforge.data.shards import MANIFEST, load_manifest, tokens
    from genforge.tokenizer import Tokenizer

    if path.is_dir() and (path / MANIFEST).exists():
        tok = Tokenizer.from_dir(path / load_manifest(path)["tokenizer"])
        ids = tokens(path, "val").tolist()
        eos = min(tok.eos_ids)
        docs, start = [], 0
        for end in [i for i, t in enumerate(ids) if t == eos] + [len(ids)]:
            if end > start:
                docs.append((f"val/{len(docs)}", tok.decode(ids[start:end])))
            start = end + 1
        return docs
    return [(d.source, d.text) for d in read_documents([str(path)])]


def _perplexity(llm, task: Perplexity, *, limit, shots, seed, chat, bar, workers):
    docs = [(n, t) for n, t in _documents(Path(task.path)) if t.strip()]
    if not docs:
        raise GenforgeError(f"{task.path} holds no text to measure.")
    docs = docs[:limit] if limit else docs
    window = min(WINDOW, llm.context_length - 1)
    tok = llm.tokenizer
    start = tok.bos_id if tok.bos_id is not None else min(tok.eos_ids, default=0)
    requests, owner = [], []
    for n, (_, text) in enumerate(docs):
        ids = [start, *tok.encode(text, add_special=False)]
        # Disjoint windows: each is scored after the one token before it (the start token first).
        for a in range(1, len(ids), window):
            requests.append(([ids[a - 1]], ids[a : a + window]))
            owner.append(n)
    bar.reset(total=len(requests))
    scores = llm.engine.loglikelihood(requests, progress=bar.update)
    nll = [0.0] * len(docs)
    ntok = [0] * len(docs)
    for n, s in zip(owner, scores, strict=True):
        nll[n] -= s.logprob
        ntok[n] += s.n_tokens
    records = [
        {"id": name, "bytes": len(text.encode()), "tokens": ntok[i], "nll": nll[i]}
        for i, (name, text) in enumerate(docs)
    ]
    total_bytes, total_tokens, total_nll = (
        sum(r[k] for r in records) for k in ("bytes", "tokens", "nll")
    )
    metrics = {
        "bits_per_byte": total_nll / math.log(2) / total_bytes,
        "token_perplexity": math.exp(total_nll / total_tokens),
        "tokens": total_tokens,
        "bytes": total_bytes,
    }
    return {"metrics": metrics, "stderr": {}}, records


# -- the record -------------------------------------------------------------------------------


def model_record(llm) -> dict:
    path = Path(llm.checkpoint.path)
    return {
        "name": llm.name,
        "path": str(path),
        "sha256": weights_sha256(path),
        "format": llm.checkpoint.format,
        "quantization": llm.checkpoint.quantization,
        "dtype": llm.dtype,
        "arch": llm.config.arch,
        "params": llm.config.n_params,
    }


def weights_sha256(path: Path) -> str:
    """sha256 of a weights file, or of a folder's weight files (name and content, sorted)."""
    h = hashlib.sha256()
    files = (
        [path]
        if path.is_file()
        else sorted(path.glob("*.safetensors")) + sorted(path.glob("*.gguf"))
    )
    for f in files:
        if path.is_dir():
            h.update(f.name.encode())
        with open(f, "rb") as fh:
            for chunk in iter(lambda fh=fh: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("genforge")
    except PackageNotFoundError:
        return "unknown"


def write_results(results: dict, path: str | Path) -> Path:
    """Write the results as JSON, atomically (a temporary file renamed over the target)."""
    path = Path(path)
    if not path.parent.is_dir():
        raise GenforgeError(f"cannot write {path}: the folder {path.parent} does not exist.")
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(results, f, indent=1, ensure_ascii=False)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return path


def describe_tasks() -> str:
    """A table of the built-in tasks, for `genforge eval --list`."""
    lines = []
    for t in TASKS.values():
        lines.append(f"{t.name:<14} {t.kind:<16} shots {t.shots}  {t.title}")
    lines.append(
        f"{'PATH':<14} {'perplexity':<16} a text file, a folder of text, or a prepared data set"
    )
    return "\n".join(lines)


def markdown_table(results: dict) -> str:
    lines = ["| task | metric | value | ± | n |", "|---|---|---|---|---|"]
    for name, t in results["tasks"].items():
        for metric, value in t["metrics"].items():
            err = t["stderr"].get(metric)
            shown = f"{value:.4f}" if isinstance(value, float) else str(value)
            n = t.get("counts", {}).get(metric, t["n"])  # items the metric applies to
            lines.append(
                f"| {name} | {metric} | {shown} | {'' if err is None else f'{err:.4f}'} | {n} |"
            )
    return "\n".join(lines)
