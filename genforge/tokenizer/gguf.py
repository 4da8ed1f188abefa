"""GGUF tokenizer metadata -> a Hugging Face `tokenizers.Tokenizer`.

A GGUF file carries no `tokenizer.json`, only llama.cpp's description of one: the pieces, their
types, merges or scores, and a `tokenizer.ggml.pre` name for the pre-tokenizer. We rebuild the same
pipeline transformers' GGUF loader builds (`transformers/integrations/gguf/gguf_tokenizer_mapping.py`),
so ids match `AutoTokenizer.from_pretrained(dir, gguf_file=...)` exactly, without importing it:

- `gpt2`: byte-level BPE. Pieces are spelled in GPT-2's byte alphabet; the split regex comes from
  `tokenizer.ggml.pre`, and an unknown name falls back to GPT-2's own regex, as transformers does.
- `llama`: SentencePiece-style BPE with byte fallback. Merges are recovered from the vocabulary;
  Gemma files rank them by file position (their scores do not follow merge order), others by score.

Control tokens (type 3) become special added tokens and user-defined ones (type 4) plain added
tokens, so both are matched whole in the input text instead of being cut into pieces.
"""

from __future__ import annotations

from functools import cache
from typing import Any

from tokenizers import AddedToken, Regex, decoders, normalizers, pre_tokenizers, processors
from tokenizers import Tokenizer as HFTokenizer
from tokenizers.models import BPE

from genforge.errors import GenforgeError

CONTROL, USER_DEFINED = 3, 4  # llama.cpp's `tokenizer.ggml.token_type` values we act on

_QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_GPT4O_SPLIT = (
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
    r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
    r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)

# `tokenizer.ggml.pre` -> split regex, as transformers maps them. Names not listed (e.g. 'smollm',
# 'gpt2', 'default') get GPT-2's regex, which is what transformers does too. Note that llama.cpp
# (and SmolLM2's own tokenizer.json) also split digits for 'smollm'; we follow transformers.
PRE_TOKENIZER_SPLITS = {
    **dict.fromkeys(("qwen2", "deepseek-r1-qwen", "megrez"), _QWEN2_SPLIT),
    **dict.fromkeys(
        ("llama3", "llama-v3", "llama-bpe", "falcon3", "pixtral", "lfm2"), _LLAMA3_SPLIT
    ),
    **dict.fromkeys(("gpt-4o", "llama4"), _GPT4O_SPLIT),
}
# Pre-tokenizers whose upstream tokenizer.json sets `ignore_merges` (a whole pre-token found in the
# vocabulary is taken as is); llama.cpp does the same for these.
IGNORE_MERGES = frozenset(("llama3", "llama-v3", "llama-bpe", "falcon3", "pixtral", "lfm2"))
# Architectures whose SentencePiece vocabulary stores runs of spaces as real spaces and ranks merges
# by file position instead of by score.
GEMMA_ARCHS = frozenset(("gemma", "gemma2", "gemma3"))


def tokenizer_from_gguf(metadata: dict[str, Any]) -> HFTokenizer:
    """Build the HF tokenizer a GGUF file's `tokenizer.*` metadata describes."""
    kind = metadata.get("tokenizer.ggml.model")
    if "tokenizer.ggml.tokens" not in metadata:
        raise GenforgeError(
            "This GGUF file has no tokenizer vocabulary (tokenizer.ggml.tokens); "
            "pass a file converted with its tokenizer or a Hugging Face model directory."
        )
    if kind == "gpt2":
        tok, vocab = _byte_level_bpe(metadata)
    elif kind == "llama":
        tok, vocab = _sentencepiece_bpe(metadata)
    else:
        raise GenforgeError(
            f"This GGUF file uses tokenizer model {kind!r}, but genforge reads only 'gpt2' "
            "(byte-level BPE) and 'llama' (SentencePiece BPE); use a model with one of those."
        )
    _add_gguf_tokens(tok, metadata, vocab, byte_level=kind == "gpt2")
    bos_id = metadata.get("tokenizer.ggml.bos_token_id")
    if add_bos_default(metadata) and bos_id is not None:
        # Makes `tok.encode(text)` (add_special_tokens=True) behave like transformers' tokenizer.
        bos = tok.id_to_token(bos_id)
        tok.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos}:1 $B:1", special_tokens=[(bos, bos_id)]
        )
    return tok


def add_bos_default(metadata: dict[str, Any]) -> bool:
    """Whether the model wants BOS prepended; SentencePiece files without the flag do (llama.cpp)."""
    default = metadata.get("tokenizer.ggml.model") == "llama"
    return bool(metadata.get("tokenizer.ggml.add_bos_token", default))


@cache
def byte_alphabet() -> dict[int, str]:
    """GPT-2's byte -> printable character map, so every byte has a visible one-char spelling."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1)]
    printable += range(ord("®"), ord("ÿ") + 1)
    shifted = [b for b in range(256) if b not in printable]
    return {b: chr(b) for b in printable} | {b: chr(256 + i) for i, b in enumerate(shifted)}


def _byte_level_bpe(metadata: dict[str, Any]) -> tuple[HFTokenizer, dict[str, int]]:
    alphabet = byte_alphabet()
    letters = set(alphabet.values())
    # Pieces spelled outside the byte alphabet are respelled byte by byte, as transformers does.
    vocab = {
        t if set(t) <= letters else "".join(alphabet[b] for b in t.encode()): i
        for i, t in enumerate(metadata["tokenizer.ggml.tokens"])
    }
    merges = [tuple(m.split(" ", 1)) for m in metadata.get("tokenizer.ggml.merges", ())]
    pre = metadata.get("tokenizer.ggml.pre", "default")
    tok = HFTokenizer(BPE(vocab, merges, fuse_unk=False, ignore_merges=pre in IGNORE_MERGES))
    split = PRE_TOKENIZER_SPLITS.get(pre)
    if split is None:
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    else:
        tok.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(split), behavior="isolated"),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ]
        )
    tok.decoder = decoders.ByteLevel()
    return tok, vocab


def _sentencepiece_bpe(metadata: dict[str, Any]) -> tuple[HFTokenizer, dict[str, int]]:
    tokens = metadata["tokenizer.ggml.tokens"]
    gemma = metadata.get("general.architecture") in GEMMA_ARCHS
    if gemma:
        # Gemma stores a piece of 2+ spaces as spaces, while the normalizer turns text spaces into ▁.
        tokens = ["▁" * len(t) if " " in t and not t.strip() else t for t in tokens]
    vocab = {t: i for i, t in enumerate(tokens)}
    if "tokenizer.ggml.merges" in metadata:
        merges = [tuple(m.split(" ", 1)) for m in metadata["tokenizer.ggml.merges"]]
    elif gemma:
        merges = merges_from_ranks(tokens, [-i for i in range(len(tokens))])
    else:
        merges = merges_from_ranks(tokens, metadata["tokenizer.ggml.scores"])
    unk_id = metadata.get("tokenizer.ggml.unknown_token_id")
    unk = tokens[unk_id] if unk_id is not None else "<unk>"
    tok = HFTokenizer(BPE(vocab, merges, unk_token=unk, fuse_unk=True, byte_fallback=True))
    steps = [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()]
    if gemma:
        tok.normalizer = normalizers.Replace(" ", "▁")
    else:
        prefix = bool(metadata.get("tokenizer.ggml.add_space_prefix", True))
        tok.pre_tokenizer = pre_tokenizers.Metaspace(
            replacement="▁", prepend_scheme="first" if prefix else "never", split=False
        )
        if prefix:
            steps.append(decoders.Strip(" ", 1, 0))  # drop the space the pre-tokenizer prepended
    tok.decoder = decoders.Sequence(steps)
    return tok, vocab


def merges_from_ranks(tokens: list[str], scores: list[float]) -> list[tuple[str, str]]:
    """Every split of a piece into two known pieces, best-scoring piece first.

    This is the order `transformers.tokenization_utils_base.generate_merges` produces: pieces by
    score (ties in file order), and within a piece the longer left half first. Walking the pieces in
    that order avoids sorting the ~500k merges themselves; Gemma 3's 262k pieces take ~1.5 s.
    """
    known = set(tokens)
    order = sorted(range(len(tokens)), key=lambda i: -scores[i])  # stable: ties keep file order
    merges = []
    for i in order:
        token = tokens[i]
        for cut in range(len(token) - 1, 0, -1):
            left, right = token[:cut], token[cut:]
            if left in known and right in known:
                merges.append((left, right))
    return merges


def _add_gguf_tokens(
    tok: HFTokenizer, metadata: dict[str, Any], vocab: dict[str, int], byte_level: bool
) -> None:
    """Register control pieces as special tokens and user-defined pieces as plain added tokens."""
    tokens = metadata["tokenizer.ggml.tokens"]
    types = metadata.get("tokenizer.ggml.token_type") or [0] * len(tokens)
    letters = set(byte_alphabet().values())
    named = {
        metadata.get(f"tokenizer.ggml.{key}_token_id")
        for key in ("bos", "eos", "unknown", "padding")
    } - {None}
    special, plain = [], []
    for i, (text, kind) in enumerate(zip(tokens, types, strict=True)):
        if kind == CONTROL or i in named:
            # A byte-level control piece outside the byte alphabet is a llama.cpp mislabel.
            if not byte_level or set(text) <= letters:
                special.append(AddedToken(text, normalized=False, special=True))
        elif kind == USER_DEFINED and text in vocab:  # Gemma's space runs were respelled: skip
            plain.append(AddedToken(text, normalized=False, special=False))
    tok.add_special_tokens(special)
    tok.add_tokens(plain)
