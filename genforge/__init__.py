"""genforge: local-first generative AI — load, train, adapt and serve open-weight models.

import genforge
m = genforge.load("smollm2-135m-instruct")
print(m.chat("Name the capital of France."))
genforge.speak("Hello there.", "hello.wav")  # the speech extra
print(genforge.transcribe("hello.wav").text)

Importing genforge changes nothing in the process (no environment variables); see docs/engine.md
for the OpenMP setting a program that generates should make before it imports torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

__version__ = "0.1.0"


if TYPE_CHECKING:
    import os
    from collections.abc import Iterable
    from pathlib import Path

    from genforge.generate.llm import LLM
    from genforge.speech.recognize import AudioInput, Transcript


def load(model: str | None = None, **kwargs) -> LLM:
    """Load a named model (pulled on first use), a .gguf file or a Hugging Face model folder."""
    from genforge.generate.llm import load as _load  # torch is imported only when needed

    return _load(model, **kwargs) if model else _load(**kwargs)


def transcribe(audio: AudioInput, **kwargs) -> Transcript:
    """The words spoken in `audio` (a path, bytes or a binary file) with their timestamps, by
    Whisper (whisper-base unless `model=`); keyword arguments as `genforge.speech.recognize.transcribe`.
    Needs the speech extra."""
    from genforge.speech.recognize import transcribe as _transcribe

    return _transcribe(audio, **kwargs)


def speak(
    text: str | Iterable[str], out: str | os.PathLike | None = None, **kwargs
) -> bytes | Path:
    """`text` spoken by a Piper voice as a WAV file: written to `out` (its path returned), or its
    bytes; `voice=`, `speed=`. Needs the speech extra (piper-tts, GPL-3.0, runs as its own process)."""
    from genforge.speech.synthesize import speak as _speak

    return _speak(text, out, **kwargs)


__all__ = ["load", "speak", "transcribe", "__version__"]
