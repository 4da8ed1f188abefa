"""A `Transcript` written out: plain text, OpenAI's `json` and `verbose_json` shapes, SRT and WebVTT.

`verbose_json` is what OpenAI's /v1/audio/transcriptions returns for that response format, with
the word timestamps both at the top (as OpenAI's `timestamp_granularities=["word"]` gives them) and
in each segment (as faster-whisper and whisper's own JSON give them). `language` is the code Whisper
uses ("en"). The CLI's `--format json` is this shape.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from genforge.speech.recognize import Segment, Transcript, Word

FORMATS = ("text", "json", "srt", "vtt")  # what `genforge transcribe --format` writes


def to_text(t: Transcript) -> str:
    return t.text + "\n" if t.text else ""


def to_json(t: Transcript) -> dict:
    """OpenAI's `json` response: the text only."""
    return {"text": t.text}


def to_verbose_json(t: Transcript) -> dict:
    """OpenAI's `verbose_json` response, words included."""
    return {
        "task": "transcribe",
        "language": t.language,
        "duration": round(t.duration, 3),
        "text": t.text,
        "segments": [_segment(s) for s in t.segments],
        "words": [_word(w) for w in t.words],
    }


def to_srt(t: Transcript) -> str:
    cues = [
        f"{i}\n{_stamp(s.start, ',')} --> {_stamp(s.end, ',')}\n{_cue_text(s)}\n"
        for i, s in enumerate(_spoken(t), start=1)
    ]
    return "\n".join(cues)


def to_vtt(t: Transcript) -> str:
    cues = [
        f"{_stamp(s.start, '.')} --> {_stamp(s.end, '.')}\n{_cue_text(s)}\n" for s in _spoken(t)
    ]
    return "\n".join(["WEBVTT\n", *cues])


def render(t: Transcript, fmt: str) -> str:
    """`t` in one of FORMATS, as the text of a file."""
    if fmt == "text":
        return to_text(t)
    if fmt == "json":
        return json.dumps(to_verbose_json(t), indent=2, ensure_ascii=False) + "\n"
    if fmt == "srt":
        return to_srt(t)
    if fmt == "vtt":
        return to_vtt(t)
    raise ValueError(f"unknown format {fmt!r}; one of {FORMATS}")


def save(text: str, path: str | os.PathLike) -> Path:
    """Write `text` to `path` whole or not at all (a temporary file, then a rename)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def _segment(s: Segment) -> dict:
    return {
        "id": s.id,
        "seek": s.seek,
        "start": s.start,
        "end": s.end,
        "text": s.text,
        "tokens": list(s.tokens),
        "temperature": s.temperature,
        "avg_logprob": round(s.avg_logprob, 4),
        "compression_ratio": round(s.compression_ratio, 4),
        "no_speech_prob": round(s.no_speech_prob, 4),
        "words": [_word(w) for w in s.words],
    }


def _word(w: Word) -> dict:
    return {"word": w.word, "start": w.start, "end": w.end, "probability": round(w.probability, 4)}


def _spoken(t: Transcript) -> list[Segment]:
    return [s for s in t.segments if s.text.strip()]


def _cue_text(s: Segment) -> str:
    # a blank line ends a cue, and "-->" is the timing line's: neither may appear in the text
    lines = [line.strip() for line in s.text.strip().splitlines() if line.strip()]
    return "\n".join(lines).replace("-->", "->")


def _stamp(seconds: float, mark: str) -> str:
    """HH:MM:SS,mmm (SRT) or HH:MM:SS.mmm (WebVTT)."""
    ms = max(0, round(seconds * 1000))
    hours, ms = divmod(ms, 3_600_000)
    minutes, ms = divmod(ms, 60_000)
    secs, ms = divmod(ms, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}{mark}{ms:03d}"
