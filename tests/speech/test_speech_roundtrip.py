"""Speech end to end on the real models: Piper speaks known sentences, Whisper base writes them
down, and the words, their timestamps and every output format are checked."""

from __future__ import annotations

import io
import itertools
import json
import re
import subprocess
import sys
import threading
import wave

import pytest
from conftest import SENTENCES, require_speech, wav_bytes, words

from genforge.speech import formats, synthesize


def test_spoken_sentences_come_back_as_the_same_words(spoken, transcript):
    assert words(transcript.text) == words(" ".join(SENTENCES)), transcript.text
    assert transcript.language == "en"  # detected: no language was given
    with wave.open(io.BytesIO(spoken[0])) as w:
        assert transcript.duration == pytest.approx(w.getnframes() / w.getframerate(), abs=0.01)
    assert "piper" not in sys.modules  # Piper ran in its own process


def test_word_timestamps_are_in_order_inside_the_audio_and_where_each_sentence_starts(
    spoken, transcript
):
    found = transcript.words
    assert words("".join(w.word for w in found)) == words(transcript.text)
    for w in found:
        assert 0 <= w.start <= w.end <= transcript.duration + 0.01, w
        assert 0 < w.probability <= 1
    assert all(a.start <= b.start and a.end <= b.end for a, b in itertools.pairwise(found))
    # the first word of each sentence starts where Piper's audio for that sentence did
    firsts, index = [], 0
    for sentence in SENTENCES:
        firsts.append(found[index])
        index += len(words(sentence))
    for word, start in zip(firsts, spoken[1], strict=True):
        assert word.start == pytest.approx(start, abs=0.5), (word, start)


def test_a_path_a_file_object_and_bytes_give_the_same_text(
    recognizer, spoken, transcript, tmp_path
):
    path = tmp_path / "spoken.wav"
    path.write_bytes(spoken[0])
    assert recognizer.transcribe(path, word_timestamps=False).text == transcript.text
    with open(path, "rb") as f:
        assert recognizer.transcribe(f, language="en").text == transcript.text


def encode(wav: bytes, container: str, codec: str) -> bytes:
    """`wav` re-encoded by FFmpeg (PyAV) into another container and codec."""
    import av

    out = io.BytesIO()
    with av.open(io.BytesIO(wav)) as src, av.open(out, "w", format=container) as dst:
        stream = dst.add_stream(codec, rate=48_000 if codec == "libopus" else 22_050)
        for frame in src.decode(audio=0):
            frame.pts = None
            for packet in stream.encode(frame):
                dst.mux(packet)
        for packet in stream.encode(None):
            dst.mux(packet)
    return out.getvalue()


@pytest.mark.parametrize(
    "container,codec", [("mp3", "libmp3lame"), ("ogg", "libopus"), ("ipod", "aac")]
)  # ipod: an .m4a file
def test_compressed_formats_give_the_same_words(recognizer, spoken, container, codec):
    data = encode(spoken[0], container, codec)
    assert len(data) < len(spoken[0]) / 2  # really compressed
    text = recognizer.transcribe(data, word_timestamps=False).text
    # The same words in the same places, one of them misheard at most: lossy coding moves Whisper
    # base's guess on a word now and then (through AAC it once heard "But weather" for "The
    # weather"); the uncompressed WAV above must come back word for word.
    heard, said = words(text), words(" ".join(SENTENCES))
    assert len(heard) == len(said), text
    assert sum(a != b for a, b in zip(heard, said, strict=True)) <= 1, text


def cues(text: str, mark: str) -> list[tuple[float, float, str]]:
    """(start, end, text) of each cue of an SRT (mark ",") or WebVTT (mark ".") file's cues."""
    stamp = r"(\d\d):(\d\d):(\d\d)" + re.escape(mark) + r"(\d\d\d)"
    found = []
    for block in text.strip().split("\n\n"):
        lines = block.splitlines()
        at = next(i for i, line in enumerate(lines) if "-->" in line)
        timing = re.fullmatch(f"{stamp} --> {stamp}", lines[at])
        assert timing, lines[at]
        h, m, s, ms, h2, m2, s2, ms2 = (int(x) for x in timing.groups())
        start, end = h * 3600 + m * 60 + s + ms / 1000, h2 * 3600 + m2 * 60 + s2 + ms2 / 1000
        found.append((start, end, " ".join(lines[at + 1 :])))
    return found


def test_srt_vtt_and_json_parse_and_agree(transcript):
    srt = formats.to_srt(transcript)
    numbers = [block.splitlines()[0] for block in srt.strip().split("\n\n")]
    assert numbers == [str(i) for i in range(1, len(transcript.segments) + 1)]
    vtt = formats.to_vtt(transcript)
    assert vtt.startswith("WEBVTT\n\n")
    for found in (cues(srt, ","), cues(vtt.removeprefix("WEBVTT\n\n"), ".")):
        assert len(found) == len(transcript.segments)
        assert all(0 <= start <= end <= transcript.duration + 0.01 for start, end, _ in found)
        assert [start for start, _, _ in found] == sorted(start for start, _, _ in found)
        assert words(" ".join(text for _, _, text in found)) == words(transcript.text)

    data = json.loads(formats.render(transcript, "json"))
    assert data["text"] == transcript.text and data["language"] == "en"
    assert data["duration"] == pytest.approx(transcript.duration, abs=0.001)
    assert [s["id"] for s in data["segments"]] == list(range(len(transcript.segments)))
    assert [w["word"] for w in data["words"]] == [w.word for w in transcript.words]
    assert {"start", "end", "probability"} <= set(data["words"][0])
    assert formats.to_json(transcript) == {"text": transcript.text}


def test_audio_starts_before_the_whole_text_is_given():
    """The text's last sentence is handed over only once the first sentence's audio is back: a
    speaker that waited for the whole text would never get it."""
    require_speech()
    first_audio = threading.Event()

    def text():
        yield "The first sentence is short. "
        yield "The second one follows it. "
        if not first_audio.wait(120):
            raise AssertionError("no audio came back before the end of the text")
        yield "The last sentence comes after the first audio."

    chunks = synthesize.speak_stream(text())
    first = next(chunks)
    first_audio.set()
    rest = list(chunks)
    assert len(first) > 0 and len(rest) == 2  # one chunk per sentence
    assert all(len(c) % 2 == 0 and len(c) > 0 for c in rest)  # 16-bit samples


def test_a_stream_given_up_half_way_leaves_the_next_one_clean(recognizer):
    require_speech()
    with synthesize.Synthesizer() as synth:
        chunks = synth.stream("One, two, three. Four, five, six. Seven, eight, nine.")
        next(chunks)
        chunks.close()  # the rest of its audio must not reach the next stream
        again = list(synth.stream("Please close the door quietly."))
        normal = b"".join(synth.stream("Please open the window before you leave the room."))
        fast = b"".join(synth.stream("Please open the window before you leave the room.", speed=2))
        rate = synth.sample_rate
    assert len(again) == 1
    assert words(recognizer.transcribe(wav_bytes(again, rate)).text) == words(
        "Please close the door quietly."
    )
    assert len(fast) < 0.8 * len(normal)  # speed 2: ~0.65 as long (pauses do not shrink)


def test_speak_writes_a_wav_file_and_the_cli_pipes_speech_into_transcribe(tmp_path):
    require_speech()
    import genforge

    path = genforge.speak("Good morning.", tmp_path / "morning.wav")
    with wave.open(str(path)) as w:
        assert (w.getnchannels(), w.getsampwidth(), w.getframerate()) == (1, 2, 22050)
        assert 0.3 < w.getnframes() / 22050 < 3
    assert not list(tmp_path.glob(".*"))  # no temporary file left

    # `speak -o -` streams a WAV whose header cannot know its length; transcribe reads it
    cli = [sys.executable, "-m", "genforge"]
    speak = subprocess.Popen(
        [*cli, "speak", "-", "-o", "-"], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    speak.stdin.write("\n".join(SENTENCES[:2]).encode() + b"\n")
    speak.stdin.close()
    listen = subprocess.run(
        [*cli, "transcribe", "-", "--format", "json"],
        stdin=speak.stdout,
        capture_output=True,
        text=True,
        timeout=300,
    )
    speak.stdout.close()
    assert speak.wait(timeout=60) == 0
    assert listen.returncode == 0, listen.stderr
    data = json.loads(listen.stdout)
    assert words(data["text"]) == words(" ".join(SENTENCES[:2])), data["text"]
    assert [w["word"] for w in data["words"]] and data["duration"] > 2
