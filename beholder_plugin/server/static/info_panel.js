// The info panel beside the frame: one entry per section (name, shape, range, mean, NaN/Inf flags),
// at the section's height on screen, from the frame's section table.
import { getJSON } from "./api.js";
import { h } from "./dom.js";
import { sci, shape, shortName } from "./format.js";
import { percent } from "./distributions.js";
import { nonFiniteFlag } from "./sections.js";

const SEPARATOR_PX = 5; // rows between sections (docs/protocol.md)
const INFO_EVERY_MS = 250; // section statistics refresh at most this often
// Which lines of an entry a short section keeps, first to last: its name always, then these; the
// lines that do not fit its rows are left out (all of them show on hover).
const LINE_RANK = ["name", "flag", "missing-note", "shape", "minmax", "mean", "range", "sample-note"];
const MIN_NAME_PX = 8; // a name shrinks no smaller than this to fit a section shorter than its line
// Names too wide for their line as shown ("font|width|name" to text), and the canvas that measured them:
// the side text is drawn again each frame, a name is measured once per font and width.
const SHOWN_NAMES = new Map();
let measurer = null;

export class InfoPanel {
  /**
   * state: the dashboard's state (run, kept); canvas: the frame's canvas; onSections(doc, sections,
   * kept) gets each new section table of the run shown.
   */
  constructor(state, canvas, onSections) {
    Object.assign(this, { state, canvas, onSections });
    this.element = h("div", { class: "info", id: "info" });
    this.flagLayer = h("div", { class: "flag-layer", id: "flag-layer" });
    // When no section has values, for one reason: that reason in full, once, above the frame (the
    // bands and their notes are only as tall as a section, and cut it short).
    this.missingAll = h("div", { class: "offer missing-all", id: "missing-all", role: "status", hidden: true });
    this.sections = [];
    this.key = null; // "writer-frameId" of the frame whose table is shown
    this.timer = null;
    this.fetchedAt = 0;
  }

  /** Forget the sections (another run is shown). */
  clear() {
    this.sections = [];
    this.key = null;
    this.element.replaceChildren();
    this.flagLayer.replaceChildren();
    this.missingAll.hidden = true;
  }

  /** Fetch the section statistics for new frames, at most every INFO_EVERY_MS. */
  schedule(meta, urgent, lastWriter) {
    if (meta.values === "frames" || meta.values === "placeholder") {
      this.sections = [];
      this.key = null;
      this.render();
      return;
    }
    const key = `${meta.writer}-${meta.frameId}`;
    if (key === this.key || this.timer !== null) return;
    const wait = urgent ? 0 : Math.max(0, this.fetchedAt + INFO_EVERY_MS - performance.now());
    this.timer = setTimeout(() => this.fetch(meta.kept, lastWriter), wait);
  }

  async fetch(kept, lastWriter) {
    const run = this.state.run;
    this.fetchedAt = performance.now();
    try {
      const doc = await getJSON("section-info", { run, frame: kept || undefined });
      if (run !== this.state.run || (kept || null) !== (this.state.kept || null)) return;
      this.sections = (doc.sections || []).map(decodeHistogram);
      this.onSections(doc, this.sections, kept);
      // The table comes from the latest frame's own header: keyed by that frame's writer and id, so
      // it is fetched again only when another frame is shown (schedule compares the keys).
      this.key = `${doc.writer ?? lastWriter()}-${doc.frame_id}`;
      this.render();
    } catch (_) {
      // the next frame schedules another try
    } finally {
      this.timer = null;
    }
  }

  /** Say in full, once, why no section has values, when they all have none for the same reason. */
  renderMissingAll() {
    const reasons = new Set(this.sections.map((section) => section.missing));
    const [reason] = reasons;
    const all = this.sections.length > 0 && reasons.size === 1 && Boolean(reason);
    this.missingAll.hidden = !all;
    const count = this.sections.length;
    const which = count === 1 ? "The one section has no values" : `None of the ${count} sections has values`;
    this.missingAll.textContent = all ? `${which} to show: ${reason}` : "";
  }

  /** Lay out one info entry beside each section, at the section's height on screen. */
  render() {
    this.renderMissingAll();
    const canvas = this.canvas;
    const scale = canvas.height > 1 ? canvas.getBoundingClientRect().height / canvas.height : 1;
    let top = 0;
    const entries = [];
    const outlines = [];
    for (const section of this.sections) {
      const height = Number(section.height) || 0;
      const style = `top:${top * scale}px;height:${height * scale}px`;
      if (section.missing) {
        // A section with nothing to show this frame: a black band, and why, on it and beside it.
        outlines.push(h("div", { class: "missing-label", dataset: { name: section.name }, style },
          `${section.name}: ${section.missing}`));
        entries.push(h("div", { class: "section-info missing", style, dataset: { name: section.name } },
          h("div", { class: "name", title: section.name }, section.name),
          h("div", { class: "missing-note", title: section.missing }, `no values: ${section.missing}`)));
      } else {
        const flag = nonFiniteFlag(section.stats);
        if (flag) outlines.push(h("div", { class: "flag-outline", dataset: { name: section.name }, style }));
        entries.push(sectionEntry(section, flag, style));
      }
      top += height + SEPARATOR_PX;
    }
    this.element.style.height = `${canvas.height * scale}px`;
    this.element.replaceChildren(...entries);
    this.flagLayer.replaceChildren(...outlines);
    fitEntries(entries);
    fitNames(entries);
  }
}

/** Keep each entry within its section's rows: a taller one ("cut") keeps its name and what fits, the rest "spare". */
function fitEntries(entries) {
  // All reads, then all writes, twice: two layouts however many sections.
  const over = entries.filter((entry) => entry.scrollHeight > entry.clientHeight + 0.5);
  for (const entry of over) entry.classList.add("cut"); // one-line flag and reason: measured below
  const plans = over.map((entry) => {
    let room = entry.getBoundingClientRect().height;
    const lines = [...entry.children].sort((a, b) => rank(a) - rank(b));
    const heights = lines.map((line) => line.getBoundingClientRect().height);
    const nameSize = heights[0] > room ? Math.max(MIN_NAME_PX, (12 * room) / heights[0]) : null;
    room -= heights[0];
    const spare = [];
    for (let i = 1; i < lines.length; i += 1) {
      if (heights[i] <= room + 0.5) room -= heights[i];
      else spare.push(lines[i]);
    }
    return { entry, name: lines[0], nameSize, spare };
  });
  for (const { entry, name, nameSize, spare } of plans) {
    if (nameSize) name.style.fontSize = `${nameSize}px`;
    for (const line of spare) line.classList.add("spare");
    entry.dataset.spare = String(spare.length);
    if (spare.length) {
      // Reachable by Tab too: focus shows the left-out lines as hover does.
      entry.tabIndex = 0;
      entry.setAttribute("aria-label", [...entry.children].map(fullText).join(", "));
    }
  }
}

/** A line's whole text: a name's in full (its title), whatever it shows. */
function fullText(line) {
  return line.classList.contains("name") ? line.title : line.textContent;
}

/**
 * Make each name wider than its line fit it and keep its end, where names differ
 * ("b.e.l.0.a.self.query.weight", not "bert.encoder.layer.0.attention.sel…"); the whole name stays in its title.
 */
function fitNames(entries) {
  // All reads, then all writes: one layout however many names.
  const names = entries.map((entry) => entry.querySelector(".name"));
  const wide = names.filter((name) => name.scrollWidth > name.clientWidth);
  const plans = wide.map((name) => {
    const style = getComputedStyle(name);
    const width = name.clientWidth - parseFloat(style.paddingLeft) - parseFloat(style.paddingRight);
    const font = `${style.fontStyle} ${style.fontWeight} ${style.fontSize} ${style.fontFamily}`;
    return { name, text: shownName(name.title, font, width) };
  });
  for (const { name, text } of plans) name.textContent = text;
}

/** A name as shown in `width` px of `font` (shortName, measured on a canvas), once per name, font and width. */
function shownName(name, font, width) {
  const key = `${font}|${width}|${name}`;
  if (!SHOWN_NAMES.has(key)) {
    measurer ??= document.createElement("canvas").getContext("2d");
    measurer.font = font;
    if (SHOWN_NAMES.size > 10000) SHOWN_NAMES.clear();
    SHOWN_NAMES.set(key, shortName(name, (text) => measurer.measureText(text).width <= width - 1));
  }
  return SHOWN_NAMES.get(key);
}

/** Where a line of an entry comes in LINE_RANK (by its class; unknown lines last). */
function rank(line) {
  const i = LINE_RANK.findIndex((name) => line.classList.contains(name));
  return i < 0 ? LINE_RANK.length : i;
}

/** One section's entry: its name, a NaN/Inf flag, and the statistics of the values drawn. */
function sectionEntry(section, flag, style) {
  return h(
    "div",
    { class: `section-info${flag ? " nonfinite" : ""}`, style, dataset: { name: section.name } },
    h("div", { class: "name", title: section.name }, section.name),
    flag ? h("div", { class: "flag", title: `over ${section.stats.over}` },
      `⚠ NaN ${percent(section.stats.nan)} · Inf ${percent(section.stats.inf)} of the array`) : null,
    h(
      "div",
      { class: "sample-note", title: "Statistics of the values drawn: the section after truncation and resizing, not the whole array" },
      "over the shown sample",
    ),
    h("div", { class: "shape" }, `shape ${shape(section.shape)}`),
    h("div", { class: "range" }, `range ${sci(section.range)}`),
    h("div", { class: "mean" }, `mean ${sci(section.mean)}`),
    h("div", { class: "minmax" }, `min ${sci(section.min)} max ${sci(section.max)}`),
  );
}

/** A section record whose stats histogram counts (base64 of 32 little-endian uint16) are decoded to numbers. */
export function decodeHistogram(section) {
  const hist = section?.stats?.hist;
  if (!hist || typeof hist.counts !== "string") return section;
  const bytes = Uint8Array.from(atob(hist.counts), (c) => c.charCodeAt(0));
  const view = new DataView(bytes.buffer);
  const counts = Array.from({ length: bytes.length / 2 }, (_, i) => view.getUint16(2 * i, true));
  return { ...section, stats: { ...section.stats, hist: { ...hist, counts } } };
}
