// The Agents view: a task, the tools the server enabled (GET /v1/agents/tools), a style, and Run;
// the run's steps stream in from POST /v1/agents/runs. The model's text goes through the chat's
// escaping markdown renderer; calls, arguments, results and code are only ever set as textContent.
import { renderMarkdown } from "./markdown.js";

export function initAgents({ api, serverEvents, samplingOptions, chatModel, copyText, ApiError }) {
  const $ = (selector) => document.querySelector(selector);
  const ui = {
    notice: $("#agents-notice"),
    form: $("#agent-form"),
    task: $("#agent-task"),
    tools: $("#agent-tools"),
    style: $("#agent-style"),
    maxSteps: $("#agent-max-steps"),
    run: $("#agent-run"),
    stop: $("#agent-stop"),
    status: $("#agent-status"),
    steps: $("#agent-steps"),
  };
  const state = { loaded: false, controller: null, calls: new Map() }; // call id -> its <details>

  function setStatus(text) {
    ui.status.textContent = text;
  }

  function errorText(err) {
    return err instanceof ApiError ? err.message : `Could not reach the server: ${err.message}`;
  }

  function element(tag, className, text) {
    const el = document.createElement(tag);
    if (className) el.className = className;
    if (text !== undefined) el.textContent = text;
    return el;
  }

  // ------------------------------------------------------------ the tools

  function toolOption(tool) {
    const label = element("label", "agent-tool");
    const box = document.createElement("input");
    box.type = "checkbox";
    box.value = tool.name;
    box.checked = !tool.dangerous;
    box.disabled = tool.dangerous; // no approval over HTTP: the server would refuse every call
    label.append(box, element("span", "tool-name", tool.name));
    const about = tool.dangerous
      ? `${tool.description} (asks for approval, which this page cannot give)`
      : tool.description;
    label.append(element("span", "tool-about", about.replace(/\s+/g, " ")));
    return label;
  }

  async function loadTools() {
    state.loaded = true;
    try {
      const tools = (await (await api("/v1/agents/tools")).json()).data;
      ui.tools.replaceChildren(...tools.map(toolOption));
      const none = !tools.length;
      ui.notice.hidden = !none;
      ui.notice.textContent = none
        ? "This server runs no agents. Start it with genforge serve --agent-tools " +
          "calculator,python to run them here."
        : "";
      for (const el of [ui.task, ui.style, ui.maxSteps, ui.run]) el.disabled = none;
    } catch (err) {
      state.loaded = false; // asked again next time the view opens
      setStatus(`Could not list the agent tools: ${errorText(err)}`);
    }
  }

  // ------------------------------------------------------------ the steps

  function seconds(s) {
    return `${s.toFixed(s < 10 ? 2 : 1)} s`;
  }

  function json(value) {
    return typeof value === "string" ? value : JSON.stringify(value, null, 2);
  }

  function stepItem(kind, title, stats) {
    const li = element("li", `step step-${kind}`);
    const head = element("header", "step-head");
    head.append(element("span", "role", title), element("span", "stats", stats));
    li.append(head);
    ui.steps.append(li);
    return li;
  }

  // A call as <details>: its name and arguments in the summary, the arguments and result inside.
  function callDetails(call) {
    const details = element("details", "tool-call");
    details.dataset.call = call.id;
    const summary = document.createElement("summary");
    const args = call.arguments;
    const code = args && typeof args === "object" && typeof args.code === "string";
    const brief = code ? "code" : typeof args === "string" ? args : JSON.stringify(args);
    summary.append(element("span", "call-name", call.name), element("code", "call-args", brief));
    details.append(summary);
    if (code) {
      details.append(element("p", "call-label", "Code"), element("pre", "call-code", args.code));
    } else {
      details.append(element("p", "call-label", "Arguments"), element("pre", "", json(args)));
    }
    details.append(element("p", "call-label", "Result"), element("pre", "call-result pending", "..."));
    state.calls.set(call.id, details);
    return details;
  }

  function showModel(step) {
    const tokens = `${step.completion_tokens} tokens \u00b7 ${seconds(step.seconds)}`;
    const li = stepItem("model", `Step ${step.index} \u00b7 model`, tokens);
    if (step.text.trim()) {
      const content = element("div", "content");
      content.innerHTML = renderMarkdown(step.text); // escaped there: no HTML gets through
      li.append(content);
    }
    for (const call of step.calls) li.append(callDetails(call));
  }

  function showTool(step) {
    let details = state.calls.get(step.call.id);
    if (!details) {
      // A code action's run: the model wrote code, not a call.
      const li = stepItem("tool", `Step ${step.index} \u00b7 ran the code`, "");
      details = callDetails(step.call);
      li.append(details);
    }
    const result = details.querySelector(".call-result");
    result.textContent = step.output;
    result.classList.remove("pending");
    result.classList.toggle("error", step.error);
    details.classList.toggle("failed", step.error);
    const time = element("span", "call-time", seconds(step.seconds));
    details.querySelector("summary").append(time);
  }

  function showFinal(step) {
    const reasons = {
      max_steps: "stopped at the step limit",
      max_tokens: "stopped at the token limit",
      time_limit: "stopped at the time limit",
    };
    const parts = [
      `${step.steps} step${step.steps === 1 ? "" : "s"}`,
      `${step.prompt_tokens + step.completion_tokens} tokens (${step.completion_tokens} written)`,
      seconds(step.seconds),
    ];
    if (reasons[step.reason]) parts.push(reasons[step.reason]);
    const li = stepItem("final", "Final answer", parts.join(" \u00b7 "));
    const content = element("div", "content");
    content.innerHTML = renderMarkdown(step.text || "(no answer)");
    li.append(content);
  }

  function show(step) {
    const box = ui.steps.closest(".agents");
    const atBottom = box.scrollHeight - box.scrollTop - box.clientHeight < 48;
    if (step.type === "model") showModel(step);
    else if (step.type === "tool") showTool(step);
    else if (step.type === "final") showFinal(step);
    if (atBottom) box.scrollTop = box.scrollHeight;
  }

  // ------------------------------------------------------------ a run

  function setBusy(busy) {
    ui.run.hidden = busy;
    ui.stop.hidden = !busy;
    ui.steps.setAttribute("aria-busy", String(busy));
    if (!busy) ui.task.focus();
  }

  async function run(task) {
    if (state.controller || !task.trim()) return;
    const model = chatModel();
    if (!model) {
      setStatus("No chat model is available: start the server with a chat model.");
      return;
    }
    const tools = [...ui.tools.querySelectorAll("input:checked")].map((box) => box.value);
    const { temperature, max_tokens } = samplingOptions();
    const body = {
      model,
      task,
      tools,
      style: ui.style.value,
      max_steps: Number(ui.maxSteps.value) || 8,
      stream: true,
      ...(temperature === undefined ? {} : { temperature }),
      ...(max_tokens === undefined ? {} : { max_tokens }),
    };
    const controller = new AbortController();
    state.controller = controller;
    state.calls.clear();
    ui.steps.replaceChildren();
    setBusy(true);
    setStatus("Running...");
    let final = null;
    try {
      const init = { method: "POST", body: JSON.stringify(body) };
      const res = await api("/v1/agents/runs", init, controller.signal);
      for await (const step of serverEvents(res)) {
        if (!step.type) throw new ApiError(step.error?.message || "The server reported an error.");
        show(step);
        if (step.type === "final") final = step;
      }
      setStatus(final ? "Run complete." : "The run ended without an answer.");
    } catch (err) {
      if (err.name === "AbortError") {
        setStatus("Stopped.");
      } else {
        ui.steps.append(element("li", "step error", errorText(err)));
        setStatus(errorText(err));
      }
    } finally {
      for (const pending of ui.steps.querySelectorAll(".call-result.pending")) {
        pending.textContent = "(not run)";
        pending.classList.remove("pending");
      }
      state.controller = null;
      setBusy(false);
    }
  }

  // ------------------------------------------------------------ wiring

  ui.form.addEventListener("submit", (event) => {
    event.preventDefault();
    run(ui.task.value);
  });
  ui.task.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      ui.form.requestSubmit();
    }
  });
  ui.stop.addEventListener("click", () => state.controller?.abort());
  ui.steps.addEventListener("click", (event) => {
    const button = event.target.closest("button.copy-code");
    if (button) copyText(button.closest(".code-block").querySelector("code").textContent, button);
  });
  document.addEventListener("keydown", (event) => {
    if (event.key !== "Escape" || ui.form.closest("[hidden]") || $("dialog[open]")) return;
    state.controller?.abort();
  });

  return {
    show() {
      if (!state.loaded) loadTools();
    },
    focus: ui.task,
  };
}
