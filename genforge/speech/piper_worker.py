"""The Piper voice in a process of its own: `python -m genforge.speech.piper_worker --model VOICE.onnx`.

piper-tts is GPL-3.0-or-later; genforge is Apache-2.0. This is the one module of genforge that
imports piper, and only in `main`, in the process that runs it: genforge's own process talks to it
over pipes (synthesize.py) and never loads piper's code. Importing this module (synthesize.py does,
for the frame format below) imports only the standard library.

The protocol: one JSON object per line on stdin, `{"text": ..., "length_scale": ...}`; on stdout,
frames of a kind byte and a little-endian uint32 length, then that many bytes:
- READY once, after the voice is loaded: JSON `{"sample_rate": ...}`;
- AUDIO for each line: 16-bit little-endian mono PCM of the whole line (every sentence Piper found);
- ERROR instead, with one sentence in UTF-8 (a voice that does not load, a line that fails);
- DONE for a line without text (`{}`): the end of one stream, so that the next starts clean.
The worker ends when stdin closes.
"""

from __future__ import annotations

import argparse
import json
import os
import struct
import sys
from typing import BinaryIO

HEADER = struct.Struct("<cI")
READY, AUDIO, ERROR, DONE = b"R", b"A", b"E", b"D"


def write_frame(out: BinaryIO, kind: bytes, payload: bytes) -> None:
    out.write(HEADER.pack(kind, len(payload)))
    out.write(payload)
    out.flush()


def read_frame(src: BinaryIO) -> tuple[bytes, bytes] | None:
    """The next (kind, payload), or None when the worker's output has ended."""
    head = _read_exactly(src, HEADER.size)
    if head is None:
        return None
    kind, size = HEADER.unpack(head)
    payload = _read_exactly(src, size) if size else b""
    return None if payload is None else (kind, payload)


def _read_exactly(src: BinaryIO, n: int) -> bytes | None:
    data = bytearray()
    while len(data) < n:
        chunk = src.read(n - len(data))
        if not chunk:
            return None
        data += chunk
    return bytes(data)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True, help="the voice's .onnx file")
    p.add_argument("--config", required=True, help="its .onnx.json file")
    p.add_argument("--threads", type=int, default=0, help="onnxruntime threads (0: its default)")
    args = p.parse_args(argv)
    # The frames get stdout's pipe to themselves; anything a library prints goes to stderr.
    out = os.fdopen(os.dup(sys.stdout.fileno()), "wb")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    try:
        voice = _load(args.model, args.config, args.threads)
    except Exception as e:  # noqa: BLE001 - reported to the parent, which words it for the user
        said = f"the Piper voice {args.model} does not load ({_one_line(e)})"
        write_frame(out, ERROR, said.encode())
        return 1
    write_frame(out, READY, json.dumps({"sample_rate": voice.config.sample_rate}).encode())
    for line in sys.stdin.buffer:
        request = json.loads(line)
        if "text" not in request:
            write_frame(out, DONE, b"")
            continue
        try:
            pcm = _synthesize(voice, request["text"], request.get("length_scale"))
        except Exception as e:  # noqa: BLE001
            write_frame(
                out, ERROR, f"Piper could not speak {request['text'][:40]!r} ({e})".encode()
            )
            continue
        write_frame(out, AUDIO, pcm)
    return 0


def _one_line(e: Exception) -> str:
    """An exception's message on one line, cut short: onnxruntime's run over several."""
    said = " ".join(str(e).split()) or type(e).__name__
    return said if len(said) <= 200 else said[:199] + "…"


def _load(model: str, config: str, threads: int):
    import onnxruntime
    from piper import PiperVoice
    from piper.config import PiperConfig

    with open(config, encoding="utf-8") as f:
        settings = json.load(f)
    options = onnxruntime.SessionOptions()
    if threads > 0:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    session = onnxruntime.InferenceSession(
        model, sess_options=options, providers=["CPUExecutionProvider"]
    )
    return PiperVoice(session=session, config=PiperConfig.from_dict(settings))


def _synthesize(voice, text: str, length_scale: float | None) -> bytes:
    from piper.config import SynthesisConfig

    settings = SynthesisConfig(length_scale=length_scale)
    return b"".join(chunk.audio_int16_bytes for chunk in voice.synthesize(text, settings))


if __name__ == "__main__":
    raise SystemExit(main())
