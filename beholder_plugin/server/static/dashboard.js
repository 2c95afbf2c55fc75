// The Beholder dashboard: run selection, the live frame, the info panel, the
// status line and the toolbar, wired to the plugin's routes.
import { LiveFeed, frameContent, getJSON, getKeptFrame, postConfig, routeUrl } from "./api.js";
import { buildToolbar } from "./controls.js";
import { h } from "./dom.js";
import { VALUES_NAMES, age, sci, shape } from "./format.js";
import { HistoryBar, VideoList, keptLabel } from "./history.js";
import { Inspector } from "./inspector.js";
import { CompareView } from "./compare.js";
import { DistributionsView, StatsStore, percent } from "./distributions.js";
import { SectionChooser, nonFiniteFlag } from "./sections.js";
import { paintFrameData, paletteFromHex, paletteWords } from "./framedata.js";
import { TimelineView } from "./timeline.js"; // timeline:

const SEPARATOR_PX = 5; // rows between sections (docs/protocol.md)
const RUNS_EVERY_MS = 3000;
const INFO_EVERY_MS = 250; // section statistics refresh at most this often
const FPS_WINDOW_MS = 2000;
const VIDEOS_EVERY_MS = 10000;
// No frame for this long (plus three frame intervals at the configured FPS) reads as "trainer stopped?".
const STALE_AFTER_S = 5;
// Skipped frames read as a problem (in red) above this share of the frames due in the last minute.
const SKIP_ALARM = 0.05;
const SKIP_WINDOW_S = 60;
// What update() is given for each Values choice.
const GIVEN = { trainable_variables: "variables", arrays: "arrays", frames: "a frame" };
// Live frames taller than this are fetched around the rows on screen only (plus a screen each side).
const VIEWPORT_MIN_ROWS = 4000;

function welcomePage() {
  return h(
    "section",
    { class: "welcome", id: "welcome", hidden: true },
    h("h2", {}, "No Beholder data yet"),
    h(
      "p",
      {},
      "Add these three lines to your training script, and start TensorBoard with ",
      h("code", {}, "--logdir"),
      " pointing at the directory you give to Beholder (or one above it):",
    ),
    h(
      "pre",
      { id: "welcome-code" },
      "from beholder_plugin import Beholder\n" +
        'beholder = Beholder("logs/run1", variables=model)  # once, before training\n' +
        "beholder.update()                                   # in the loop, e.g. once per step",
    ),
    h(
      "p",
      {},
      "Not training a Keras or PyTorch model? Pass NumPy arrays instead: ",
      h("code", {}, "beholder.update(arrays=[w1, w2])"),
      ", or any 2-D image: ",
      h("code", {}, "beholder.update(frame=image)"),
      ". This page switches to the live view as soon as the first frame is written.",
    ),
  );
}

/** The whole tab. stats is exposed as window.beholder for tests and benchmarks. */
export class Dashboard {
  constructor(root) {
    this.run = null;
    this.runs = [];
    this.config = null;
    this.zoom = "1";
    this.lastBlob = null; // the PNG on screen (user frames, placeholders), else null
    this.lastData = null; // the frame data on screen ("sections" frames, drawn here), else null
    this.palettes = null; // palette words by colormap name, from the colormaps route
    this.image = null; // the ImageData frames are painted into, reused while the size stays
    this.covered = null; // [first, last] rows of the canvas painted from the frame on screen (all: null)
    this.viewportLoads = 0; // counts viewport fetches, so that a slow one never paints over a newer one
    this.viewportBusy = false; // a viewport fetch is in flight
    this.viewportAgain = false; // the page scrolled meanwhile
    this.lastMeta = null;
    this.sections = [];
    this.infoKey = null;
    this.infoTimer = null;
    this.infoFetchedAt = 0;
    this.serverUp = null;
    this.live = { connected: false, error: null };
    this.arrivals = [];
    this.paused = false;
    this.keptLoads = 0; // counts kept-frame loads, so that a slow one never replaces a newer one
    // Settings changes: sent one request at a time, in order; a reply never overwrites a control
    // the user changed after that request was sent (touched[key] = the change's sequence number).
    this.configQueue = [];
    this.configPosting = false;
    this.postingKeys = new Set();
    this.changeSeq = 0;
    this.touched = {};
    this.stats = {
      run: null,
      framesReceived: 0,
      frameId: null,
      writer: null,
      values: null,
      width: 0,
      height: 0,
      connected: false,
      paused: false,
      kept: null, // the kept frame on screen (its history name), null while live
      transport: null, // how the frame on screen came: "data" (drawn here from frame-data) or "png"
      colormap: null, // the colormap it was drawn with (frame data only)
      paints: 0, // how many times frame data was painted (frames and colormap redraws)
      rows: null, // the rows of the last frame data painted ("A-B"), null when whole
      configBusy: 0, // settings changes not yet answered
      drawn: [], // the last 500 frames: {frameId, writer, time: ms since epoch when drawn}
    };

    this.toolbar = buildToolbar({
      onChange: (changes) => this.changeConfig(changes),
      onRun: (run) => this.selectRun(run),
      onZoom: (zoom) => this.setZoom(zoom),
      onDownload: () => this.download(),
      onView: (view) => this.setView(view),
      onCompare: (other) => {
        this.compare.setOther(other);
        this.renderView();
      },
    });
    this.view = "frame";
    this.chooser = new SectionChooser({ onFilter: (filter) => this.changeConfig({ filter }) });
    this.toolbar.addAfterValues(this.chooser.element);
    this.store = new StatsStore();
    this.distributions = new DistributionsView(this.store);
    this.compare = new CompareView(() => this.run);
    this.timeline = new TimelineView(this); // timeline: the whole run's view, a third View choice
    this.status = h("div", { class: "status", id: "status", role: "status" }, "Connecting…");
    this.health = h("div", { class: "health", id: "trainer-health", role: "status", hidden: true });
    this.offer = h("div", { class: "offer", id: "values-offer", role: "status", hidden: true });
    this.canvas = h("canvas", { id: "frame", class: "frame", width: 1, height: 1 });
    this.flagLayer = h("div", { class: "flag-layer", id: "flag-layer" });
    this.overlay = h("div", { class: "overlay", id: "overlay" }, this.flagLayer);
    this.frameWrap = h("div", { class: "frame-wrap zoom-1", id: "frame-wrap" }, this.canvas, this.overlay);
    this.info = h("div", { class: "info", id: "info" });
    this.stage = h("div", { class: "stage", id: "stage", hidden: true }, this.frameWrap, this.info);
    this.welcome = welcomePage();
    this.history = new HistoryBar({
      getRun: () => this.run,
      onPause: () => this.pause(),
      onLive: () => this.resume(),
      showKept: (entry) => this.showKept(entry),
      onExported: () => this.videos.refresh(),
    });
    this.videos = new VideoList(() => this.run);
    this.toolbar.addGroup(this.videos.element);
    const hoverBox = h("div", { class: "hover-box", id: "hover-box" });
    const pinsBox = h("div", { class: "pins", id: "pins" });
    this.inspector = new Inspector({
      canvas: this.canvas,
      overlay: this.overlay,
      hoverBox,
      pinsBox,
      getSource: () => ({ run: this.run, frame: this.paused ? this.stats.kept : null }),
    });
    this.header = h(
      "div",
      { class: "main-header", id: "main-header" },
      this.status,
      this.health,
      this.offer,
      this.history.element,
      h("div", { class: "inspect", id: "inspect" }, hoverBox, pinsBox),
    );
    root.replaceChildren(
      h(
        "div",
        { id: "beholder-root", class: "beholder" },
        this.toolbar.element,
        h("main", { class: "main" }, this.header, this.welcome, this.stage, this.distributions.element,
          this.compare.element, this.timeline.element), // timeline: its element
      ),
    );
    this.feed = new LiveFeed(
      (content, meta) => this.showFrame(content, meta),
      (state) => this.liveStatus(state),
    );
    this.feed.rows = () => this.wantedRows();
    window.addEventListener("resize", () => {
      this.renderInfo();
      this.inspector.placeCross();
      this.checkViewport();
    });
    window.addEventListener("scroll", () => this.checkViewport(), { passive: true });
    document.addEventListener("visibilitychange", () => {
      if (!document.hidden && this.run !== null) this.loadConfig();
    });
  }

  /** Load the runs and keep them, the status line and the frames up to date. */
  async start() {
    this.loadPalettes();
    await this.refreshRuns();
    setInterval(() => this.refreshRuns(), RUNS_EVERY_MS);
    setInterval(() => this.renderStatus(), 500);
    setInterval(() => this.videos.refresh(), VIDEOS_EVERY_MS);
  }

  /** Fetch every colormap's palette once, so that a colormap change redraws the frame at once. */
  async loadPalettes() {
    try {
      const maps = await getJSON("colormaps");
      this.palettes = Object.fromEntries(
        Object.entries(maps).map(([name, hex]) => [name, paletteWords(paletteFromHex(hex))]),
      );
    } catch (_) {
      setTimeout(() => this.loadPalettes(), 2000); // frames use their own palette meanwhile
    }
  }

  async refreshRuns() {
    let runs;
    try {
      runs = await getJSON("runs");
    } catch (error) {
      this.serverUp = false;
      this.renderStatus();
      return;
    }
    const cameBack = this.serverUp === false;
    this.serverUp = true;
    this.runs = runs;
    this.welcome.hidden = runs.length > 0;
    this.history.toggle.disabled = runs.length === 0;
    if (runs.length === 0) {
      this.run = null;
      this.feed.stop();
      this.stage.hidden = true;
      this.toolbar.setRuns([], null);
      this.toolbar.setEnabled(false, "no-runs");
      this.videos.refresh();
      this.renderStatus();
      return;
    }
    const names = runs.map((r) => r.run);
    let wanted = this.run;
    if (wanted === null || !names.includes(wanted)) {
      // Default: the most recently updated run (runs without frames last).
      const ranked = [...runs].sort((a, b) => (a.age ?? Infinity) - (b.age ?? Infinity));
      wanted = ranked[0].run;
    }
    this.toolbar.setRuns(runs, wanted);
    if (wanted !== this.run) this.selectRun(wanted);
    else if (cameBack) this.loadConfig();
    this.renderStatus();
  }

  /** Show another run: its config in the toolbar and its frames on the stage. */
  selectRun(run) {
    this.run = run;
    this.stats.run = run;
    this.lastBlob = null;
    this.lastData = null;
    this.covered = null;
    this.config = null; // another run's colormap must not colour this run's frames
    this.lastMeta = null;
    this.sections = [];
    this.infoKey = null;
    this.arrivals = [];
    this.stage.hidden = true;
    this.info.replaceChildren();
    this.flagLayer.replaceChildren();
    this.inspector.clear();
    this.chooser.setRun(run);
    this.toolbar.setRuns(this.runs, run);
    this.compare.setOther(this.compare.other === run ? null : this.compare.other);
    this.renderView();
    if (this.paused) this.history.live(); // calls resume(), which starts the feed
    else this.feed.start(run);
    this.loadConfig();
    this.videos.refresh();
  }

  async loadConfig() {
    const run = this.run;
    const sentAt = this.changeSeq;
    try {
      const reply = await getJSON("config", { run });
      if (run === this.run) this.applyConfigReply(reply, sentAt);
    } catch (error) {
      if (run === this.run) this.toolbar.showError(`Could not read the settings: ${error.message}`);
    }
  }

  /**
   * The keys whose controls an answer asked for at change number sentAt must not reset: changed
   * by the user since, or still waiting in a request (other than the one answered, when own).
   */
  keysToKeep(sentAt, own) {
    const skip = new Set(Object.keys(this.touched).filter((key) => this.touched[key] > sentAt));
    for (const item of this.configQueue) for (const key of Object.keys(item.changes)) skip.add(key);
    if (!own) for (const key of this.postingKeys) skip.add(key);
    return skip;
  }

  /** Show a config answer that was asked for when changeSeq was sentAt (own: the answer to our POST). */
  applyConfigReply(reply, sentAt, own = false) {
    const skip = this.keysToKeep(sentAt, own);
    const kept = Object.fromEntries([...skip].filter((key) => this.config && key in this.config)
      .map((key) => [key, this.config[key]]));
    this.config = { ...reply.config, ...kept };
    if (this.lastData && this.config.colormap !== this.stats.colormap) this.paint();
    this.toolbar.apply(reply.config, skip);
    if (!skip.has("filter")) this.chooser.applyConfig(reply.config.filter);
    this.toolbar.setEnabled(Boolean(reply.writable));
    this.toolbar.showProblem(reply.problem);
    if (this.lastMeta) this.renderOffer(this.lastMeta);
  }

  /** Queue a change of settings; they are sent one request at a time, in the order made. */
  changeConfig(changes) {
    if (this.run === null) return;
    this.changeSeq++;
    for (const key of Object.keys(changes)) this.touched[key] = this.changeSeq;
    this.config = { ...(this.config || {}), ...changes };
    if ("colormap" in changes && this.lastData) this.paint(); // at once, before the trainer's next frame
    if ("values" in changes && this.lastMeta) this.renderOffer(this.lastMeta);
    const last = this.configQueue[this.configQueue.length - 1];
    if (last && last.run === this.run) Object.assign(last.changes, changes);
    else this.configQueue.push({ run: this.run, changes: { ...changes } });
    this.sendConfig();
    this.countBusy();
  }

  /** Requests queued or in flight (stats.configBusy: tests wait for 0). */
  countBusy() {
    this.stats.configBusy = this.configQueue.length + (this.configPosting ? 1 : 0);
  }

  /** Send the oldest queued change (unless a request is in flight); on refusal show why. */
  async sendConfig() {
    if (this.configPosting || this.configQueue.length === 0) return;
    const { run, changes } = this.configQueue.shift();
    const sentAt = this.changeSeq;
    this.configPosting = true;
    this.postingKeys = new Set(Object.keys(changes));
    this.countBusy();
    try {
      const reply = await postConfig(run, changes);
      this.toolbar.showError(null);
      if (run === this.run) this.applyConfigReply(reply, sentAt, true);
    } catch (error) {
      this.toolbar.showError(`Setting not changed: ${error.message}`);
      if ("filter" in changes && run === this.run) this.chooser.refused(error.message);
      if (run === this.run) this.loadConfig(); // put back what is really on disk
    } finally {
      this.configPosting = false;
      this.postingKeys = new Set();
      this.sendConfig();
      this.countBusy();
    }
  }

  liveStatus(state) {
    const wasDown = !this.live.connected;
    this.live = state;
    this.stats.connected = state.connected;
    if (state.connected && wasDown && this.lastMeta !== null) this.loadConfig();
    this.renderStatus();
  }

  /** Stop streaming: the frame on screen stays, and the history bar takes over. */
  pause() {
    this.paused = this.stats.paused = true;
    this.feed.stop();
    this.renderStatus();
  }

  /** Back to the live frames. */
  resume() {
    this.paused = this.stats.paused = false;
    this.stats.kept = null;
    this.keptLoads++;
    if (this.run !== null) this.feed.start(this.run);
    this.renderStatus();
  }

  /** Load and show a kept frame (a history entry); a newer request wins over a slower older one. */
  async showKept(entry) {
    const load = ++this.keptLoads;
    try {
      const { content, meta } = await getKeptFrame(this.run, entry.name);
      if (load !== this.keptLoads || !this.paused) return;
      await this.showFrame(content, meta);
    } catch (error) {
      if (load === this.keptLoads) this.status.textContent = `Cannot show ${keptLabel(entry)}: ${error.message}`;
    }
  }

  /** Draw a frame: parsed frame data (painted here with the chosen colormap) or a PNG Blob. */
  async showFrame(content, meta) {
    if (this.paused && !meta.kept) return; // a live frame that was on its way when the user paused
    const canvas = this.canvas;
    const isPng = content instanceof Blob;
    const bitmap = isPng ? await createImageBitmap(content) : null;
    if (this.paused && !meta.kept) {
      if (bitmap) bitmap.close();
      return;
    }
    const { width, height } = isPng ? bitmap : content.doc;
    const resized = canvas.width !== width || canvas.height !== height;
    if (resized) {
      canvas.width = width;
      canvas.height = height;
    }
    this.lastBlob = isPng ? content : null;
    this.lastData = isPng ? null : content;
    this.stats.transport = isPng ? "png" : "data";
    if (isPng) {
      canvas.getContext("2d").drawImage(bitmap, 0, 0);
      bitmap.close();
      this.stats.colormap = null;
    } else {
      this.paint();
    }
    this.welcome.hidden = true;
    this.lastMeta = meta;
    this.followSettings(meta);
    this.renderView();
    const now = performance.now();
    this.arrivals.push(now);
    while (this.arrivals.length && this.arrivals[0] < now - FPS_WINDOW_MS) this.arrivals.shift();
    Object.assign(this.stats, {
      framesReceived: this.stats.framesReceived + 1,
      frameId: meta.frameId,
      writer: meta.writer,
      step: meta.step,
      values: meta.values,
      kept: meta.kept,
      width,
      height,
    });
    this.renderHealth(meta);
    this.renderOffer(meta);
    requestAnimationFrame(() => {
      this.stats.drawn.push({
        frameId: meta.frameId,
        writer: meta.writer,
        time: performance.timeOrigin + performance.now(),
      });
      if (this.stats.drawn.length > 500) this.stats.drawn.splice(0, 100);
    });
    if (resized) this.setZoom(this.zoom);
    this.scheduleInfo(meta, resized || Boolean(meta.kept));
    this.inspector.refresh();
  }

  /** The palette words to paint frame data with: the chosen colormap's, else the frame's own. */
  paletteFor(data) {
    const wanted = this.config?.colormap;
    if (wanted && wanted !== data.doc.colormap && this.palettes?.[wanted]) {
      return { name: wanted, words: this.palettes[wanted] };
    }
    if (!data.words) data.words = paletteWords(data.palette);
    return { name: data.doc.colormap, words: data.words };
  }

  /** Paint the frame data on screen into the canvas (again, e.g. after a colormap change). */
  paint() {
    const data = this.lastData;
    if (!data) return;
    const { width, height } = data.doc;
    const ctx = this.canvas.getContext("2d");
    if (!this.image || this.image.width !== width || this.image.height !== height) {
      this.image = ctx.createImageData(width, height);
    }
    const { name, words } = this.paletteFor(data);
    const rows = data.doc.rows;
    if (rows === null) {
      paintFrameData(data, words, this.image);
      ctx.putImageData(this.image, 0, 0);
      this.covered = null;
    } else {
      // Only the sections near the rows on screen came: paint them, and the separators between.
      const first = Math.min(rows[0], height - 1);
      const last = Math.min(rows[1], height - 1);
      new Uint32Array(this.image.data.buffer, 4 * first * width, (last - first + 1) * width).fill(words[0]);
      paintFrameData(data, words, this.image, false);
      const top = Math.min(first, ...data.doc.sections.map((rec) => rec.top));
      const bottom = Math.max(last + 1, ...data.doc.sections.map((rec) => rec.top + rec.height));
      ctx.putImageData(this.image, 0, 0, 0, top, width, bottom - top);
      this.covered = [first, last];
    }
    this.stats.rows = rows === null ? null : rows.join("-");
    this.stats.colormap = name;
    this.stats.paints++;
  }

  /** Rows of a tall frame on screen, widened by margin screens each side: [first, last], or null (fetch all). */
  screenRows(margin) {
    const height = this.canvas.height;
    if (height <= VIEWPORT_MIN_ROWS || this.stage.hidden || this.lastData === null) return null;
    const rect = this.canvas.getBoundingClientRect();
    if (!(rect.height > 0)) return null;
    const perRow = rect.height / height; // CSS pixels per frame row
    const screen = window.innerHeight;
    const first = Math.max(0, Math.floor((-rect.top - margin * screen) / perRow));
    const last = Math.min(height - 1, Math.ceil(((1 + margin) * screen - rect.top) / perRow));
    return last >= first ? [first, last] : [0, 0];
  }

  /** The rows live frames are fetched for: "A-B" around the screen, or null (whole frames). */
  wantedRows() {
    const rows = this.screenRows(1);
    return rows === null ? null : rows.join("-");
  }

  /** After a scroll or resize: fetch and paint the rows now on screen when they were not painted. */
  async checkViewport() {
    if (this.lastData === null || this.covered === null) return;
    if (this.viewportBusy) {
      this.viewportAgain = true; // look again once the fetch in flight has been painted
      return;
    }
    const onScreen = this.screenRows(0);
    if (onScreen !== null && onScreen[0] >= this.covered[0] && onScreen[1] <= this.covered[1]) return;
    this.viewportBusy = true;
    try {
      await this.fetchRows(onScreen === null ? null : this.wantedRows());
    } finally {
      this.viewportBusy = false;
    }
    if (this.viewportAgain) {
      this.viewportAgain = false;
      this.checkViewport();
    }
  }

  /** Fetch the frame on screen's data for these rows (null: all) and paint it, unless another came meanwhile. */
  async fetchRows(rows) {
    const load = ++this.viewportLoads;
    const shown = this.lastData;
    const kept = this.paused ? this.stats.kept : null;
    try {
      const response = await fetch(routeUrl("frame-data", { run: this.run, frame: kept || undefined, rows }),
        { cache: "no-store" });
      if (!response.ok) return;
      const content = await frameContent(response);
      if (load !== this.viewportLoads || this.lastData !== shown || content instanceof Blob) return;
      const { width, height } = content.doc;
      if (width !== this.canvas.width || height !== this.canvas.height) return;
      this.lastData = content; // the newest frame's rows (while live, maybe a newer frame than shown)
      this.paint();
    } catch (_) {
      // the next frame or scroll tries again
    }
  }

  /**
   * The trainer's failure count, last error and skipped frames, from the frame header, when any.
   * Failures are in red; skips only when they are a real share of the frames (over SKIP_ALARM of
   * those due in the last SKIP_WINDOW_S), else a plain count.
   */
  renderHealth(meta) {
    const parts = [];
    const failures = [];
    if (meta.failures > 0) failures.push(`The trainer reports ${meta.failures} failed update() call${meta.failures === 1 ? "" : "s"}`);
    if (meta.lastError) failures.push(`last error: ${meta.lastError}`);
    if (failures.length) parts.push(h("span", { class: "alarm", id: "health-failures" }, failures.join("; ")));
    const share = this.skipShare(meta);
    if (meta.skipped > 0) {
      const alarm = share > SKIP_ALARM;
      const text = `${meta.skipped} frame${meta.skipped === 1 ? "" : "s"} skipped while its worker was busy` +
        (alarm ? ` (${Math.round(share * 100)} % of the last minute's frames)` : "");
      if (parts.length) parts.push("; ");
      parts.push(h("span", { class: alarm ? "alarm" : "plain", id: "health-skips" }, text));
    }
    this.health.hidden = parts.length === 0;
    this.health.replaceChildren(...parts);
    this.health.dataset.failures = String(meta.failures || 0);
  }

  /** The share of frames skipped in the last minute of this writer's frames (their headers' counts). */
  skipShare(meta) {
    if (meta.kept) return 0;
    const now = performance.now();
    const seen = (this.skipSamples || []).filter((s) => s.writer === meta.writer && s.at >= now - SKIP_WINDOW_S * 1000);
    seen.push({ writer: meta.writer, at: now, skipped: meta.skipped || 0, frames: meta.frameId || 0 });
    this.skipSamples = seen;
    const first = seen[0];
    const last = seen[seen.length - 1];
    // With one sample only (a run just opened), the whole run's counts stand for the last minute.
    const skipped = seen.length > 1 ? last.skipped - first.skipped : last.skipped;
    const frames = seen.length > 1 ? last.frames - first.frames : last.frames;
    return skipped > 0 ? skipped / (skipped + Math.max(0, frames)) : 0;
  }

  /**
   * A placeholder for values the trainer did not pass, while it passed others (e.g. arrays while
   * Values is on trainable variables): say so, with one button that shows what it passed.
   */
  renderOffer(meta) {
    const offered = meta.values === "placeholder" && !meta.kept ? meta.offered || [] : [];
    const choice = offered.find((name) => name !== this.config?.values);
    this.offer.hidden = !choice;
    if (!choice) {
      this.offer.replaceChildren();
      return;
    }
    const selected = VALUES_NAMES[this.config?.values] || this.config?.values || "another choice";
    const given = offered.filter((name) => name !== this.config?.values).map((name) => GIVEN[name] || name);
    this.offer.replaceChildren(
      `The trainer's update() was given ${given.join(" and ")}, but Values is on "${selected}". `,
      h("button", {
        type: "button",
        id: "show-offered",
        dataset: { values: choice },
        onclick: () => this.changeConfig({ values: choice }),
      }, `Show ${VALUES_NAMES[choice].toLowerCase()}`),
    );
  }

  /** Fetch the section statistics for new frames, at most every INFO_EVERY_MS. */
  scheduleInfo(meta, urgent) {
    if (meta.values === "frames" || meta.values === "placeholder") {
      this.sections = [];
      this.infoKey = null;
      this.renderInfo();
      return;
    }
    const key = `${meta.writer}-${meta.frameId}`;
    if (key === this.infoKey || this.infoTimer !== null) return;
    const wait = urgent ? 0 : Math.max(0, this.infoFetchedAt + INFO_EVERY_MS - performance.now());
    this.infoTimer = setTimeout(() => this.fetchInfo(meta.kept), wait);
  }

  async fetchInfo(kept) {
    const run = this.run;
    this.infoFetchedAt = performance.now();
    try {
      const doc = await getJSON("section-info", { run, frame: kept || undefined });
      if (run !== this.run || (kept || null) !== (this.stats.kept || null)) return;
      this.sections = (doc.sections || []).map(decodeHistogram);
      this.chooser.noteSections(this.sections);
      if (!kept) this.store.add(run, `${doc.writer}-${doc.frame_id}`, doc.step, this.sections);
      if (this.view === "distributions") this.distributions.render(run, this.sections.map((rec) => rec.name));
      // The table comes from the latest frame's own header: keyed by that frame's writer and id, so
      // it is fetched again only when another frame is shown (scheduleInfo compares the keys).
      this.infoKey = `${doc.writer ?? this.lastMeta?.writer}-${doc.frame_id}`;
      this.renderInfo();
    } catch (_) {
      // the next frame schedules another try
    } finally {
      this.infoTimer = null;
    }
  }

  /** Lay out one info entry beside each section, at the section's height on screen. */
  renderInfo() {
    const scale = this.canvas.height > 1 ? this.canvas.getBoundingClientRect().height / this.canvas.height : 1;
    let top = 0;
    const entries = [];
    const outlines = [];
    for (const section of this.sections) {
      const height = Number(section.height) || 0;
      if (section.missing) {
        // A section with nothing to show this frame: a black band, and why, on it and beside it.
        const style = `top:${top * scale}px;height:${height * scale}px`;
        outlines.push(h("div", { class: "missing-label", dataset: { name: section.name }, style },
          `${section.name}: ${section.missing}`));
        entries.push(h("div", { class: "section-info missing", style, dataset: { name: section.name } },
          h("div", { class: "name", title: section.name }, section.name),
          h("div", { class: "missing-note" }, `no values: ${section.missing}`)));
        top += height + SEPARATOR_PX;
        continue;
      }
      const flag = nonFiniteFlag(section.stats);
      if (flag) {
        outlines.push(h("div", {
          class: "flag-outline",
          dataset: { name: section.name },
          style: `top:${top * scale}px;height:${height * scale}px`,
        }));
      }
      entries.push(
        h(
          "div",
          {
            class: `section-info${flag ? " nonfinite" : ""}`,
            style: `top:${top * scale}px;height:${height * scale}px`,
            dataset: { name: section.name },
          },
          h("div", { class: "name", title: section.name }, section.name),
          flag ? h("div", { class: "flag", title: `over ${section.stats.over}` },
            `⚠ NaN ${percent(section.stats.nan)} · Inf ${percent(section.stats.inf)} of the array`) : null,
          h(
            "div",
            { class: "sample-note", title: "Statistics of the values drawn: the section after truncation and resizing, not the whole array" },
            "over the shown sample",
          ),
          h("div", {}, `shape ${shape(section.shape)}`),
          h("div", {}, `range ${sci(section.range)}`),
          h("div", {}, `mean ${sci(section.mean)}`),
          h("div", {}, `min ${sci(section.min)} max ${sci(section.max)}`),
        ),
      );
      top += height + SEPARATOR_PX;
    }
    this.info.style.height = `${this.canvas.height * scale}px`;
    this.info.replaceChildren(...entries);
    this.flagLayer.replaceChildren(...outlines);
  }

  renderStatus() {
    let text;
    let state = "down";
    const now = performance.now();
    const recent = this.arrivals.filter((t) => t >= now - FPS_WINDOW_MS);
    if (this.serverUp === false) {
      text = "Not connected: TensorBoard is not answering; retrying…";
    } else if (this.serverUp === null) {
      text = "Connecting…";
    } else if (this.run === null) {
      text =
        "No runs yet: start a training script that creates Beholder(\"<logdir>/run1\") (see below); " +
        "its run appears here within seconds.";
      state = "idle";
    } else if (this.paused) {
      const meta = this.lastMeta;
      text = meta?.kept
        ? `Paused on a kept frame: ${keptLabel({ step: meta.step, time: meta.time })} (frame ${meta.frameId}). Press Live to stream again.`
        : "Paused. Press Live to stream again.";
      state = "idle";
    } else if (!this.live.connected && this.live.error) {
      text = `Not connected: ${this.live.error.message}; retrying…`;
    } else if (this.lastMeta === null) {
      text = "Connected; waiting for the first frame of this run…";
      state = "idle";
    } else {
      ({ text, state } = this.streamingStatus(recent.length / (FPS_WINDOW_MS / 1000)));
    }
    this.status.textContent = text;
    this.status.dataset.state = state;
  }

  /**
   * Settings changed elsewhere (another viewer, a script writing config.json): when a frame was drawn
   * with other values or mode than the controls show, read the settings again (at most every 2 s).
   */
  followSettings(meta) {
    const config = this.config;
    if (!config || meta.kept || this.configQueue.length || this.configPosting) return;
    const values = meta.values === "placeholder" ? null : meta.values;
    const otherValues = Boolean(values) && values !== config.values;
    const otherMode = Boolean(meta.mode) && values !== "frames" && meta.mode !== config.mode;
    const now = performance.now();
    if ((otherValues || otherMode) && !(now - (this.followedAt || -Infinity) < 2000)) {
      this.followedAt = now;
      this.loadConfig();
    }
  }

  /** The status while streaming: receiving, paused by FPS 0, or no frame for a while (trainer stopped?). */
  streamingStatus(fps) {
    const meta = this.lastMeta;
    const frameAge = Date.now() / 1000 - meta.time;
    const configured = Number(this.config?.FPS);
    const frame = `frame ${meta.frameId} (${meta.width}×${meta.height})`;
    if (configured === 0) {
      return {
        text: `Trainer paused (Updates per second is 0): no frames are computed · showing ${frame}, ${age(frameAge)} old`,
        state: "paused",
      };
    }
    const staleAfter = STALE_AFTER_S + (configured > 0 ? 3 / configured : 0);
    if (meta.values === "placeholder" && meta.failures > 0 && meta.lastError && frameAge <= staleAfter) {
      // The trainer runs, but its update() fails: it writes a frame saying so (at most one a second).
      return {
        text: `Connected · the trainer runs, but its update() fails (${meta.failures} so far; see below) · frame ${age(frameAge)} old`,
        state: "failing",
      };
    }
    if (frameAge > staleAfter && fps === 0) {
      return {
        text: `No frame for ${age(frameAge)}: trainer stopped? (Updates per second is ${configured}) · showing ${frame}`,
        state: "stale",
      };
    }
    // A remote logdir (s3://, gs://...): the trainer caps its frame rate; say so, with the kind of storage.
    const remote = meta.storage && meta.storage !== "local"
      ? ` · remote logdir (${meta.storage}://)${meta.maxFps ? `: up to ${meta.maxFps} frames/s` : ""}`
      : "";
    return { text: `Connected · frame ${age(frameAge)} old · ${fps.toFixed(1)} frames/s · ${frame}${remote}`, state: "up" };
  }

  /** Show the frame ("frame") or the distributions ("distributions"). */
  setView(view) {
    this.view = view;
    if (view === "distributions") this.distributions.render(this.run, this.sections.map((rec) => rec.name));
    this.renderView();
  }

  /** Which of the frame, the distributions and the two-run comparison is on screen. */
  renderView() {
    const comparing = this.view === "frame" && this.compare.other !== null;
    const wasHidden = this.stage.hidden;
    this.stage.hidden = this.lastMeta === null || this.view !== "frame" || comparing;
    if (wasHidden && !this.stage.hidden) this.renderInfo(); // laid out while hidden, the panel had no size
    this.distributions.element.hidden = this.view !== "distributions";
    this.compare.setActive(comparing);
    this.timeline.sync(this.view === "timeline"); // timeline:
  }

  setZoom(zoom) {
    this.zoom = zoom;
    this.frameWrap.className = `frame-wrap zoom-${zoom}`;
    if (zoom === "2") this.canvas.style.width = `${this.canvas.width * 2}px`;
    else this.canvas.style.width = "";
    this.renderInfo();
    this.inspector.placeCross();
  }

  /** Save the frame on screen as a PNG file (the served PNG, or the canvas for frames drawn here). */
  async download() {
    if (this.lastBlob) {
      this.save(this.lastBlob);
      return;
    }
    if (!this.lastData) return;
    if (this.covered !== null) await this.fetchRows(null); // only rows near the screen were painted
    this.canvas.toBlob((blob) => blob && this.save(blob), "image/png");
  }

  /** Offer a PNG Blob as a download named after the run and frame. */
  save(blob) {
    const href = URL.createObjectURL(blob);
    const safeRun = String(this.run).replace(/[^A-Za-z0-9_.-]+/g, "_");
    const link = h("a", { href, download: `beholder-${safeRun}-${this.lastMeta.frameId}.png` });
    document.body.append(link);
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(href), 10000);
  }
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
