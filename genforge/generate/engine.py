"""The engine: token ids in, token ids out. It knows nothing about text, templates or stop strings.

Many requests share one model and one paged KV cache. Each `step()` is

    schedule  -> which requests run, and how many tokens of each (genforge.generate.scheduler)
    execute   -> one forward pass over all of them, their tokens laid end to end (PagedBatch)
    update    -> sample each request's next token with its own parameters and seed, finish the
                 ones that hit an end-of-sequence token or their token limit

so requests join and leave at any step (continuous batching), prompts are prefilled in chunks
between other requests' decodes, and prompts that start like an earlier one reuse its cached keys
and values (prefix cache). Requests that cannot fit the model's context are refused up front with the
numbers, never truncated; requests that do not fit the cache *now* wait.

`generate()` is the way in for callers: it registers a request and yields its tokens while the
process's compute thread (genforge.compute) runs the steps, so any number of threads can generate at
once and be batched together. Closing the iterator (or an exception in the consumer, e.g. Ctrl-C)
cancels the request.
"""

from __future__ import annotations

import atexit
import functools
import logging
import queue
import threading
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from genforge import compute
from genforge.errors import GenforgeError
from genforge.generate.blocks import BlockPool
from genforge.generate.sampling import SamplingParams, make_generator, sample
from genforge.generate.scheduler import Request, Scheduled, Scheduler
from genforge.generate.score import Scored, check_requests, loglikelihood
from genforge.generate.structured import Constraint
from genforge.hub import DEFAULT_MAX_TOKENS
from genforge.model import lora
from genforge.model.kv_cache import PagedBatch, PagedKVCache
from genforge.model.quant import KERNEL_ROWS
from genforge.model.transformer import Transformer

log = logging.getLogger(__name__)

BLOCK_SIZE = 16
KV_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
# fp16 keys and values: half of float32's memory and of what attention reads each step, perplexity
# unchanged (docs/engine.md); llama.cpp's default too
DEFAULT_KV_DTYPE = "fp16"
# After a step with a prompt chunk of this many rows, the C heap's free pages go back to the system
# (its big temporaries otherwise stay resident: +100 MB over a few dozen prompt lengths on SmolLM2)
TRIM_AFTER_ROWS = KERNEL_ROWS  # from there on a chunk takes the dequantized-weight matmul
_DONE = object()


@dataclass
class _SamplerState:
    params: SamplingParams
    generator: torch.Generator | None
    context: torch.Tensor | None  # all tokens so far, for the repetition penalty
    counts: torch.Tensor | None  # generated-token counts, for presence/frequency penalties
    out: Any = None  # where a background-run request's tokens go (anything with .put)
    constraint: Constraint | None = None  # a grammar the output must follow
    logprobs: int | None = None  # record sampled tokens' logprobs with this many alternatives
    token_logprobs: list[TokenLogprob] = field(default_factory=list)


@dataclass
class TokenLogprob:
    """A sampled token's log-probability under the model, and the most likely alternatives."""

    token: int
    logprob: float
    top: list[tuple[int, float]]  # (token id, logprob), most likely first


class Engine:
    """Continuous-batching engine over one model.

    max_batch: requests in flight at once; step_tokens: tokens per forward pass (prompt chunks and
    decodes together); kv_tokens: positions in the shared KV cache (at least the context length, so
    that any single request fits); prefix_cache: reuse cached prompt prefixes; kv_dtype: how keys
    and values are kept ("fp16", "bf16", or "fp32" at twice the memory; attention computes in
    float32 either way).
    """

    def __init__(
        self,
        model: Transformer,
        context_length: int | None = None,
        *,
        max_batch: int = 32,
        step_tokens: int = 512,
        kv_tokens: int | None = None,
        prefix_cache: bool = True,
        kv_dtype: str = DEFAULT_KV_DTYPE,
    ):
        if kv_dtype not in KV_DTYPES:
            raise GenforgeError(
                f"kv_dtype must be one of {', '.join(KV_DTYPES)}, got {kv_dtype!r}."
            )
        self.model = model
        # The LoRA adapters a request may name: none where one adapter is on for every row
        # (`lora.set_adapter`: it is part of the model then)
        self.adapters = set() if lora.active_adapter(model) else lora.adapter_names(model)
        limit = model.cfg.max_seq_len
        self.context_length = min(context_length or limit, limit)
        kv_tokens = max(kv_tokens or 0, self.context_length)
        n_blocks = -(-kv_tokens // BLOCK_SIZE)
        self.device = model.norm.weight.device  # the model's: the cache and each step go there
        self.cache = PagedKVCache.for_model(
            model.cfg, n_blocks, BLOCK_SIZE, KV_DTYPES[kv_dtype], self.device
        )
        self.pool = BlockPool(n_blocks, BLOCK_SIZE, prefix_cache)
        self.scheduler = Scheduler(self.pool, max_batch, step_tokens)
        self._lock = threading.RLock()
        self._closed = False
        # What finds the tokens that end a run for the DRY penalty (genforge.generate.sampling);
        # the owner of the tokenizer sets it (LLM does): by default runs cross every token.
        self.find_sequence_breakers: Callable[[], frozenset[int]] = frozenset
        _ENGINES.add(self)

    @functools.cached_property
    def sequence_breakers(self) -> frozenset[int]:
        """Found once, when the first request with DRY samples (it reads the whole vocabulary)."""
        return self.find_sequence_breakers()

    # -- requests ---------------------------------------------------------------------------

    def check_fits(self, n_prompt: int, max_tokens: int | None) -> int:
        """Number of new tokens this request may generate; raise if it cannot fit the context."""
        ctx = self.context_length
        if n_prompt == 0:
            raise GenforgeError("the prompt is empty; give at least one token of input.")
        if n_prompt >= ctx:
            raise GenforgeError(
                f"the prompt is {n_prompt} tokens but the context holds {ctx}; "
                "shorten the prompt (or start a new conversation)."
            )
        if max_tokens is None:
            return min(DEFAULT_MAX_TOKENS, ctx - n_prompt)
        if n_prompt + max_tokens > ctx:
            raise GenforgeError(
                f"the prompt is {n_prompt} tokens and max_tokens is {max_tokens}, more than the "
                f"context of {ctx}; lower max_tokens to at most {ctx - n_prompt} or shorten the prompt."
            )
        return max_tokens

    def add_request(
        self,
        prompt_ids: list[int],
        params: SamplingParams,
        eos_ids: frozenset[int] = frozenset(),
        *,
        constraint: Constraint | None = None,
        logprobs: int | None = None,
        adapter: str | None = None,
    ) -> Request:
        """Queue a request; it runs from the next `step()`.

        constraint: a grammar the output must follow (genforge.generate.structured); logprobs:
        record each sampled token's log-probability with this many alternatives (0: none) in
        `request.state.token_logprobs`; adapter: the LoRA adapter (of those the model holds) the
        request runs through, batched with requests for other adapters and the base model.
        """
        self._check_adapter(adapter)
        max_new = self.check_fits(len(prompt_ids), params.max_tokens)
        vocab = self.model.cfg.vocab_size
        if bad := [t for t in [*prompt_ids, *params.logit_bias] if not 0 <= t < vocab]:
            raise GenforgeError(f"token id {bad[0]} is outside the vocabulary (0..{vocab - 1}).")
        if logprobs is not None and not 0 <= logprobs <= 20:
            raise GenforgeError(f"logprobs must be between 0 and 20, got {logprobs}.")
        counts = None
        if params.presence_penalty or params.frequency_penalty:
            counts = torch.zeros(vocab, dtype=torch.int32)
        context = torch.tensor(prompt_ids) if params.repetition_penalty != 1.0 else None
        state = _SamplerState(
            params,
            make_generator(params.seed),
            context,
            counts,
            constraint=constraint,
            logprobs=logprobs,
        )
        req = Request(list(prompt_ids), max_new, params, frozenset(eos_ids), state=state)
        if adapter is not None:
            req.adapter, req.table.salt = adapter, _salt(adapter)
        with self._lock:
            self.scheduler.add(req)
        return req

    def _check_adapter(self, adapter: str | None) -> None:
        if adapter is not None and adapter not in self.adapters:
            held = ", ".join(sorted(self.adapters)) or "none"
            raise GenforgeError(f"no adapter {adapter!r} is loaded (loaded: {held}).")

    def cancel(self, req: Request) -> None:
        with self._lock:
            if not req.finished:
                self.scheduler.cancel(req)
                self._emit(req, _DONE)

    def loglikelihood(
        self,
        requests: list[tuple[list[int], list[int]]],
        *,
        batch_tokens: int = 2048,
        progress=None,
        adapter: str | None = None,
    ) -> list[Scored]:
        """Log-likelihood of each (context ids, continuation ids) under the model, batched through
        this engine's KV cache (genforge.generate.score), on the compute thread. Generation takes
        turns with the batches. adapter: the LoRA adapter every pass goes through."""
        check_requests(requests, self.context_length)
        self._check_adapter(adapter)
        out: list[Scored] = []
        step = max(1, batch_tokens // 4)  # requests per job: generation steps run in between
        for i in range(0, len(requests), step):
            out += compute.run(
                self._loglikelihood, requests[i : i + step], batch_tokens, progress, adapter
            )
        return out

    @torch.inference_mode()
    def _loglikelihood(self, requests, batch_tokens: int, progress, adapter) -> list[Scored]:
        with self._lock:
            if adapter is not None:
                lora.route(self.model, [(adapter, slice(None))])  # every row of every pass
            try:
                return loglikelihood(
                    self.model,
                    self.cache,
                    self.pool,
                    requests,
                    batch_tokens=batch_tokens,
                    progress=progress,
                    salt=_salt(adapter),
                )
            finally:
                if adapter is not None:
                    lora.route(self.model, None)

    def reset_prefix_cache(self) -> None:
        """Forget cached prefixes (e.g. to time a cold prompt); blocks in use are untouched."""
        with self._lock:
            self.pool.reset_prefix_cache()

    def has_work(self) -> bool:
        return not self._closed and self.scheduler.has_work()

    # -- the step -----------------------------------------------------------------------------

    @torch.inference_mode()
    def step(self) -> list[tuple[Request, int]]:
        """Run one schedule -> execute -> update step; return the (request, new token) pairs."""
        with self._lock:
            work = self.scheduler.schedule()
            self._copy_prefix_rows()
            if not work:
                return []
            logits = self._execute(work)
            if any(s.n >= TRIM_AFTER_ROWS for s in work):
                compute.release_free_memory()  # ~3 ms against the chunk's ~100+
            self.scheduler.update(work)
            return self._update(work, logits)

    def _copy_prefix_rows(self) -> None:
        """Carry out the pool's copies of cached keys and values that start a new request's block
        (`BlockPool.match_prefix` with `partial`)."""
        copies = self.pool.take_copies()
        bs = self.pool.block_size
        for source, target, n in copies:
            offsets = torch.arange(n)
            self.cache.copy_slots(source * bs + offsets, target * bs + offsets)
        self.pool.copied(copies)

    def _execute(self, work: list[Scheduled]) -> torch.Tensor:
        """Logits (n, vocab) for the last token of each scheduled request that samples this step."""
        tokens = [t for s in work for t in s.request.tokens[s.start : s.start + s.n]]
        # Prompt chunks that end mid-prompt need no logits.
        seqs = [(s.request.table.blocks, s.start, s.n, s.samples) for s in work]
        batch = PagedBatch(self.cache, seqs, self.model.cfg.sliding_window)
        tokens = torch.tensor([tokens], device=self.device)
        if not any(s.request.adapter for s in work):
            # sampling runs on the CPU (its generators and penalties are there): one copy per step
            return self.model(tokens, batch, last_only=True)[0].cpu()
        routes, row = [], 0  # each request's rows through its adapter, in one forward pass
        for s in work:
            routes.append((s.request.adapter, slice(row, row + s.n)))
            row += s.n
        lora.route(self.model, routes)
        try:
            return self.model(tokens, batch, last_only=True)[0].cpu()
        finally:
            lora.route(self.model, None)

    def _update(self, work: list[Scheduled], logits: torch.Tensor) -> list[tuple[Request, int]]:
        new = []
        for row, s in enumerate(s for s in work if s.samples):
            req, st = s.request, s.request.state
            row_logits = logits[row]
            try:
                if st.constraint is not None:
                    row_logits = st.constraint.mask(row_logits)
                token = sample(
                    row_logits,
                    st.params,
                    st.generator,
                    st.context,
                    st.counts,
                    req.output,
                    self.sequence_breakers if st.params.dry_multiplier else frozenset(),
                )
                if st.constraint is not None and token not in req.eos_ids:
                    st.constraint.advance(token)
            except GenforgeError as exc:  # this request's grammar failed; the others go on
                self.scheduler.finish(req, "error")
                self._emit(req, exc)
                continue
            if st.logprobs is not None:
                st.token_logprobs.append(_logprob(logits[row], token, st.logprobs))
            req.output.append(token)
            if st.context is not None:
                st.context = torch.cat((st.context, torch.tensor([token])))
            if st.counts is not None:
                st.counts[token] += 1
            new.append((req, token))
            self._emit(req, token)
            if token in req.eos_ids:
                self._finish(req, "stop")
            elif len(req.output) >= req.max_tokens:
                self._finish(req, "length")
        return new

    def _finish(self, req: Request, reason: str) -> None:
        self.scheduler.finish(req, reason)
        self._emit(req, _DONE)

    @staticmethod
    def _emit(req: Request, item) -> None:
        if req.state.out is not None:
            req.state.out.put(item)

    # -- on the compute thread ------------------------------------------------------------------

    def run_step(self) -> None:
        """One step for the compute thread: a failed step fails the requests in flight, not the
        engine."""
        try:
            self.step()
        except Exception as exc:
            log.exception("engine step failed")
            self._end_all("error", exc)

    def _end_all(self, reason: str, item) -> None:
        """Finish every running and waiting request; their streams get `item` (end or error)."""
        with self._lock:
            for req in list(self.scheduler.running) + list(self.scheduler.waiting):
                self.scheduler.finish(req, reason)
                self._emit(req, item)

    def close(self) -> None:
        """Cancel every request (also done at interpreter exit); the engine takes no new ones."""
        with self._lock:
            self._closed = True
            self._end_all("cancelled", _DONE)

    def submit(
        self, prompt_ids: list[int], params: SamplingParams, eos_ids: frozenset[int], out, **options
    ) -> Request:
        """Queue a request for the background thread, which puts each token id into `out` (anything
        with `.put`), then a end marker (`is_end(item)`) or the exception that failed the step."""
        if self._closed:
            raise GenforgeError("this engine was closed; load the model again.")
        with self._lock:  # no step can run before the request has somewhere to put tokens
            req = self.add_request(prompt_ids, params, eos_ids, **options)
            req.state.out = out
        # From now on the compute thread steps this engine; one driven by hand (`step()`) is not.
        compute.attach(self)
        return req

    def submit_all(self, jobs: list[dict]) -> list[Request]:
        """`submit` several requests (each a dict of its arguments) under one hold of the lock, so
        that they are admitted at the same step: the `n` choices of one API request then run the
        same way each time. If one is refused, those already queued are cancelled."""
        reqs = []
        with self._lock:  # a reentrant lock: submit takes it again
            try:
                for job in jobs:
                    reqs.append(self.submit(**job))
            except BaseException:
                for req in reqs:
                    self.cancel(req)
                raise
        return reqs

    def generate(
        self,
        prompt_ids: list[int],
        params: SamplingParams,
        eos_ids: frozenset[int] = frozenset(),
        **options,
    ) -> TokenStream:
        """Iterate over sampled token ids; the last one is an eos id if the model ended the sequence.

        The request is checked (and refused with a clear error) and queued when this is called;
        closing or dropping the returned stream cancels it. options: see `add_request`.
        """
        out = queue.SimpleQueue()
        return TokenStream(self, self.submit(prompt_ids, params, eos_ids, out, **options), out)


class TokenStream:
    """The token ids of one request as they are sampled. Closing it, dropping it, or an exception
    (e.g. Ctrl-C) while waiting for a token cancels the request and frees its cache."""

    def __init__(self, engine: Engine, request: Request, out: queue.SimpleQueue):
        self.engine, self.request, self._out, self._open = engine, request, out, True

    def __iter__(self) -> TokenStream:
        return self

    def __next__(self) -> int:
        if not self._open:
            raise StopIteration
        try:
            item = self._out.get()
        except BaseException:
            self.close()
            raise
        if item is _DONE:
            self._open = False
            raise StopIteration
        if isinstance(item, Exception):
            self.close()
            raise GenforgeError(f"generation failed: {item}") from item
        return item

    def close(self) -> None:
        if self._open:
            self._open = False
            self.engine.cancel(self.request)  # a no-op when the request already finished

    def __del__(self) -> None:
        self.close()


def _salt(adapter: str | None) -> bytes:
    """What starts the prefix cache's hash chain of a request through `adapter`."""
    return b"" if adapter is None else b"lora:" + adapter.encode() + b"\0"


def is_end(item) -> bool:
    """Whether an item put into a request's `out` is its end-of-stream marker."""
    return item is _DONE


def _logprob(logits: torch.Tensor, token: int, k: int) -> TokenLogprob:
    # The model's own distribution: before penalties, temperature, filters and grammar masks.
    lp = torch.log_softmax(logits.float(), -1)
    top = torch.topk(lp, k) if k else None
    pairs = list(zip(top.indices.tolist(), top.values.tolist(), strict=True)) if k else []
    return TokenLogprob(token, float(lp[token]), pairs)


_ENGINES: weakref.WeakSet[Engine] = weakref.WeakSet()


@atexit.register
def _close_all() -> None:
    # Requests still waiting end (their streams too) before the compute thread stops.
    for engine in list(_ENGINES):
        engine.close()
