"""StreamDecoder: step-by-step text must join to exactly `decode(ids)`, never showing half characters."""

from __future__ import annotations

import pytest

from genforge.tokenizer import Tokenizer
from genforge.tokenizer.gguf import byte_alphabet

MIXED_CORPUS = [
    "The quick brown fox jumps over the lazy dog. It's 10 o'clock; we'll see, won't we?",
    'def area(r):\n    """Circle."""\n    if r < 0:\n\traise ValueError(r)\n    return 3.14 * r ** 2\n',
    "1234567 and 3.14159, also  42 and 0.000123e-10 and 1,000,000.",
    "Café naïve résumé façade Ångström São Paulo",
    "東京は日本の首都です。中文测试，한국어 텍스트",
    "مرحبا بالعالم، هذا اختبار.",
    "e\u0301 n\u0303 a\u0308\u0301 Z\u0351\u0300\u0316",
    "👍 🎉🎉 👨‍👩‍👧‍👦 🏳️‍🌈 🇫🇷 ❤️ 𓀀",
    "a  b   c\n\n\nd\r\ne \t\t x    \n  \n",
    "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n",
    "<start_of_turn>user\nhi<end_of_turn>\n",
]


def stream_all(tok: Tokenizer, ids: list[int], skip_special: bool = True) -> list[str]:
    """Every step's output, then flush's."""
    stream = tok.stream(skip_special)
    return [stream.step(i) for i in ids] + [stream.flush()]


@pytest.fixture(scope="module")
def bytes_only() -> Tokenizer:
    """A byte-level tokenizer with no merges, so every UTF-8 byte is its own token."""
    return Tokenizer.from_gguf_metadata(
        {
            "tokenizer.ggml.model": "gpt2",
            "tokenizer.ggml.tokens": [byte_alphabet()[b] for b in range(256)] + ["<|end|>"],
            "tokenizer.ggml.token_type": [1] * 256 + [3],
            "tokenizer.ggml.merges": [],
        }
    )


def test_emoji_waits_for_its_last_byte(bytes_only):
    ids = bytes_only.encode("a😀b")
    assert len(ids) == 6
    assert stream_all(bytes_only, ids) == ["a", "", "", "", "😀", "b", ""]


def test_specials_are_skipped_or_shown(bytes_only):
    ids = bytes_only.encode("é<|end|>x")
    assert "".join(stream_all(bytes_only, ids)) == "éx"
    assert "".join(stream_all(bytes_only, ids, skip_special=False)) == "é<|end|>x"


def test_flush_returns_an_unfinished_character(bytes_only):
    ids = bytes_only.encode("ok😀")[:-1]  # generation stopped mid-character
    steps = stream_all(bytes_only, ids)
    assert steps[:-1] == ["o", "k", "", "", ""]
    assert "".join(steps) == bytes_only.decode(ids)
    assert steps[-1].startswith("\ufffd")


def test_invalid_bytes_do_not_stall_the_stream(bytes_only):
    # A model can loop on lead bytes that never complete a character (F0 9F F0 9F ...); its text
    # must still arrive before flush, and the joined stream must still equal decode.
    ids = bytes_only.encode("😀")[:2] * 6
    steps = stream_all(bytes_only, ids)
    assert any(steps[:-1])
    assert "".join(steps) == bytes_only.decode(ids)


@pytest.fixture(
    scope="module",
    params=[
        pytest.param("smollm2"),
        pytest.param("qwen", marks=pytest.mark.slow),
        pytest.param("gemma", marks=pytest.mark.slow),
    ],
)
def real(request) -> Tokenizer:
    from genforge.weights.gguf import read_gguf

    return Tokenizer.from_gguf_metadata(
        read_gguf(request.getfixturevalue(f"{request.param}_path")).metadata
    )


@pytest.mark.parametrize("skip_special", [True, False])
def test_stream_joins_to_decode_on_mixed_corpus(real, skip_special):
    for text in MIXED_CORPUS:
        ids = real.encode(text)
        steps = stream_all(real, ids, skip_special)
        assert "".join(steps) == real.decode(ids, skip_special)
        assert not any("\ufffd" in s for s in steps), text


def test_whole_corpus_as_one_stream(real):
    ids = [i for text in MIXED_CORPUS for i in real.encode(text, add_special=False)]
    assert "".join(stream_all(real, ids)) == real.decode(ids)


def test_multi_token_emoji_arrives_whole(real):
    for char in ("👨‍👩‍👧‍👦", "𓀀"):
        ids = real.encode(char, add_special=False)
        steps = stream_all(real, ids)
        assert "".join(steps) == char
        assert all(s == "" or "\ufffd" not in s for s in steps)
    # At least one character must span several byte tokens, or this test checks nothing.
    ids = real.encode("𓀀", add_special=False)
    assert len(ids) > 1
    assert stream_all(real, ids) == [""] * (len(ids) - 1) + ["𓀀", ""]
