// The Images view: a caption, the number of pictures, a seed, steps and guidance, and Generate; the
// pictures come back from POST /v1/images/generations as base64 PNGs at the model's own size (32x32)
// and are shown enlarged by CSS with `image-rendering: pixelated`. The prompt and the server's words
// are only ever set as text.

export function initImages({ api, ApiError }) {
  const $ = (selector) => document.querySelector(selector);
  const ui = {
    notice: $("#images-notice"),
    form: $("#image-form"),
    prompt: $("#image-prompt"),
    model: $("#image-model"),
    count: $("#image-count"),
    seed: $("#image-seed"),
    steps: $("#image-steps"),
    guidance: $("#image-guidance"),
    generate: $("#image-generate"),
    status: $("#image-status"),
    error: $("#image-error"),
    note: $("#image-note"),
    grid: $("#image-grid"),
  };
  const controls = [ui.prompt, ui.model, ui.count, ui.seed, ui.steps, ui.guidance, ui.generate];
  const state = { loaded: false, busy: false };

  function errorText(err) {
    return err instanceof ApiError ? err.message : `Could not reach the server: ${err.message}`;
  }

  function showError(text) {
    ui.error.textContent = text;
    ui.error.hidden = !text;
  }

  // ------------------------------------------------------------ the models

  async function loadModels() {
    state.loaded = true;
    try {
      const data = (await (await api("/v1/models")).json()).data;
      const models = data.filter((m) => m.genforge?.kind === "image");
      ui.model.replaceChildren(
        ...models.map((m) => {
          const option = document.createElement("option");
          option.value = m.id;
          const size = m.genforge.size ? `, ${m.genforge.size}x${m.genforge.size}` : "";
          option.textContent = `${m.id}${size}`;
          return option;
        }),
      );
      const none = !models.length;
      ui.notice.hidden = !none;
      ui.notice.textContent = none
        ? "This server has no image model. Install the image extra (pip install " +
          "'genforge[image]') and start it with genforge serve --image-model FOLDER, a model " +
          "folder or a genforge image train run."
        : "";
      for (const el of controls) el.disabled = none;
    } catch (err) {
      state.loaded = false; // asked again next time the view opens
      showError(`Could not list the image models: ${errorText(err)}`);
    }
  }

  // ------------------------------------------------------------ a request

  function number(input) {
    return input.value === "" ? null : Number(input.value);
  }

  function picture(png, index, prompt, seed) {
    const li = document.createElement("li");
    const link = document.createElement("a");
    link.href = `data:image/png;base64,${png}`;
    link.download = `genforge-${seed + index}.png`;
    const img = document.createElement("img");
    img.src = link.href;
    img.alt = `Picture ${index + 1}: ${prompt} (seed ${seed + index})`;
    img.title = `seed ${seed + index}`;
    link.append(img);
    li.append(link);
    return li;
  }

  async function generate(prompt) {
    if (state.busy) return; // an empty prompt goes too: the server says what is missing
    if (!ui.model.value) {
      showError("No image model is available on this server.");
      return;
    }
    const body = {
      model: ui.model.value,
      prompt,
      n: number(ui.count) ?? 4,
      steps: number(ui.steps) ?? 25,
      guidance: number(ui.guidance) ?? 3,
      response_format: "b64_json",
    };
    const seed = number(ui.seed);
    if (seed !== null) body.seed = seed;
    state.busy = true;
    ui.generate.disabled = true;
    ui.grid.setAttribute("aria-busy", "true");
    showError("");
    ui.status.textContent = "Drawing...";
    const started = performance.now();
    try {
      const init = { method: "POST", body: JSON.stringify(body) };
      const answer = await (await api("/v1/images/generations", init)).json();
      const used = answer.genforge?.seed ?? seed ?? 0;
      ui.grid.replaceChildren(...answer.data.map((d, i) => picture(d.b64_json, i, prompt, used)));
      const count = answer.data.length;
      const seconds = ((performance.now() - started) / 1000).toFixed(1);
      ui.status.textContent =
        `${count} picture${count === 1 ? "" : "s"} \u00b7 ${answer.size} \u00b7 seed ${used}` +
        ` \u00b7 ${seconds} s`;
      const unknown = answer.genforge?.unknown_words ?? [];
      ui.note.hidden = !unknown.length;
      ui.note.textContent = unknown.length
        ? `The model never saw ${unknown.map((w) => `"${w}"`).join(", ")} in training; it ` +
          "draws as if those words were not there."
        : "";
    } catch (err) {
      showError(errorText(err));
      ui.status.textContent = "";
    } finally {
      state.busy = false;
      ui.generate.disabled = false;
      ui.grid.setAttribute("aria-busy", "false");
    }
  }

  // ------------------------------------------------------------ wiring

  ui.form.addEventListener("submit", (event) => {
    event.preventDefault();
    generate(ui.prompt.value);
  });
  ui.prompt.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      ui.form.requestSubmit();
    }
  });

  return {
    show() {
      if (!state.loaded) loadModels();
    },
    focus: ui.prompt,
  };
}
