// The hover inspector: what array element the pixel under the cursor shows, its exact float32
// value and its place on a colour bar; up to MAX_PINS pinned read-outs that follow new frames.
import { getJSON } from "./api.js";
import { h } from "./dom.js";
import { compactNumbers } from "./format.js";

export const MAX_PINS = 4;
// What a read-out's dataset says of the value it shows (cleared when it shows none).
const VALUE_KEYS = ["section", "name", "index", "axes", "value", "step", "kind"];
const BAR_WIDTH = 160;
const BAR_HEIGHT = 10;
const HINT = "Point at the frame to read a value; click to pin it (up to 4).";

/** The shortest decimal that reads back as the same float32 (the API's "nan"/"inf" strings as they are). */
export function float32Text(value) {
  if (typeof value !== "number") return String(value);
  for (let digits = 1; digits <= 9; digits++) {
    const text = value.toPrecision(digits);
    if (Math.fround(Number(text)) === value) return String(Number(text));
  }
  return String(value);
}

/** An array index with its axis names, like [out 3, in 0, kh 1, kw 2] (plain [3, 0, 1, 2] without names). */
export function indexText(index, axes) {
  const named = Array.isArray(axes) && axes.length === index.length;
  return `[${index.map((i, k) => (named ? `${axes[k]} ${i}` : String(i))).join(", ")}]`;
}

/** Where a value sits between a section's bounds, from 0 to 1 (null when it cannot be placed). */
export function barPosition(value, bounds) {
  if (typeof value !== "number" || !Array.isArray(bounds) || bounds.length !== 2) return null;
  const [lo, hi] = bounds.map(Number);
  if (!(hi > lo)) return 0;
  return Math.min(1, Math.max(0, (value - lo) / (hi - lo)));
}

/** Palettes by colormap name from the colormaps route: 256 "#rrggbb" strings each. */
export async function loadPalettes() {
  const maps = await getJSON("colormaps");
  const out = {};
  for (const [name, hex] of Object.entries(maps)) {
    out[name] = Array.from({ length: 256 }, (_, i) => `#${hex.slice(i * 6, i * 6 + 6)}`);
  }
  return out;
}

/** One read-out element: name, index, value and step, with the value's place on a colour bar. */
class Readout {
  constructor(className, palettes) {
    this.palettes = palettes;
    this.label = h("div", { class: "readout-text" });
    this.bar = h("canvas", { class: "colorbar", width: BAR_WIDTH, height: BAR_HEIGHT });
    this.marker = h("div", { class: "colorbar-marker", hidden: true });
    this.bounds = h("div", { class: "colorbar-bounds" });
    this.barColormap = null;
    this.barWrap = h("div", { class: "colorbar-wrap", hidden: true }, this.bar, this.marker);
    this.element = h("div", { class: className }, this.label, this.barWrap, this.bounds);
  }

  /**
   * Show a /value answer (or a message for a pixel that shows no value); kind says what its number
   * is ("variance of", "gradient of": from the header of the frame it was read from).
   */
  show(answer, x, y, message = null, kind = "") {
    const el = this.element;
    Object.assign(el.dataset, { x: String(x), y: String(y) });
    if (!answer) {
      for (const key of VALUE_KEYS) delete el.dataset[key];
      this.label.textContent = message || `(${x}, ${y}): no array value here`;
      this.barWrap.hidden = true;
      this.bounds.textContent = "";
      return;
    }
    const index = indexText(answer.index, answer.axes);
    Object.assign(el.dataset, {
      section: String(answer.section),
      name: answer.name,
      index: JSON.stringify(answer.index),
      axes: JSON.stringify(answer.axes ?? null),
      value: String(answer.value),
      step: String(answer.step),
      kind,
    });
    this.label.replaceChildren(
      kind ? h("span", { class: "readout-kind" }, `${kind} `) : "",
      h("span", { class: "readout-name" }, answer.name),
      " ",
      h("span", { class: "readout-index" }, index),
      " = ",
      h("span", { class: "readout-value" }, float32Text(answer.value)),
      " ",
      h("span", { class: "readout-step" }, `(step ${answer.step})`),
    );
    this.barWrap.hidden = false;
    this.drawBar(answer.colormap);
    const place = barPosition(answer.value, answer.bounds);
    this.marker.hidden = place === null;
    if (place !== null) this.marker.style.left = `${place * BAR_WIDTH}px`;
    const [lo, hi] = answer.bounds || [null, null];
    const [loText, hiText] = compactNumbers([lo, hi].map((v) => (v === null ? NaN : Math.fround(v))));
    this.bounds.replaceChildren(
      h("span", { class: "bound-lo" }, lo === null ? "" : loText),
      h("span", { class: "bound-hi" }, hi === null ? "" : hiText),
    );
  }

  /** Forget the value shown and show a hint instead. */
  reset(text) {
    for (const key of ["x", "y", ...VALUE_KEYS]) delete this.element.dataset[key];
    this.label.textContent = text;
    this.barWrap.hidden = true;
    this.bounds.textContent = "";
  }

  /** Paint the colour bar with a colormap's 256 colours (once per colormap). */
  drawBar(colormap) {
    const palette = this.palettes?.[colormap];
    if (!palette || colormap === this.barColormap) return;
    const ctx = this.bar.getContext("2d");
    for (let x = 0; x < BAR_WIDTH; x++) {
      ctx.fillStyle = palette[Math.min(255, Math.floor((x / (BAR_WIDTH - 1)) * 255))];
      ctx.fillRect(x, 0, 1, BAR_HEIGHT);
    }
    this.barColormap = colormap;
  }
}

/** A look-up of one pixel, at most one request in flight: newer wishes wait and replace older ones. */
class Probe {
  constructor(onAnswer) {
    this.onAnswer = onAnswer;
    this.busy = false;
    this.wanted = null; // {source, x, y} still to ask for
  }

  /**
   * Ask for pixel (x, y) of source, or for the pixel showing target ({name, index}: an element of a
   * section, wherever the layout puts it), now or as soon as the request in flight is answered.
   */
  ask(source, x, y, target = null) {
    this.wanted = { source, x, y, target };
    if (!this.busy) this.next();
  }

  /** Send the latest wish, if any; hand the answer (or error) to onAnswer. */
  async next() {
    const job = this.wanted;
    this.wanted = null;
    if (job === null) return;
    this.busy = true;
    const { source, x, y, target } = job;
    // (with a target, x and y too: the server keeps them while they still show that element)
    const where = target ? { section: target.name, index: JSON.stringify(target.index), x, y } : { x, y };
    try {
      const answer = await getJSON("value", { run: source.run, ...where, frame: source.frame ?? undefined });
      this.onAnswer(answer, job, null);
    } catch (error) {
      this.onAnswer(null, job, error.status === 404 ? null : error.message);
    } finally {
      this.busy = false;
      this.next();
    }
  }
}

/**
 * Hover read-out, crosshair and pins over the frame canvas. getSource() says what is shown:
 * {run, frame} (frame: a kept frame's name, or null for the latest); describe(answer) what a /value
 * answer's number is ("variance of"; "" when unknown).
 */
export class Inspector {
  constructor({ canvas, overlay, hoverBox, pinsBox, getSource, describe = () => "" }) {
    this.canvas = canvas;
    this.overlay = overlay;
    this.getSource = getSource;
    this.describe = describe;
    this.palettes = null;
    this.hover = new Readout("readout hover-readout", null);
    this.hover.element.id = "readout";
    this.hover.reset(HINT);
    this.hoverAt = null; // the pixel under the mouse (null when it is off the frame)
    this.readAt = null; // the pixel the hover read-out shows: kept up to date with new frames, mouse or not
    this.hoverProbe = new Probe((answer, job, error) => this.hoverAnswer(answer, job, error));
    this.pins = [];
    this.pinsBox = pinsBox;
    this.crossX = h("div", { class: "cross cross-x", hidden: true });
    this.crossY = h("div", { class: "cross cross-y", hidden: true });
    this.overlay.append(this.crossX, this.crossY);
    hoverBox.replaceChildren(this.hover.element);
    canvas.addEventListener("mousemove", (event) => this.move(event));
    canvas.addEventListener("mouseleave", () => this.leave());
    canvas.addEventListener("click", (event) => this.pinAt(this.pixelOf(event)));
    document.addEventListener("keydown", (event) => {
      if (event.key === "Escape" && this.pins.length) this.unpin(this.pins[this.pins.length - 1]);
    });
    loadPalettes()
      .then((palettes) => {
        this.palettes = palettes;
        for (const readout of [this.hover, ...this.pins.map((p) => p.readout)]) readout.palettes = palettes;
      })
      .catch(() => {}); // without palettes the bars stay blank; the values still show
  }

  /** The frame pixel under a mouse event. */
  pixelOf(event) {
    const rect = this.canvas.getBoundingClientRect();
    const scale = this.canvas.width / Math.max(1, rect.width);
    const x = Math.min(this.canvas.width - 1, Math.max(0, Math.floor((event.clientX - rect.left) * scale)));
    const y = Math.min(this.canvas.height - 1, Math.max(0, Math.floor((event.clientY - rect.top) * scale)));
    return { x, y };
  }

  /** The mouse moved: crosshair to the pixel, and ask for its value. */
  move(event) {
    const { x, y } = this.pixelOf(event);
    if (this.hoverAt && this.hoverAt.x === x && this.hoverAt.y === y) return;
    this.hoverAt = this.readAt = { x, y };
    this.placeCross();
    this.hoverProbe.ask(this.getSource(), x, y);
  }

  /** The mouse left the frame: hide the crosshair (the last read-out stays, and follows new frames). */
  leave() {
    this.hoverAt = null;
    this.crossX.hidden = this.crossY.hidden = true;
  }

  /** Show a hover answer, unless it belongs to a run no longer shown. */
  hoverAnswer(answer, job, error) {
    if (job.source.run !== this.getSource().run) return; // asked before another run was chosen
    this.hover.show(answer, job.x, job.y, error, answer ? this.describe(answer) : "");
  }

  /** Put the crosshair through the centre of the hovered pixel and the pin markers on theirs. */
  placeCross() {
    const scale = this.canvas.getBoundingClientRect().width / Math.max(1, this.canvas.width);
    if (this.hoverAt) {
      this.crossX.hidden = this.crossY.hidden = false;
      this.crossX.style.top = `${(this.hoverAt.y + 0.5) * scale}px`;
      this.crossY.style.left = `${(this.hoverAt.x + 0.5) * scale}px`;
    }
    for (const pin of this.pins) {
      pin.marker.style.left = `${(pin.x + 0.5) * scale}px`;
      pin.marker.style.top = `${(pin.y + 0.5) * scale}px`;
    }
  }

  /** Pin a read-out at pixel (x, y), unless MAX_PINS are pinned already. */
  pinAt({ x, y }) {
    if (this.pins.length >= MAX_PINS) {
      this.hover.label.textContent = `At most ${MAX_PINS} pins: click a pin (or press Escape) to remove one.`;
      return;
    }
    const number = [1, 2, 3, 4].find((n) => !this.pins.some((p) => p.number === n));
    const readout = new Readout("readout pin", this.palettes);
    // A pin holds the element it was put on (section name and index, from its first answer): it
    // follows that element when the layout moves it (section heights, filters, show all).
    const pin = { x, y, number, readout, marker: null, target: null };
    pin.probe = new Probe((answer, job, error) => this.pinAnswer(pin, answer, job, error));
    readout.element.dataset.pin = String(number);
    readout.element.title = "Click to remove this pin";
    readout.element.prepend(h("span", { class: "pin-number" }, String(number)));
    readout.element.addEventListener("click", () => this.unpin(pin));
    pin.marker = h("div", { class: "pin-marker", title: `pin ${number}: click to remove` }, String(number));
    pin.marker.addEventListener("click", () => this.unpin(pin));
    this.pins.push(pin);
    this.overlay.append(pin.marker);
    this.pinsBox.append(readout.element);
    this.placeCross();
    pin.probe.ask(this.getSource(), x, y);
  }

  /** Show a pin's answer; the first one fixes its element, later ones move it to where that element is. */
  pinAnswer(pin, answer, job, error) {
    if (!this.pins.includes(pin)) return;
    if (answer && pin.target === null) pin.target = { name: answer.name, index: answer.index };
    if (answer && Number.isInteger(answer.x) && Number.isInteger(answer.y)) {
      pin.x = answer.x;
      pin.y = answer.y;
      this.placeCross();
    }
    if (!answer && job.target && !error) {
      error = `${job.target.name} ${indexText(job.target.index)}: not shown in this frame's layout`;
    }
    pin.readout.show(answer, pin.x, pin.y, error, answer ? this.describe(answer) : "");
    pin.marker.hidden = !answer && Boolean(job.target);
  }

  /** Remove a pin: its marker and its read-out. */
  unpin(pin) {
    this.pins = this.pins.filter((p) => p !== pin);
    pin.marker.remove();
    pin.readout.element.remove();
  }

  /** A new frame is on screen (live or kept): ask again for every pin and the hovered pixel. */
  refresh() {
    const source = this.getSource();
    for (const pin of this.pins) pin.probe.ask(source, pin.x, pin.y, pin.target);
    const at = this.hoverAt || this.readAt;
    if (at) this.hoverProbe.ask(source, at.x, at.y);
    this.placeCross();
  }

  /** Another run: drop the pins, which point into the other run's frames. */
  clear() {
    for (const pin of [...this.pins]) this.unpin(pin);
    this.leave();
    this.readAt = null;
    this.hover.reset(HINT);
  }
}
