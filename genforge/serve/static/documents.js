// The Documents view: index a folder under the server's --rag-root, ask a question that is answered
// from the documents (a chat with "rag", streamed), and read the passages the answer cites.
// Document text is untrusted: it is only ever set as textContent. The answer goes through the
// chat's escaping markdown renderer, and its citation markers become buttons made here.
import { markers } from "./citations.js";
import { renderMarkdown } from "./markdown.js";

export function initDocuments({ api, serverEvents, samplingOptions, chatModel, ApiError }) {
  const $ = (selector) => document.querySelector(selector);
  const ui = {
    docs: $("#docs"),
    notice: $("#docs-notice"),
    indexForm: $("#index-form"),
    storeLabel: $("#doc-store-label"),
    store: $("#doc-store"),
    path: $("#doc-path"),
    indexButton: $("#index-button"),
    summary: $("#index-summary"),
    askForm: $("#ask-form"),
    question: $("#doc-question"),
    ask: $("#ask"),
    stop: $("#ask-stop"),
    status: $("#docs-status"),
    answer: $("#doc-answer"),
    content: $("#doc-answer .content"),
    stats: $("#doc-answer .stats"),
    sourcesTitle: $("#sources-title"),
    sources: $("#doc-sources"),
    passage: $("#passage"),
    passageTitle: $("#passage-title"),
    passageWhere: $("#passage-where"),
    passageHeading: $("#passage-heading"),
    passageText: $("#passage-text"),
  };
  const state = {
    loaded: false, // the store list was asked for
    root: "",
    stores: [],
    indexing: false,
    controller: null, // AbortController of the answer being streamed
    text: "",
    chunks: [], // the passages the model was given: citation [n] is chunks[n - 1]
    citations: [],
    usage: null,
    error: "",
    stopped: false,
    renderQueued: false,
  };

  // ------------------------------------------------------------ stores and indexing

  function storeName() {
    return ui.store.value || undefined;
  }

  function setStatus(text) {
    ui.status.textContent = text;
  }

  function errorText(err) {
    return err instanceof ApiError ? err.message : `Could not reach the server: ${err.message}`;
  }

  function setUsable(usable) {
    for (const el of [ui.path, ui.indexButton, ui.question, ui.ask, ui.store]) {
      el.disabled = !usable;
    }
  }

  function describeStores() {
    ui.store.replaceChildren(
      ...state.stores.map((s) => {
        const option = document.createElement("option");
        option.value = s.id;
        option.textContent = `${s.id} (${s.files} files)`;
        return option;
      }),
    );
    const chosen = state.stores.find((s) => s.id === ui.store.dataset.chosen);
    ui.store.value = (chosen || state.stores.find((s) => s.default) || state.stores[0]).id;
  }

  function storeLine(store) {
    return `${store.id}: ${store.files} files, ${store.chunks} passages indexed.`;
  }

  async function loadStores() {
    state.loaded = true;
    try {
      const data = await (await api("/v1/rag/stores")).json();
      state.root = data.root || "";
      state.stores = data.data;
      if (!state.stores.length) {
        ui.notice.textContent =
          "This server has no document store. Start it with genforge serve --rag-store FILE " +
          "to index your documents and ask about them here.";
        ui.notice.hidden = false;
        setUsable(false);
        return;
      }
      ui.notice.hidden = true;
      setUsable(true);
      describeStores();
      const many = state.stores.length > 1;
      ui.store.hidden = !many;
      ui.storeLabel.hidden = !many;
      ui.path.placeholder = `Folder under ${state.root} to index, e.g. docs`;
      ui.path.title = `A folder relative to ${state.root}, or an absolute path under it`;
      const current = state.stores.find((s) => s.id === ui.store.value);
      ui.summary.textContent = storeLine(current);
    } catch (err) {
      state.loaded = false; // asked again next time the view opens
      setStatus(`Could not list the document stores: ${errorText(err)}`);
    }
  }

  async function index(path) {
    if (state.indexing) return;
    state.indexing = true;
    ui.indexButton.disabled = true;
    ui.summary.classList.remove("error");
    ui.summary.textContent = `Indexing ${path}...`;
    try {
      const init = { method: "POST", body: JSON.stringify({ paths: [path], store: storeName() }) };
      const data = await (await api("/v1/rag/index", init)).json();
      const store = state.stores.find((s) => s.id === data.store);
      if (store) Object.assign(store, { files: data.files, chunks: data.total_chunks });
      describeStores();
      ui.summary.textContent = `${data.summary}\n${storeLine(store || { id: data.store, files: data.files, chunks: data.total_chunks })}`;
    } catch (err) {
      ui.summary.textContent = errorText(err);
      ui.summary.classList.add("error");
    } finally {
      state.indexing = false;
      ui.indexButton.disabled = false;
    }
  }

  // ------------------------------------------------------------ the answer

  function relative(source) {
    const root = state.root;
    return root && source.startsWith(`${root}/`) ? source.slice(root.length + 1) : source;
  }

  function where(chunk) {
    const unit = chunk.unit === "page" ? "page" : "line";
    const span =
      chunk.start_line === chunk.end_line
        ? `${unit} ${chunk.start_line}`
        : `${unit}s ${chunk.start_line}\u2013${chunk.end_line}`;
    return `${relative(chunk.source)}, ${span}`;
  }

  function sourceButton(n, className, label) {
    const button = document.createElement("button");
    button.type = "button";
    button.className = className;
    button.dataset.source = String(n);
    button.textContent = label;
    return button;
  }

  // Citation markers in the rendered answer's text (not in code or links) become buttons.
  function linkCitations(root) {
    const count = state.chunks.length;
    const walker = document.createTreeWalker(root, NodeFilter.SHOW_TEXT, {
      acceptNode: (node) =>
        node.parentElement.closest("code, pre, a")
          ? NodeFilter.FILTER_REJECT
          : NodeFilter.FILTER_ACCEPT,
    });
    const nodes = [];
    while (walker.nextNode()) nodes.push(walker.currentNode);
    for (const node of nodes) {
      // Markers as genforge.rag.cite reads them: in prose, not list literals ("x = [1, 2]").
      const found = markers(node.data, count);
      if (!found.length) continue;
      const fragment = document.createDocumentFragment();
      let at = 0;
      for (const { start, end, numbers } of found) {
        if (start > at) fragment.append(node.data.slice(at, start));
        for (const n of numbers) {
          const button = sourceButton(n, "cite", `[${n}]`);
          button.setAttribute("aria-label", `Source ${n}: ${where(state.chunks[n - 1])}`);
          fragment.append(button);
        }
        at = end;
      }
      if (at < node.data.length) fragment.append(node.data.slice(at));
      node.replaceWith(fragment);
    }
  }

  function renderSources() {
    // number -> how: written by the model, or attributed by genforge (no marker in the answer)
    const cited = new Map(state.citations.map((c) => [c.number, c.inferred ? "supports the answer" : "cited"]));
    ui.sourcesTitle.hidden = !state.chunks.length;
    ui.sources.replaceChildren(
      ...state.chunks.map((chunk, i) => {
        const li = document.createElement("li");
        li.append(sourceButton(i + 1, "source", `[${i + 1}] ${where(chunk)}`));
        if (cited.has(i + 1)) {
          li.classList.add("cited");
          const mark = document.createElement("span");
          mark.className = "cited-mark";
          mark.textContent = cited.get(i + 1);
          li.append(mark);
        }
        return li;
      }),
    );
  }

  function renderAnswer() {
    ui.content.innerHTML = renderMarkdown(state.text); // escaped there: no HTML gets through
    if (state.chunks.length) linkCitations(ui.content);
    if (state.error) {
      const error = document.createElement("p");
      error.className = "error";
      error.textContent = state.error;
      ui.content.append(error);
    }
    ui.answer.classList.toggle("pending", !state.text && !state.error && !!state.controller);
    const parts = [];
    if (state.stopped) parts.push("Stopped");
    if (state.usage) parts.push(`${state.usage.completion_tokens} tokens`);
    if (!state.controller && !state.error && !state.stopped) {
      parts.push(
        state.chunks.length
          ? `${state.chunks.length} passage${state.chunks.length === 1 ? "" : "s"} retrieved`
          : "no passage is about this question",
      );
    }
    ui.stats.textContent = parts.join(" \u00b7 ");
    renderSources();
  }

  function queueRender() {
    if (state.renderQueued) return;
    state.renderQueued = true;
    requestAnimationFrame(() => {
      state.renderQueued = false;
      renderAnswer();
    });
  }

  function setBusy(busy) {
    ui.ask.hidden = busy;
    ui.stop.hidden = !busy;
    ui.answer.setAttribute("aria-busy", String(busy));
    if (!busy) ui.question.focus();
  }

  async function ask(question) {
    if (state.controller || !question.trim()) return;
    const model = chatModel();
    if (!model) {
      setStatus("No chat model is available: start the server with a chat model.");
      return;
    }
    Object.assign(state, { text: "", chunks: [], citations: [], usage: null, error: "" });
    state.stopped = false;
    closePassage();
    const controller = new AbortController();
    state.controller = controller;
    ui.answer.hidden = false;
    renderAnswer();
    setBusy(true);
    setStatus("Searching the documents...");
    const body = {
      model,
      messages: [{ role: "user", content: question }],
      stream: true,
      stream_options: { include_usage: true },
      rag: { store: storeName() },
      ...samplingOptions(),
    };
    try {
      const init = { method: "POST", body: JSON.stringify(body) };
      const res = await api("/v1/chat/completions", init, controller.signal);
      setStatus("Answering...");
      for await (const data of serverEvents(res)) {
        if (data.error) throw new ApiError(data.error.message || "The server reported an error.");
        if (data.usage) state.usage = data.usage;
        if (data.rag_chunks) {
          state.chunks = data.rag_chunks;
          state.citations = data.citations || [];
        }
        const delta = data.choices?.[0]?.delta?.content;
        if (!delta) continue;
        state.text += delta;
        queueRender();
      }
      setStatus("Answer complete.");
    } catch (err) {
      if (err.name === "AbortError") {
        state.stopped = true;
        setStatus("Stopped.");
      } else {
        state.error = errorText(err);
        setStatus(state.error);
      }
    } finally {
      state.controller = null;
      renderAnswer();
      setBusy(false);
    }
  }

  // ------------------------------------------------------------ the passage panel

  function openPassage(n) {
    const chunk = state.chunks[n - 1];
    if (!chunk) return;
    ui.passageTitle.textContent = `Source [${n}]`;
    ui.passageWhere.textContent = where(chunk);
    ui.passageHeading.textContent = chunk.heading || "";
    ui.passageHeading.hidden = !chunk.heading;
    ui.passageText.textContent = chunk.text;
    ui.passage.hidden = false;
    for (const el of ui.answer.querySelectorAll("[data-source]")) {
      el.toggleAttribute("aria-current", el.dataset.source === String(n));
    }
    ui.passage.focus(); // and on a phone, where it sits under the answer, into view
  }

  function closePassage() {
    ui.passage.hidden = true;
    for (const el of ui.answer.querySelectorAll("[aria-current]")) el.removeAttribute("aria-current");
  }

  // ------------------------------------------------------------ wiring

  ui.indexForm.addEventListener("submit", (event) => {
    event.preventDefault();
    const path = ui.path.value.trim();
    if (path) index(path);
  });
  ui.store.addEventListener("change", () => {
    ui.store.dataset.chosen = ui.store.value;
    ui.summary.classList.remove("error");
    ui.summary.textContent = storeLine(state.stores.find((s) => s.id === ui.store.value));
  });
  ui.askForm.addEventListener("submit", (event) => {
    event.preventDefault();
    ask(ui.question.value);
  });
  ui.question.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      ui.askForm.requestSubmit();
    }
  });
  ui.question.addEventListener("input", () => {
    ui.question.style.height = "auto";
    ui.question.style.height = `${Math.min(ui.question.scrollHeight, 200)}px`;
  });
  ui.stop.addEventListener("click", () => state.controller?.abort());
  ui.answer.addEventListener("click", (event) => {
    const button = event.target.closest("button[data-source]");
    if (button) openPassage(Number(button.dataset.source));
  });
  $("#close-passage").addEventListener("click", closePassage);
  document.addEventListener("keydown", (event) => {
    if (event.key !== "Escape" || ui.docs.hidden || document.querySelector("dialog[open]")) return;
    if (state.controller) state.controller.abort();
    else if (!ui.passage.hidden) closePassage();
  });

  return {
    show() {
      if (!state.loaded) loadStores();
    },
    focus: ui.question,
  };
}
