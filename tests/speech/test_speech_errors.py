"""Bad audio, bad text and a missing extra: one sentence from the CLI, never a traceback; and every
new verb's --help, without the heavy imports."""

from __future__ import annotations

import io
import math
import re
import struct
import subprocess
import sys
import wave

import pytest
from conftest import require_speech
from text_pictures import dot_png

from genforge import cli
from genforge.errors import GenforgeError
from genforge.speech import recognize, synthesize


def genforge(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "genforge", *args],
        input=stdin,
        capture_output=True,
        timeout=300,
    )


def assert_one_line_error(result: subprocess.CompletedProcess, pattern: str) -> None:
    err = result.stderr.decode().strip()
    assert result.returncode == 1, err
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    assert re.search(pattern, err), err


def tone(seconds: float, rate: int = 16_000) -> bytes:
    """A WAV file of a 440 Hz tone: real audio, made here."""
    samples = (
        int(8000 * math.sin(2 * math.pi * 440 * i / rate)) for i in range(int(seconds * rate))
    )
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(b"".join(struct.pack("<h", s) for s in samples))
    return buffer.getvalue()


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory):
    require_speech()
    folder = tmp_path_factory.mktemp("bad-audio")
    files = {
        "empty.wav": b"",
        "notes.wav": b"This is a text file that was renamed.\n" * 20,
        "picture.wav": dot_png(),
        "tone.wav": tone(1.0),
    }
    for name, data in files.items():
        (folder / name).write_bytes(data)
    return folder


@pytest.mark.parametrize(
    "name,flags,pattern",
    [
        ("empty.wav", [], r"empty.wav is empty \(0 bytes\); give a recording"),
        ("notes.wav", [], r"notes.wav is not audio that FFmpeg can read; give a WAV"),
        ("picture.wav", [], r"picture.wav has no audio stream .*; give a WAV"),
        ("tone.wav", ["--max-hours", "0.0001"], r"tone.wav is 1 s long, over the limit of 0.36 s"),
        ("missing.wav", [], r"missing.wav does not exist"),
    ],
)
def test_bad_audio_is_one_line_from_the_cli(bad_files, name, flags, pattern):
    assert_one_line_error(genforge("transcribe", str(bad_files / name), *flags), pattern)


def test_bad_audio_from_bytes_and_file_objects(bad_files):
    with pytest.raises(recognize.BadAudio, match="the audio is empty"):
        recognize.load_audio(b"")
    with pytest.raises(recognize.BadAudio, match="is not audio that FFmpeg can read"):
        recognize.load_audio(io.BytesIO((bad_files / "notes.wav").read_bytes()))
    with open(bad_files / "picture.wav", "rb") as f, pytest.raises(GenforgeError, match="no audio"):
        recognize.load_audio(f)
    with pytest.raises(recognize.BadAudio, match="over the limit of 0.5 s"):
        recognize.load_audio(tone(1.0), max_seconds=0.5)
    samples = recognize.load_audio(tone(1.0, rate=44_100))  # resampled to what Whisper hears
    assert len(samples) == pytest.approx(recognize.SAMPLE_RATE, abs=20)


def test_an_unknown_language_and_bad_samples_are_refused(recognizer):
    import numpy as np

    with pytest.raises(GenforgeError, match=r"unknown language 'klingon'.*such as en, de"):
        recognizer.transcribe(tone(0.5), language="klingon")
    with pytest.raises(recognize.BadAudio, match="holds no audio samples"):
        recognizer.transcribe(np.zeros(0, dtype=np.float32))
    with pytest.raises(recognize.BadAudio, match="over the limit of 1 s"):
        recognizer.transcribe(np.zeros(2 * recognize.SAMPLE_RATE), max_seconds=1)


def test_bad_speech_requests_are_one_line_from_the_cli(tmp_path):
    require_speech()
    voice = tmp_path / "voice.onnx"
    voice.write_bytes(b"not a model")
    cases = [
        (["speak", "", "-o", str(tmp_path / "a.wav")], r"there is no text to speak"),
        (["speak", "hi", "-o", str(tmp_path / "a.mp3")], r"name the file .wav, not 'a.mp3'"),
        (["speak", "hi", "--speed", "9"], r"speed must be between 0.25 and 4.0"),
        (["speak", "hi", "--voice", "nobody"], r"unknown voice 'nobody'"),
        (["speak", "hi", "--voice", str(voice)], r"has no voice.onnx.json beside it"),
        (["speak", "hi", "-o", str(tmp_path / "no" / "a.wav")], r"the folder .* does not exist"),
    ]
    for argv, pattern in cases:
        assert_one_line_error(genforge(*argv), pattern)
    assert_one_line_error(
        genforge("speak", "-", "-o", str(tmp_path / "b.wav"), stdin=b""), "no text"
    )
    (tmp_path / "voice.onnx.json").write_text('{"audio": {"sample_rate": 16000}}')
    assert_one_line_error(
        genforge("speak", "hi", "--voice", str(voice), "-o", str(tmp_path / "c.wav")),
        r"the Piper voice .*voice.onnx does not load",
    )
    assert not list(tmp_path.glob("*.wav")) and not list(
        tmp_path.glob(".*")
    )  # nothing half-written


def test_a_missing_speech_extra_says_how_to_install_it(monkeypatch, tmp_path, capsys):
    """As the CLI says it where the extra is not installed (here it is, so it is hidden)."""
    monkeypatch.setattr(synthesize, "available", lambda: False)
    monkeypatch.setattr(recognize, "available", lambda: False)
    assert cli.main(["speak", "Hello.", "-o", str(tmp_path / "hello.wav")]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert err == (
        "genforge: error: genforge speak needs the speech extra: pip install 'genforge[speech]' "
        "(or make speech-setup); it brings piper-tts, which is GPL-3.0 and so is installed "
        "separately and run as a separate process."
    )
    assert cli.main(["transcribe", str(tmp_path / "any.wav")]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "pip install 'genforge[speech]'" in err, err
    assert not (tmp_path / "hello.wav").exists()


@pytest.mark.parametrize("verb", ["transcribe", "speak"])
def test_help_of_each_speech_verb_imports_nothing_heavy(verb):
    r = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "genforge", verb, "--help"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0 and r.stdout.startswith(f"usage: genforge {verb}")
    assert "speech extra" in " ".join(r.stdout.split())
    imported = {line.split("|")[-1].strip() for line in r.stderr.splitlines() if "|" in line}
    assert "genforge.cli.speech" in imported
    assert not imported & {"torch", "numpy", "faster_whisper", "av", "piper", "onnxruntime"}
