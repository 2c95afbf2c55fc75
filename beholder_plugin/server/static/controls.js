// The toolbar: the original Beholder's controls, with its labels and ranges,
// plus the run selector, zoom and download. Every change goes to onChange(changes).
import { h } from "./dom.js";

const COLORMAPS = ["magma", "inferno", "plasma", "viridis", "grayscale"];

function radioGroup(name, title, options, onChange) {
  const inputs = options.map(([value, label, tooltip]) =>
    h(
      "label",
      { class: "choice", title: tooltip || null },
      h("input", {
        type: "radio",
        name,
        value,
        "data-key": name,
        onchange: () => onChange({ [name]: value }),
      }),
      label,
    ),
  );
  return h("fieldset", { class: "group", id: `${name}-group` }, h("legend", {}, title), inputs);
}

function slider(id, key, label, min, max, onChange) {
  const value = h("span", { class: "slider-value", id: `${id}-value` }, "");
  const input = h("input", {
    type: "range",
    id,
    min,
    max,
    step: 1,
    "data-key": key,
    "aria-label": label,
  });
  input.addEventListener("input", () => (value.textContent = input.value));
  input.addEventListener("change", () => onChange({ [key]: Number(input.value) }));
  return h("div", { class: "slider" }, h("label", { for: id }, `${label}: `, value), input);
}

/** Build the toolbar; returns {element, apply(config), setEnabled(bool), ...handles}. */
export function buildToolbar({ onChange, onRun, onZoom, onDownload }) {
  const runSelect = h("select", { id: "run-select", "aria-label": "Run", onchange: () => onRun(runSelect.value) });
  const showAll = h("input", {
    type: "checkbox",
    id: "show-all",
    "data-key": "show_all",
    onchange: () => onChange({ show_all: showAll.checked }),
  });
  const colormap = h(
    "select",
    {
      id: "colormap",
      "data-key": "colormap",
      "aria-label": "Colormap",
      onchange: () => onChange({ colormap: colormap.value }),
    },
    COLORMAPS.map((name) => h("option", { value: name }, name)),
  );
  const record = h("button", {
    id: "record",
    class: "record",
    type: "button",
    "data-key": "is_recording",
    onclick: () => onChange({ is_recording: record.dataset.recording !== "true" }),
  });
  const zoom = h(
    "select",
    { id: "zoom", "aria-label": "Zoom", onchange: () => onZoom(zoom.value) },
    h("option", { value: "1" }, "1:1"),
    h("option", { value: "2" }, "2:1"),
    h("option", { value: "fit" }, "fit width"),
  );
  const download = h(
    "button",
    { id: "download", type: "button", class: "plain", onclick: () => onDownload() },
    "Download frame (PNG)",
  );
  const readOnlyNote = h(
    "p",
    { class: "note", id: "read-only-note", hidden: true },
    "TensorBoard cannot write to this run's directory, so these settings are shown but cannot be changed here.",
  );
  const errorNote = h("p", { class: "error", id: "config-error", role: "alert", hidden: true });
  const problemNote = h("p", { class: "note", id: "config-problem", hidden: true });

  const element = h(
    "aside",
    { class: "toolbar" },
    h("div", { class: "group" }, h("label", { class: "legend", for: "run-select" }, "Run"), runSelect),
    radioGroup(
      "values",
      "Values",
      [
        ["trainable_variables", h("code", {}, "tf.trainable_variables()")],
        ["arrays", h("code", {}, "b.update(arrays=[2D_ARRAYS])")],
        ["frames", h("code", {}, "b.update(frame=2D_ARRAY)")],
      ],
      onChange,
    ),
    h(
      "label",
      { class: "choice show-all" },
      showAll,
      "Show all data ",
      h("em", {}, "(can be resource intensive)"),
    ),
    radioGroup(
      "mode",
      "Mode",
      [
        ["current", "current values"],
        ["variance", "variance over train steps"],
      ],
      onChange,
    ),
    slider("window-size", "window_size", "Variance timesteps", 2, 20, onChange),
    radioGroup(
      "scaling",
      "Image scaling",
      [
        ["layer", "per section", "Scale each section on its own: its smallest value is the darkest colour, its largest the brightest."],
        ["network", "all sections", "Scale all sections together: the smallest value of any section is the darkest colour, the largest the brightest."],
      ],
      onChange,
    ),
    h("div", { class: "group" }, h("label", { class: "legend", for: "colormap" }, "Colormap"), colormap),
    slider("fps", "FPS", "Updates per second", 0, 30, onChange),
    h("div", { class: "group" }, record),
    h(
      "div",
      { class: "group view" },
      h("label", { class: "legend", for: "zoom" }, "Zoom"),
      zoom,
      download,
    ),
    readOnlyNote,
    problemNote,
    errorNote,
  );

  const configInputs = () => element.querySelectorAll("[data-key]");

  function apply(config) {
    for (const input of element.querySelectorAll("input[type=radio]")) {
      input.checked = config[input.name] === input.value;
    }
    showAll.checked = Boolean(config.show_all);
    colormap.value = config.colormap;
    for (const [id, key] of [["window-size", "window_size"], ["fps", "FPS"]]) {
      const input = element.querySelector(`#${id}`);
      input.value = String(config[key]);
      element.querySelector(`#${id}-value`).textContent = String(config[key]);
    }
    record.dataset.recording = String(Boolean(config.is_recording));
    record.textContent = config.is_recording ? "stop recording" : "start recording";
  }

  function setEnabled(enabled) {
    for (const input of configInputs()) input.disabled = !enabled;
    readOnlyNote.hidden = enabled;
  }

  function showError(message) {
    errorNote.textContent = message || "";
    errorNote.hidden = !message;
  }

  function showProblem(message) {
    problemNote.textContent = message ? `config.json on disk is not valid (${message}); showing the defaults.` : "";
    problemNote.hidden = !message;
  }

  function setRuns(runs, selected) {
    const names = runs.map((r) => r.run);
    const current = Array.from(runSelect.options).map((o) => o.value);
    if (names.join("\n") !== current.join("\n")) {
      runSelect.replaceChildren(...names.map((name) => h("option", { value: name }, name)));
    }
    if (selected !== null) runSelect.value = selected;
  }

  return { element, apply, setEnabled, showError, showProblem, setRuns, zoom };
}
