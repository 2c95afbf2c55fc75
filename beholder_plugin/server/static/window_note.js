// Why a variance frame is black: its window holds one frame (the run's first, or a section changed
// shape and the window started again), so every value's variance is 0. Said above the frame, with a
// button to show the current values instead.
import { h } from "./dom.js";
import { shape } from "./format.js";

/**
 * The note's sentence for a section table's "window" ({frames, size, changed}), or "" when none is due;
 * ended: the training ended on this frame, so no frame follows it.
 */
export function windowNoteText(window, ended = false) {
  if (!window || window.frames !== 1) return "";
  const zero = "Variance over 1 frame: every value reads 0, so the sections are black.";
  const changed = window.changed;
  if (ended && !changed) {
    return `${zero} Training ended on this frame, so no variance follows: show current values ` +
      "(for the trainer's next run) to see the values themselves.";
  }
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
    this.window = window;
    this.render();
  }

  /** Say whether the training ended on the frame shown (the run's status, which may come later). */
  setEnded(ended) {
    if (ended === Boolean(this.ended)) return;
    this.ended = ended;
    this.render();
  }

  /** Bring the note up to date. */
  render() {
    const text = windowNoteText(this.window, this.ended);
    this.element.hidden = !text;
    this.text.textContent = text;
    // (the run's first frame fills the window by itself: no reason to switch mode for it, unless the
    // training ended there: then the button sets Mode for its next run)
    this.button.hidden = !this.window?.changed && !this.ended;
  }
}
