// Live distributions and health: per section, the trainer's "stats" of each frame seen (docs/protocol.md)
// as a histogram over time (frames on x, values on y, count as colour), sparklines of norm, mean and
// std, and the NaN / Inf / zero fractions. A section's history belongs to one kind of values (the
// frame's "values": weights, gradients, activations, arrays): under watch(model) "0.weight" names both
// a weight and its gradient, and their figures differ by orders of magnitude, so each kind keeps its own
// history (as TensorBoard keeps one chart per tag), and the view shows those of the kind on screen.
import { h } from "./dom.js";
import { VALUES_NAMES, sci } from "./format.js";
import { nonFiniteFlag } from "./sections.js";

export const KEEP_FRAMES = 300; // stats kept per section, newest last
export const BINS = 32; // the trainer's bins per frame, and the rows of the drawn histogram
const SPARK_W = 150;
const SPARK_H = 28;
const ROW_PX = 3; // screen pixels per histogram row
const COL_PX = 2; // screen pixels per frame

/** Stats of the frames seen, per run, kind of values and section name, at most KEEP_FRAMES each. */
export class StatsStore {
  constructor() {
    this.runs = new Map(); // run -> Map values kind -> Map name -> [{key, step, stats}]
  }

  /** The Map name -> entries of a run's kind of values (made when missing). */
  byName(run, kind) {
    if (!this.runs.has(run)) this.runs.set(run, new Map());
    const kinds = this.runs.get(run);
    if (!kinds.has(kind)) kinds.set(kind, new Map());
    return kinds.get(kind);
  }

  /** Record the stats of a frame's sections (once per frame: key is writer-frameId), kind: its values. */
  add(run, kind, key, step, sections, time = NaN) {
    const byName = this.byName(run, kind);
    for (const rec of sections) {
      if (!validStats(rec.stats)) continue;
      if (!byName.has(rec.name)) byName.set(rec.name, []);
      const list = byName.get(rec.name);
      if (list.length && list[list.length - 1].key === key) continue;
      list.push({ key, step, time, stats: rec.stats });
      if (list.length > KEEP_FRAMES) list.splice(0, list.length - KEEP_FRAMES);
    }
  }

  /**
   * Merge kept frames (GET history/stats's "frames", oldest first) into a run's kind of values: each
   * section's entries in time order (frames seen live without a time stay last), none twice, the newest
   * KEEP_FRAMES kept. Returns how many entries were added.
   */
  merge(run, kind, frames) {
    const byName = this.byName(run, kind);
    const earlier = new Map(); // name -> entries of kept frames
    for (const frame of frames) {
      const key = `${frame.writer}-${frame.frame_id}`;
      for (const rec of frame.sections || []) {
        if (!validStats(rec.stats)) continue;
        if (!earlier.has(rec.name)) earlier.set(rec.name, []);
        earlier.get(rec.name).push({ key, step: frame.step, time: Number(frame.time), stats: rec.stats });
      }
    }
    let added = 0;
    for (const [name, kept] of earlier) {
      const list = byName.get(name) || [];
      const seen = new Set(list.map((e) => e.key));
      const fresh = kept.filter((e) => !seen.has(e.key));
      if (!fresh.length) continue;
      const at = (e) => (Number.isFinite(e.time) ? e.time : Infinity);
      const merged = [...fresh, ...list].map((e, i) => [e, i]);
      merged.sort(([a, i], [b, j]) => at(a) - at(b) || i - j);
      const entries = merged.map(([e]) => e);
      added += fresh.length;
      byName.set(name, entries.slice(Math.max(0, entries.length - KEEP_FRAMES)));
    }
    return added;
  }

  /** The entries of one section of a run's kind of values, oldest first ([] when none). */
  series(run, kind, name) {
    return this.runs.get(run)?.get(kind)?.get(name) || [];
  }

  /** The section names of a run's kind of values with stats, in the order first seen. */
  names(run, kind) {
    return [...(this.runs.get(run)?.get(kind)?.keys() || [])];
  }

  /** The kinds of values of a run with stats, in the order first seen. */
  kinds(run) {
    return [...(this.runs.get(run)?.keys() || [])];
  }
}

/** Whether a stats record has a histogram of BINS counts. */
function validStats(stats) {
  return Boolean(stats && stats.hist && Array.isArray(stats.hist.counts) && stats.hist.counts.length === BINS);
}

/** The union of the finite ranges [lo, hi] of some entries' histograms (null when none has one). */
export function commonRange(entries) {
  let lo = Infinity;
  let hi = -Infinity;
  for (const { stats } of entries) {
    const { lo: a, hi: b } = stats.hist;
    if (Number.isFinite(a) && Number.isFinite(b)) {
      lo = Math.min(lo, a);
      hi = Math.max(hi, b);
    }
  }
  return lo <= hi ? { lo, hi } : null;
}

/**
 * One frame's counts over [lo, hi] re-binned onto BINS equal bins over [range.lo, range.hi]: each
 * source bin's count is shared among the target bins it overlaps, in proportion to the overlap
 * (values spread evenly within a bin); a frame whose values are all equal (lo == hi) goes to one bin.
 */
export function rebin(hist, range) {
  const out = new Float64Array(BINS);
  const { lo, hi, counts } = hist;
  if (!range || !Number.isFinite(lo) || !Number.isFinite(hi)) return out;
  const span = range.hi - range.lo;
  const at = (v) => (span > 0 ? ((v - range.lo) / span) * BINS : 0); // position in target bins
  if (!(hi > lo) || !(span > 0)) {
    const total = counts.reduce((a, b) => a + b, 0);
    out[Math.min(BINS - 1, Math.max(0, Math.floor(at(lo))))] += total;
    return out;
  }
  const width = (hi - lo) / BINS;
  for (let k = 0; k < BINS; k++) {
    if (!counts[k]) continue;
    const start = at(lo + k * width);
    const end = k === BINS - 1 ? at(hi) : at(lo + (k + 1) * width);
    const size = end - start;
    if (!(size > 0)) {
      out[Math.min(BINS - 1, Math.max(0, Math.floor(start)))] += counts[k];
      continue;
    }
    for (let t = Math.max(0, Math.floor(start)); t < Math.min(BINS, Math.ceil(end)); t++) {
      const overlap = Math.min(end, t + 1) - Math.max(start, t);
      if (overlap > 0) out[t] += (counts[k] * overlap) / size;
    }
  }
  return out;
}

/** What the histogram of a section draws: the common range and one re-binned column per frame. */
export function histogramData(entries) {
  const range = commonRange(entries);
  return {
    range,
    frames: entries.map(({ key, step, stats }) => ({
      key,
      step,
      lo: stats.hist.lo,
      hi: stats.hist.hi,
      counts: stats.hist.counts,
      column: Array.from(rebin(stats.hist, range)),
    })),
  };
}

/** A colour for a share from 0 to 1: white through blue to near black. */
function shade(share) {
  if (!(share > 0)) return [255, 255, 255];
  const t = Math.sqrt(Math.min(1, share));
  const stops = [[222, 235, 247], [66, 146, 198], [8, 48, 107], [10, 10, 30]];
  const x = t * (stops.length - 1);
  const i = Math.min(stops.length - 2, Math.floor(x));
  const f = x - i;
  return stops[i].map((c, j) => Math.round(c + (stops[i + 1][j] - c) * f));
}

/** Whether a history's steps only go up from first to last (one writer's frames): then it is drawn by step. */
export function risingSteps(steps) {
  const n = steps.length;
  return n > 1 && steps.every((s, i) => Number.isFinite(s) && (i === 0 || s >= steps[i - 1])) && steps[n - 1] > steps[0];
}

/**
 * Each frame's slots [start, end) across width: by step when the steps rise (kept frames are spread
 * unevenly over the run, dense near the present), each frame from halfway to the one before it to
 * halfway to the next (the first and the newest reach the edges), at least one slot; else one slot per
 * frame from the left. A newer frame drawn over an older one in the same slot wins.
 */
export function columnSpans(steps, width) {
  if (!risingSteps(steps)) return steps.map((_, i) => [i, i + 1]);
  const first = steps[0];
  const at = steps.map((s) => ((s - first) / (steps[steps.length - 1] - first)) * (width - 1));
  const edges = [0, ...at.slice(1).map((x, i) => Math.round((at[i] + x) / 2)), width];
  return steps.map((_, i) => [Math.min(edges[i], width - 1), Math.max(edges[i] + 1, edges[i + 1])]);
}

/** Draw a histogram over time: frames placed by step (or one column each), oldest left, low values at the bottom. */
export function drawHistogram(canvas, data) {
  canvas.width = KEEP_FRAMES;
  canvas.height = BINS;
  canvas.style.width = `${KEEP_FRAMES * COL_PX}px`;
  canvas.style.height = `${BINS * ROW_PX}px`;
  canvas.dataset.frames = String(data.frames.length);
  const ctx = canvas.getContext("2d");
  const image = ctx.createImageData(KEEP_FRAMES, BINS);
  for (let i = 0; i < image.data.length; i += 4) image.data.set([245, 245, 245, 255], i); // no frame yet
  const spans = columnSpans(data.frames.map((f) => f.step), KEEP_FRAMES);
  canvas.dataset.axis = risingSteps(data.frames.map((f) => f.step)) ? "step" : "frame";
  data.frames.forEach((frame, i) => {
    const total = frame.column.reduce((a, b) => a + b, 0) || 1;
    frame.column.forEach((count, bin) => {
      const [r, g, b] = shade(count / total);
      for (let x = spans[i][0]; x < spans[i][1]; x++) image.data.set([r, g, b, 255], ((BINS - 1 - bin) * KEEP_FRAMES + x) * 4);
    });
  });
  ctx.putImageData(image, 0, 0);
}

/** Draw a sparkline of some numbers (nulls skipped), scaled to their own range, placed by step when the steps rise. */
export function drawSparkline(canvas, values, steps = []) {
  const ctx = canvas.getContext("2d");
  ctx.clearRect(0, 0, canvas.width, canvas.height);
  const finite = values.filter((v) => Number.isFinite(v));
  if (finite.length === 0) return;
  const lo = Math.min(...finite);
  const hi = Math.max(...finite);
  const y = (v) => (hi > lo ? canvas.height - 2 - ((v - lo) / (hi - lo)) * (canvas.height - 4) : canvas.height / 2);
  const byStep = risingSteps(steps) && steps.length === values.length;
  const span = byStep ? steps[steps.length - 1] - steps[0] : values.length - 1;
  const x = (i) => (span > 0 ? ((byStep ? steps[i] - steps[0] : i) / span) * (canvas.width - 1) : canvas.width / 2);
  ctx.strokeStyle = "#1565c0";
  ctx.lineWidth = 1.25;
  ctx.beginPath();
  let pen = false;
  values.forEach((v, i) => {
    if (!Number.isFinite(v)) {
      pen = false;
      return;
    }
    if (pen) ctx.lineTo(x(i), y(v));
    else ctx.moveTo(x(i), y(v));
    pen = true;
  });
  ctx.stroke();
}

/** A fraction as a percentage for people: 0 %, 0.02 %, 12.5 %. */
export function percent(fraction) {
  if (!Number.isFinite(Number(fraction))) return "n/a";
  const p = Number(fraction) * 100;
  if (p === 0) return "0 %";
  return `${p < 0.1 ? p.toPrecision(2) : p < 10 ? p.toFixed(2) : p.toFixed(1)} %`;
}

/** The "Distributions" view: one panel per section with stats, in the frame's order. */
export class DistributionsView {
  constructor(store) {
    this.store = store;
    this.panels = new Map(); // "kind\nname" -> {element, histogram, sparks, numbers}
    this.list = h("div", { class: "dist-list", id: "dist-list" });
    this.empty = h(
      "p",
      { class: "note", id: "dist-empty" },
      "No statistics yet: frames of arrays carry them (trainable variables, gradients, activations or arrays).",
    );
    // Which kind of values the panels show, and that other kinds keep their own histories.
    this.heading = h("p", { class: "dist-kind", id: "dist-kind", hidden: true });
    this.element = h("section", { class: "distributions", id: "distributions", hidden: true },
      this.heading, this.empty, this.list);
    this.data = new Map(); // name -> what the histogram draws (for tests: window.beholderDebug.distributions)
    this.kind = null; // the kind of values drawn (the frame's "values")
    this.reach = new Map(); // "run\nkind" -> {frames, step}: the kept frames merged in, and the oldest one's step
  }

  /** Note the kept frames (GET history/stats's "frames") merged into a run's kind of values, for the heading. */
  noteReach(run, kind, frames) {
    if (frames.length) this.reach.set(`${run}\n${kind}`, { frames: frames.length, step: frames[0].step });
  }

  /**
   * Draw the run's sections of one kind of values, kind (those of the latest frame first, then others
   * seen of that kind); null: the kind of the latest frame with stats.
   */
  render(run, order, kind = null) {
    const kinds = this.store.kinds(run);
    kind ??= kinds[kinds.length - 1] ?? null;
    this.kind = kind;
    const names = [...new Set([...order, ...this.store.names(run, kind)])]
      .filter((n) => this.store.series(run, kind, n).length);
    this.empty.hidden = names.length > 0;
    this.empty.textContent = kind !== null && kinds.length
      ? `No statistics of ${kindName(kind).toLowerCase()} yet: they start with the first frame of them.`
      : "No statistics yet: frames of arrays carry them (trainable variables, gradients, activations or arrays).";
    const others = kinds.filter((k) => k !== kind);
    this.heading.hidden = kind === null;
    this.heading.dataset.values = kind ?? "";
    this.heading.replaceChildren(
      "Showing ", h("b", {}, kindName(kind)),
      others.length ? ` · each kind of values keeps its own history (also kept: ${others.map(kindName).join(", ")})` : "",
    );
    const reach = this.reach.get(`${run}\n${kind}`);
    this.heading.dataset.reach = reach ? String(reach.frames) : "";
    if (reach) this.heading.append(` · reaching back to step ${reach.step} over ${reach.frames} kept frames of the run`);
    const panels = names.map((name) => this.panel(kind, name));
    this.list.replaceChildren(...panels.map((p) => p.element));
    this.data.clear();
    names.forEach((name, i) => this.fill(panels[i], name, this.store.series(run, kind, name)));
  }

  /** The panel of a section of one kind of values (made once, reused). */
  panel(kind, name) {
    const id = `${kind}\n${name}`;
    if (this.panels.has(id)) return this.panels.get(id);
    const histogram = h("canvas", { class: "dist-hist", "aria-label": `Histogram over time of ${name}` });
    const sparks = Object.fromEntries(
      ["norm", "mean", "std"].map((key) => [key, {
        canvas: h("canvas", { class: "spark", width: SPARK_W, height: SPARK_H }),
        value: h("span", { class: "spark-value" }),
      }]),
    );
    const numbers = h("div", { class: "dist-numbers" });
    const over = h("div", { class: "dist-over note" });
    const range = h("div", { class: "dist-range" });
    const flag = h("span", { class: "flag" });
    const axis = h("div", { class: "note dist-axis" });
    const element = h(
      "div",
      { class: "dist-panel", dataset: { name, values: kind ?? "" } },
      h("div", { class: "dist-title" }, h("span", { class: "name" }, name),
        h("span", { class: "dist-values", title: "The kind of values this history is of" }, ` · ${kindName(kind)}`),
        flag),
      over,
      h("div", { class: "dist-body" },
        h("div", { class: "dist-hist-wrap" }, range, histogram,
          axis),
        h("div", { class: "dist-sparks" },
          ...Object.entries(sparks).map(([key, s]) => h("div", { class: "spark-row" },
            h("span", { class: "spark-label" }, key), s.canvas, s.value))),
        numbers),
    );
    const panel = { element, histogram, sparks, numbers, over, range, flag, axis };
    this.panels.set(id, panel);
    return panel;
  }

  /** Draw one section's panel from its entries. */
  fill(panel, name, entries) {
    const data = histogramData(entries);
    this.data.set(name, data);
    drawHistogram(panel.histogram, data);
    const latest = entries[entries.length - 1].stats;
    const steps = entries.map((e) => e.step);
    const last = entries[entries.length - 1].step;
    panel.over.textContent = `over ${latest.over}; ${entries.length} frames of ${kindName(panel.element.dataset.values).toLowerCase()}, steps ${entries[0].step} to ${last}`;
    panel.axis.textContent = risingSteps(steps)
      ? `by step, ${entries[0].step} (left) to ${last} (right) · colour: share of values in the bin`
      : "frames, oldest left (steps do not rise: several processes or a restart) · colour: share of values in the bin";
    panel.range.textContent = data.range ? `values ${sci(data.range.lo)} … ${sci(data.range.hi)}` : "no finite values";
    for (const [key, spark] of Object.entries(panel.sparks)) {
      drawSparkline(spark.canvas, entries.map((e) => (e.stats[key] === null ? NaN : Number(e.stats[key]))), steps);
      spark.value.textContent = sci(latest[key]);
    }
    panel.numbers.replaceChildren(
      ...[["nan", "NaN"], ["inf", "Inf"], ["zero", "zero"]].map(([key, label]) =>
        h("div", { class: `fraction ${key}`, dataset: { key, value: String(latest[key]) } }, `${label} ${percent(latest[key])}`)),
      h("div", { class: "note" }, `${latest.count} values`),
    );
    const flag = nonFiniteFlag(latest);
    panel.element.classList.toggle("nonfinite", Boolean(flag));
    panel.flag.textContent = flag ? ` ⚠ ${flag}` : "";
  }
}

/** A kind of values in words, as the Values control names it ("Gradients"). */
function kindName(kind) {
  return VALUES_NAMES[kind] || kind || "values";
}
