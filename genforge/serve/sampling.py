"""An OpenAI request's sampling fields and token ids, checked, as the engine's inputs: every bound
is checked with the numbers, and a bad value is a 400 that names the field."""

from __future__ import annotations

from genforge.errors import GenforgeError
from genforge.generate.sampling import SamplingParams
from genforge.hub import DEFAULT_MAX_TOKENS
from genforge.serve.errors import bad_request
from genforge.serve.schemas import ChatRequest, Sampling


def sampling_params(
    llm, body: Sampling, n_prompt: int, max_tokens: int | None, limit: int, choice: int
) -> SamplingParams:
    """The engine's parameters for choice `choice`; every bound is checked with the numbers."""
    ctx = llm.context_length
    if n_prompt >= ctx:
        raise bad_request(
            f"This model's maximum context length is {ctx} tokens, but the prompt is {n_prompt} "
            "tokens. Shorten the prompt.",
            param="messages" if isinstance(body, ChatRequest) else "prompt",
            code="context_length_exceeded",
        )
    if max_tokens is not None and max_tokens > limit:
        raise bad_request(
            f"max_tokens is {max_tokens}, above this server's limit of {limit}; ask for fewer "
            "(the limit is set with genforge serve --max-tokens).",
            param="max_tokens",
        )
    if max_tokens is not None and n_prompt + max_tokens > ctx:
        raise bad_request(
            f"This model's maximum context length is {ctx} tokens. However, you requested "
            f"{n_prompt + max_tokens} tokens ({n_prompt} in the prompt, {max_tokens} for the "
            f"completion). Lower max_tokens to at most {ctx - n_prompt} or shorten the prompt.",
            param="max_tokens",
            code="context_length_exceeded",
        )
    bias, vocab = {}, llm.config.vocab_size
    for key, value in (body.logit_bias or {}).items():
        if not key.isdigit():
            raise bad_request(f"logit_bias keys must be token ids, got {key!r}.", "logit_bias")
        if int(key) >= vocab:
            raise bad_request(
                f"logit_bias token id {key} is outside the vocabulary (0..{vocab - 1}).",
                "logit_bias",
            )
        bias[int(key)] = value
    stop = [body.stop] if isinstance(body.stop, str) else body.stop
    try:
        return llm.sampling_params(
            temperature=body.temperature,
            top_p=body.top_p,
            top_k=body.top_k,
            min_p=body.min_p,
            presence_penalty=body.presence_penalty,
            frequency_penalty=body.frequency_penalty,
            repetition_penalty=body.repetition_penalty,
            dry_multiplier=body.dry_multiplier,
            dry_base=body.dry_base,
            dry_allowed_length=body.dry_allowed_length,
            stop=stop or None,
            seed=None if body.seed is None else _int64(body.seed + choice),
            max_tokens=max_tokens
            if max_tokens is not None
            else min(limit, DEFAULT_MAX_TOKENS, ctx - n_prompt),
            logit_bias=bias or None,
        )
    except GenforgeError as e:
        raise bad_request(str(e)) from None


def _int64(n: int) -> int:
    """`n` wrapped into a 64-bit integer: a generator seeded with it draws as one seeded with `n`
    (torch keeps seeds modulo 2^64), and no seed + choice overflows."""
    return (n + 2**63) % 2**64 - 2**63


def check_ids(llm, ids: list[int]) -> None:
    vocab = llm.config.vocab_size
    if bad := [t for t in ids if not 0 <= t < vocab]:
        raise bad_request(
            f"token id {bad[0]} is outside the vocabulary (0..{vocab - 1}).", "prompt"
        )
