"""Training a byte-level BPE tokenizer with Hugging Face `tokenizers`.

Byte-level means every string round-trips exactly (any byte is a token of its own), the way GPT-2 and
SmolLM2 tokenize. The result is saved as a Hugging Face tokenizer folder (`tokenizer.json`,
`tokenizer_config.json` with a ChatML chat template over the special tokens), so that
`genforge.tokenizer.Tokenizer.from_dir` and transformers' `AutoTokenizer` both load it.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path

from tokenizers import Tokenizer as HFTokenizer
from tokenizers import decoders, models, pre_tokenizers, trainers

from genforge.errors import GenforgeError

EOS = "<|endoftext|>"
SPECIAL_TOKENS = (EOS, "<|im_start|>", "<|im_end|>")
CHATML = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}"
    "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
MIN_VOCAB = 256 + len(SPECIAL_TOKENS)


def train_bpe(
    texts: Iterable[str], vocab_size: int, min_frequency: int = 2, progress: bool = False
) -> HFTokenizer:
    """A byte-level BPE of `vocab_size` tokens (special tokens included) learned from `texts`."""
    if vocab_size < MIN_VOCAB:
        raise GenforgeError(
            f"--vocab-size must be at least {MIN_VOCAB} (256 bytes + {len(SPECIAL_TOKENS)} "
            f"special tokens), got {vocab_size}."
        )
    tok = HFTokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=progress,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    got = tok.get_vocab_size()
    if got < vocab_size:
        raise GenforgeError(
            f"the corpus supports only {got} tokens (pairs seen at least {min_frequency} times), "
            f"fewer than --vocab-size {vocab_size}; lower --vocab-size to at most {got} or add data."
        )
    return tok


def bytes_per_token(tok: HFTokenizer, texts: list[str]) -> float:
    """Compression: UTF-8 bytes of `texts` per token (higher is better)."""
    n_bytes = sum(len(t.encode()) for t in texts)
    n_tokens = sum(len(e.ids) for e in tok.encode_batch(texts, add_special_tokens=False))
    return n_bytes / max(n_tokens, 1)


def save(tok: HFTokenizer, out: str | Path) -> Path:
    """Write a Hugging Face tokenizer folder atomically (a temp folder renamed into place)."""
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not (out / "tokenizer.json").is_file():
        raise GenforgeError(f"{out} exists and is not a tokenizer folder; pick another --out.")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}."))
    tmp.chmod(0o755)
    tok.save(str(tmp / "tokenizer.json"))
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": None,
        "eos_token": EOS,
        "pad_token": EOS,
        "add_bos_token": False,
        "model_max_length": 1_000_000,
        "chat_template": CHATML,
    }
    (tmp / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    if out.exists():
        old = out.with_name(f".{out.name}.old")
        os.replace(out, old)
        os.replace(tmp, out)
        for f in old.iterdir():
            f.unlink()
        old.rmdir()
    else:
        os.replace(tmp, out)
    return out
