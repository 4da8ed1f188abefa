// genforge web UI: a chat client for the server's own OpenAI-compatible API (same origin).
// Plain JS modules, no build step. Conversations, settings and the API key live in localStorage.
import { initAgents } from "./agents.js";
import { initDocuments } from "./documents.js";
import { initImages } from "./images.js";
import { plainText, renderMarkdown } from "./markdown.js";
import { initVoice } from "./voice.js";

const STORE = {
  conversations: "genforge.conversations",
  current: "genforge.current",
  settings: "genforge.settings",
  apiKey: "genforge.apiKey",
  view: "genforge.view",
};
const DEFAULT_SETTINGS = { model: "", system: "", temperature: "", top_p: "", max_tokens: "1024" };
const NOT_CHAT = ["embedding", "image", "transcription", "speech"]; // kinds in /v1/models

const $ = (selector) => document.querySelector(selector);
const ui = {
  app: $(".app"),
  model: $("#model"),
  sidebar: $("#sidebar"),
  toggleList: $("#toggle-list"),
  list: $("#conversations"),
  messages: $("#messages"),
  status: $("#status"),
  composer: $("#composer"),
  prompt: $("#prompt"),
  send: $("#send"),
  stop: $("#stop"),
  settings: $("#settings"),
  system: $("#system"),
  temperature: $("#temperature"),
  topP: $("#top-p"),
  maxTokens: $("#max-tokens"),
  apiKey: $("#api-key"),
  keyHint: $("#key-hint"),
  template: $("#message-template"),
};

const state = {
  conversations: readJson(STORE.conversations, []),
  currentId: localStorage.getItem(STORE.current),
  settings: { ...DEFAULT_SETTINGS, ...readJson(STORE.settings, {}) },
  apiKey: localStorage.getItem(STORE.apiKey) || "",
  controller: null, // AbortController of the answer being generated, null when idle
  keyWaiters: [], // resolved once the user has closed the settings after a 401
  renderQueued: false,
};

// ---------------------------------------------------------------- storage

function readJson(key, fallback) {
  try {
    const value = JSON.parse(localStorage.getItem(key));
    return value ?? fallback;
  } catch {
    return fallback;
  }
}

function save() {
  try {
    localStorage.setItem(STORE.conversations, JSON.stringify(state.conversations));
    localStorage.setItem(STORE.settings, JSON.stringify(state.settings));
    if (state.currentId) localStorage.setItem(STORE.current, state.currentId);
    else localStorage.removeItem(STORE.current);
  } catch (err) {
    setStatus(`Could not save the conversations in this browser: ${err.message}`);
  }
}

function current() {
  return state.conversations.find((c) => c.id === state.currentId) || null;
}

function newId() {
  return Date.now().toString(36) + Math.random().toString(36).slice(2, 8);
}

function titleFrom(text) {
  const line = text.trim().split("\n")[0];
  return line.length > 60 ? `${line.slice(0, 57)}...` : line;
}

// ---------------------------------------------------------------- rendering

function setStatus(text) {
  ui.status.textContent = text;
}

function renderList() {
  ui.list.replaceChildren(
    ...state.conversations.map((conv) => {
      const li = document.createElement("li");
      const open = document.createElement("button");
      open.type = "button";
      open.className = "conversation";
      open.textContent = conv.title || "New chat";
      open.title = conv.title;
      if (conv.id === state.currentId) open.setAttribute("aria-current", "true");
      open.addEventListener("click", () => switchTo(conv.id));
      const remove = document.createElement("button");
      remove.type = "button";
      remove.className = "delete";
      remove.textContent = "\u00d7";
      remove.setAttribute("aria-label", `Delete conversation: ${conv.title}`);
      remove.addEventListener("click", () => deleteConversation(conv.id));
      li.append(open, remove);
      return li;
    }),
  );
}

function messageElement(message, index) {
  const el = ui.template.content.firstElementChild.cloneNode(true);
  el.classList.add(message.role);
  el.dataset.index = index;
  el.dataset.key = `${state.currentId}:${index}`; // which answer is being read aloud
  el.querySelector(".role").textContent = message.role === "user" ? "You" : "Assistant";
  fillMessage(el, message);
  return el;
}

function fillMessage(el, message) {
  const content = el.querySelector(".content");
  if (message.role === "user") content.textContent = message.content;
  else content.innerHTML = renderMarkdown(message.content);
  if (message.error) {
    const error = document.createElement("p");
    error.className = "error";
    error.textContent = message.error;
    content.append(error);
  }
  el.querySelector(".stats").textContent = message.stopped
    ? `Stopped${message.stats ? ` \u00b7 ${message.stats}` : ""}`
    : message.stats || "";
  el.classList.toggle("pending", message.role === "assistant" && !message.content && !message.error);
  const generating = state.controller && message === current()?.messages.at(-1);
  el.querySelector(".read-aloud").hidden =
    message.role !== "assistant" || !message.content || generating || !voice.speaks();
}

function renderMessages() {
  const conv = current();
  if (!conv || !conv.messages.length) {
    const empty = document.createElement("p");
    empty.className = "empty";
    empty.textContent = ui.model.value
      ? `Start a conversation with ${ui.model.value}.`
      : "Start a conversation.";
    ui.messages.replaceChildren(empty);
    return;
  }
  ui.messages.replaceChildren(...conv.messages.map(messageElement));
  ui.messages.scrollTop = ui.messages.scrollHeight;
  voice.syncReadButtons();
}

// Re-render the streaming answer at most once a frame; it is always the last message.
function queueAnswerRender(conv) {
  if (state.renderQueued) return;
  state.renderQueued = true;
  requestAnimationFrame(() => {
    state.renderQueued = false;
    renderAnswer(conv);
  });
}

function renderAnswer(conv) {
  if (conv.id !== state.currentId) return;
  const el = ui.messages.lastElementChild;
  if (!el || !el.classList.contains("message")) return;
  const box = ui.messages;
  const atBottom = box.scrollHeight - box.scrollTop - box.clientHeight < 48;
  fillMessage(el, conv.messages[conv.messages.length - 1]);
  if (atBottom) box.scrollTop = box.scrollHeight;
}

function setBusy(busy) {
  ui.send.hidden = busy;
  ui.stop.hidden = !busy;
  ui.messages.setAttribute("aria-busy", String(busy));
  if (!busy) ui.prompt.focus();
}

// ---------------------------------------------------------------- API

class ApiError extends Error {}

async function api(path, init = {}, signal = undefined) {
  for (;;) {
    const headers = { ...(init.headers || {}) };
    if (typeof init.body === "string") headers["Content-Type"] = "application/json"; // else a form
    if (state.apiKey) headers.Authorization = `Bearer ${state.apiKey}`;
    const res = await fetch(path, { ...init, headers, signal });
    if (res.status === 401) {
      const tried = state.apiKey;
      await askForKey(signal);
      if (!state.apiKey || state.apiKey === tried) throw new ApiError(await errorMessage(res));
      continue;
    }
    if (!res.ok) throw new ApiError(await errorMessage(res));
    return res;
  }
}

async function errorMessage(res) {
  const text = await res.text().catch(() => "");
  try {
    const message = JSON.parse(text).error?.message;
    if (message) return message;
  } catch {
    // not JSON: fall through to the status line
  }
  return `The server answered ${res.status} ${res.statusText}${text ? `: ${text.slice(0, 200)}` : ""}`;
}

function askForKey(signal) {
  ui.keyHint.hidden = false;
  openSettings(ui.apiKey);
  return new Promise((resolve, reject) => {
    state.keyWaiters.push(resolve);
    signal?.addEventListener("abort", () => reject(new DOMException("Stopped", "AbortError")));
  });
}

// Yields each `data:` payload of a server-sent event stream, parsed, until `[DONE]`.
async function* serverEvents(res) {
  const reader = res.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    buffer += decoder.decode(value, { stream: !done });
    const events = buffer.split(/\r?\n\r?\n/);
    buffer = done ? "" : events.pop();
    for (const event of events) {
      const data = event
        .split(/\r?\n/)
        .filter((line) => line.startsWith("data:"))
        .map((line) => line.slice(5).replace(/^ /, ""))
        .join("\n");
      if (!data) continue; // a comment or keep-alive
      if (data === "[DONE]") return;
      yield JSON.parse(data);
    }
    if (done) throw new ApiError("The connection closed before the answer was finished.");
  }
}

function samplingOptions() {
  const options = {};
  const number = (value) => (value === "" || value == null ? null : Number(value));
  const temperature = number(state.settings.temperature);
  const topP = number(state.settings.top_p);
  const maxTokens = number(state.settings.max_tokens);
  if (temperature !== null) options.temperature = temperature;
  if (topP !== null) options.top_p = topP;
  if (maxTokens !== null) options.max_tokens = maxTokens;
  return options;
}

function formatStats(tokens, approximate, started, first, last) {
  const parts = [`${approximate ? "~" : ""}${tokens} tokens`];
  if (tokens > 1 && last > first) {
    parts.push(`${((tokens - 1) / ((last - first) / 1000)).toFixed(1)} tok/s`);
  }
  if (first) parts.push(`first token ${((first - started) / 1000).toFixed(2)} s`);
  return parts.join(" \u00b7 ");
}

async function streamAnswer(conv, answer) {
  const history = conv.messages
    .slice(0, -1)
    .filter((m) => m.content)
    .map((m) => ({ role: m.role, content: m.content }));
  if (state.settings.system.trim()) {
    history.unshift({ role: "system", content: state.settings.system });
  }
  const body = {
    model: ui.model.value,
    messages: history,
    stream: true,
    stream_options: { include_usage: true },
    ...samplingOptions(),
  };
  const controller = new AbortController();
  state.controller = controller;
  const started = performance.now();
  let first = 0;
  let last = 0;
  let chunks = 0;
  let usage = null;
  const stats = () =>
    formatStats(usage?.completion_tokens ?? chunks, !usage, started, first, last);
  try {
    const init = { method: "POST", body: JSON.stringify(body) };
    const res = await api("/v1/chat/completions", init, controller.signal);
    if (!res.headers.get("content-type")?.includes("text/event-stream")) {
      const data = await res.json(); // a server that ignored "stream": one complete answer
      answer.content = data.choices?.[0]?.message?.content ?? "";
      usage = data.usage ?? null;
    } else {
      for await (const data of serverEvents(res)) {
        if (data.error) throw new ApiError(data.error.message || "The server reported an error.");
        if (data.usage) usage = data.usage;
        const delta = data.choices?.[0]?.delta?.content;
        if (!delta) continue;
        last = performance.now();
        if (!first) first = last;
        chunks += 1;
        answer.content += delta;
        queueAnswerRender(conv);
      }
    }
    answer.stats = stats();
    setStatus("Answer complete.");
  } catch (err) {
    if (err.name === "AbortError") {
      answer.stopped = true;
      if (chunks) answer.stats = stats();
      setStatus("Stopped.");
    } else {
      answer.error =
        err instanceof ApiError ? err.message : `Could not reach the server: ${err.message}`;
      setStatus(answer.error);
    }
  } finally {
    state.controller = null;
  }
}

// ---------------------------------------------------------------- actions

async function send(text) {
  if (state.controller || !text.trim()) return;
  if (!ui.model.value) {
    setStatus("No chat model is available: start the server with a chat model.");
    return;
  }
  let conv = current();
  if (!conv) {
    conv = { id: newId(), title: titleFrom(text), created: Date.now(), messages: [] };
    state.conversations.unshift(conv);
    state.currentId = conv.id;
  }
  conv.messages.push({ role: "user", content: text });
  const answer = { role: "assistant", content: "" };
  conv.messages.push(answer);
  save();
  renderList();
  renderMessages();
  setBusy(true);
  setStatus("Generating...");
  try {
    await streamAnswer(conv, answer);
  } finally {
    save();
    renderAnswer(conv);
    setBusy(false);
  }
}

function stop() {
  state.controller?.abort();
}

// The words of a recorded message are sent as if typed; while an answer is still coming they wait
// in the message box instead.
function sendSpoken(text) {
  if (!state.controller) {
    send(text);
    return;
  }
  ui.prompt.value = text;
  autoGrow();
  ui.prompt.focus();
}

function switchTo(id) {
  state.currentId = id;
  save();
  renderList();
  renderMessages();
  closeListOnPhone();
}

function newChat() {
  state.currentId = null;
  save();
  renderList();
  renderMessages();
  closeListOnPhone();
  ui.prompt.focus();
}

function deleteConversation(id) {
  if (id === state.currentId) {
    stop();
    state.currentId = null;
  }
  state.conversations = state.conversations.filter((c) => c.id !== id);
  save();
  renderList();
  renderMessages();
  setStatus("Conversation deleted.");
}

async function copyText(text, button) {
  try {
    if (navigator.clipboard && window.isSecureContext) {
      await navigator.clipboard.writeText(text);
    } else {
      const area = document.createElement("textarea"); // plain-HTTP pages have no clipboard API
      area.value = text;
      area.setAttribute("readonly", "");
      area.style.position = "fixed";
      area.style.opacity = "0";
      document.body.append(area);
      area.select();
      document.execCommand("copy");
      area.remove();
    }
    const label = button.textContent;
    button.textContent = "Copied";
    setTimeout(() => {
      button.textContent = label;
    }, 1500);
  } catch (err) {
    setStatus(`Could not copy: ${err.message}`);
  }
}

async function loadModels() {
  try {
    const res = await api("/v1/models");
    const data = await res.json();
    const chat = data.data.filter((m) => !NOT_CHAT.includes(m.genforge?.kind));
    voice.setModels(data.data);
    ui.model.replaceChildren(
      ...chat.map((m) => {
        const option = document.createElement("option");
        option.value = m.id;
        option.textContent = m.genforge?.loaded === false ? `${m.id} (loads on first use)` : m.id;
        return option;
      }),
    );
    const preferred =
      chat.find((m) => m.id === state.settings.model) ||
      chat.find((m) => m.genforge?.loaded !== false);
    if (preferred) ui.model.value = preferred.id;
    if (!chat.length) setStatus("The server has no chat model loaded.");
    renderMessages();
  } catch (err) {
    setStatus(`Could not list the models: ${err.message}`);
  }
}

// ---------------------------------------------------------------- settings

function openSettings(focus) {
  ui.system.value = state.settings.system;
  ui.temperature.value = state.settings.temperature;
  ui.topP.value = state.settings.top_p;
  ui.maxTokens.value = state.settings.max_tokens;
  ui.apiKey.value = state.apiKey;
  if (!ui.settings.open) ui.settings.showModal();
  (focus || ui.system).focus();
}

function applySettings() {
  state.settings.system = ui.system.value;
  state.settings.temperature = ui.temperature.value;
  state.settings.top_p = ui.topP.value;
  state.settings.max_tokens = ui.maxTokens.value;
  state.apiKey = ui.apiKey.value.trim();
  if (state.apiKey) localStorage.setItem(STORE.apiKey, state.apiKey);
  else localStorage.removeItem(STORE.apiKey);
  ui.keyHint.hidden = true;
  save();
  const waiters = state.keyWaiters;
  state.keyWaiters = [];
  for (const resolve of waiters) resolve();
}

// ---------------------------------------------------------------- phone layout

function setListOpen(open) {
  ui.sidebar.classList.toggle("open", open);
  ui.toggleList.setAttribute("aria-expanded", String(open));
}

function closeListOnPhone() {
  if (ui.sidebar.classList.contains("open")) setListOpen(false);
}

// ---------------------------------------------------------------- wiring

ui.composer.addEventListener("submit", (event) => {
  event.preventDefault();
  const text = ui.prompt.value;
  if (!text.trim() || state.controller) return;
  ui.prompt.value = "";
  autoGrow();
  send(text);
});

ui.prompt.addEventListener("keydown", (event) => {
  if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
    event.preventDefault();
    ui.composer.requestSubmit();
  }
});

function autoGrow() {
  ui.prompt.style.height = "auto";
  ui.prompt.style.height = `${Math.min(ui.prompt.scrollHeight, 200)}px`;
}
ui.prompt.addEventListener("input", autoGrow);

ui.stop.addEventListener("click", stop);
document.addEventListener("keydown", (event) => {
  if (event.key !== "Escape") return;
  if (state.controller && !ui.settings.open) stop();
  closeListOnPhone();
});

ui.messages.addEventListener("click", (event) => {
  const read = event.target.closest("button.read-aloud");
  if (read) {
    const message = read.closest(".message");
    const content = current()?.messages[Number(message.dataset.index)]?.content ?? "";
    voice.readAloud(message.dataset.key, plainText(content));
    return;
  }
  const button = event.target.closest("button.copy");
  if (!button) return;
  if (button.classList.contains("copy-code")) {
    copyText(button.closest(".code-block").querySelector("code").textContent, button);
  } else {
    const index = Number(button.closest(".message").dataset.index);
    copyText(current()?.messages[index]?.content ?? "", button);
  }
});

ui.model.addEventListener("change", () => {
  state.settings.model = ui.model.value;
  save();
});
$("#new-chat").addEventListener("click", newChat);
$("#open-settings").addEventListener("click", () => openSettings());
ui.settings.addEventListener("close", applySettings);
$(".chat").addEventListener("click", closeListOnPhone); // a tap beside the open list closes it
ui.toggleList.addEventListener("click", () =>
  setListOpen(!ui.sidebar.classList.contains("open")),
);

// ---------------------------------------------------------------- views

// name -> its button, its panel, and what it does when shown (the chat is always ready).
const views = { chat: { focus: ui.prompt } };

function showView(name, focus = false) {
  const view = views[name] ? name : "chat";
  ui.app.dataset.view = view;
  for (const [key, { button, panel }] of Object.entries(views)) {
    panel.hidden = key !== view;
    button.setAttribute("aria-pressed", String(key === view));
  }
  try {
    localStorage.setItem(STORE.view, view);
  } catch {
    // the view is only a convenience
  }
  views[view].show?.();
  if (focus) views[view].focus.focus();
}

function addView(name, button, panel, hooks = {}) {
  views[name] = { ...views[name], ...hooks, button: $(button), panel: $(panel) };
  views[name].button.addEventListener("click", () => showView(name, true));
}

const voice = initVoice({ api, ApiError, setStatus, onTranscript: sendSpoken });
if (!current()) state.currentId = null;
renderList();
renderMessages();
loadModels();
const shared = { api, serverEvents, samplingOptions, chatModel: () => ui.model.value, ApiError };
addView("chat", "#view-chat", "#chat-view");
addView("docs", "#view-docs", "#docs", initDocuments(shared));
addView("agents", "#view-agents", "#agents", initAgents({ ...shared, copyText }));
addView("images", "#view-images", "#images", initImages(shared));
let saved = "chat";
try {
  saved = localStorage.getItem(STORE.view) || "chat";
} catch {
  // storage blocked: start on the chat
}
showView(saved);
