"""The Python API: `genforge.load(name)` gives an `LLM` that completes text and chats.

Loading (resolving the name, choosing the weight format) is `genforge.generate.loading`; this
module is the facade over it and the engine.
"""

from __future__ import annotations

import copy
import functools
import queue
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import torch

from genforge import compute
from genforge.errors import GenforgeError
from genforge.generate.engine import Engine, TokenStream
from genforge.generate.loading import check_dtype, load_model
from genforge.generate.sampling import SamplingParams
from genforge.generate.score import Scored
from genforge.generate.structured import (
    Grammar,
    inline_tools,
    no_call_grammar,
    tool_call_grammar,
)
from genforge.generate.text import Delta, stream_text
from genforge.model import lora


@dataclass
class Completion:
    text: str
    finish_reason: str  # "stop" or "length"
    prompt_tokens: int
    completion_tokens: int


@dataclass
class ChatPrompt:
    """A rendered chat: its token ids and the grammar the answer must follow, if any."""

    ids: list[int]
    grammar: Grammar | None = None
    tools: list[dict] | None = None  # the tools the answer may call
    bare: bool = False  # a bare or fenced JSON call counts (parse_tool_calls(bare=True, tools))


def _grammar(json_schema, grammar) -> Grammar | None:
    if json_schema is not None and grammar is not None:
        raise GenforgeError("pass json_schema or grammar, not both.")
    if json_schema is not None:
        return Grammar.json_schema(json_schema)
    if isinstance(grammar, str):
        return Grammar.lark(grammar)
    return grammar


# What ends a run for the DRY penalty: llama.cpp's default breakers.
SEQUENCE_BREAKERS = ("\n", ":", '"', "*")


class LLM:
    """A loaded model with its tokenizer and engine."""

    def __init__(
        self,
        name: str,
        checkpoint,
        model,
        tokenizer,
        context_length: int | None = None,
        sampling_defaults: dict | None = None,
        dtype: str = "fp32",
        engine_options: dict | None = None,
    ):
        self.name, self.checkpoint, self.dtype = name, checkpoint, dtype
        self.model, self.tokenizer = model, tokenizer
        self.adapter: str | None = None  # the LoRA adapter this view's requests go through
        self.engine = Engine(model, context_length, **(engine_options or {}))
        self.engine.find_sequence_breakers = functools.partial(
            tokenizer.ids_containing, SEQUENCE_BREAKERS
        )
        # The model authors' recommended sampling; anything passed per call overrides it.
        self.sampling_defaults = dict(sampling_defaults or {})

    def sampling_params(self, **sampling) -> SamplingParams:
        set_by_caller = {k: v for k, v in sampling.items() if v is not None}
        return SamplingParams.from_kwargs(**{**self.sampling_defaults, **set_by_caller})

    @property
    def config(self):
        return self.model.cfg

    @property
    def adapters(self) -> list[str]:
        """The LoRA adapters loaded beside the weights (`load(adapters=...)`)."""
        return sorted(self.engine.adapters)

    def with_adapter(self, name: str | None) -> LLM:
        """This model seen through LoRA adapter `name` (None: the base): the same weights and
        engine, so requests for different adapters run batched in the same steps."""
        if lora.active_adapter(self.model) is not None:
            raise GenforgeError(
                "this model runs every request through the adapter it was loaded with; load it "
                "with adapters={name: folder} to pick one per request (or none)."
            )
        if name is not None and name not in self.engine.adapters:
            raise GenforgeError(
                f"no adapter {name!r} is loaded (loaded: {', '.join(self.adapters) or 'none'})."
            )
        view = copy.copy(self)
        view.adapter = name
        return view

    @property
    def context_length(self) -> int:
        return self.engine.context_length

    def constraint(self, grammar: Grammar | None):
        """A fresh matcher of `grammar` for one request (None for None); raises if unenforceable."""
        return grammar.constraint(self.tokenizer, self.config.vocab_size) if grammar else None

    def _run(
        self, prompt_ids: list[int], params: SamplingParams, grammar: Grammar | None = None
    ) -> Iterator[Delta]:
        tokens = self.engine.generate(
            prompt_ids,
            params,
            self.tokenizer.eos_ids,
            constraint=self.constraint(grammar),
            adapter=self.adapter,
        )
        return stream_text(tokens, self.tokenizer.stream(), self.tokenizer.eos_ids, params.stop)

    def _collect(
        self, prompt_ids: list[int], params: SamplingParams, grammar: Grammar | None = None
    ) -> Completion:
        parts, n, reason = [], 0, "length"
        for d in self._run(prompt_ids, params, grammar):
            parts.append(d.text)
            n += len(d.token_ids)
            reason = d.finish_reason or reason
        return Completion("".join(parts), reason, len(prompt_ids), n)

    def generate(
        self,
        prompt: str | list[str],
        *,
        stream: bool = False,
        json_schema: dict | None = None,
        grammar: Grammar | str | None = None,
        **sampling,
    ) -> str | list[str] | Iterator[str]:
        """Raw completion of `prompt` (no chat template). With stream=True, yields text pieces.

        A list of prompts is generated as one batch (they share the engine's forward passes) and
        gives a list of completions. json_schema / grammar (a Lark grammar, or a `Grammar`): the
        output is decoded under it, so it always parses (unless cut short by max_tokens).
        """
        params = self.sampling_params(**sampling)
        grammar = _grammar(json_schema, grammar)
        if isinstance(prompt, list):
            if stream:
                raise GenforgeError("stream=True takes one prompt, not a list.")
            # Every request is queued before any is read, so they run batched.
            runs = [
                self._run(self.tokenizer.encode(p, add_special=True), params, grammar)
                for p in prompt
            ]
            return ["".join(d.text for d in run) for run in runs]
        ids = self.tokenizer.encode(prompt, add_special=True)
        if stream:
            return (d.text for d in self._run(ids, params, grammar) if d.text)
        return self._collect(ids, params, grammar).text

    def chat_prompt(
        self,
        messages: list[dict] | str,
        *,
        tools: list[dict] | None = None,
        tool_choice: str | dict = "auto",
        json_schema: dict | None = None,
        grammar: Grammar | str | None = None,
        parallel_tool_calls: bool = False,
        bare_calls: bool = False,
    ) -> ChatPrompt:
        """Render a chat with the model's template, and the grammar its answer must follow.

        tools: OpenAI-style function tools; tool_choice "auto" (answer or call), "required" (call
        at least one), "none" (shown, but the answer calls none), or {"type": "function", "function": {"name": ...}};
        One call per answer unless parallel_tool_calls=True (then the answer ends at a call that
        repeats an earlier one, or where the model ends it). Tool calls are decoded under a
        grammar, so their arguments always match the schema. With "auto", a call written as a
        bare or ```json-fenced JSON object is a call too when it fits an offered tool
        (`ChatPrompt.bare`, `parse_tool_calls(bare=True, tools=...)`); bare_calls=True holds such
        an answer to the tools' schemas from its first "{" (`tool_call_grammar(bare=True)`;
        agents use it).
        """
        if isinstance(messages, str):
            messages = [{"role": "user", "content": messages}]
        answer = _grammar(json_schema, grammar)
        native = "tools" in (self.tokenizer.chat_template or "")
        if not tools:
            # Earlier tool calls and results still need writing out for a template without tools.
            msgs = messages if native else inline_tools(messages, None)
            return ChatPrompt(self.tokenizer.encode_chat(msgs, add_generation_prompt=True), answer)
        if tool_choice == "none":  # as OpenAI: the tools are shown, but the answer calls none
            ids = self._encode_with_tools(messages, tools, native)
            return ChatPrompt(ids, answer or no_call_grammar(bare_calls))
        if isinstance(tool_choice, dict):
            name = (tool_choice.get("function") or {}).get("name")
            chosen = [t for t in tools if (t.get("function") or {}).get("name") == name]
            if not chosen:
                raise GenforgeError(f"tool_choice names {name!r}, which is not one of the tools.")
        elif tool_choice in ("auto", "required"):
            chosen = tools
        else:
            raise GenforgeError(
                f'tool_choice must be "auto", "none", "required" or a named function, got {tool_choice!r}.'
            )
        required = tool_choice != "auto"
        if answer is not None and required:
            raise GenforgeError("a response format has no effect when a tool call is required.")
        ids = self._encode_with_tools(messages, tools, native)
        grammar = tool_call_grammar(
            chosen, required, answer, self.tokenizer, parallel_tool_calls, bare_calls
        )
        return ChatPrompt(ids, grammar, chosen, bare=not required and answer is None)

    def _encode_with_tools(self, messages, tools, native: bool) -> list[int]:
        if native:
            return self.tokenizer.encode_chat(messages, add_generation_prompt=True, tools=tools)
        # The template knows nothing of tools: describe them in the system message.
        return self.tokenizer.encode_chat(inline_tools(messages, tools), add_generation_prompt=True)

    def chat(
        self,
        messages: list[dict] | str,
        *,
        stream: bool = False,
        tools: list[dict] | None = None,
        tool_choice: str | dict = "auto",
        parallel_tool_calls: bool = False,
        json_schema: dict | None = None,
        grammar: Grammar | str | None = None,
        **sampling,
    ) -> str | Iterator[str]:
        """Answer the conversation `messages` (or one user message) with the model's chat template.

        With tools, a call comes back as `<tool_call>{"name", "arguments"}</tool_call>` text:
        `genforge.generate.structured.parse_tool_calls` splits it out.
        """
        prompt = self.chat_prompt(
            messages,
            tools=tools,
            tool_choice=tool_choice,
            json_schema=json_schema,
            grammar=grammar,
            parallel_tool_calls=parallel_tool_calls,
        )
        params = self.sampling_params(**sampling)
        if stream:
            return (d.text for d in self._run(prompt.ids, params, prompt.grammar) if d.text)
        return self._collect(prompt.ids, params, prompt.grammar).text

    def encode_pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        """Token ids of a (context, continuation) pair for scoring.

        The whole text is tokenized at once and split where the context's own tokens end, so the
        continuation is tokenized as the model would see it in running text. The context starts with
        the BOS token when the model's tokenizer adds one (and an empty context is the BOS token, or
        end-of-text for models without one); a context too long for the model loses its start.
        """
        tok = self.tokenizer
        ctx = tok.encode(context, add_special=False)
        whole = tok.encode(context + continuation, add_special=False)
        if whole[: len(ctx)] != ctx:  # the boundary merged into one token: split the texts instead
            whole = ctx + tok.encode(continuation, add_special=False)
        cont = whole[len(ctx) :]
        if tok.add_bos or not ctx:
            ctx = [tok.bos_id if tok.bos_id is not None else min(tok.eos_ids, default=0), *ctx]
        keep = self.context_length - len(cont)
        return ctx[-keep:] if keep > 0 else ctx[-1:], cont

    def loglikelihood(self, pairs: list[tuple[str, str]], *, progress=None) -> list[Scored]:
        """log p(continuation | context) for each (context, continuation) text pair, batched.

        progress: called with the number of pairs finished after each batch.
        """
        return self.engine.loglikelihood(
            [self.encode_pair(c, x) for c, x in pairs], progress=progress, adapter=self.adapter
        )

    def complete_many(
        self,
        prompts: list[list[int]],
        *,
        grammars: list[Grammar | None] | None = None,
        **sampling,
    ) -> Iterator[Completion]:
        """Completions of many prompts (token ids), yielded in order. They are queued together, so
        they run batched and the same way every time; leaving early cancels the rest.
        grammars: one per prompt (None: unconstrained), e.g. each `chat_prompt(...).grammar`."""
        params = self.sampling_params(**sampling)
        eos = self.tokenizer.eos_ids
        grammars = [None] * len(prompts) if grammars is None else grammars
        if len(grammars) != len(prompts):
            raise GenforgeError(f"{len(prompts)} prompts but {len(grammars)} grammars.")
        outs = [queue.SimpleQueue() for _ in prompts]
        jobs = [
            dict(
                prompt_ids=p,
                params=params,
                eos_ids=eos,
                out=o,
                adapter=self.adapter,
                constraint=self.constraint(g),
            )
            for p, o, g in zip(prompts, outs, grammars, strict=True)
        ]
        streams = [
            TokenStream(self.engine, req, out)
            for req, out in zip(self.engine.submit_all(jobs), outs, strict=True)
        ]

        def collect(ids: list[int], tokens: TokenStream) -> Completion:
            parts, n, reason = [], 0, "length"
            for d in stream_text(tokens, self.tokenizer.stream(), eos, params.stop):
                parts.append(d.text)
                n += len(d.token_ids)
                reason = d.finish_reason or reason
            return Completion("".join(parts), reason, len(ids), n)

        # Every running request needs a reader: stop strings are found by the text layer, and a
        # request nobody reads would run on to max_tokens. Requests are admitted in order, so
        # readers taken in order are always on the ones the engine is running.
        readers = ThreadPoolExecutor(2 * self.engine.scheduler.max_batch)
        try:
            futures = [
                readers.submit(collect, *pair) for pair in zip(prompts, streams, strict=True)
            ]
            for future in futures:
                yield future.result()
        finally:
            for tokens in streams:
                tokens.close()
            readers.shutdown(cancel_futures=True)

    def complete(
        self, prompt_ids: list[int], *, grammar: Grammar | None = None, **sampling
    ) -> Completion:
        """Completion with its finish reason and token counts, from token ids (decoded under
        `grammar` if given, e.g. `chat_prompt(...).grammar`)."""
        return self._collect(prompt_ids, self.sampling_params(**sampling), grammar)

    def __repr__(self) -> str:
        c = self.config
        return f"LLM({self.name!r}, arch={c.arch}, params={c.n_params / 1e6:.0f}M, ctx={self.context_length})"


def load(
    model: str | None = None,
    *,
    dtype: str = "auto",
    context_length: int | None = None,
    progress: bool = True,
    threads: int | None = None,
    device: str = "cpu",
    adapter: str | Path | None = None,
    adapters: dict[str, str | Path] | None = None,
    **engine_options,
) -> LLM:
    """Load a named model (pulling it if needed), a .gguf file or a Hugging Face model folder.

    dtype: "auto" (int4 for a GGUF file of Q4_1 layers, which it holds exactly, else int8; bf16 on
    a GPU), "fp32", "bf16", "int8" or "int4" (weight-only quantized, CPU only).
    device: "cpu", or "cuda" / "cuda:N" (fp32 or bf16 weights, the same engine on the GPU).
    threads: CPU threads for PyTorch (process-wide; default: PyTorch's, one per physical core).
    adapter: a LoRA adapter (a `genforge finetune` run or a peft adapter folder) that every
    request goes through; adapters: several, by name, that requests pick (`with_adapter(name)`),
    batched together with the base model.
    engine_options: `Engine` settings (max_batch, step_tokens, kv_tokens, prefix_cache, kv_dtype).
    """
    check_dtype(dtype)
    if threads is not None and threads < 1:
        raise GenforgeError(f"threads must be at least 1, got {threads}.")
    # On the compute thread, like every later step: one OpenMP team in the process (genforge.compute).
    named = dict(adapters or {})
    if adapter is not None:
        if named:
            raise GenforgeError(
                "give one adapter that every request uses (adapter=) or several that requests "
                "pick by name (adapters=), not both."
            )
        named[ACTIVE_ADAPTER] = adapter
    return compute.run(
        _load, model, dtype, context_length, progress, threads, device, engine_options, named
    )


ACTIVE_ADAPTER = "adapter"  # the name of `load(adapter=...)`'s adapter


def _load(model, dtype, context_length, progress, threads, device, engine_options, adapters):
    if threads is not None:
        torch.set_num_threads(threads)
    m = load_model(model, dtype, progress, device, adapters)
    if ACTIVE_ADAPTER in adapters:
        lora.set_adapter(m.model, ACTIVE_ADAPTER)  # every row, every path (scoring too)
    return LLM(
        m.name,
        m.checkpoint,
        m.model,
        m.tokenizer,
        context_length,
        m.sampling,
        m.dtype,
        engine_options,
    )
