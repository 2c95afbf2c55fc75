// The toolbar: the original Beholder's controls, with its labels and ranges,
// plus the run selector, zoom and download. Every change goes to onChange(changes).
import { h } from "./dom.js";

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
  input.addEventListener("input", () => {
    value.textContent = input.value;
    const frames = document.getElementById("variance-frames");
    if (key === "window_size" && frames) frames.textContent = input.value;
  });
  input.addEventListener("change", () => onChange({ [key]: Number(input.value) }));
  return h("div", { class: "slider" }, h("label", { for: id }, `${label}: `, value), input);
}

/** The Run and Compare-with selectors. */
function runGroups({ onRun, onCompare }) {
  const runSelect = h("select", { id: "run-select", "aria-label": "Run", onchange: () => onRun(runSelect.value) });
  const compareSelect = h("select", {
    id: "compare-select",
    "aria-label": "Compare with",
    onchange: () => onCompare(compareSelect.value || null),
  });
  const elements = [
    h("div", { class: "group" }, h("label", { class: "legend", for: "run-select" }, "Run"), runSelect),
    h("div", { class: "group" }, h("label", { class: "legend", for: "compare-select" }, "Compare with"), compareSelect),
  ];
  return { elements, runSelect, compareSelect };
}

// The views the View choice offers: [value, label]. A new view adds a row here and an element in the dashboard.
const VIEWS = [["frame", "Frame"], ["distributions", "Distributions"]];

/** The View choice: the frame or another view. */
function viewGroup({ onView }) {
  const choice = h(
    "div",
    { class: "view-choice", id: "view-choice", role: "radiogroup", "aria-label": "View" },
    VIEWS.map(([value, label]) =>
      h("label", { class: "choice" },
        h("input", { type: "radio", name: "view", value, checked: value === "frame", onchange: () => onView(value) }),
        label)),
  );
  return h("fieldset", { class: "group", id: "view-group" }, h("legend", {}, "View"), choice);
}

/** Values: which values are shown, and "Show all data". */
function valuesGroups({ onChange }) {
  const values = radioGroup(
    "values",
    "Values",
    [
      ["trainable_variables", "Trainable variables (model weights)",
        "The original's tf.trainable_variables(): the variables (or model) given to Beholder() or update()"],
      ["gradients", "Gradients", "The gradients of the trainable variables, as the training step computes them"],
      ["activations", "Activations", "The layers' outputs (activations) of the latest batch"],
      ["arrays", h("span", {}, "Arrays passed to ", h("code", {}, "update(arrays=...)")),
        "The original's b.update(arrays=[2D_ARRAYS]): any arrays you pass"],
      ["frames", h("span", {}, "Image passed to ", h("code", {}, "update(frame=...)")),
        "The original's b.update(frame=2D_ARRAY): a 2-D array or an RGB image you pass"],
    ],
    onChange,
  );
  const showAll = h("input", {
    type: "checkbox",
    id: "show-all",
    "data-key": "show_all",
    onchange: () => onChange({ show_all: showAll.checked }),
  });
  const showAllChoice = h(
    "label",
    { class: "choice show-all" },
    showAll,
    "Show all data ",
    h("em", {}, "(can be resource intensive)"),
  );
  return { elements: [values, showAllChoice], showAll };
}

/** Mode (current values or variance) and the variance window. */
function modeGroups({ onChange }) {
  const mode = radioGroup(
    "mode",
    "Mode",
    [
      ["current", "current values"],
      ["variance", h("span", {}, "variance over the last ", h("span", { id: "variance-frames" }, "15"), " frames rendered"),
        "The original's \"variance over train steps\": the window covers the frames Beholder rendered, not every train step"],
    ],
    onChange,
  );
  return [mode, slider("window-size", "window_size", "Variance window (frames rendered)", 2, 20, onChange)];
}

/** How values become colours and pixels: scaling, colormap (filled from the colormaps route) and section height. */
function lookGroups({ onChange }) {
  const scaling = radioGroup(
    "scaling",
    "Image scaling",
    [
      ["layer", "per section", "Scale each section on its own: its smallest value is the darkest colour, its largest the brightest."],
      ["network", "all sections", "Scale all sections together: the smallest value of any section is the darkest colour, the largest the brightest."],
    ],
    onChange,
  );
  const colormap = h("select", {
    id: "colormap",
    "data-key": "colormap",
    "aria-label": "Colormap",
    onchange: () => onChange({ colormap: colormap.value }),
  });
  const sectionSize = radioGroup(
    "section_size",
    "Section height",
    [
      ["fixed", "fixed 128 px (the original)", "Every section is 128 pixels tall, as in the original Beholder"],
      ["proportional", "proportional", "Taller sections for larger arrays"],
    ],
    onChange,
  );
  const colormapGroup = h("div", { class: "group" }, h("label", { class: "legend", for: "colormap" }, "Colormap"), colormap);
  return { elements: [scaling, colormapGroup, sectionSize], colormap };
}

/** Updates per second and the record button. */
function rateGroups({ onChange }) {
  const record = h("button", {
    id: "record",
    class: "record",
    type: "button",
    "data-key": "is_recording",
    onclick: () => onChange({ is_recording: record.dataset.recording !== "true" }),
  });
  return { elements: [slider("fps", "FPS", "Updates per second", 0, 30, onChange), h("div", { class: "group" }, record)], record };
}

/** Zoom and the frame download. */
function zoomGroup({ onZoom, onDownload }) {
  const zoom = h(
    "select",
    { id: "zoom", "aria-label": "Zoom", onchange: () => onZoom(zoom.value) },
    h("option", { value: "1", title: "frames under 768 px shown larger by a whole factor" }, "1:1 (small ones larger)"),
    h("option", { value: "2" }, "2:1"),
    h("option", { value: "fit" }, "fit width"),
  );
  const download = h(
    "button",
    { id: "download", type: "button", class: "plain", onclick: () => onDownload() },
    "Download frame (PNG)",
  );
  return { element: h("div", { class: "group view" }, h("label", { class: "legend", for: "zoom" }, "Zoom"), zoom, download), zoom };
}

/** The notes under the controls: no runs, read-only, the refused change, the broken config.json. */
function notes() {
  return {
    noRunsNote: h(
      "p",
      { class: "note", id: "no-runs-note", hidden: true },
      "No runs yet: these settings belong to a run, so they can be changed once a training script " +
        "has created one with Beholder(\"<logdir>/run1\").",
    ),
    readOnlyNote: h(
      "p",
      { class: "note", id: "read-only-note", hidden: true },
      "TensorBoard cannot write to this run's directory, so these settings are shown but cannot be changed here.",
    ),
    problemNote: h("p", { class: "note", id: "config-problem", hidden: true }),
    errorNote: h("p", { class: "error", id: "config-error", role: "alert", hidden: true }),
  };
}

/** Build the toolbar; returns {element, apply(config), setEnabled(bool), ...handles}. */
export function buildToolbar(handlers) {
  const { onCompare } = handlers;
  const { elements: runElements, runSelect, compareSelect } = runGroups(handlers);
  const { elements: valuesElements, showAll } = valuesGroups(handlers);
  const { elements: lookElements, colormap } = lookGroups(handlers);
  const { elements: rateElements, record } = rateGroups(handlers);
  const { element: zoomElement, zoom } = zoomGroup(handlers);
  const { noRunsNote, readOnlyNote, problemNote, errorNote } = notes();
  const element = h(
    "aside",
    { class: "toolbar" },
    ...runElements,
    viewGroup(handlers),
    ...valuesElements,
    ...modeGroups(handlers),
    ...lookElements,
    ...rateElements,
    zoomElement,
    noRunsNote,
    readOnlyNote,
    problemNote,
    errorNote,
  );

  const configInputs = () => element.querySelectorAll("[data-key]");

  /** Show a config in the controls, except the keys in skip (changed by the user since it was read). */
  function apply(config, skip = new Set()) {
    for (const input of element.querySelectorAll("input[type=radio][data-key]")) {
      if (!skip.has(input.name)) input.checked = config[input.name] === input.value;
    }
    if (!skip.has("show_all")) showAll.checked = Boolean(config.show_all);
    if (!skip.has("colormap")) colormap.value = config.colormap;
    for (const [id, key] of [["window-size", "window_size"], ["fps", "FPS"]]) {
      if (skip.has(key)) continue;
      element.querySelector(`#${id}`).value = String(config[key]);
      element.querySelector(`#${id}-value`).textContent = String(config[key]);
    }
    element.querySelector("#variance-frames").textContent = element.querySelector("#window-size").value;
    if (!skip.has("is_recording")) {
      record.dataset.recording = String(Boolean(config.is_recording));
      record.textContent = config.is_recording ? "stop recording" : "start recording";
    }
  }

  /** Enable or disable the settings; reason "read-only" or "no-runs" says why they are off. */
  function setEnabled(enabled, reason = "read-only") {
    for (const input of configInputs()) input.disabled = !enabled;
    readOnlyNote.hidden = enabled || reason !== "read-only";
    noRunsNote.hidden = enabled || reason !== "no-runs";
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
    const wanted = compareSelect.value;
    const others = names.filter((name) => name !== selected);
    const shown = Array.from(compareSelect.options).map((o) => o.value);
    // (compared as JSON: joined with newlines, an empty select and one of "" alone read the same)
    if (JSON.stringify(["", ...others]) !== JSON.stringify(shown)) {
      compareSelect.replaceChildren(
        h("option", { value: "" }, others.length ? "(nothing)" : "(no other run)"),
        ...others.map((name) => h("option", { value: name }, name)),
      );
      compareSelect.disabled = others.length === 0;
      compareSelect.value = others.includes(wanted) ? wanted : "";
      if (compareSelect.value !== wanted) onCompare(compareSelect.value || null);
    }
  }

  /** Offer these colormaps (the colormaps route's names, in order) and show config's (null: none yet). */
  function setColormaps(names, config) {
    colormap.replaceChildren(...names.map((name) => h("option", { value: name }, name)));
    if (config?.colormap) colormap.value = config.colormap;
  }

  /** Put a group right after the Values choices. */
  function addAfterValues(group) {
    element.querySelector("#values-group").after(group);
  }

  return {
    element, apply, setEnabled, showError, showProblem, setRuns, setColormaps, zoom, compareSelect,
    addGroup: (group) => element.append(group), addAfterValues,
  };
}
