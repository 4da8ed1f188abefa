"""The parts of genforge.speech that need no model: sentences, WAV files, the transcript formats."""

from __future__ import annotations

import io
import json
import wave

import pytest

from genforge.errors import GenforgeError
from genforge.speech import formats, synthesize
from genforge.speech.recognize import Segment, Transcript, Word, _clock


def test_sentences_split_at_their_ends_but_not_after_abbreviations():
    text = 'Dr. Smith met J. Doe at 3.14 today! Did he? "Yes." She left.\n\nA new paragraph'
    assert list(synthesize.sentences(text)) == [
        "Dr. Smith met J. Doe at 3.14 today!",
        "Did he?",
        '"Yes."',
        "She left.",
        "A new paragraph",
    ]


def test_sentences_come_as_soon_as_their_end_is_seen():
    given = []

    def pieces():
        for piece in ["The first sentence.", " The sec", "ond one", "! And the rest"]:
            given.append(piece)
            yield piece

    out = synthesize.sentences(pieces())
    assert next(out) == "The first sentence."
    assert len(given) == 2  # a period ends it only with a space after it ("3.14" goes on)
    assert list(out) == ["The second one!", "And the rest"]


def test_a_long_first_sentence_is_spoken_from_its_first_clause():
    long = "This is the first sentence of the answer, and it says something useful."
    assert list(synthesize.quick_start([long, "Then more."])) == [
        "This is the first sentence of the answer,",
        "and it says something useful.",
        "Then more.",
    ]
    kept = ["The weather is nice today, again.", "A second one, which is long enough to cut here."]
    assert list(synthesize.quick_start(kept)) == kept  # a short first one, and only the first
    no_clause = "A long sentence without any commas at all in it goes on and on."
    assert list(synthesize.quick_start([no_clause])) == [no_clause]
    assert list(synthesize.quick_start([])) == []


def test_a_long_run_without_a_sentence_end_is_cut_at_a_comma_or_space():
    text = ", ".join(["one clause of a very long sentence"] * 40)
    parts = list(synthesize.sentences(text))
    assert len(parts) > 1 and all(len(p) <= synthesize.MAX_SENTENCE for p in parts)
    assert " ".join(parts).replace(", ", " ").split() == text.replace(", ", " ").split()
    assert list(synthesize.sentences("x" * 1000)) == ["x" * 400, "x" * 400, "x" * 200]
    assert list(synthesize.sentences("  \n ")) == []


def test_wav_to_a_file_has_its_sizes_and_to_a_pipe_says_unknown(tmp_path):
    chunks = [b"\x01\x00" * 100, b"\x02\x00" * 50]
    path = synthesize.save_wav(tmp_path / "a.wav", 16000, iter(chunks))
    with wave.open(str(path)) as w:
        assert (w.getnframes(), w.getframerate(), w.getsampwidth()) == (150, 16000, 2)
        assert w.readframes(150) == b"".join(chunks)
    assert [p.name for p in tmp_path.iterdir()] == ["a.wav"]

    class Pipe(io.BytesIO):
        def seekable(self):
            return False

    pipe = Pipe()
    assert synthesize.write_wav(pipe, 16000, chunks) == 300
    data = pipe.getvalue()
    assert data[4:8] == data[40:44] == b"\xff\xff\xff\xff" and data[44:] == b"".join(chunks)


def test_a_failed_wav_write_leaves_nothing(tmp_path):
    def chunks():
        yield b"\x00\x00" * 10
        raise GenforgeError("the worker stopped")

    with pytest.raises(GenforgeError):
        synthesize.save_wav(tmp_path / "a.wav", 16000, chunks())
    assert list(tmp_path.iterdir()) == []


def transcript() -> Transcript:
    def segment(i, start, end, text, words):
        return Segment(i, start, end, text, tuple(words), 0, (1, 2), 0.0, -0.2, 1.1, 0.01)

    return Transcript(
        text="Hello there. Bye --> now",
        language="en",
        duration=3725.5,
        segments=(
            segment(0, 0.0, 1.234, " Hello there.", [Word(0.0, 0.5, " Hello", 0.9)]),
            segment(1, 1.5, 1.6, " ", []),
            segment(2, 3723.0, 3725.25, " Bye --> now", [Word(3723.0, 3724.0, " Bye", 0.8)]),
        ),
    )


def test_srt_and_vtt_stamps_numbering_and_cue_text():
    assert formats.to_srt(transcript()) == (
        "1\n00:00:00,000 --> 00:00:01,234\nHello there.\n\n"
        "2\n01:02:03,000 --> 01:02:05,250\nBye -> now\n"
    )
    assert formats.to_vtt(transcript()) == (
        "WEBVTT\n\n00:00:00.000 --> 00:00:01.234\nHello there.\n\n"
        "01:02:03.000 --> 01:02:05.250\nBye -> now\n"
    )


def test_json_is_openais_verbose_shape_with_words(tmp_path):
    data = json.loads(formats.render(transcript(), "json"))
    assert set(data) == {"task", "language", "duration", "text", "segments", "words"}
    assert data["words"] == [
        {"word": " Hello", "start": 0.0, "end": 0.5, "probability": 0.9},
        {"word": " Bye", "start": 3723.0, "end": 3724.0, "probability": 0.8},
    ]
    assert set(data["segments"][0]) >= {
        "id", "seek", "start", "end", "text", "tokens", "temperature", "avg_logprob",
        "compression_ratio", "no_speech_prob",
    }  # fmt: skip
    assert formats.render(transcript(), "text") == "Hello there. Bye --> now\n"
    path = formats.save("x\n", tmp_path / "out.txt")
    assert path.read_text() == "x\n" and [p.name for p in tmp_path.iterdir()] == ["out.txt"]


def test_lengths_read_as_a_person_says_them():
    assert [_clock(s) for s in (0.36, 59.4, 200, 7500)] == [
        "0.36 s",
        "59.4 s",
        "3 min 20 s",
        "2 h 05 min",
    ]
