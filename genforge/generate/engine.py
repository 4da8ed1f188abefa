"""The engine: token ids in, token ids out. It knows nothing about text, templates or stop strings.

One request at a time: prefill the prompt into a KV cache sized for exactly this request, then decode
one token per forward pass. Requests that cannot fit the model's context are refused up front with the
numbers, never truncated.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from genforge.errors import GenforgeError
from genforge.generate.sampling import SamplingParams, make_generator, sample
from genforge.model.kv_cache import KVCache
from genforge.model.transformer import Transformer


class Engine:
    def __init__(self, model: Transformer, context_length: int | None = None):
        self.model = model
        self.dtype = model.tok_emb.weight.dtype
        limit = model.cfg.max_seq_len
        self.context_length = min(context_length or limit, limit)

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
            return ctx - n_prompt
        if n_prompt + max_tokens > ctx:
            raise GenforgeError(
                f"the prompt is {n_prompt} tokens and max_tokens is {max_tokens}, more than the "
                f"context of {ctx}; lower max_tokens to at most {ctx - n_prompt} or shorten the prompt."
            )
        return max_tokens

    @torch.inference_mode()
    def generate(
        self, prompt_ids: list[int], params: SamplingParams, eos_ids: frozenset[int] = frozenset()
    ) -> Iterator[int]:
        """Yield sampled token ids; the last one is an eos id if the model ended the sequence."""
        max_new = self.check_fits(len(prompt_ids), params.max_tokens)
        cfg = self.model.cfg
        cache = KVCache.for_model(cfg, batch=1, max_len=len(prompt_ids) + max_new, dtype=self.dtype)
        generator = make_generator(params.seed)
        # Penalties need the context so far / the generated-token counts; skip the work otherwise.
        context = torch.tensor(prompt_ids) if params.repetition_penalty != 1.0 else None
        counts = None
        if params.presence_penalty or params.frequency_penalty:
            counts = torch.zeros(cfg.vocab_size, dtype=torch.int32)
        tokens = torch.tensor([prompt_ids])  # (1, T)
        pos = 0
        for _ in range(max_new):
            logits = self.model(tokens, cache, pos, last_only=True)[0, -1]  # (V,)
            pos += tokens.shape[1]
            token = sample(logits, params, generator, context, counts)
            yield token
            if token in eos_ids:
                return
            if context is not None:
                context = torch.cat((context, torch.tensor([token])))
            if counts is not None:
                counts[token] += 1
            tokens = torch.tensor([[token]])
