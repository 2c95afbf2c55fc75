// Two runs side by side: the latest frames of run A (the run shown) and run B ("compare with"), one
// row per section name present in either, and, where the two sections have the same shape, layout
// and compact size, a "difference" toggle showing A − B (the diff route, docs/http-api.md).
import { HttpError, frameMeta, getJSON, routeUrl } from "./api.js";
import { h } from "./dom.js";
import { VALUES_NAMES, rounded, shape } from "./format.js";
import { compareModesText, frameKindText } from "./frame_caption.js";
import { nonFiniteFlag } from "./sections.js";

const REFRESH_MS = 1000; // while the view is shown, both frames are fetched again this often

/** GET a PNG route; resolves to {bitmap, response} (HttpError with the plugin's message). */
async function getImage(route, params) {
  const response = await fetch(routeUrl(route, params), { cache: "no-store" });
  if (!response.ok) {
    let message = `${response.status} ${response.statusText}`;
    try {
      message = (await response.json()).error || message;
    } catch (_) {
      // keep the status line
    }
    throw new HttpError(response.status, message);
  }
  const bitmap = await createImageBitmap(await response.blob());
  return { bitmap, response };
}

/** A run's latest frame with the section table of that very frame (asked again if a newer one came between). */
async function frameWithSections(run) {
  for (let attempt = 0; attempt < 3; attempt++) {
    const { bitmap, response } = await getImage("frame", { run });
    const meta = frameMeta(response);
    const table = await getJSON("section-info", { run });
    if (table.frame_id === meta.frameId && table.writer === meta.writer) {
      return { bitmap, meta, sections: table.sections, window: table.window ?? null };
    }
    bitmap.close();
  }
  throw new Error(`run ${run} kept writing new frames while its section table was read`);
}

/** Whether two section records can be subtracted: same shape, layout and compact size. */
export function sameGeometry(a, b) {
  const same = (x, y) => JSON.stringify(x) === JSON.stringify(y);
  return Boolean(a && b) && same(a.shape, b.shape) && a.layout === b.layout && same(a.compact, b.compact);
}

/** Copy rows [top, top + height) of a bitmap into a canvas of that size. */
function crop(bitmap, top, height) {
  const canvas = h("canvas", { class: "cmp-section", width: bitmap.width, height: Math.max(1, height) });
  canvas.getContext("2d").drawImage(bitmap, 0, top, bitmap.width, height, 0, 0, bitmap.width, height);
  return canvas;
}

/** The compare view: getRun() is run A; setOther(run) chooses run B (null: off). */
export class CompareView {
  constructor(getRun) {
    this.getRun = getRun;
    this.other = null;
    this.active = false;
    this.showDiff = new Set(); // names whose B cell shows A − B
    this.busy = false;
    this.timer = null;
    this.title = h("div", { class: "cmp-title", id: "compare-title" });
    this.status = h("p", { class: "note", id: "compare-status", role: "status" });
    this.kinds = h("p", { class: "note", id: "compare-kinds", hidden: true });
    this.modes = h("p", { class: "note cmp-modes", id: "compare-modes", hidden: true });
    this.allDiff = h("input", { type: "checkbox", id: "compare-all-diff", onchange: () => this.toggleAll() });
    this.rows = h("div", { class: "cmp-rows", id: "compare-rows" });
    this.element = h(
      "section",
      { class: "compare", id: "compare", hidden: true },
      this.title,
      h("label", { class: "choice cmp-all" }, this.allDiff, "difference A − B for every section of equal shape"),
      this.status,
      this.kinds,
      this.modes,
      this.rows,
    );
    this.debug = { rows: [], diff: null, kinds: "", modes: "" }; // what is drawn (for tests)
    this.absent = { a: "", b: "" }; // what a cell says when its run lacks the section
  }

  /** Choose run B (null: no comparison). */
  setOther(run) {
    this.other = run || null;
    this.showDiff.clear();
    this.allDiff.checked = false;
    this.rows.replaceChildren();
    this.refresh();
  }

  /** Show or hide the view; while shown it refreshes itself. */
  setActive(active) {
    this.element.hidden = !active;
    if (active === this.active) return;
    this.active = active;
    clearInterval(this.timer);
    this.timer = active ? setInterval(() => this.refresh(), REFRESH_MS) : null;
    if (active) this.refresh();
  }

  /** Turn the difference on or off for every section that has one. */
  toggleAll() {
    for (const box of this.rows.querySelectorAll("input.cmp-diff:not(:disabled)")) {
      if (this.allDiff.checked) this.showDiff.add(box.dataset.name);
      else this.showDiff.delete(box.dataset.name);
    }
    this.refresh();
  }

  /** Fetch both frames (and the difference when a toggle asks for it) and draw the rows. */
  async refresh() {
    const run = this.getRun();
    const other = this.other;
    if (!this.active || this.busy || run === null || other === null) return;
    this.busy = true;
    try {
      const [a, b] = await Promise.all([frameWithSections(run), frameWithSections(other)]);
      const diff = this.showDiff.size ? await this.fetchDiff(run, other) : null;
      if (run === this.getRun() && other === this.other && this.active) this.draw(run, other, a, b, diff);
      for (const item of [a, b, diff]) item?.bitmap.close();
      this.status.textContent = "";
    } catch (error) {
      this.status.textContent = `Cannot compare ${run} with ${other}: ${error.message}`;
    } finally {
      this.busy = false;
    }
  }

  /** The diff route's picture and description. */
  async fetchDiff(run, other) {
    const { bitmap, response } = await getImage("diff", { run, other });
    const header = response.headers.get("X-Beholder-Diff");
    const info = header ? JSON.parse(decodeURIComponent(header)) : await getJSON("diff", { run, other, format: "json" });
    return { bitmap, info };
  }

  /** One row per section name in either run, A's order first. */
  draw(run, other, a, b, diff) {
    // Each side says what its numbers are, from its frame's header (runs have their own settings).
    const kind = (side) => frameKindText(side.meta.values, side.meta.mode, side.window);
    this.title.replaceChildren(
      h("span", { class: "cmp-run", id: "compare-a" }, `A: ${run} (frame ${a.meta.frameId}, step ${a.meta.step})`,
        h("span", { class: "cmp-kind" }, kind(a))),
      h("span", { class: "cmp-run", id: "compare-b" }, `B: ${other} (frame ${b.meta.frameId}, step ${b.meta.step})`,
        h("span", { class: "cmp-kind" }, kind(b))),
    );
    const inA = new Map(a.sections.map((rec) => [rec.name, rec]));
    const inB = new Map(b.sections.map((rec) => [rec.name, rec]));
    const names = [...new Set([...inA.keys(), ...inB.keys()])];
    const diffs = new Map((diff?.info.sections || []).map((rec) => [rec.name, rec]));
    // Runs showing different kinds of values share no section names: say so, rather than "not in B".
    this.absent = {
      a: absentNote(run, a.meta.values, b.meta.values),
      b: absentNote(other, b.meta.values, a.meta.values),
    };
    const kinds = a.meta.values !== b.meta.values
      ? `${run} shows ${describe(a.meta.values)} and ${other} shows ${describe(b.meta.values)}: ` +
        "pick the same Values in both runs to compare their sections"
      : "";
    this.kinds.textContent = kinds;
    this.kinds.hidden = !kinds;
    const modes = compareModesText(a, b);
    this.modes.textContent = modes;
    this.modes.hidden = !modes;
    this.debug = { rows: names, diff: diff ? diff.info : null, kinds, modes };
    this.rows.replaceChildren(
      ...names.map((name) => this.row(name, inA.get(name), inB.get(name), a.bitmap, b.bitmap, diff, diffs.get(name))),
    );
  }

  /** A row: the name, A's section, and B's section or A − B. */
  row(name, recA, recB, bitmapA, bitmapB, diff, diffRec) {
    const matching = sameGeometry(recA, recB);
    const box = h("input", {
      type: "checkbox",
      class: "cmp-diff",
      "data-name": name,
      disabled: !matching,
      checked: matching && this.showDiff.has(name),
      onchange: (event) => {
        if (event.target.checked) this.showDiff.add(name);
        else this.showDiff.delete(name);
        this.refresh();
      },
    });
    const cellA = recA ? crop(bitmapA, recA.top, recA.height) : h("div", { class: "cmp-absent" }, this.absent.a);
    let cellB;
    if (matching && this.showDiff.has(name) && diffRec) {
      cellB = h("div", { class: "cmp-diff-cell" }, crop(diff.bitmap, diffRec.top, diffRec.height),
        h("div", { class: "note" }, `A − B, blue −m … white 0 … red +m, m = ${rounded(diffRec.max_abs)}`));
      cellB.firstChild.classList.add("cmp-diff-image");
    } else {
      cellB = recB ? crop(bitmapB, recB.top, recB.height) : h("div", { class: "cmp-absent" }, this.absent.b);
    }
    const why = matching ? "difference A − B" : recA && recB ? "difference: shapes differ" : "difference: in one run only";
    // (NaN and infinities draw in the darkest colour: said in red, as the single frame's panel says it)
    const flags = [["A", recA], ["B", recB]].map(([side, rec]) => [side, nonFiniteFlag(rec?.stats)])
      .filter(([, flag]) => flag).map(([side, flag]) => `${side} ${flag}`);
    return h(
      "div",
      { class: "cmp-row", dataset: { name, diff: String(Boolean(matching && this.showDiff.has(name) && diffRec)) } },
      h("div", { class: "cmp-head" },
        h("span", { class: "name" }, name),
        h("span", { class: "note" }, ` A ${recA ? shape(recA.shape) : "–"} · B ${recB ? shape(recB.shape) : "–"} `),
        h("label", { class: "choice", title: why }, box, why),
        flags.length ? h("span", { class: "alarm cmp-nonfinite" }, `⚠ ${flags.join(" · ")}`) : null),
      h("div", { class: "cmp-cells" }, h("div", { class: "cmp-cell" }, cellA), h("div", { class: "cmp-cell" }, cellB)),
    );
  }
}

/** What a frame's values are, for a sentence: "Image", "Activations", "a placeholder". */
function describe(values) {
  return VALUES_NAMES[values] || values || "nothing";
}

/** Why a run's cell is empty: it shows other values than the other run, or lacks this section. */
function absentNote(run, values, otherValues) {
  if (values && otherValues && values !== otherValues) return `${run} shows ${describe(values)}, not ${describe(otherValues)}`;
  return `not in ${run}`;
}
