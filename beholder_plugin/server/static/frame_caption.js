// What a frame's numbers are, said wherever they are shown: the caption above the frame and its info
// panel ("Gradients · variance over 15 frames"), the hover read-out's prefix ("variance of"), a kept
// frame drawn with other Values or Mode than chosen now, and the compare view's note when A and B
// differ. Every word comes from the frame's own header (its values, mode and variance window), never
// from the settings the toolbar shows: a frame keeps what it was drawn with.
import { h } from "./dom.js";
import { VALUES_NAMES } from "./format.js";

// The Values choices as a caption names them.
const CAPTION_NAMES = {
  trainable_variables: "Weights",
  gradients: "Gradients",
  activations: "Activations",
  arrays: "Arrays",
  frames: "Image passed to update(frame=...)",
};
// What one element of each Values choice is, for the read-out ("gradient of 0.weight").
const ELEMENT_NAMES = { gradients: "gradient", activations: "activation" };
const MODE_NAMES = { current: "current values", variance: "variance" };

/** A Mode in words: "current values", "variance over 15 frames" (window: the table's, may be null). */
export function modeText(mode, window = null) {
  if (mode !== "variance") return MODE_NAMES[mode] || mode || "";
  const frames = window?.frames;
  if (!Number.isInteger(frames)) return "variance";
  const of = Number.isInteger(window.size) && frames < window.size ? ` (of ${window.size})` : "";
  return `variance over ${frames} frame${frames === 1 ? "" : "s"}${of}`;
}

/** What a frame shows, for its caption: "Weights · current values"; "" for a placeholder. */
export function frameKindText(values, mode, window = null) {
  if (!values || values === "placeholder") return "";
  const name = CAPTION_NAMES[values] || values;
  const how = values === "frames" ? "" : modeText(mode, window);
  return how ? `${name} · ${how}` : name;
}

/** The read-out's words before a section name: "variance of", "gradient of", "value of" ("" unknown). */
export function readoutPrefix(values, mode) {
  if (!values || values === "frames" || values === "placeholder") return "";
  const element = ELEMENT_NAMES[values];
  if (mode === "variance") return element ? `${element} variance of` : "variance of";
  if (mode === "current") return element ? `${element} of` : "value of";
  return element ? `${element} of` : "";
}

/**
 * The note on a kept frame drawn with other Values or Mode than the controls choose now (config),
 * or "" when none is due (a live frame, or one that matches).
 */
export function keptNoteText(meta, config) {
  if (!meta?.kept || !config || !meta.values || meta.values === "placeholder") return "";
  const parts = [];
  if (meta.values !== config.values) parts.push(`Values is now ${VALUES_NAMES[config.values] || config.values}`);
  if (meta.values !== "frames" && meta.mode && meta.mode !== config.mode) {
    parts.push(`Mode is now ${MODE_NAMES[config.mode] || config.mode}`);
  }
  return parts.length ? `kept frame: ${parts.join(", ")} (for new frames)` : "";
}

/**
 * The compare view's note when A and B are of the same values but not the same mode (their numbers
 * measure different things), or "" when none is due. a, b: {run, meta, window}.
 */
export function compareModesText(a, b) {
  const { values } = a.meta;
  if (!values || values !== b.meta.values || values === "frames" || values === "placeholder") return "";
  if (!a.meta.mode || !b.meta.mode || a.meta.mode === b.meta.mode) return "";
  return `A shows ${modeText(a.meta.mode, a.window)} and B ${modeText(b.meta.mode, b.window)}: ` +
    "their colours and numbers are not comparable (set the same Mode in both runs)";
}

/** The caption above the frame and its info panel. */
export class FrameCaption {
  constructor() {
    this.text = h("span", { class: "frame-kind", id: "frame-kind" });
    this.keptNote = h("span", { class: "kept-note", id: "kept-note", hidden: true });
    this.element = h("div", { class: "frame-caption", id: "frame-caption", hidden: true }, this.text, this.keptNote);
    this.meta = null;
    this.window = null; // the variance window of the latest section table (its frame's header)
  }

  /** Forget the frame (another run is shown). */
  clear() {
    this.meta = null;
    this.window = null;
    this.render(null);
  }

  /** A frame is on screen: its meta (values, mode, kept) and the run's settings (config). */
  show(meta, config) {
    this.meta = meta;
    this.render(config);
  }

  /**
   * A section table came (section-info): its window is the frame on screen's when it names that
   * frame; for a live frame, one of a newer frame stands in until then (the window changes only as it
   * fills). A kept frame keeps its own: the live frame's window is not the one it was drawn with.
   */
  noteTable(doc, config) {
    const meta = this.meta;
    const same = meta && doc.frame_id === meta.frameId && (doc.writer ?? meta.writer) === meta.writer;
    if (same || (doc.window && !meta?.kept)) this.window = doc.window ?? null;
    this.render(config);
  }

  render(config) {
    const meta = this.meta;
    const text = meta ? frameKindText(meta.values, meta.mode, meta.mode === "variance" ? this.window : null) : "";
    this.element.hidden = !text;
    this.element.dataset.values = meta?.values ?? "";
    this.element.dataset.mode = meta?.mode ?? "";
    if (this.text.textContent !== text) this.text.textContent = text;
    const note = keptNoteText(meta, config);
    this.keptNote.hidden = !note;
    if (this.keptNote.textContent !== note) this.keptNote.textContent = note;
  }
}
