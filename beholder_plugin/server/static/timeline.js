// The whole run's timeline (the /timeline route): one row of sparklines per section, aligned by step:
// the min-max band, mean ± std, the norm line, a red tick where values were not finite; anomaly markers
// on the step axis, which is labelled at round steps; a legend names the marks. A norm line breaks where
// the steps go back (a trainer restarted into the run; earlier processes faint) and over steps with no
// records. Hover shows a point's numbers; a click opens the nearest kept frame in the frame view. After a
// restart two processes' points share steps: a step picks the latest process's, and an anomaly its own
// point and frame by the time it was found (each point and kept frame carries its time).
import { getJSON } from "./api.js";
import { h } from "./dom.js";
import { rounded, shortName, VALUES_NAMES } from "./format.js";
import { filterMatcher } from "./sections.js";

const ROW_H = 34;
const WIDTH = 640;
const POINTS = WIDTH / 2; // points asked per section: one every 2 px
const EAGER_ROWS = 40; // rows painted at once; the others when they scroll into view
const REFRESH_MS = 5000;
// A run of more sections than an answer holds: the filter box asks the server for every matching section
// (?sections=) this long after the last key.
const SEARCH_MS = 300;
const AXIS_H = 18;
const TICKS = 6; // about this many step labels under the axis
const NAME_CHARS = 28; // characters of a section's name in its row's 220 px (12 px monospace: about 7.2 px each)
// A norm line is broken where the next point is this many times the row's usual step spacing away
// (no records in between: a trainer that stopped and resumed later).
const GAP_FACTOR = 10;
// The colours of a row, named once: the drawing and the legend use the same.
const COLOURS = {
  band: "rgba(120, 144, 156, 0.25)",
  std: "rgba(25, 118, 210, 0.35)",
  norm: "#e65100",
  other: "#6a1b9a",
  bad: "#d32f2f",
  anomaly: "rgba(211, 47, 47, 0.25)",
};
// Lines of a trainer's earlier process (before the steps went back: a restart) are drawn this faint.
const EARLIER_ALPHA = 0.4;

/** A base64 column of the answer as a typed array (float64 for step and time, uint32 flags, else float32). */
export function decodeColumn(text, name) {
  const raw = atob(text || "");
  const bytes = new Uint8Array(raw.length);
  for (let i = 0; i < raw.length; i++) bytes[i] = raw.charCodeAt(i);
  if (name === "step" || name === "time") return new Float64Array(bytes.buffer);
  if (name === "flags") return new Uint32Array(bytes.buffer);
  return new Float32Array(bytes.buffer);
}

const COLUMNS = ["step", "time", "norm", "mean", "std", "min", "max", "nonfinite", "flags"];

/** The answer's sections with their columns decoded: [{name, step: Float64Array, norm: ..., ...}]. */
export function decodeTimeline(answer) {
  return answer.sections.map((section) => {
    const out = { name: section.name, records: section.records };
    for (const column of COLUMNS) out[column] = decodeColumn(section[column], column);
    return out;
  });
}

/** The index of the point whose step is nearest to step (-1 when empty; when steps are not ascending,
 * as after a restart that counts steps afresh, the last such: the latest process's, the line drawn bright). */
export function nearestIndex(steps, step) {
  if (steps.length === 0) return -1;
  if (!ascending(steps)) return nearestByScan(steps, step);
  let lo = 0;
  let hi = steps.length - 1;
  while (lo < hi) {
    const mid = (lo + hi) >> 1;
    if (steps[mid] < step) lo = mid + 1;
    else hi = mid;
  }
  if (lo > 0 && Math.abs(steps[lo - 1] - step) <= Math.abs(steps[lo] - step)) return lo - 1;
  return lo;
}

/** Whether steps never go down. */
function ascending(steps) {
  for (let i = 1; i < steps.length; i++) if (steps[i] < steps[i - 1]) return false;
  return true;
}

/** nearestIndex for steps in any order: look at every one (the last of equally near ones). */
function nearestByScan(steps, step) {
  let best = 0;
  for (let i = 1; i < steps.length; i++) if (Math.abs(steps[i] - step) <= Math.abs(steps[best] - step)) best = i;
  return best;
}

/** The index of the point of the earliest time at or after `time`: the bucket holding a record of that
 * time (a point is its bucket's last record); the latest point when all are earlier; -1 when empty. */
export function indexAtTime(times, time) {
  let found = -1;
  let latest = -1;
  for (let i = 0; i < times.length; i++) {
    if (times[i] >= time && (found < 0 || times[i] < times[found])) found = i;
    if (latest < 0 || times[i] >= times[latest]) latest = i;
  }
  return found >= 0 ? found : latest;
}

/** The index of a section's point holding an anomaly: by the anomaly's time (the frame that found it),
 * which tells two processes' equal steps apart; by its step for a record without a time. */
export function anomalyIndex(section, record) {
  if (Number.isFinite(record.time) && section.time.length) return indexAtTime(section.time, record.time);
  return nearestIndex(section.step, Number.isFinite(record.step) ? record.step : record.steps[1]);
}

/**
 * The kept frame to open for a target {names, time, step}: the last of `names` kept (an anomaly's own
 * frames: the frame before it, the one that found it), else the frame nearest in time (a point's or an
 * anomaly's: of the right process after a restart), else the frame nearest in step. null when none.
 */
export function keptFor(kept, { names = null, time = null, step = null }) {
  if (kept.length === 0) return null;
  for (const name of [...(names || [])].reverse()) {
    const entry = kept.find((k) => k.name === name);
    if (entry) return entry;
  }
  if (Number.isFinite(time)) {
    let best = 0;
    for (let i = 1; i < kept.length; i++) if (Math.abs(kept[i].time - time) < Math.abs(kept[best].time - time)) best = i;
    return kept[best];
  }
  return kept[nearestIndex(kept.map((k) => k.step), step)];
}

/** The median of the positive differences between successive steps (0 when there are none). */
function usualSpacing(steps) {
  const gaps = [];
  for (let i = 1; i < steps.length; i++) if (steps[i] > steps[i - 1]) gaps.push(steps[i] - steps[i - 1]);
  gaps.sort((a, b) => a - b);
  return gaps.length ? gaps[gaps.length >> 1] : 0;
}

/**
 * The pieces a norm line is drawn in: [{from, to, restart}] index ranges (inclusive) of drawable
 * points (ok(i)), broken where a point is not drawable, where the step goes back (a trainer restarted
 * into the run; restart: the piece starts one) and across a gap of GAP_FACTOR usual spacings.
 */
export function lineSegments(steps, ok) {
  const spacing = usualSpacing(steps);
  const pieces = [];
  let piece = null;
  let restart = false;
  for (let i = 0; i < steps.length; i++) {
    if (i > 0 && steps[i] < steps[i - 1]) restart = true;
    const gap = spacing > 0 && i > 0 && steps[i] - steps[i - 1] > GAP_FACTOR * spacing;
    if (!ok(i) || restart || gap) piece = null;
    if (!ok(i)) continue;
    if (piece === null) {
      piece = { from: i, to: i, restart };
      pieces.push(piece);
      restart = false;
    }
    piece.to = i;
  }
  return pieces;
}

/** How many times the steps go back (each a trainer restarted into the run, counting afresh). */
export function restartCount(steps) {
  let count = 0;
  for (let i = 1; i < steps.length; i++) if (steps[i] < steps[i - 1]) count++;
  return count;
}

/** The index ranges [{from, to}] (inclusive) of a section's points of each trainer process, in order: a
 * new one where the steps go back (a restart). */
export function processRanges(steps) {
  const ranges = [];
  for (let i = 0; i < steps.length; i++) {
    if (i === 0 || steps[i] < steps[i - 1]) ranges.push({ from: i, to: i });
    else ranges[ranges.length - 1].to = i;
  }
  return ranges;
}

/** The run's trainer processes: the time each began (its first point's), from the section that saw the
 * most restarts (a section may be missing from some processes); one entry or none: never restarted. */
export function processStarts(sections) {
  let best = [];
  for (const section of sections) {
    const ranges = processRanges(section.step);
    if (ranges.length > best.length) best = ranges.map((r) => section.time[r.from]);
  }
  return best;
}

/** Which process (0-based) a section's point i is of, given the run's process starts: its own count when
 * the section saw every restart, else by the time its own process began. */
export function processOf(section, i, starts) {
  const ranges = processRanges(section.step);
  const k = ranges.findIndex((r) => i >= r.from && i <= r.to);
  if (ranges.length === starts.length) return k;
  const began = section.time[ranges[k].from];
  return Math.max(0, starts.findLastIndex((start) => start <= began));
}

/** A time (seconds since the epoch) as a clock, 14:02; with its day when that is not today: 3 Mar 14:02. */
export function clockTime(seconds) {
  const when = new Date(seconds * 1000);
  const pad = (n) => String(n).padStart(2, "0");
  const clock = `${pad(when.getHours())}:${pad(when.getMinutes())}`;
  if (when.toDateString() === new Date().toDateString()) return clock;
  return `${when.toLocaleDateString([], { day: "numeric", month: "short" })} ${clock}`;
}

/** The hover's words for process k (0-based) of a run restarted into: "trainer process 2 of 3 (restarted
 * at 14:02)"; "" for a run of one process. */
export function processWords(k, starts) {
  if (starts.length < 2) return "";
  const restart = starts.length === 2 ? "the restart" : "the first restart";
  const when = k === 0 ? `before ${restart} at ${clockTime(starts[1])}` : `restarted at ${clockTime(starts[k])}`;
  return `trainer process ${k + 1} of ${starts.length} (${when})`;
}

/** Round step values for about `count` axis labels between first and last: 1, 2 or 5 times a power of 10. */
export function stepTicks(first, last, count = TICKS) {
  const span = last - first;
  if (!(span > 0)) return [first];
  const power = 10 ** Math.floor(Math.log10(span / count));
  // (the finest round unit that gives at most count + 2 labels)
  const unit = [1, 2, 5, 10, 20].map((m) => m * power).find((u) => span / u <= count + 2);
  const size = Math.max(1, unit);
  const ticks = [];
  for (let t = Math.ceil(first / size) * size; t <= last; t += size) ticks.push(t);
  return ticks;
}

/**
 * A step for an axis label, short: 950, 12k, 1.5M; with the ticks' unit, as many decimals as tell two
 * ticks apart (100.05k and 100.1k, not 100k twice, for a run resumed at step 100,000).
 */
export function stepLabel(step, unit = 0) {
  const magnitude = Math.abs(step);
  const scaled = (scale, suffix) => {
    const decimals = unit > 0 ? Math.max(0, Math.ceil(-Math.log10(unit / scale) - 1e-9)) : 0;
    const text = unit > 0 ? (step / scale).toFixed(Math.min(decimals, 6)) : (step / scale).toPrecision(3);
    return `${Number(text)}${suffix}`;
  };
  if (magnitude >= 1e6) return scaled(1e6, "M");
  if (magnitude >= 1e4) return scaled(1e3, "k");
  return String(Math.round(step));
}

/** The labels of a run of ticks (stepTicks'), each told apart from the next. */
export function tickLabels(ticks) {
  const unit = ticks.length > 1 ? ticks[1] - ticks[0] : 0;
  return ticks.map((step) => stepLabel(step, unit));
}

/**
 * A decoded answer with `lowest` and `highest`, the steps its points span: its first and last step,
 * widened to every point's step (after a restart the first process may have counted higher than the last).
 */
function withSteps(answer) {
  let lowest = answer.first_step;
  let highest = answer.last_step;
  for (const section of answer.decoded) {
    for (const step of section.step) {
      if (step < lowest) lowest = step;
      if (step > highest) highest = step;
    }
  }
  return { ...answer, lowest, highest };
}

/** The legend of a row's marks (shown under the controls); compared: with the dashed line. */
function legend(compared) {
  const item = (swatch, text) => h("span", { class: "tl-key" }, swatch, text);
  const box = (colour) => {
    const el = h("span", { class: "tl-swatch" });
    el.style.background = colour;
    return el;
  };
  const stroke = (colour, dashed) => {
    const el = h("span", { class: `tl-stroke${dashed ? " tl-dashed" : ""}` });
    el.style.borderTopColor = colour;
    return el;
  };
  const items = [
    item(stroke(COLOURS.norm, false), "norm (L2)"),
    item(box(COLOURS.std), "mean ± std"),
    item(box(COLOURS.band), "min–max"),
    item(box(COLOURS.bad), "not finite"),
    item(box(COLOURS.anomaly), "anomaly"),
  ];
  if (compared) items.push(item(stroke(COLOURS.other, true), "compared run's norm"));
  return [...items, h("span", { class: "tl-key-note", id: "timeline-key-note" },
    "each row on its own scale; blank where no frame of these values was written (another Values choice was shown, or no trainer ran)")];
}

/** [lo, hi] of the finite values of some arrays (log: positive values only); null when none. */
function extent(arrays, log) {
  let lo = Infinity;
  let hi = -Infinity;
  for (const values of arrays) {
    for (const v of values) {
      if (!Number.isFinite(v) || (log && v <= 0)) continue;
      if (v < lo) lo = v;
      if (v > hi) hi = v;
    }
  }
  if (lo > hi) return null;
  if (lo === hi) return log ? [lo / 2, hi * 2] : [lo - 0.5, hi + 0.5];
  return [lo, hi];
}

/** The anomaly's step (its exact step, else the first of its interval). */
export function anomalyStep(record) {
  return Number.isFinite(record.step) ? record.step : record.steps[0];
}

/** The timeline view: mounted by the dashboard (a "Timeline" choice beside Frame and Distributions). */
export class TimelineView {
  constructor(dashboard) {
    this.dashboard = dashboard;
    this.scale = "linear";
    this.answer = null;
    this.other = null; // the "Compare with" run's answer
    this.rows = new Map(); // name -> {element, canvas, data}
    this.timer = null;
    this.loads = 0;
    this.debug = { drawn: 0, ms: null, hover: null, opened: null, searches: 0, searched: null };
    // Whether the run's answer of every section left some out ({run, values, left}): the filter box then
    // asks the server (?sections=), which searches them all; else it filters the answer here.
    this.plainLeftOut = null;
    this.searchTimer = null;
    this.status = h("span", { class: "note", id: "timeline-status", role: "status" });
    this.scaleSelect = h(
      "select",
      { id: "timeline-scale", "aria-label": "Norm scale", onchange: () => this.setScale(this.scaleSelect.value) },
      h("option", { value: "linear" }, "Linear"),
      h("option", { value: "log" }, "Log"),
    );
    this.jump = h("button", { type: "button", id: "timeline-jump", disabled: true, onclick: () => this.jumpToAnomaly() },
      "Jump to first anomaly");
    // Which values' records: a run whose Values choice changed has a series of each under one name
    // (weights and gradients); shown only then. null: those the trainer showed last.
    this.values = null;
    this.valuesSelect = h("select", { id: "timeline-values", "aria-label": "Timeline of which values",
      onchange: () => { this.values = this.valuesSelect.value; this.load(); } });
    this.valuesLabel = h("label", { hidden: true }, "Values ", this.valuesSelect);
    this.filter = h("input", { type: "search", id: "timeline-filter", placeholder: "Filter sections",
      "aria-label": "Filter the timeline's sections", oninput: () => this.filterChanged() });
    this.axis = h("canvas", { id: "timeline-axis", class: "tl-axis", width: WIDTH, height: AXIS_H });
    this.ticks = h("div", { class: "tl-ticks", id: "timeline-ticks" });
    this.legend = h("div", { class: "tl-legend", id: "timeline-legend" }, legend(false));
    this.axis.addEventListener("click", (event) => this.clickAxis(event));
    this.readout = h("div", { class: "tl-readout", id: "timeline-readout", role: "status" });
    this.list = h("div", { class: "tl-rows", id: "timeline-rows" });
    this.element = h(
      "section",
      { class: "timeline", id: "timeline", hidden: true },
      h("div", { class: "tl-controls" },
        h("label", {}, "Norm scale ", this.scaleSelect), this.valuesLabel, this.jump, this.filter, this.status),
      this.legend,
      h("div", { class: "tl-axis-row" }, h("span", { class: "tl-name" }, "step"),
        h("div", { class: "tl-axis-box" }, this.axis, this.ticks)),
      this.readout,
      this.list,
    );
    const style = document.createElement("link");
    style.rel = "stylesheet";
    style.href = new URL("./timeline.css", import.meta.url).href;
    document.head.appendChild(style);
    this.addChoice();
    window.addEventListener("beholder-timeline-reload", () => this.load()); // for the benchmark
  }

  /** Add "Timeline" to the toolbar's View choice. */
  addChoice() {
    const group = this.dashboard.toolbar.element.querySelector("#view-choice");
    if (!group) return;
    const input = h("input", { type: "radio", name: "view", value: "timeline", id: "view-timeline",
      onchange: () => this.dashboard.setView("timeline") });
    group.append(h("label", { class: "choice" }, input, "Timeline"));
  }

  /** Show or hide the view; load again when the run or the "Compare with" run changed. */
  sync(active) {
    const { run } = this.dashboard;
    const other = this.dashboard.compare.other;
    if (active === !this.element.hidden && run === this.shownRun && other === this.shownOther) return;
    if (run !== this.shownRun) this.values = null;
    this.shownRun = run;
    this.shownOther = other;
    this.setActive(active);
  }

  /** Show or hide the view (loads the timeline and keeps it fresh while shown). */
  setActive(active) {
    this.element.hidden = !active;
    clearInterval(this.timer);
    this.timer = null;
    if (!active) return;
    this.load();
    this.timer = setInterval(() => this.load(), REFRESH_MS);
  }

  /** The filter box's words as matched: trimmed and lower-cased (the server's ?sections= matches alike). */
  words() {
    return this.filter.value.trim().toLowerCase();
  }

  /** The filter to ask the server for: the box's words when the run's answer of every section left some
   * out (filtering that answer here could not find them); null: the plain answer, filtered here. */
  remoteWords() {
    const words = this.words();
    const plain = this.plainLeftOut;
    const same = plain && plain.run === this.dashboard.state.run && plain.values === this.values;
    return words && same && plain.left > 0 ? words : null;
  }

  /** The filter box changed: filter the drawn rows at once; when the server is to search (remoteWords),
   * ask it SEARCH_MS after the last key, and for the plain answer at once when the box is emptied. */
  filterChanged() {
    this.draw();
    clearTimeout(this.searchTimer);
    this.searchTimer = null;
    const wanted = this.remoteWords();
    if (wanted === (this.answer?.sections_filter ?? null)) return; // (drawn already; a stale answer is dropped)
    if (wanted === null) {
      this.load();
      return;
    }
    this.searchTimer = setTimeout(() => {
      this.searchTimer = null;
      this.load();
    }, SEARCH_MS);
  }

  /** Fetch the run's timeline (and the compared run's), of the sections matching the filter when the
   * server is to search (remoteWords), then draw. */
  async load() {
    const run = this.dashboard.state.run;
    if (run === null) return;
    const load = ++this.loads;
    const other = this.dashboard.compare.other;
    const words = this.remoteWords();
    const started = performance.now();
    try {
      if (words !== null) this.debug.searches++;
      const params = { run, points: POINTS, values: this.values, sections: words }; // (null: not sent)
      const answer = await getJSON("timeline", params);
      // (the compared run's records of the same values: its newest may be of others, under the same names)
      const second = other ? await getJSON("timeline",
        { run: other, points: POINTS, values: answer.values, sections: words }) : null;
      if (load !== this.loads) return; // (a later load is under way)
      if (words === null) this.plainLeftOut = { run, values: this.values, left: answer.sections_left_out || 0 };
      if (words !== null && words !== this.remoteWords()) { // the box changed since: not what it asks for
        if (this.searchTimer === null) this.load();
        return;
      }
      const fetched = performance.now();
      this.answer = withSteps({ ...answer, decoded: decodeTimeline(answer) });
      this.answer.starts = processStarts(this.answer.decoded);
      this.showValues(answer);
      this.other = second ? withSteps({ ...second, decoded: decodeTimeline(second) }) : null;
      this.debug.fetchMs = fetched - started;
      this.debug.decodeMs = performance.now() - fetched;
      this.draw();
      this.debug.ms = performance.now() - started;
      this.debug.searched = answer.sections_filter ?? null;
      if (words === null && this.remoteWords() !== null) this.load(); // (sections were left out: search them)
    } catch (error) {
      if (load === this.loads) this.status.textContent = `Cannot load the timeline: ${error.message}`;
    }
  }

  /** The Values choice, when the run's timeline holds more than one kind of values. */
  showValues(answer) {
    const kinds = answer.kinds || [];
    this.valuesLabel.hidden = kinds.length < 2;
    const options = kinds.map((kind) => h("option", { value: kind }, VALUES_NAMES[kind] || kind));
    this.valuesSelect.replaceChildren(...options);
    if (answer.values) this.valuesSelect.value = answer.values;
  }

  /** Norms on a linear or a log scale. */
  setScale(scale) {
    this.scale = scale;
    this.draw();
  }

  /** The dashboard's section choice (the Sections box and tree: the run's filter) as name -> shown? */
  chosen() {
    const filter = this.dashboard.state.config?.filter || "";
    if (!filter) return null;
    const shown = (this.dashboard.infoPanel.sections || []).map((record) => record.name);
    return filterMatcher(filter, shown.length ? new Set(shown) : null);
  }

  /** The steps the x axis spans: both runs' lowest to highest step. */
  span() {
    const answers = [this.answer, this.other].filter(Boolean);
    const first = Math.min(...answers.map((a) => a.lowest));
    const last = Math.max(...answers.map((a) => a.highest));
    return [first, Math.max(last, first + 1)];
  }

  /** The x pixel of a step. */
  x(step) {
    const [first, last] = this.span();
    return ((step - first) / (last - first)) * (WIDTH - 1);
  }

  /** The step at an x pixel. */
  stepAt(px) {
    const [first, last] = this.span();
    return first + (px / (WIDTH - 1)) * (last - first);
  }

  /** Draw the axis, the anomaly markers and one row per section that passes the filter. */
  draw() {
    if (!this.answer) return;
    const started = performance.now();
    const words = this.filter.value.trim().toLowerCase();
    const chosen = this.chosen();
    const sections = this.answer.decoded.filter(
      (s) => (!chosen || chosen(s.name)) && (!words || s.name.toLowerCase().includes(words)));
    const others = new Map((this.other?.decoded || []).map((s) => [s.name, s]));
    const anomalies = this.answer.anomalies || [];
    this.jump.disabled = anomalies.length === 0;
    this.debug.segments = {};
    this.legend.replaceChildren(...legend(Boolean(this.other)));
    if (this.observer) this.observer.disconnect();
    this.observer = new IntersectionObserver((seen) => {
      for (const entry of seen) {
        if (!entry.isIntersecting || !entry.target.paint) continue;
        entry.target.paint();
        entry.target.paint = null;
        this.observer.unobserve(entry.target);
      }
    }, { root: this.list });
    const rows = sections.map((section, i) => {
      const row = this.row(section, others.get(section.name), anomalies);
      if (i < EAGER_ROWS) row.paint();
      else this.observer.observe(row);
      return row;
    });
    this.list.replaceChildren(...rows);
    this.drawAxis(anomalies);
    const [first, last] = this.span();
    const compared = this.other ? ` · compared with ${this.other.run} (dashed)` : "";
    const restarts = Math.max(0, ...this.answer.decoded.map((s) => restartCount(s.step)));
    const restarted = restarts ? ` · the trainer restarted ${restarts === 1 ? "once" : `${restarts} times`} ` +
      "(steps counted afresh; earlier lines faint)" : "";
    if (this.answer.decoded.length === 0) {
      this.status.textContent = "No timeline yet: each frame of sections the trainer writes adds to it.";
    } else {
      // (a run of more sections than an answer holds: those with anomalies are in it, the others left out;
      // the filter box then asks the server, which searches them all)
      const { sections_total: total, sections_filter: found, sections_matched: matched } = this.answer;
      const left = this.answer.sections_left_out || 0;
      const fit = this.answer.decoded.length;
      const searching = this.remoteWords() !== (found ?? null) ? " · searching every section…" : "";
      const count = found ? `showing ${sections.length} of ${matched} sections matching "${found}" ` +
        `(of all ${total}${matched > fit ? `; at most ${fit} fit, those with anomalies kept` : ""})${searching}`
        : left > 0 ? `showing ${sections.length} of ${total} sections ` +
        `(at most ${fit} fit, those with anomalies kept; the filter searches them all)${searching}`
        : `${sections.length} sections`;
      this.status.textContent = `${count} · steps ${first}–${last} · ` +
        `${anomalies.length} anomal${anomalies.length === 1 ? "y" : "ies"}${restarted}${compared}`;
    }
    this.debug.drawn = rows.length;
    this.debug.drawMs = performance.now() - started;
  }

  /** The step axis: its line, a tick and a label at round steps, and a red marker at each anomaly. */
  drawAxis(anomalies) {
    const ctx = this.axis.getContext("2d");
    ctx.clearRect(0, 0, WIDTH, AXIS_H);
    ctx.fillStyle = "#666";
    ctx.fillRect(0, 9, WIDTH, 1);
    const [first, last] = this.span();
    const ticks = stepTicks(first, last);
    for (const step of ticks) ctx.fillRect(Math.round(this.x(step)), 9, 1, AXIS_H - 9);
    this.drawTickLabels(ticks);
    ctx.fillStyle = COLOURS.bad;
    for (const record of anomalies) {
      const x = this.x(anomalyStep(record));
      ctx.beginPath();
      ctx.moveTo(x, 2);
      ctx.lineTo(x - 4, 16);
      ctx.lineTo(x + 4, 16);
      ctx.fill();
    }
  }

  /** The tick labels under the axis, as text (left-aligned at the start, right-aligned at the end). */
  drawTickLabels(ticks) {
    const texts = tickLabels(ticks);
    const labels = ticks.map((step, k) => {
      const x = this.x(step);
      const label = h("span", { class: "tl-tick", "data-step": step }, texts[k]);
      label.style.left = `${x}px`;
      if (x < 16) label.style.transform = "none";
      else if (x > WIDTH - 16) label.style.transform = "translateX(-100%)";
      return label;
    });
    this.ticks.replaceChildren(...labels);
    this.debug.ticks = texts;
  }

  /** One section's row: its name and a canvas of sparklines (and the compared run's norm, dashed). */
  row(section, other, anomalies) {
    const canvas = h("canvas", { class: "tl-spark", width: WIDTH, height: ROW_H, "data-section": section.name });
    canvas.addEventListener("mousemove", (event) => this.hover(section, canvas, event));
    canvas.addEventListener("click", (event) => {
      const i = nearestIndex(section.step, this.stepAt(event.offsetX));
      this.open(i < 0 ? { step: this.stepAt(event.offsetX) } : { step: section.step[i], time: section.time[i] });
    });
    const element = h("div", { class: "tl-row", "data-section": section.name },
      h("span", { class: "tl-name", title: `${section.name}: ${section.records} records kept` },
        shortName(section.name, (text) => text.length <= NAME_CHARS)), canvas);
    element.paint = () => this.paint(canvas, section, other, anomalies);
    return element;
  }

  /** Draw one row's sparklines. */
  paint(canvas, section, other, anomalies) {
    this.debug.painted = (this.debug.painted || 0) + 1;
    const ctx = canvas.getContext("2d");
    const n = section.step.length;
    const values = extent([section.min, section.max], false);
    const norms = extent(other ? [section.norm, other.norm] : [section.norm], this.scale === "log");
    const y = (v, range, log) => {
      if (!range) return ROW_H / 2;
      const [lo, hi] = log ? [Math.log(range[0]), Math.log(range[1])] : range;
      const t = ((log ? Math.log(v) : v) - lo) / (hi - lo);
      return ROW_H - 2 - t * (ROW_H - 4);
    };
    if (values) {
      ctx.fillStyle = COLOURS.band; // min-max band
      for (let i = 0; i < n; i++) {
        if (!Number.isFinite(section.min[i]) || !Number.isFinite(section.max[i])) continue;
        const top = y(section.max[i], values, false);
        ctx.fillRect(this.x(section.step[i]) - 1, top, 2, Math.max(1, y(section.min[i], values, false) - top));
      }
      ctx.fillStyle = COLOURS.std; // mean ± std
      for (let i = 0; i < n; i++) {
        const mean = section.mean[i];
        const std = section.std[i];
        if (!Number.isFinite(mean) || !Number.isFinite(std)) continue;
        const top = y(mean + std, values, false);
        ctx.fillRect(this.x(section.step[i]) - 1, top, 2, Math.max(1, y(mean - std, values, false) - top));
      }
    }
    // The norm line in pieces (lineSegments); those before the last restart faint. Returns the count.
    const line = (data, colour, dashed) => {
      const log = this.scale === "log";
      const pieces = lineSegments(data.step, (i) => Number.isFinite(data.norm[i]) && !(log && data.norm[i] <= 0));
      const latest = pieces.findLastIndex((p) => p.restart);
      ctx.strokeStyle = colour;
      ctx.setLineDash(dashed ? [4, 3] : []);
      pieces.forEach((piece, k) => {
        ctx.globalAlpha = k < latest ? EARLIER_ALPHA : 1;
        ctx.beginPath();
        for (let i = piece.from; i <= piece.to; i++) {
          const px = this.x(data.step[i]);
          const py = y(data.norm[i], norms, log);
          if (i === piece.from) ctx.moveTo(px, py);
          else ctx.lineTo(px, py);
        }
        if (piece.from === piece.to) ctx.lineTo(this.x(data.step[piece.from]) + 1, y(data.norm[piece.from], norms, log));
        ctx.stroke();
      });
      ctx.globalAlpha = 1;
      ctx.setLineDash([]);
      return pieces.length;
    };
    this.debug.segments[section.name] = line(section, COLOURS.norm, false);
    if (other) line(other, COLOURS.other, true);
    ctx.fillStyle = COLOURS.bad; // not finite: a red tick at the bottom
    for (let i = 0; i < n; i++) {
      if (section.nonfinite[i] > 0 || !Number.isFinite(section.norm[i])) {
        ctx.fillRect(this.x(section.step[i]) - 1, ROW_H - 6, 3, 6);
      }
    }
    for (const record of anomalies) {
      if (record.section !== section.name) continue;
      ctx.fillStyle = COLOURS.anomaly;
      const a = this.x(anomalyStep(record));
      const b = Number.isFinite(record.step) ? a : this.x(record.steps[1]);
      ctx.fillRect(a - 1, 0, Math.max(2, b - a + 2), ROW_H);
    }
  }

  /** Show the numbers of the point nearest the mouse. */
  hover(section, canvas, event) {
    const i = nearestIndex(section.step, this.stepAt(event.offsetX));
    if (i < 0) return;
    this.showPoint(section, i);
  }

  /** The numbers of a section's point i, in the read-out line. */
  showPoint(section, i) {
    const point = Object.fromEntries(COLUMNS.map((c) => [c, section[c][i]]));
    const starts = this.answer?.starts || [];
    const k = starts.length > 1 ? processOf(section, i, starts) : 0;
    this.debug.hover = { section: section.name, ...point, process: k + 1 };
    const process = processWords(k, starts); // (after a restart: which process, the faint line or the bright)
    this.readout.textContent = `${section.name} · step ${point.step}${process ? ` · ${process}` : ""} · ` +
      `norm ${rounded(point.norm)} · mean ${rounded(point.mean)} ± ${rounded(point.std)} · ` +
      `min ${rounded(point.min)} · max ${rounded(point.max)} · non-finite ${rounded(point.nonfinite)}`;
  }

  /** Open the kept frame (ring, pin) of a target {names, time, step} (keptFor) in the frame view. */
  async open(target) {
    const entry = keptFor(this.answer?.kept || [], target);
    if (entry === null) {
      this.status.textContent = "No kept frame to open (the history ring is empty)";
      return;
    }
    const dashboard = this.dashboard;
    const radio = dashboard.toolbar.element.querySelector('#view-choice input[value="frame"]');
    if (radio) radio.checked = true;
    dashboard.setView("frame");
    await dashboard.history.pause(); // lists the kept frames (again: newer ones may be there)
    const index = dashboard.history.entries.findIndex((e) => e.name === entry.name);
    if (index >= 0) await dashboard.history.show(index);
    this.debug.opened = { name: entry.name, step: entry.step, index };
  }

  /** Scroll to the first anomaly's row, show its numbers there; a click on its marker opens its frame. */
  async jumpToAnomaly() {
    const record = (this.answer?.anomalies || []).find((a) => a.first) || this.answer?.anomalies?.[0];
    if (!record) return;
    this.filter.value = "";
    clearTimeout(this.searchTimer);
    this.searchTimer = null;
    if (this.answer.sections_filter) await this.load(); // (the plain answer: it holds every anomaly's section)
    this.draw();
    const section = this.answer.decoded.find((s) => s.name === record.section);
    const row = [...this.list.children].find((r) => r.dataset.section === record.section);
    for (const r of this.list.children) r.classList.toggle("tl-current", r === row);
    if (row) row.scrollIntoView({ block: "center" });
    if (section && section.step.length) this.showPoint(section, anomalyIndex(section, record));
    const when = Number.isFinite(record.step) ? `step ${record.step}` : `steps ${record.steps[0]}–${record.steps[1]}`;
    this.readout.textContent = `First anomaly: ${record.kind} in ${record.section} at ${when} · ${this.readout.textContent}`;
    this.debug.jumped = record;
  }

  /** A click on the axis: the anomaly marker nearest to it opens its own frame (anomalies.jsonl names
   * the first one's), else the kept frame nearest to the time it was found. */
  clickAxis(event) {
    const anomalies = this.answer?.anomalies || [];
    if (anomalies.length === 0) return;
    const step = this.stepAt(event.offsetX);
    // (the latest of equally near ones: after a restart, the latest process's)
    const best = anomalies.reduce((a, b) => (Math.abs(anomalyStep(a) - step) < Math.abs(anomalyStep(b) - step) ? a : b));
    this.open({ names: best.frames, time: best.time, step: best.frame_step ?? anomalyStep(best) });
  }
}
