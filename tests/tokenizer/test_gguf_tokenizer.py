"""GGUF metadata -> tokenizer: tiny hand-built vocabularies, then parity with transformers on real files."""

from __future__ import annotations

import json

import pytest

from genforge.errors import GenforgeError
from genforge.tokenizer import Tokenizer
from genforge.tokenizer.gguf import byte_alphabet, merges_from_ranks

MIXED_CORPUS = {
    "prose": "The quick brown fox jumps over the lazy dog. It's 10 o'clock; we'll see, won't we?",
    "python": 'def area(r):\n    """Circle."""\n    if r < 0:\n\traise ValueError(r)\n    return 3.14 * r ** 2\n',
    "numbers": "1234567 and 3.14159, also  42 and 0.000123e-10 and 1,000,000.",
    "accents": "Café naïve résumé façade Ångström São Paulo",
    "cjk": "東京は日本の首都です。中文测试，한국어 텍스트",
    "arabic": "مرحبا بالعالم، هذا اختبار.",
    "combining": "e\u0301 n\u0303 a\u0308\u0301 Z\u0351\u0300\u0316",
    "emoji": "👍 🎉🎉 👨‍👩‍👧‍👦 🏳️‍🌈 🇫🇷 ❤️",
    "whitespace": "a  b   c\n\n\nd\r\ne \t\t x    \n  \n",
    "chatml": "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n",
    "gemma_turns": "<start_of_turn>user\nhi<end_of_turn>\n",
}
SPECIAL_MARKUP = {"chatml", "gemma_turns"}

# What each real file should give: BOS handling, turn-ending ids, vocabulary size.
EXPECTED = {
    "smollm2": {"add_bos": False, "bos_id": 1, "eos_ids": {0, 2}, "vocab_size": 49152},
    "qwen": {"add_bos": False, "bos_id": 151643, "eos_ids": {151643, 151645}, "vocab_size": 151936},
    "gemma": {"add_bos": True, "bos_id": 2, "eos_ids": {1, 106}, "vocab_size": 262144},
}


# --- hermetic: tiny vocabularies written in the test ----------------------------------------------


def byte_level_metadata(**overrides) -> dict:
    """A byte-level BPE file: the 256 byte pieces, merges for "ab" and " ab", and added tokens."""
    alphabet = byte_alphabet()
    tokens = [alphabet[b] for b in range(256)] + ["ab", "Ġab", "<|end|>", "<tool>"]
    types = [1] * 258 + [3, 4]
    metadata = {
        "tokenizer.ggml.model": "gpt2",
        "tokenizer.ggml.pre": "qwen2",
        "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.token_type": types,
        "tokenizer.ggml.merges": ["a b", "Ġ ab"],
        "tokenizer.ggml.eos_token_id": 258,
        "tokenizer.ggml.add_bos_token": False,
    }
    return metadata | overrides


def test_byte_level_merges_specials_and_round_trip():
    tok = Tokenizer.from_gguf_metadata(byte_level_metadata())
    vocab = tok.hf.get_vocab()
    assert tok.encode("ab ab") == [vocab["ab"], vocab["Ġab"]]
    assert tok.encode("x<|end|><tool>") == [vocab["x"], 258, 259]
    assert tok.eos_ids == {258}
    assert (
        tok.decode(tok.encode("x<|end|><tool>")) == "x<tool>"
    )  # control skipped, user-defined kept
    text = "héllo 😀\r\n\tz"
    assert tok.decode(tok.encode(text)) == text


def test_missing_bos_flag_defaults_per_model_type():
    tok = Tokenizer.from_gguf_metadata(
        byte_level_metadata(
            **{"tokenizer.ggml.bos_token_id": 258, "tokenizer.ggml.add_bos_token": True}
        )
    )
    assert tok.encode("ab")[0] == 258
    assert tok.hf.encode("ab").ids[0] == 258  # the HF object agrees with our encode
    assert tok.encode("ab", add_special=False) == [tok.hf.token_to_id("ab")]


def test_unsupported_or_missing_vocabulary_is_a_user_error():
    with pytest.raises(GenforgeError, match="'bert'"):
        Tokenizer.from_gguf_metadata(byte_level_metadata(**{"tokenizer.ggml.model": "bert"}))
    metadata = byte_level_metadata()
    del metadata["tokenizer.ggml.tokens"]
    with pytest.raises(GenforgeError, match="no tokenizer vocabulary"):
        Tokenizer.from_gguf_metadata(metadata)


def test_merges_from_ranks_orders_by_score_then_longer_left_half():
    tokens = ["a", "b", "c", "ab", "bc", "abc"]
    scores = [0.0, 0.0, 0.0, -1.0, -2.0, -0.5]
    # "abc" scores best, so its splits come first, longest left half first.
    assert merges_from_ranks(tokens, scores) == [("ab", "c"), ("a", "bc"), ("a", "b"), ("b", "c")]


def test_sentencepiece_byte_fallback_and_gemma_space_runs():
    bytes_ = [f"<0x{b:02X}>" for b in range(256)]
    tokens = ["<pad>", "<eos>", "<bos>", "<unk>", *bytes_, "▁", "h", "i", "hi", "▁hi", "  "]
    metadata = {
        "general.architecture": "gemma3",
        "tokenizer.ggml.model": "llama",
        "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.scores": [0.0] * len(tokens),
        "tokenizer.ggml.token_type": [3, 3, 3, 2] + [6] * 256 + [1] * 5 + [4],
        "tokenizer.ggml.bos_token_id": 2,
        "tokenizer.ggml.eos_token_id": 1,
        "tokenizer.ggml.unknown_token_id": 3,
        "tokenizer.ggml.add_space_prefix": False,
    }
    tok = Tokenizer.from_gguf_metadata(metadata)
    ids = {t: i for i, t in enumerate(tokens)}
    assert tok.add_bos  # SentencePiece files add BOS unless they say otherwise
    assert tok.encode("hi hi", add_special=False) == [ids["hi"], ids["▁hi"]]
    # Gemma stores a space run as spaces; it must match the ▁▁ the normalizer writes.
    assert tok.encode("  ", add_special=False) == [ids["  "]]
    assert tok.encode("é", add_special=False) == [ids["<0xC3>"], ids["<0xA9>"]]
    assert tok.decode(tok.encode("hi  é hi")) == "hi  é hi"


def test_from_dir_reads_hugging_face_config_files(tmp_path):
    metadata = byte_level_metadata(**{"tokenizer.ggml.add_bos_token": False})
    metadata["tokenizer.ggml.tokens"] = [*metadata["tokenizer.ggml.tokens"], "<s>"]
    metadata["tokenizer.ggml.token_type"] = [*metadata["tokenizer.ggml.token_type"], 3]
    Tokenizer.from_gguf_metadata(metadata).hf.save(str(tmp_path / "tokenizer.json"))
    config = {
        "bos_token": {"content": "<s>", "special": True},  # older AddedToken serialization
        "eos_token": "<|end|>",
        "add_bos_token": True,
        "chat_template": [
            {"name": "default", "template": "{{ bos_token }}{{ messages[0].content }}"},
            {"name": "tool_use", "template": "tools"},
        ],
    }
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    (tmp_path / "generation_config.json").write_text(json.dumps({"eos_token_id": [258, 5]}))
    tok = Tokenizer.from_dir(tmp_path)
    assert (tok.bos_id, tok.add_bos, tok.eos_ids) == (260, True, {258, 5})
    assert tok.encode("ab") == [260, tok.hf.token_to_id("ab")]
    assert tok.encode_chat([{"role": "user", "content": "ab"}]) == tok.encode("ab")  # one BOS
    (tmp_path / "chat_template.jinja").write_text("{{ messages | length }}")  # newer layout wins
    assert (
        Tokenizer.from_dir(tmp_path).apply_chat_template([{"role": "user", "content": "x"}]) == "1"
    )


def test_from_dir_user_errors(tmp_path):
    with pytest.raises(GenforgeError, match="has no tokenizer.json"):
        Tokenizer.from_dir(tmp_path)
    Tokenizer.from_gguf_metadata(byte_level_metadata()).hf.save(str(tmp_path / "tokenizer.json"))
    (tmp_path / "tokenizer_config.json").write_text("{not json")
    with pytest.raises(GenforgeError, match="not valid JSON"):
        Tokenizer.from_dir(tmp_path)


# --- real files: parity with transformers' GGUF loader -------------------------------------------

MODELS = [
    pytest.param("smollm2", id="smollm2"),
    pytest.param("qwen", id="qwen", marks=pytest.mark.slow),
    pytest.param("gemma", id="gemma", marks=pytest.mark.slow),
]


@pytest.fixture(scope="module", params=MODELS)
def model(request, tokenizer_pair):
    """(name, our tokenizer, transformers' tokenizer) for one real GGUF file."""
    return (request.param, *tokenizer_pair(request.param))


@pytest.mark.parametrize("key", MIXED_CORPUS)
def test_encode_matches_transformers(model, key):
    _, ours, reference = model
    text = MIXED_CORPUS[key]
    # The default call adds exactly the specials the file asks for (BOS for Gemma, none otherwise).
    assert ours.encode(text) == reference(text)["input_ids"]
    assert (
        ours.encode(text, add_special=False)
        == reference(text, add_special_tokens=False)["input_ids"]
    )


@pytest.mark.parametrize("key", sorted(set(MIXED_CORPUS) - SPECIAL_MARKUP))
def test_decode_round_trips_and_matches_transformers(model, key):
    _, ours, reference = model
    ids = ours.encode(MIXED_CORPUS[key])
    assert ours.decode(ids) == MIXED_CORPUS[key]
    assert ours.decode(ids) == reference.decode(ids, skip_special_tokens=True)


def test_special_fields_match_the_file(model):
    name, ours, reference = model
    expected = EXPECTED[name]
    assert ours.add_bos == expected["add_bos"]
    assert ours.bos_id == expected["bos_id"] == reference.bos_token_id
    assert ours.eos_ids == expected["eos_ids"]
    assert reference.eos_token_id in ours.eos_ids
    assert ours.vocab_size == expected["vocab_size"] == len(reference)


def test_special_token_text_becomes_one_id(model):
    name, ours, _ = model
    markup, piece = (
        ("<start_of_turn>", "<end_of_turn>") if name == "gemma" else ("<|im_start|>", "<|im_end|>")
    )
    assert ours.encode(markup + piece, add_special=False) == [
        ours.hf.token_to_id(markup),
        ours.hf.token_to_id(piece),
    ]
    assert ours.hf.token_to_id(piece) in ours.eos_ids
    assert ours.decode(ours.encode(markup + "x"), skip_special=False).endswith(markup + "x")


def test_token_text_shows_text_or_raw_piece(model):
    _, ours, _ = model
    word = ours.encode(" hello", add_special=False)
    assert "".join(ours.token_text(i) for i in word) == " hello"
    with pytest.raises(GenforgeError, match="outside the vocabulary"):
        ours.token_text(ours.vocab_size + 5)


def test_from_dir_of_the_saved_reference_matches(model, tmp_path):
    # transformers writes tokenizer.json + tokenizer_config.json (+ chat_template.jinja) from the
    # same file; loading that directory must give the same tokenizer as reading the GGUF.
    _, ours, reference = model
    reference.save_pretrained(tmp_path)
    loaded = Tokenizer.from_dir(tmp_path)
    assert (loaded.bos_id, loaded.add_bos, loaded.eos_ids) == (
        ours.bos_id,
        ours.add_bos,
        ours.eos_ids,
    )
    assert loaded.chat_template == ours.chat_template
    for text in MIXED_CORPUS.values():
        assert loaded.encode(text) == ours.encode(text)
