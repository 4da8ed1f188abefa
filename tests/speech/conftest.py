"""The speech tests' shared pieces: one Whisper model and one spoken recording per test process."""

from __future__ import annotations

import io
import re

import pytest
from components import require_speech

from genforge.speech import recognize, synthesize

# Plain words Whisper base hears exactly in Piper's voice: no numbers, which it may write as
# digits ("seven" came back as "7" in 2 of 15 tries).
SENTENCES = (
    "The weather is nice today.",
    "Please open the window before you leave the room.",
    "My sister bought fresh apples at the market.",
)


def words(text: str) -> list[str]:
    """The words of `text`, without case or punctuation."""
    return re.findall(r"[a-z']+", text.lower())


def wav_bytes(chunks: list[bytes], sample_rate: int) -> bytes:
    buffer = io.BytesIO()
    synthesize.write_wav(buffer, sample_rate, chunks)
    return buffer.getvalue()


@pytest.fixture(scope="session")
def recognizer() -> recognize.Recognizer:
    require_speech()
    return recognize.recognizer()  # whisper-base, pulled on first use


@pytest.fixture(scope="session")
def spoken() -> tuple[bytes, list[float]]:
    """SENTENCES spoken as one WAV file, and the second at which each sentence starts."""
    require_speech()
    with synthesize.Synthesizer() as synth:
        chunks = list(synth.stream(" ".join(SENTENCES)))
        rate = synth.sample_rate
    starts = [sum(len(c) for c in chunks[:i]) / 2 / rate for i in range(len(chunks))]
    return wav_bytes(chunks, rate), starts


@pytest.fixture(scope="session")
def transcript(recognizer, spoken) -> recognize.Transcript:
    return recognizer.transcribe(spoken[0])
