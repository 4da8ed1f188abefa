"""Corpus reading, tokenizer training and data preparation on small corpora made in the test."""

from __future__ import annotations

import json

import numpy as np
import pytest

from genforge.data.corpus import ReadStats, read_documents, split
from genforge.data.shards import load_manifest, prepare, tokens
from genforge.errors import GenforgeError
from genforge.tokenizer import Tokenizer, bpe

PROSE = [
    f"Section {i}. The quick brown fox jumps over the lazy dog while the {w} sleeps.\n"
    "Functions return values; classes bundle data with behaviour.\n"
    for i, w in enumerate(["cat", "owl", "hen", "pig", "cow", "bat", "elk", "yak"] * 8)
]


@pytest.fixture()
def corpus(tmp_path):
    root = tmp_path / "corpus"
    (root / "sub").mkdir(parents=True)
    for i, text in enumerate(PROSE):
        (root / ("sub" if i % 2 else ".") / f"doc{i}.md").write_text(text)
    (root / "copy.txt").write_text(PROSE[0])  # an exact duplicate
    (root / "image.txt").write_bytes(b"\x89PNG\x00\x00binary")
    (root / "chat.jsonl").write_text(
        json.dumps({"text": "A line of JSONL text."})
        + "\n\n"
        + json.dumps(
            {
                "messages": [
                    {"role": "user", "content": "Hi"},
                    {"role": "assistant", "content": "Hello!"},
                ]
            }
        )
        + "\n"
    )
    (root / ".hidden").mkdir()
    (root / ".hidden" / "secret.txt").write_text("never read")
    return root


def test_read_documents_dedupes_skips_binary_and_reads_jsonl(corpus):
    stats = ReadStats()
    docs = list(read_documents([str(corpus)], stats))
    texts = [d.text for d in docs]
    assert stats.duplicates == 1 and len(stats.skipped_binary) == 1
    assert "A line of JSONL text." in texts and "user: Hi\nassistant: Hello!" in texts
    assert len(docs) == len(PROSE) + 2 and not any("never read" in t for t in texts)
    train, val = split(docs, 0.2)
    assert train and val and len(train) + len(val) == len(docs)
    again = split(list(reversed(docs)), 0.2)[1]
    assert {d.digest for d in again} == {d.digest for d in val}  # stable whatever the order


def test_a_fifo_in_a_corpus_folder_is_left_out(corpus, fifo):
    with fifo(corpus / "sub" / "feed.md"):
        docs = list(read_documents([str(corpus)]))
    assert len(docs) == len(PROSE) + 2 and not any("pipe" in d.text for d in docs)


def test_bad_corpora_are_clear_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(GenforgeError, match="neither a file, a folder"):
        list(read_documents([str(tmp_path / "missing")]))
    (tmp_path / "bad.jsonl").write_text('{"text": "ok"}\n{"other": 1}\n')
    with pytest.raises(GenforgeError, match=r"bad.jsonl:2 has neither"):
        list(read_documents([str(tmp_path / "bad.jsonl")]))
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "a.txt").write_bytes(b"\xff\xfe\x00\x01")
    with pytest.raises(GenforgeError, match="found no text .*binary"):
        prepare([str(tmp_path / "bin")], tmp_path / "out", _tokenizer(tmp_path))


def _tokenizer(tmp_path, vocab=300):
    tok = bpe.train_bpe(PROSE, vocab)
    return bpe.save(tok, tmp_path / "tok")


def test_trained_tokenizer_round_trips_any_text(tmp_path):
    folder = _tokenizer(tmp_path, 320)
    tok = Tokenizer.from_dir(folder)
    assert tok.vocab_size == 320
    for text in [
        "The quick brown fox.",
        "  indented\n\tcode = {'a': 1}\r\n",
        "naïve café ✓ 😀 日本語",
        "<|endoftext|> in the middle",
        "",
    ]:
        assert tok.decode(tok.encode(text), skip_special=False) == text
    assert bpe.bytes_per_token(Tokenizer.from_dir(folder).hf, PROSE) > 2  # it learned merges
    prompt = tok.apply_chat_template([{"role": "user", "content": "hi"}])
    assert prompt == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    assert tok.hf.token_to_id("<|im_end|>") in tok.eos_ids


def test_vocabulary_larger_than_the_data_supports(tmp_path):
    with pytest.raises(GenforgeError, match="supports only .* lower --vocab-size"):
        bpe.train_bpe(["tiny text"], 5000)
    with pytest.raises(GenforgeError, match="at least 259"):
        bpe.train_bpe(PROSE, 100)


def test_prepare_writes_shards_that_decode_to_the_documents(corpus, tmp_path):
    folder = _tokenizer(tmp_path)
    manifest = prepare([str(corpus)], tmp_path / "data", folder, val_fraction=0.2, progress=False)
    assert manifest == load_manifest(tmp_path / "data")
    assert manifest["read"]["duplicates"] == 1 and manifest["read"]["skipped_binary"] == 1
    tok = Tokenizer.from_dir(tmp_path / "data" / "tokenizer")
    eos = manifest["eos_id"]
    docs = []
    for name in ("train", "val"):
        ids = tokens(tmp_path / "data", name)
        assert ids.dtype == np.uint16 and len(ids) == manifest["tokens"][name] and ids[-1] == eos
        cuts = np.flatnonzero(ids == eos)
        starts = np.concatenate([[0], cuts[:-1] + 1])
        docs += [tok.decode(ids[s:e].tolist()) for s, e in zip(starts, cuts, strict=True)]
    expected = [d.text for d in read_documents([str(corpus)])]
    assert sorted(docs) == sorted(expected)
    assert all(len(f["sha256"]) == 64 for f in manifest["files"])
    # Preparing again into the same folder replaces it; another folder is refused.
    prepare([str(corpus)], tmp_path / "data", folder, val_fraction=0.2, progress=False)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "x").write_text("x")
    with pytest.raises(GenforgeError, match="not a prepared data folder"):
        prepare([str(corpus)], tmp_path / "other", folder, progress=False)


def test_named_corpora():
    import itertools

    stdlib = list(itertools.islice(read_documents(["stdlib"]), 50))
    assert len(stdlib) == 50 and any("def " in d.text for d in stdlib)
    assert not any("/test/" in d.source for d in stdlib)


def test_named_corpus_kjv():
    import shutil

    if not shutil.which("bible"):
        pytest.skip("the kjv corpus needs the bible command: apt-get install bible-kjv")
    kjv = list(read_documents(["kjv"]))
    assert len(kjv) == 66 and kjv[0].text.startswith("In the beginning God created")


def test_named_corpus_pydocs():
    import itertools
    from pathlib import Path

    if not Path("/usr/share/doc/python3.11/html/_sources").is_dir():
        pytest.skip(
            "the pydocs corpus needs Python's documentation: apt-get install python3.11-doc"
        )
    docs = list(itertools.islice(read_documents(["pydocs"]), 5))
    assert len(docs) == 5 and all(d.source.endswith(".txt") for d in docs)


def test_a_corpus_below_a_hidden_folder_is_read(tmp_path):
    root = tmp_path / ".cache" / "corpus"
    root.mkdir(parents=True)
    (root / "a.txt").write_text("some text")
    assert [d.text for d in read_documents([str(root)])] == ["some text"]
