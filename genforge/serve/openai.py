"""`/v1/chat/completions` and `/v1/completions`: OpenAI requests in, engine runs, OpenAI objects out.

Every choice of a request is its own engine request (they are batched together by the engine);
choice i of a request with `seed` s samples with seed s + i, so `n` choices differ but the request is
reproducible. Streams are server-sent events ending with `data: [DONE]`.

Chat and completions differ only in how a request becomes prompts and in how a choice's output
looks (`_ChatChoices`, `_CompletionChoices`); submitting, collecting and streaming is one path,
`_respond`.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from genforge.errors import GenforgeError
from genforge.generate.engine import TokenLogprob
from genforge.generate.llm import ChatPrompt
from genforge.generate.sampling import SamplingParams
from genforge.generate.structured import call_start, parse_tool_calls
from genforge.serve.errors import bad_request
from genforge.serve.runs import Run, deltas, submit
from genforge.serve.sampling import check_ids, sampling_params
from genforge.serve.schemas import MAX_ITEMS, ChatRequest, CompletionRequest, Sampling


def _id(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(12)}"


def sse(obj: Any) -> str:
    return "data: " + json.dumps(obj, ensure_ascii=False, separators=(",", ":")) + "\n\n"


SSE_DONE = "data: [DONE]\n\n"


def chat_prompt(llm, body: ChatRequest) -> ChatPrompt:
    messages = []
    for m in body.messages:
        content = m.content
        if isinstance(content, list):
            if any(p.type != "text" for p in content):
                kinds = sorted({p.type for p in content if p.type != "text"})
                raise bad_request(  # image_url parts were read as text before (serve/content.py)
                    f"this server reads text and image_url parts; a message has {', '.join(kinds)} "
                    "parts.",
                    param="messages",
                )
            content = "".join(p.text or "" for p in content)
        role = "system" if m.role == "developer" else m.role
        messages.append(
            {
                "role": role,
                "content": content,
                "name": m.name,
                "tool_calls": m.tool_calls,
                "tool_call_id": m.tool_call_id,
            }
        )
    fmt, json_schema = body.response_format, None
    if fmt is not None and fmt.type == "json_object":
        json_schema = {"type": "object"}
    elif fmt is not None and fmt.type == "json_schema":
        spec = fmt.json_schema or {}
        if not isinstance(spec.get("schema", {}), dict):
            raise bad_request("response_format.json_schema.schema must be an object.")
        json_schema = spec.get("schema", {})
    tool_choice = body.tool_choice if body.tool_choice is not None else "auto"
    if body.tool_choice is not None and not body.tools and body.tool_choice != "none":
        raise bad_request("tool_choice is set but no tools were given.", param="tool_choice")
    try:
        prompt = llm.chat_prompt(
            messages,
            tools=body.tools,
            tool_choice=tool_choice,
            json_schema=json_schema,
            parallel_tool_calls=bool(body.parallel_tool_calls),
        )
        if prompt.grammar is not None:
            prompt.grammar.check(llm.tokenizer, llm.config.vocab_size)
    except GenforgeError as e:
        param = "response_format" if json_schema is not None and not body.tools else None
        raise bad_request(str(e), param=param or ("tools" if body.tools else "messages")) from None
    return prompt


# -- output pieces ----------------------------------------------------------------------------------


def _chat_logprobs(llm, items: list[TokenLogprob]) -> list[dict]:
    def entry(token: int, logprob: float) -> dict:
        text = llm.tokenizer.token_text(token)
        return {"token": text, "logprob": logprob, "bytes": list(text.encode())}

    eos = llm.tokenizer.eos_ids
    return [
        {**entry(t.token, t.logprob), "top_logprobs": [entry(i, lp) for i, lp in t.top]}
        for t in items
        if t.token not in eos
    ]


def _tool_calls(calls: list[dict]) -> list[dict]:
    return [
        {
            "index": i,
            "id": _id("call"),
            "type": "function",
            "function": {"name": c["name"], "arguments": json.dumps(c["arguments"])},
        }
        for i, c in enumerate(calls)
    ]


class _ToolSplitter:
    """Streams an answer's text unless it is a tool call, which is held back and parsed at the end.

    Under the tool grammar an answer that starts with `<tool_call>` (after blanks) is calls only.
    With `tool_choice="auto"` an answer that starts as a bare or fenced JSON object is held back
    too: it is a call if it names an offered tool with arguments its schema accepts, else text.
    """

    def __init__(self, prompt: ChatPrompt):
        self.state = "undecided" if prompt.tools else "text"
        self.tools, self.bare = prompt.tools, prompt.bare
        self.held = ""

    def push(self, text: str) -> str:
        if self.state == "text":
            return text
        self.held += text
        if self.state == "calls":
            return ""
        starts = call_start(self.held, self.bare)
        if starts is None:
            return ""
        self.state = "calls" if starts else "text"
        if starts:
            return ""
        out, self.held = self.held, ""
        return out

    def finish(self) -> tuple[str, list[dict]]:
        """(text still held, tool calls)."""
        if self.state == "text":
            return self.held, []
        return parse_tool_calls(self.held, self.bare, self.tools)


def _usage(runs: list[Run], prompt: int) -> dict:
    completion = sum(r.n_generated for r in runs)
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


# -- the one path of chat and completions -------------------------------------------------------


@dataclass
class _Job:
    """One choice to generate."""

    ids: list[int]  # the prompt
    params: SamplingParams
    text: str = ""  # the prompt as text (completions echo it)


class _ChatChoices:
    """Chat's side of `_respond`: deltas with tool calls held back, `message` objects."""

    prefix, object, chunk_object = "chatcmpl", "chat.completion", "chat.completion.chunk"

    def __init__(self, llm, prompt: ChatPrompt, logprobs: int | None):
        self.llm, self.prompt, self.logprobs = llm, prompt, logprobs

    def stream(self, job: _Job, run: Run, index: int):
        return _chat_choice(self.llm, self.prompt, job.params, self.logprobs, index, run)

    def collect(self, stream):
        return _collect_chat(stream, self.logprobs is not None)

    def opening(self, index: int) -> list[dict]:
        return [_chunk_choice(index, {"role": "assistant", "content": ""}, None, None)]

    def chunk(self, index: int, piece: dict, finish: str | None) -> dict:
        delta = {"content": piece["content"]} if piece["content"] or not finish else {}
        if "tool_calls" in piece:
            delta = {"tool_calls": piece["tool_calls"]}
        lps = {"content": piece["logprobs"]} if self.logprobs is not None else None
        return _chunk_choice(index, delta, lps, finish)

    @staticmethod
    def piece_text(piece: dict) -> str:
        return piece["content"]

    @staticmethod
    def choice_text(choice: dict) -> str:
        return choice["message"]["content"] or ""


class _CompletionChoices:
    """Completions' side of `_respond`: text (after the echoed prompt), legacy logprobs."""

    prefix, object, chunk_object = "cmpl", "text_completion", "text_completion"

    def __init__(self, llm, body: CompletionRequest):
        self.llm, self.body = llm, body

    def stream(self, job: _Job, run: Run, index: int):
        return _completion_choice(self.llm, job.text, job.params, self.body, run)

    def collect(self, stream):
        return _collect_completion(stream)

    def opening(self, index: int) -> list[dict]:
        return []

    def chunk(self, index: int, piece: dict, finish: str | None) -> dict:
        return {
            "index": index,
            "text": piece["text"],
            "logprobs": piece["logprobs"],
            "finish_reason": finish,
        }

    @staticmethod
    def piece_text(piece: dict) -> str:
        return piece["text"]

    @staticmethod
    def choice_text(choice: dict) -> str:
        return choice["text"]


async def _respond(
    llm,
    choices: _ChatChoices | _CompletionChoices,
    body: Sampling,
    jobs: list[_Job],
    grammar,
    logprobs: int | None,
    runs: list[Run],
    n_prompt: int,
    extra: Callable[[list[str]], dict] | None = None,
) -> Any:
    """Start the jobs (their runs go into `runs`); the response body, or an async iterator of its
    SSE events. `n_prompt` is counted once in the usage, however many choices share a prompt."""
    await submit(llm, [(j.ids, j.params) for j in jobs], grammar, logprobs, runs)
    head = {"id": _id(choices.prefix), "created": int(time.time()), "model": llm.name}
    streams = [
        choices.stream(job, run, i) for i, (job, run) in enumerate(zip(jobs, runs, strict=True))
    ]
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        return _sse(choices, head, streams, runs, n_prompt, include_usage, extra)
    done = await _gather([choices.collect(s) for s in streams])
    usage = _usage(runs, n_prompt)
    response = {**head, "object": choices.object, "choices": done, "usage": usage}
    if extra is not None:
        # in a worker thread: attributing citations embeds sentences
        response.update(await asyncio.to_thread(extra, [choices.choice_text(c) for c in done]))
    return response


async def _sse(choices, head, streams, runs, n_prompt: int, include_usage: bool, extra=None):
    chunk = {**head, "object": choices.chunk_object}
    usage = {"usage": None} if include_usage else {}
    for i in range(len(streams)):
        for opening in choices.opening(i):  # chat: the role first, as OpenAI does
            yield sse({**chunk, "choices": [opening], **usage})
    texts = [""] * len(streams)
    async for i, (piece, finish) in _merge(streams):
        texts[i] += choices.piece_text(piece)
        yield sse({**chunk, "choices": [choices.chunk(i, piece, finish)], **usage})
    tail = await asyncio.to_thread(extra, texts) if extra is not None else {}
    if include_usage:
        yield sse({**chunk, "choices": [], "usage": _usage(runs, n_prompt), **tail})
    elif tail:
        yield sse({**chunk, "choices": [], **tail})
    yield SSE_DONE


# -- chat ------------------------------------------------------------------------------------------


async def chat(
    llm,
    body: ChatRequest,
    limit: int,
    runs: list[Run],
    extra: Callable[[list[str]], dict] | None = None,
) -> Any:
    """Check the request and start it (its choices go into `runs`): the response body, or an
    async iterator of SSE events. `extra(texts of the choices)` gives fields added to the response
    (to a stream's last chunk)."""
    # Off the event loop: rendering, tokenizing and compiling a grammar can take a while.
    prompt, params = await asyncio.to_thread(_chat_inputs, llm, body, limit)
    logprobs = (body.top_logprobs or 0) if body.logprobs else None
    if body.top_logprobs is not None and not body.logprobs:
        raise bad_request("top_logprobs needs logprobs: true.", param="top_logprobs")
    jobs = [_Job(prompt.ids, p) for p in params]
    choices = _ChatChoices(llm, prompt, logprobs)
    return await _respond(
        llm, choices, body, jobs, prompt.grammar, logprobs, runs, len(prompt.ids), extra
    )


def _chat_inputs(llm, body: ChatRequest, limit: int) -> tuple[ChatPrompt, list[SamplingParams]]:
    prompt = chat_prompt(llm, body)
    check_ids(llm, prompt.ids)
    max_tokens = body.max_completion_tokens or body.max_tokens
    n_prompt = len(prompt.ids)
    params = [sampling_params(llm, body, n_prompt, max_tokens, limit, i) for i in range(body.n)]
    return prompt, params


async def _chat_choice(llm, prompt: ChatPrompt, params, logprobs, index, run):
    """Chat deltas of one choice: {"content"}, then at the end {"tool_calls"} and the finish reason
    ("tool_calls"; or "length" when a call after the complete ones was cut short)."""
    tools = _ToolSplitter(prompt)
    async for delta, lps in deltas(llm, run, params, logprobs):
        text = tools.push(delta.text)
        finish = delta.finish_reason
        piece = {"index": index, "content": text, "logprobs": _chat_logprobs(llm, lps)}
        if finish is None:
            if text or piece["logprobs"]:
                yield piece, None
            continue
        held, calls = tools.finish()
        piece["content"] = text + held
        if calls:
            piece["tool_calls"] = _tool_calls(calls)
            finish = "length" if finish == "length" else "tool_calls"
        yield piece, finish


async def _collect_chat(stream, with_logprobs: bool) -> dict:
    content, lps, calls, finish = [], [], None, "length"
    async for piece, reason in stream:
        content.append(piece["content"])
        lps += piece["logprobs"]
        calls = piece.get("tool_calls", calls)
        finish = reason or finish
    message = {"role": "assistant", "content": "".join(content) if not calls else None}
    if calls:
        message["tool_calls"] = [{k: v for k, v in c.items() if k != "index"} for c in calls]
    return {
        "index": 0,
        "message": message,
        "logprobs": {"content": lps} if with_logprobs else None,
        "finish_reason": finish,
    }


async def _gather(coros: list) -> list:
    """Run the choices together; the first failure cancels the others."""
    tasks = [asyncio.ensure_future(c) for c in coros]
    try:
        results = await asyncio.gather(*tasks)
    finally:
        for t in tasks:
            t.cancel()
    for i, r in enumerate(results):
        r["index"] = i
    return results


async def _merge(streams: list[AsyncIterator]) -> AsyncIterator[tuple[int, Any]]:
    """Items of several async iterators as they come, tagged with the iterator's index."""
    queue: asyncio.Queue = asyncio.Queue()
    done = object()

    async def pump(i, it):
        try:
            async for item in it:
                await queue.put((i, item))
            await queue.put((i, done))
        except Exception as e:  # handed to the consumer
            await queue.put((i, e))

    tasks = [asyncio.ensure_future(pump(i, s)) for i, s in enumerate(streams)]
    try:
        remaining = len(tasks)
        while remaining:
            i, item = await queue.get()
            if item is done:
                remaining -= 1
            elif isinstance(item, BaseException):
                raise item
            else:
                yield i, item
    finally:
        for t in tasks:
            t.cancel()


def canned_chat(model: str, text: str, body: ChatRequest, extra: dict) -> Any:
    """A chat answer known without running a model, in the shapes a generated one has (a body,
    or SSE events), with `extra` fields added (to a stream's last chunk)."""
    head = {"id": _id("chatcmpl"), "created": int(time.time()), "model": model}
    usage = {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
    if not body.stream:
        message = {"role": "assistant", "content": text}
        choices = [
            {"index": i, "message": message, "logprobs": None, "finish_reason": "stop"}
            for i in range(body.n)
        ]
        return {**head, "object": "chat.completion", "choices": choices, "usage": usage, **extra}
    include_usage = bool(body.stream_options and body.stream_options.include_usage)
    return _canned_sse(head, text, body.n, usage if include_usage else None, extra)


async def _canned_sse(head, text: str, n: int, usage: dict | None, extra: dict):
    chunk = {**head, "object": "chat.completion.chunk"}
    nothing = {} if usage is None else {"usage": None}
    for i in range(n):
        for delta, finish in (
            ({"role": "assistant", "content": ""}, None),
            ({"content": text}, None),
            ({}, "stop"),
        ):
            yield sse({**chunk, "choices": [_chunk_choice(i, delta, None, finish)], **nothing})
    yield sse({**chunk, "choices": [], **({} if usage is None else {"usage": usage}), **extra})
    yield SSE_DONE


def _chunk_choice(index, delta, logprobs, finish) -> dict:
    return {"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish}


# -- completions -------------------------------------------------------------------------------------


def _prompts(llm, body: CompletionRequest) -> list[tuple[str, list[int]]]:
    p = body.prompt
    if isinstance(p, str):
        p = [p]
    if not p:
        raise bad_request("prompt must not be empty.", param="prompt")
    if all(isinstance(t, int) for t in p):
        p = [p]
    if len(p) > MAX_ITEMS:
        raise bad_request(
            f"prompt holds {len(p)} prompts; this server takes at most {MAX_ITEMS} in one "
            "request: send the rest in further requests.",
            param="prompt",
        )
    out = []
    for item in p:
        if isinstance(item, str):
            out.append((item, llm.tokenizer.encode(item, add_special=True)))
        else:
            check_ids(llm, item)
            out.append((llm.tokenizer.decode(item), list(item)))
    return out


async def completions(llm, body: CompletionRequest, limit: int, runs: list[Run]):
    if body.suffix:
        raise bad_request("suffix (fill-in-the-middle) is not supported.", param="suffix")
    if body.best_of not in (None, 1, body.n):
        raise bad_request("best_of is not supported; use n.", param="best_of")
    if body.echo and body.logprobs is not None:
        raise bad_request(
            "echo with logprobs would need the prompt's log-probabilities, which this server does "
            "not compute; drop one of them.",
            param="echo",
        )
    # Off the event loop: tokenizing hundreds of prompts, or a long one, takes a while.
    jobs = await asyncio.to_thread(_completion_jobs, llm, body, limit)
    n_prompt = sum(len(j.ids) for j in jobs[:: body.n])  # each prompt once
    choices = _CompletionChoices(llm, body)
    return await _respond(llm, choices, body, jobs, None, body.logprobs, runs, n_prompt)


def _completion_jobs(llm, body: CompletionRequest, limit: int) -> list[_Job]:
    """Every choice of every prompt, prompt by prompt."""
    return [
        _Job(ids, sampling_params(llm, body, len(ids), body.max_tokens, limit, i), text)
        for text, ids in _prompts(llm, body)
        for i in range(body.n)
    ]


async def _completion_choice(llm, text: str, params, body: CompletionRequest, run):
    offset = len(text) if body.echo else 0
    if body.echo:
        yield {"text": text, "logprobs": None}, None
    async for delta, lps in deltas(llm, run, params, body.logprobs):
        logprobs = None
        if body.logprobs is not None:
            logprobs, offset = _legacy_logprobs(llm, lps, offset)
        if delta.text or delta.finish_reason or logprobs:
            yield {"text": delta.text, "logprobs": logprobs}, delta.finish_reason


def _legacy_logprobs(llm, items: list[TokenLogprob], offset: int) -> tuple[dict, int]:
    eos = llm.tokenizer.eos_ids
    out = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
    for t in items:
        if t.token in eos:
            continue
        text = llm.tokenizer.token_text(t.token)
        out["tokens"].append(text)
        out["token_logprobs"].append(t.logprob)
        out["top_logprobs"].append({llm.tokenizer.token_text(i): lp for i, lp in t.top})
        out["text_offset"].append(offset)
        offset += len(text)
    return out, offset


async def _collect_completion(stream) -> dict:
    text, finish = [], "length"
    logprobs = None
    async for piece, reason in stream:
        text.append(piece["text"])
        if piece["logprobs"] is not None:
            if logprobs is None:
                logprobs = {k: [] for k in piece["logprobs"]}
            for k, v in piece["logprobs"].items():
                logprobs[k] += v
        finish = reason or finish
    return {"index": 0, "text": "".join(text), "logprobs": logprobs, "finish_reason": finish}
