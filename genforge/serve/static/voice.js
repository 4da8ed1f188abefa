// Voice in the chat. The microphone button records a message (MediaRecorder, Opus in WebM where the
// browser has it) and sends it to POST /v1/audio/transcriptions; the words that come back are sent
// as the user's turn. "Read aloud" on an answer posts its plain text to POST /v1/audio/speech for
// raw PCM and plays each chunk with the Web Audio API as it arrives, so the voice starts after the
// first sentence. Each button shows only when /v1/models lists a model of its kind.

const PCM_RATE = 24000; // OpenAI's `pcm`: 16-bit little-endian mono at 24 kHz
const VOICE = "joe";
const LEAD_S = 0.05; // the first chunk, or one after a gap, starts this far ahead of the clock
const MAX_RECORDING_S = 300; // then it stops and is sent: about 1.2 MB of Opus at 32 kbit/s
const RECORDING_TYPES = ["audio/webm;codecs=opus", "audio/ogg;codecs=opus", "audio/mp4"];

export function initVoice({ api, ApiError, setStatus, onTranscript }) {
  const mic = document.querySelector("#mic");
  const micLabel = mic.querySelector(".mic-label");
  const state = {
    transcriber: null, // the model ids /v1/models listed, null when the server has none
    speaker: null,
    mic: "idle", // idle, starting, recording, transcribing
    recording: null, // {recorder, stream, chunks, stopped, started, timer}
    audio: null, // one AudioContext, made on the first click (browsers start them muted otherwise)
    reading: null, // {key, controller, sources}: the answer being read aloud
  };

  function errorText(err) {
    return err instanceof ApiError ? err.message : `Could not reach the server: ${err.message}`;
  }

  // ------------------------------------------------------------ recording

  function showMic() {
    const recording = state.mic === "recording";
    mic.classList.toggle("recording", recording);
    mic.classList.toggle("transcribing", state.mic === "transcribing");
    mic.disabled = state.mic === "starting" || state.mic === "transcribing";
    mic.setAttribute("aria-pressed", String(recording));
    mic.setAttribute("aria-label", recording ? "Stop recording and send" : "Speak a message");
    mic.title = mic.getAttribute("aria-label");
    if (recording) {
      const seconds = Math.floor((performance.now() - state.recording.started) / 1000);
      micLabel.textContent = `${Math.floor(seconds / 60)}:${String(seconds % 60).padStart(2, "0")}`;
    } else {
      micLabel.textContent = state.mic === "transcribing" ? "Transcribing\u2026" : "";
    }
  }

  function microphoneError(err) {
    if (err.name === "NotAllowedError" || err.name === "SecurityError") {
      return (
        "The browser did not allow the microphone: allow it for this page in the site " +
        "settings, then try again."
      );
    }
    if (err.name === "NotFoundError" || err.name === "OverconstrainedError") {
      return "No microphone was found: connect one, then try again.";
    }
    if (err.name === "NotReadableError") {
      return "The microphone could not be opened: another program may be using it.";
    }
    return `Could not start the microphone: ${err.message}`;
  }

  async function startRecording() {
    if (!navigator.mediaDevices?.getUserMedia) {
      setStatus(
        "The browser gives a page the microphone only over https or on localhost: open the UI " +
          "that way to speak.",
      );
      return;
    }
    if (typeof MediaRecorder === "undefined") {
      setStatus("This browser cannot record audio.");
      return;
    }
    state.mic = "starting";
    showMic();
    let stream;
    try {
      stream = await navigator.mediaDevices.getUserMedia({ audio: true });
    } catch (err) {
      state.mic = "idle";
      showMic();
      setStatus(microphoneError(err));
      return;
    }
    const mimeType = RECORDING_TYPES.find((type) => MediaRecorder.isTypeSupported(type));
    const recorder = new MediaRecorder(stream, { mimeType, audioBitsPerSecond: 32000 });
    const chunks = [];
    recorder.addEventListener("dataavailable", (event) => {
      if (event.data.size) chunks.push(event.data);
    });
    const stopped = new Promise((resolve) => recorder.addEventListener("stop", resolve));
    recorder.start();
    const timer = setInterval(() => {
      if (performance.now() - state.recording.started > MAX_RECORDING_S * 1000) stopRecording();
      else showMic();
    }, 250);
    state.recording = { recorder, stream, chunks, stopped, started: performance.now(), timer };
    state.mic = "recording";
    showMic();
    setStatus("Recording: click the microphone again to send.");
  }

  async function stopRecording() {
    const { recorder, stream, chunks, stopped, timer } = state.recording;
    clearInterval(timer);
    state.recording = null;
    state.mic = "transcribing";
    showMic();
    setStatus("Transcribing...");
    if (recorder.state !== "inactive") recorder.stop(); // inactive: the microphone went away
    await stopped;
    for (const track of stream.getTracks()) track.stop(); // the browser's "recording" mark goes
    try {
      const type = recorder.mimeType || "audio/webm";
      const extension = type.includes("mp4") ? "m4a" : type.includes("ogg") ? "ogg" : "webm";
      const form = new FormData();
      form.append("file", new Blob(chunks, { type }), `speech.${extension}`);
      form.append("model", state.transcriber);
      form.append("response_format", "json");
      const init = { method: "POST", body: form };
      const heard = (await (await api("/v1/audio/transcriptions", init)).json()).text?.trim();
      if (heard) {
        setStatus("");
        onTranscript(heard);
      } else {
        setStatus("No words were heard in the recording: speak closer to the microphone.");
      }
    } catch (err) {
      setStatus(errorText(err));
    } finally {
      state.mic = "idle";
      showMic();
    }
  }

  mic.addEventListener("click", () => {
    if (state.mic === "idle") startRecording();
    else if (state.mic === "recording") stopRecording();
  });

  // ------------------------------------------------------------ reading aloud

  function syncReadButtons() {
    for (const button of document.querySelectorAll(".read-aloud")) {
      const on = state.reading?.key === button.closest("[data-key]")?.dataset.key;
      button.textContent = on ? "Stop" : "Read aloud";
      button.classList.toggle("playing", on);
      button.setAttribute("aria-pressed", String(on));
    }
  }

  function stopReading() {
    const reading = state.reading;
    if (!reading) return;
    state.reading = null;
    reading.controller.abort();
    for (const source of reading.sources) source.stop();
    syncReadButtons();
  }

  // Plays 16-bit little-endian PCM from `body` as it arrives, each chunk right after the last;
  // resolves when the last one has been heard (or was stopped).
  async function play(body, audio, reading) {
    const reader = body.getReader();
    let carry = null; // an odd byte at a chunk's end: the first half of the next one's sample
    let next = 0; // when the next chunk starts, on the audio clock
    let last = null;
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      let bytes = value;
      if (carry !== null) {
        bytes = new Uint8Array(value.length + 1);
        bytes[0] = carry;
        bytes.set(value, 1);
      }
      const whole = bytes.length - (bytes.length % 2);
      carry = whole < bytes.length ? bytes[whole] : null;
      if (!whole) continue;
      const pcm = new DataView(bytes.buffer, bytes.byteOffset, whole); // any alignment
      const buffer = audio.createBuffer(1, whole / 2, PCM_RATE); // the context resamples it
      const samples = buffer.getChannelData(0);
      for (let i = 0; i < samples.length; i++) samples[i] = pcm.getInt16(2 * i, true) / 32768;
      const source = audio.createBufferSource();
      source.buffer = buffer;
      source.connect(audio.destination);
      next = Math.max(next, audio.currentTime + LEAD_S);
      source.start(next);
      next += buffer.duration;
      reading.sources.add(source);
      source.addEventListener("ended", () => reading.sources.delete(source));
      last = source;
    }
    if (last && reading.sources.has(last)) {
      await new Promise((resolve) => last.addEventListener("ended", resolve));
    }
  }

  async function readAloud(key, text) {
    const playing = state.reading?.key === key;
    stopReading();
    if (playing || !text) return; // a second click stops
    state.audio ??= new AudioContext();
    state.audio.resume(); // inside the click, which lets it make sound
    const reading = { key, controller: new AbortController(), sources: new Set() };
    state.reading = reading;
    syncReadButtons();
    const body = { model: state.speaker, input: text, voice: VOICE, response_format: "pcm" };
    try {
      const init = { method: "POST", body: JSON.stringify(body) };
      const res = await api("/v1/audio/speech", init, reading.controller.signal);
      await play(res.body, state.audio, reading);
    } catch (err) {
      if (err.name !== "AbortError") setStatus(errorText(err));
    } finally {
      if (state.reading === reading) {
        state.reading = null;
        syncReadButtons();
      }
    }
  }

  return {
    // The server's models: the buttons show for what it serves.
    setModels(models) {
      const of = (kind) => models.find((m) => m.genforge?.kind === kind)?.id ?? null;
      state.transcriber = of("transcription");
      state.speaker = of("speech");
      mic.hidden = !state.transcriber;
    },
    speaks: () => state.speaker !== null,
    readAloud,
    syncReadButtons,
  };
}
