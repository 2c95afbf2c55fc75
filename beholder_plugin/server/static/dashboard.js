// The Beholder dashboard: run selection, the live frame, the info panel, the status line and the
// toolbar, wired to the plugin's routes. Its state is one DashboardState (state.js), which the parts
// read and this class changes; settings go through SettingsSync (settings_sync.js).
import { LiveFeed, getKeptFrame, getJSON } from "./api.js";
import { buildToolbar } from "./controls.js";
import { h } from "./dom.js";
import { HistoryBar, VideoList, keptLabel } from "./history.js";
import { Inspector } from "./inspector.js";
import { CompareView } from "./compare.js";
import { DistributionsView, StatsStore } from "./distributions.js";
import { SectionChooser, onUrlChange, urlParams, writeUrlRun } from "./sections.js";
import { TimelineView } from "./timeline.js";
import { DashboardState } from "./state.js";
import { SettingsSync } from "./settings_sync.js";
import { FrameCanvas } from "./frame_canvas.js";
import { StatusLine, endedOn } from "./status_line.js";
import { InfoPanel, decodeHistogram } from "./info_panel.js";
import { WindowNote } from "./window_note.js";
import { FrameCaption, readoutPrefix } from "./frame_caption.js";

const RUNS_EVERY_MS = 3000;
const FPS_WINDOW_MS = 2000;
const VIDEOS_EVERY_MS = 10000;
const STATS_KINDS = ["trainable_variables", "gradients", "activations", "arrays"]; // values whose frames carry stats
const METAS_KEPT = 16; // metas of the last frames drawn, to tell what a read-out's frame shows

function welcomePage() {
  return h(
    "section",
    { class: "welcome", id: "welcome", hidden: true },
    h("h2", {}, "No Beholder data yet"),
    h("p", { class: "welcome-hint", id: "welcome-hint", hidden: true }),
    h("p", { id: "welcome-logdir", hidden: true }),
    h(
      "p",
      {},
      "PyTorch: add these lines to your training script, then run ",
      h("code", {}, "tensorboard --logdir logs"),
      ":",
    ),
    h(
      "pre",
      { id: "welcome-code" },
      "from beholder_plugin import Beholder\n" +
        'beholder = Beholder("logs/run1")\n' +
        "beholder.watch(model)   # once: weights, gradients and activations\n" +
        "beholder.update()       # in the loop, after optimizer.step()",
    ),
    h("p", {}, "Keras 3: pass the callback to fit:"),
    h(
      "pre",
      { id: "welcome-keras" },
      "from beholder_plugin import BeholderCallback\n" +
        'model.fit(x, y, callbacks=[BeholderCallback("logs/run1")])',
    ),
    h(
      "p",
      {},
      "Anything else: pass NumPy arrays, ",
      h("code", {}, "beholder.update(arrays=[w1, w2])"),
      ", or any 2-D image, ",
      h("code", {}, "beholder.update(frame=image)"),
      ". This page switches to the live view as soon as the first frame is written.",
    ),
  );
}

/** The whole tab. Its state is exposed read-only as window.beholder for tests and benchmarks. */
export class Dashboard {
  constructor(root) {
    const state = (this.state = new DashboardState());
    state.chosenRun = urlParams().get("run"); // (a shared link, or a reload: the run it showed)
    this.lastMeta = null; // the meta of the frame on screen (api.js frameMeta), null before the first
    this.live = { connected: false, error: null };
    this.arrivals = [];
    this.keptLoads = 0; // counts kept-frame loads, so that a slow one never replaces a newer one
    this.settings = new SettingsSync(state, {
      show: (reply, skip) => this.showSettings(reply, skip),
      refused: (message, changes, shown) => {
        this.toolbar.showError(`Setting not changed: ${message}`);
        if ("filter" in changes && shown) this.chooser.refused(message);
      },
      failed: (message) => this.toolbar.showError(message),
      done: () => this.toolbar.showError(null),
    });
    this.toolbar = buildToolbar({
      onChange: (changes) => this.changeConfig(changes),
      onRun: (run) => {
        this.state.chosenRun = run;
        writeUrlRun(run);
        this.selectRun(run);
      },
      onZoom: (zoom) => this.setZoom(zoom),
      onDownload: () => this.download(),
      onView: (view) => this.setView(view),
      onCompare: (other) => {
        this.compare.setOther(other);
        this.renderView();
      },
    });
    this.chooser = new SectionChooser({ onFilter: (filter) => this.changeConfig({ filter }) });
    this.toolbar.addAfterValues(this.chooser.element);
    this.store = new StatsStore();
    this.distributions = new DistributionsView(this.store);
    this.compare = new CompareView(() => state.run);
    this.timeline = new TimelineView(this); // the whole run's view, a third View choice (timeline.js)
    this.statusLine = new StatusLine(state, (values) => this.changeConfig({ values }));
    this.frame = new FrameCanvas(state);
    this.canvas = this.frame.canvas;
    this.infoPanel = new InfoPanel(state, this.canvas, (doc, sections, kept) => this.noteSections(doc, sections, kept));
    this.windowNote = new WindowNote(() => this.changeConfig({ mode: "current" }));
    this.caption = new FrameCaption(); // what the frame's numbers are (its header's values and mode)
    this.recentMetas = [];
    this.pendingTable = null; // a section table of a frame not received yet ({run, doc, sections, kept})
    this.sectionsKind = null; // the values of the frame whose section table was taken last
    this.reached = new Set(); // "run\nvalues\nwriter" whose kept frames' stats were asked for (GET history/stats)
    this.reachAgain = new Set(); // ... of those, the ones failed or cut short: asked again when the view is opened
    this.overlay = h("div", { class: "overlay", id: "overlay" }, this.infoPanel.flagLayer);
    this.frameWrap = h("div", { class: "frame-wrap zoom-1", id: "frame-wrap" }, this.canvas, this.overlay);
    this.stage = h("div", { class: "stage", id: "stage", hidden: true }, this.caption.element,
      h("div", { class: "stage-row" }, this.frameWrap, this.infoPanel.element));
    this.frame.hidden = () => this.stage.hidden;
    this.welcome = welcomePage();
    this.history = new HistoryBar({
      state,
      onPause: () => this.pause(),
      onLive: () => this.resume(),
      showKept: (entry) => this.showKept(entry),
      onExported: () => this.videos.refresh(),
    });
    this.videos = new VideoList(() => state.run, () => Boolean(state.config?.is_recording));
    this.toolbar.addGroup(this.videos.element);
    const hoverBox = h("div", { class: "hover-box", id: "hover-box" });
    const pinsBox = h("div", { class: "pins", id: "pins" });
    this.inspector = new Inspector({
      canvas: this.canvas,
      overlay: this.overlay,
      hoverBox,
      pinsBox,
      getSource: () => ({ run: state.run, frame: state.paused ? state.kept : null }),
      describe: (answer) => this.readoutPrefix(answer),
    });
    const { status, health, offer, endedNote } = this.statusLine;
    this.header = h(
      "div",
      { class: "main-header", id: "main-header" },
      status,
      health,
      offer,
      endedNote,
      this.infoPanel.missingAll,
      this.windowNote.element,
      this.history.element,
      h("div", { class: "inspect", id: "inspect" }, hoverBox, pinsBox),
    );
    // The views the View choice switches between, besides the frame (stage): each has an element.
    this.views = { distributions: this.distributions };
    root.replaceChildren(
      h(
        "div",
        { id: "beholder-root", class: "beholder" },
        this.toolbar.element,
        h("main", { class: "main" }, this.header, this.welcome, this.stage,
          ...Object.values(this.views).map((view) => view.element), this.compare.element, this.timeline.element),
      ),
    );
    this.feed = new LiveFeed(
      (content, meta) => this.showFrame(content, meta),
      (live) => this.liveStatus(live),
    );
    this.feed.rows = () => this.frame.wantedRows();
    window.addEventListener("resize", () => {
      this.infoPanel.render();
      this.inspector.placeCross();
      this.frame.checkViewport();
    });
    window.addEventListener("scroll", () => this.frame.checkViewport(), { passive: true });
    document.addEventListener("visibilitychange", () => {
      if (!document.hidden && state.run !== null) this.settings.load();
    });
    onUrlChange(() => this.followUrl());
  }

  /**
   * The top page's hash changed without a reload (a link pasted into the open tab, the back button):
   * show the run and the sections it names. What it leaves out stays as it is.
   */
  followUrl() {
    const state = this.state;
    const run = urlParams().get("run");
    const other = Boolean(run) && run !== state.run;
    if (run) state.chosenRun = run;
    this.chooser.followUrl(other);
    if (other && state.runs.some((r) => r.run === run)) this.selectRun(run);
    this.renderStatus(); // (a run not in the logdir: the status says so, and it is shown once it is)
  }

  /** Load the runs and keep them, the status line and the frames up to date. */
  async start() {
    this.frame.loadPalettes((names) => this.toolbar.setColormaps(names, this.state.config));
    await this.refreshRuns();
    setInterval(() => this.refreshRuns(), RUNS_EVERY_MS);
    setInterval(() => this.renderStatus(), 500);
    setInterval(() => this.videos.refresh(), VIDEOS_EVERY_MS);
  }

  /** The logdir TensorBoard watches and the server's advice where no run can be found (a logdir missing or
   * inside a run), on the welcome page. */
  async showSetupHint() {
    const hint = this.welcome.querySelector("#welcome-hint");
    const where = this.welcome.querySelector("#welcome-logdir");
    try {
      const answer = await getJSON("ping");
      hint.textContent = answer.hint || "";
      hint.hidden = !answer.hint;
      where.replaceChildren("TensorBoard watches ", h("code", {}, String(answer.logdir ?? "")),
        ": each run is a folder under it (the path given to Beholder(...)).");
      where.hidden = !answer.logdir || Boolean(answer.hint);
    } catch (error) {
      hint.hidden = true;
      where.hidden = true;
    }
  }

  async refreshRuns() {
    const state = this.state;
    let runs;
    try {
      runs = await getJSON("runs");
    } catch (error) {
      state.serverUp = false;
      this.renderStatus();
      return;
    }
    const cameBack = state.serverUp === false;
    state.serverUp = true;
    state.runs = runs;
    for (const r of runs) state.seenRuns.add(r.run);
    this.welcome.hidden = runs.length > 0;
    if (runs.length === 0) this.showSetupHint();
    this.history.toggle.disabled = runs.length === 0;
    if (state.run !== null && !runs.some((r) => r.run === state.run)) {
      state.chosenRun ??= state.run; // the run on screen went: shown again when it is back
    }
    if (runs.length === 0) {
      state.run = null;
      this.feed.stop();
      this.stage.hidden = true;
      this.toolbar.setRuns([], null);
      this.toolbar.setEnabled(false, "no-runs");
      this.videos.refresh();
      this.renderStatus();
      return;
    }
    const names = runs.map((r) => r.run);
    let wanted = names.includes(state.chosenRun) ? state.chosenRun : state.run;
    if (wanted === null || !names.includes(wanted)) {
      // Default: the most recently updated run (runs without frames last).
      const ranked = [...runs].sort((a, b) => (a.age ?? Infinity) - (b.age ?? Infinity));
      wanted = ranked[0].run;
    }
    this.toolbar.setRuns(runs, wanted);
    if (wanted !== state.run) this.selectRun(wanted);
    else if (cameBack) this.settings.load();
    this.renderStatus();
  }

  /** Show another run: its config in the toolbar and its frames on the stage. */
  selectRun(run) {
    const state = this.state;
    state.run = run;
    this.statusLine.clearHealth(); // (the last run's trainer health until this run's first frame)
    this.frame.clear();
    state.config = null; // another run's colormap must not colour this run's frames
    this.lastMeta = null;
    this.arrivals = [];
    this.stage.hidden = true;
    this.infoPanel.clear();
    this.caption.clear();
    this.recentMetas = [];
    this.pendingTable = null;
    this.sectionsKind = null; // the values of the frame whose section table was taken last
    this.windowNote.show(null);
    this.inspector.clear();
    this.chooser.setRun(run);
    this.toolbar.setRuns(state.runs, run);
    this.compare.setOther(this.compare.other === run ? null : this.compare.other);
    this.renderView();
    if (state.paused) this.history.live(); // calls resume(), which starts the feed
    else this.feed.start(run);
    this.settings.load();
    this.videos.refresh();
  }

  /** Show a settings answer in the toolbar, except the keys in skip (SettingsSync has put it in the state). */
  showSettings(reply, skip) {
    this.frame.repaintIfRecoloured();
    this.toolbar.apply(reply.config, skip);
    if (!skip.has("filter")) this.chooser.applyConfig(reply.config.filter);
    this.toolbar.setEnabled(Boolean(reply.writable));
    this.toolbar.showProblem(reply.problem);
    if (this.lastMeta) this.statusLine.renderOffer(this.lastMeta);
    this.caption.render(this.state.config);
  }

  /** A change of settings from the toolbar: shown at once, sent in order (SettingsSync). */
  changeConfig(changes) {
    if (this.state.run === null) return;
    this.settings.change(changes);
    if ("colormap" in changes && this.frame.lastData) this.frame.paint(); // before the trainer's next frame
    if ("values" in changes && this.lastMeta) this.statusLine.renderOffer(this.lastMeta);
    if ("values" in changes || "mode" in changes) {
      this.renderStatus(); // (the ended run's note at once)
      this.caption.render(this.state.config); // (and a kept frame's)
    }
    if ("is_recording" in changes) this.videos.refresh(); // ("recording now" or "recorded" at once)
  }

  liveStatus(live) {
    const wasDown = !this.live.connected;
    this.live = live;
    this.state.connected = live.connected;
    if (live.connected && wasDown && this.lastMeta !== null) this.settings.load();
    this.renderStatus();
  }

  /** Stop streaming: the frame on screen stays, and the history bar takes over. */
  pause() {
    this.state.paused = true;
    this.feed.stop();
    this.renderStatus();
  }

  /** Back to the live frames. */
  resume() {
    this.state.paused = false;
    this.state.kept = null;
    this.keptLoads++;
    if (this.state.run !== null) this.feed.start(this.state.run);
    this.renderStatus();
  }

  /** Load and show a kept frame (a history entry); a newer request wins over a slower older one. */
  async showKept(entry) {
    const load = ++this.keptLoads;
    try {
      const { content, meta } = await getKeptFrame(this.state.run, entry.name);
      if (load !== this.keptLoads || !this.state.paused) return;
      await this.showFrame(content, meta);
    } catch (error) {
      if (load === this.keptLoads) this.statusLine.say(`Cannot show ${keptLabel(entry)}: ${error.message}`);
    }
  }

  /** Draw a frame: parsed frame data (painted here with the chosen colormap) or a PNG Blob. */
  async showFrame(content, meta) {
    const state = this.state;
    if (state.paused && !meta.kept) return; // a live frame that was on its way when the user paused
    const bitmap = content instanceof Blob ? await createImageBitmap(content) : null;
    if (state.paused && !meta.kept) {
      if (bitmap) bitmap.close();
      return;
    }
    const resized = this.frame.draw(content, bitmap);
    this.welcome.hidden = true;
    this.lastMeta = meta;
    this.recentMetas.push(meta);
    if (this.recentMetas.length > METAS_KEPT) this.recentMetas.shift();
    this.takePendingTable(meta);
    this.caption.show(meta, state.config);
    this.followSettings(meta);
    this.renderView();
    const now = performance.now();
    this.arrivals.push(now);
    while (this.arrivals.length && this.arrivals[0] < now - FPS_WINDOW_MS) this.arrivals.shift();
    Object.assign(state, {
      framesReceived: state.framesReceived + 1,
      frameId: meta.frameId,
      writer: meta.writer,
      step: meta.step,
      values: meta.values,
      kept: meta.kept,
      width: this.canvas.width,
      height: this.canvas.height,
    });
    this.statusLine.renderHealth(meta);
    this.statusLine.renderOffer(meta);
    requestAnimationFrame(() => {
      state.drawn.push({ frameId: meta.frameId, writer: meta.writer, time: performance.timeOrigin + performance.now() });
      if (state.drawn.length > 500) state.drawn.splice(0, 100);
    });
    if (resized) this.setZoom(state.zoom);
    if (meta.values === "frames" || meta.values === "placeholder") this.windowNote.show(null);
    this.infoPanel.schedule(meta, resized || Boolean(meta.kept), () => this.lastMeta?.writer);
    this.inspector.refresh();
  }

  /**
   * A new section table of the run shown: to the section chooser, the statistics store and the
   * distributions, as the kind of values its frame shows. The table does not say that kind: the
   * frame's X-Beholder-Values does, so a table is taken once a frame with its writer and id has been
   * received (it may be of a frame newer than the one on screen: then it waits for that frame).
   */
  noteSections(doc, sections, kept) {
    this.windowNote.show(doc.window);
    this.renderStatus(); // (the ended note, which must not repeat a window note that just came up)
    this.caption.noteTable(doc, this.state.config);
    const table = { run: this.state.run, doc, sections, kept };
    const meta = doc.frame_id === null || doc.frame_id === undefined ? this.lastMeta : this.metaOf(doc);
    if (meta) this.takeTable(table, meta.values, meta.time);
    else this.pendingTable = table;
  }

  /** The header of a frame received lately with a table's writer and frame id (undefined if none). */
  metaOf(doc) {
    return this.recentMetas.findLast((m) => m && m.frameId === doc.frame_id && m.writer === doc.writer);
  }

  /** A section table whose frame's values are known: to the chooser, the statistics and the distributions. */
  takeTable({ run, doc, sections, kept }, values, time = NaN) {
    if (run !== this.state.run) return;
    this.pendingTable = null;
    this.sectionsKind = values;
    this.chooser.noteSections(sections, values);
    if (!kept) this.store.add(run, values, `${doc.writer}-${doc.frame_id}`, doc.step, sections, time);
    if (this.state.view === "distributions") {
      this.distributions.render(run, sections.map((rec) => rec.name), values);
      this.reachBack(run, values);
    }
  }

  /**
   * Distributions shown for a run and kind of values: once per page (and again after the run's trainer
   * restarted), the stats of its kept frames (GET history/stats), merged before the frames seen here.
   */
  async reachBack(run, kind) {
    if (run === null || !STATS_KINDS.includes(kind)) return;
    const id = `${run}\n${kind}\n${this.lastMeta?.writer ?? ""}`;
    if (this.reached.has(id)) return;
    this.reached.add(id);
    let answer;
    try {
      answer = await getJSON("history/stats", { run, values: kind });
    } catch (_) {
      this.reachAgain.add(id);
      return;
    }
    if (answer.partial) this.reachAgain.add(id); // cut short: the next opening reads on
    const frames = (answer.frames || []).map((f) => ({ ...f, sections: (f.sections || []).map(decodeHistogram) }));
    this.store.merge(run, kind, frames);
    this.distributions.noteReach(run, kind, frames);
    if (this.state.view === "distributions" && this.state.run === run) {
      this.distributions.render(run, this.infoPanel.sections.map((rec) => rec.name), this.sectionsKind ?? null);
    }
  }

  /** A frame received: take the table waiting for it (or drop it once a newer frame of its writer came). */
  takePendingTable(meta) {
    const table = this.pendingTable;
    if (!table || meta.kept) return;
    if (table.run !== this.state.run || (meta.writer === table.doc.writer && meta.frameId > table.doc.frame_id)) {
      this.pendingTable = null;
    } else if (meta.writer === table.doc.writer && meta.frameId === table.doc.frame_id) {
      this.takeTable(table, meta.values, meta.time);
    }
  }

  /**
   * The read-out's words for what a /value answer's number is ("variance of"), from the header of the
   * frame it was read from (a frame drawn lately with that id; else the frame on screen).
   */
  readoutPrefix(answer) {
    const metas = this.state.paused ? [this.lastMeta] : this.recentMetas;
    const meta = metas.findLast((m) => m && m.frameId === answer.frame_id) || this.lastMeta;
    return meta ? readoutPrefix(meta.values, meta.mode) : "";
  }

  renderStatus() {
    const now = performance.now();
    const recent = this.arrivals.filter((t) => t >= now - FPS_WINDOW_MS);
    this.windowNote.setEnded(Boolean(endedOn(this.state, this.lastMeta)));
    this.state.windowNoted = !this.windowNote.element.hidden; // (then the ended note does not say it again)
    this.statusLine.render(this.live, this.lastMeta, recent.length / (FPS_WINDOW_MS / 1000));
  }

  /**
   * Settings changed elsewhere (another viewer, a script writing config.json): when a frame was drawn
   * with other values or mode than the controls show, read the settings again (at most every 2 s).
   */
  followSettings(meta) {
    const config = this.state.config;
    if (!config || meta.kept || this.settings.busy) return;
    const values = meta.values === "placeholder" ? null : meta.values;
    const otherValues = Boolean(values) && values !== config.values;
    const otherMode = Boolean(meta.mode) && values !== "frames" && meta.mode !== config.mode;
    const now = performance.now();
    if ((otherValues || otherMode) && !(now - (this.followedAt || -Infinity) < 2000)) {
      this.followedAt = now;
      this.settings.load();
    }
  }

  /** Show the frame ("frame") or another view ("distributions"). */
  setView(view) {
    this.state.view = view;
    if (view === "distributions") {
      const order = this.infoPanel.sections.map((rec) => rec.name);
      this.distributions.render(this.state.run, order, this.sectionsKind ?? null);
      for (const id of this.reachAgain) this.reached.delete(id);
      this.reachAgain.clear();
      this.reachBack(this.state.run, this.sectionsKind);
    }
    this.renderView();
  }

  /** Which of the frame, the other views and the two-run comparison is on screen. */
  renderView() {
    const view = this.state.view;
    const comparing = view === "frame" && this.compare.other !== null;
    const wasHidden = this.stage.hidden;
    this.stage.hidden = this.lastMeta === null || view !== "frame" || comparing;
    if (wasHidden && !this.stage.hidden) this.infoPanel.render(); // laid out while hidden, the panel had no size
    for (const [name, shown] of Object.entries(this.views)) shown.element.hidden = view !== name;
    this.compare.setActive(comparing);
    this.timeline.sync(view === "timeline");
  }

  setZoom(zoom) {
    this.state.zoom = zoom;
    this.frameWrap.className = `frame-wrap zoom-${zoom}`;
    if (zoom === "2") this.canvas.style.width = `${this.canvas.width * 2}px`;
    else this.canvas.style.width = "";
    this.infoPanel.render();
    this.inspector.placeCross();
  }

  /** Save the frame on screen as a PNG file (the served PNG, or the canvas for frames drawn here). */
  async download() {
    const blob = await this.frame.pngBlob();
    if (blob) this.save(blob);
  }

  /** Offer a PNG Blob as a download named after the run and frame. */
  save(blob) {
    const href = URL.createObjectURL(blob);
    const safeRun = String(this.state.run).replace(/[^A-Za-z0-9_.-]+/g, "_");
    const link = h("a", { href, download: `beholder-${safeRun}-${this.lastMeta.frameId}.png` });
    document.body.append(link);
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(href), 10000);
  }
}
