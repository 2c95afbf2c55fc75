// Why a variance frame is black: its window holds one frame (the run's first, or a section changed
// shape and the window started again), so every value's variance is 0. Said above the frame, with a
// button to show the current values instead.
import { h } from "./dom.js";
import { shape } from "./format.js";

/** The note's sentence for a section table's "window" ({frames, size, changed}), or "" when none is due. */
export function windowNoteText(window) {
  if (!window || window.frames !== 1) return "";
  const zero = "Variance over 1 frame: every value reads 0, so the sections are black.";
  const changed = window.changed;
  if (!changed) {
    return `${zero} The window fills as frames arrive (up to ${window.size}); the next frame shows a variance.`;
  }
  const others = changed.sections - 1;
  const also = others > 0 ? ` (and ${others} other section${others === 1 ? "" : "s"})` : "";
  return `${zero} The window started again because "${changed.name}" changed shape, ` +
    `${shape(changed.was)} → ${shape(changed.now)}${also}. ` +
    "Arrays whose shape changes every frame, like text of varying length, never build a variance.";
}

export class WindowNote {
  /** onShowCurrent() switches Mode to current values. */
  constructor(onShowCurrent) {
    this.text = h("span", { id: "window-note-text" });
    this.button = h("button", { type: "button", id: "window-note-current", onclick: () => onShowCurrent() },
      "Show current values");
    this.element = h("div", { class: "offer window-note", id: "window-note", role: "status", hidden: true },
      this.text, " ", this.button);
  }

  /** Show the note for this table's window (a section table's "window"; null: hide it). */
  show(window) {
    const text = windowNoteText(window);
    this.element.hidden = !text;
    this.text.textContent = text;
    // (the run's first frame fills the window by itself: no reason to switch mode for it)
    this.button.hidden = !window?.changed;
  }
}
