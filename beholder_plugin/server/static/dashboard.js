// The Beholder dashboard: run selection, the live frame, the info panel, the
// status line and the toolbar, wired to the plugin's routes.
import { LiveFeed, getJSON, postConfig } from "./api.js";
import { buildToolbar } from "./controls.js";
import { h } from "./dom.js";
import { age, sci, shape } from "./format.js";

const SEPARATOR_PX = 5; // rows between sections (docs/protocol.md)
const RUNS_EVERY_MS = 3000;
const INFO_EVERY_MS = 250; // section statistics refresh at most this often
const FPS_WINDOW_MS = 2000;

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
    this.lastBlob = null;
    this.lastMeta = null;
    this.sections = [];
    this.infoKey = null;
    this.infoTimer = null;
    this.infoFetchedAt = 0;
    this.serverUp = null;
    this.live = { connected: false, error: null };
    this.arrivals = [];
    this.stats = {
      run: null,
      framesReceived: 0,
      frameId: null,
      writer: null,
      values: null,
      width: 0,
      height: 0,
      connected: false,
      drawn: [], // the last 500 frames: {frameId, writer, time: ms since epoch when drawn}
    };

    this.toolbar = buildToolbar({
      onChange: (changes) => this.changeConfig(changes),
      onRun: (run) => this.selectRun(run),
      onZoom: (zoom) => this.setZoom(zoom),
      onDownload: () => this.download(),
    });
    this.status = h("div", { class: "status", id: "status", role: "status" }, "Connecting…");
    this.canvas = h("canvas", { id: "frame", class: "frame zoom-1", width: 1, height: 1 });
    this.info = h("div", { class: "info", id: "info" });
    this.stage = h("div", { class: "stage", id: "stage", hidden: true }, this.canvas, this.info);
    this.welcome = welcomePage();
    root.replaceChildren(
      h(
        "div",
        { id: "beholder-root", class: "beholder" },
        this.toolbar.element,
        h("main", { class: "main" }, this.status, this.welcome, this.stage),
      ),
    );
    this.feed = new LiveFeed(
      (blob, meta) => this.showFrame(blob, meta),
      (state) => this.liveStatus(state),
    );
    window.addEventListener("resize", () => this.renderInfo());
    document.addEventListener("visibilitychange", () => {
      if (!document.hidden && this.run !== null) this.loadConfig();
    });
  }

  /** Load the runs and keep them, the status line and the frames up to date. */
  async start() {
    await this.refreshRuns();
    setInterval(() => this.refreshRuns(), RUNS_EVERY_MS);
    setInterval(() => this.renderStatus(), 500);
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
    if (runs.length === 0) {
      this.run = null;
      this.feed.stop();
      this.stage.hidden = true;
      this.toolbar.setRuns([], null);
      this.toolbar.setEnabled(false);
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
    this.lastMeta = null;
    this.sections = [];
    this.infoKey = null;
    this.arrivals = [];
    this.stage.hidden = true;
    this.info.replaceChildren();
    this.feed.start(run);
    this.loadConfig();
  }

  async loadConfig() {
    const run = this.run;
    try {
      const reply = await getJSON("config", { run });
      if (run === this.run) this.applyConfigReply(reply);
    } catch (error) {
      if (run === this.run) this.toolbar.showError(`Could not read the settings: ${error.message}`);
    }
  }

  applyConfigReply(reply) {
    this.config = reply.config;
    this.toolbar.apply(reply.config);
    this.toolbar.setEnabled(Boolean(reply.writable));
    this.toolbar.showProblem(reply.problem);
  }

  /** Send a change of settings; on refusal show why and put the controls back. */
  async changeConfig(changes) {
    if (this.run === null) return;
    const run = this.run;
    try {
      const reply = await postConfig(run, changes);
      this.toolbar.showError(null);
      if (run === this.run) this.applyConfigReply(reply);
    } catch (error) {
      this.toolbar.showError(`Setting not changed: ${error.message}`);
      if (this.config) this.toolbar.apply(this.config);
    }
  }

  liveStatus(state) {
    const wasDown = !this.live.connected;
    this.live = state;
    this.stats.connected = state.connected;
    if (state.connected && wasDown && this.lastMeta !== null) this.loadConfig();
    this.renderStatus();
  }

  async showFrame(blob, meta) {
    const bitmap = await createImageBitmap(blob);
    const canvas = this.canvas;
    const resized = canvas.width !== bitmap.width || canvas.height !== bitmap.height;
    if (resized) {
      canvas.width = bitmap.width;
      canvas.height = bitmap.height;
    }
    canvas.getContext("2d").drawImage(bitmap, 0, 0);
    const { width, height } = bitmap;
    bitmap.close();
    this.stage.hidden = false;
    this.welcome.hidden = true;
    this.lastBlob = blob;
    this.lastMeta = meta;
    const now = performance.now();
    this.arrivals.push(now);
    while (this.arrivals.length && this.arrivals[0] < now - FPS_WINDOW_MS) this.arrivals.shift();
    Object.assign(this.stats, {
      framesReceived: this.stats.framesReceived + 1,
      frameId: meta.frameId,
      writer: meta.writer,
      values: meta.values,
      width,
      height,
    });
    requestAnimationFrame(() => {
      this.stats.drawn.push({
        frameId: meta.frameId,
        writer: meta.writer,
        time: performance.timeOrigin + performance.now(),
      });
      if (this.stats.drawn.length > 500) this.stats.drawn.splice(0, 100);
    });
    if (resized) this.setZoom(this.zoom);
    this.scheduleInfo(meta, resized);
  }

  /** Fetch the section statistics for new frames, at most every INFO_EVERY_MS. */
  scheduleInfo(meta, urgent) {
    if (meta.values !== "arrays" && meta.values !== "trainable_variables") {
      this.sections = [];
      this.infoKey = null;
      this.renderInfo();
      return;
    }
    const key = `${meta.writer}-${meta.frameId}`;
    if (key === this.infoKey || this.infoTimer !== null) return;
    const wait = urgent ? 0 : Math.max(0, this.infoFetchedAt + INFO_EVERY_MS - performance.now());
    this.infoTimer = setTimeout(() => this.fetchInfo(), wait);
  }

  async fetchInfo() {
    const run = this.run;
    this.infoFetchedAt = performance.now();
    try {
      const doc = await getJSON("section-info", { run });
      if (run !== this.run) return;
      this.sections = doc.sections || [];
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
    for (const section of this.sections) {
      const height = Number(section.height) || 0;
      entries.push(
        h(
          "div",
          {
            class: "section-info",
            style: `top:${top * scale}px;height:${height * scale}px`,
          },
          h("div", { class: "name", title: section.name }, section.name),
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
      text = "Connected; no Beholder run in this log directory yet.";
      state = "idle";
    } else if (!this.live.connected && this.live.error) {
      text = `Not connected: ${this.live.error.message}; retrying…`;
    } else if (this.lastMeta === null) {
      text = "Connected; waiting for the first frame of this run…";
      state = "idle";
    } else {
      const frameAge = Date.now() / 1000 - this.lastMeta.time;
      const fps = recent.length / (FPS_WINDOW_MS / 1000);
      text =
        `Connected · frame ${age(frameAge)} old · ${fps.toFixed(1)} frames/s · ` +
        `frame ${this.lastMeta.frameId} (${this.lastMeta.width}×${this.lastMeta.height})`;
      state = "up";
    }
    this.status.textContent = text;
    this.status.dataset.state = state;
  }

  setZoom(zoom) {
    this.zoom = zoom;
    this.canvas.className = `frame zoom-${zoom}`;
    if (zoom === "2") this.canvas.style.width = `${this.canvas.width * 2}px`;
    else this.canvas.style.width = "";
    this.renderInfo();
  }

  /** Save the frame on screen as a PNG file. */
  download() {
    if (!this.lastBlob) return;
    const href = URL.createObjectURL(this.lastBlob);
    const safeRun = String(this.run).replace(/[^A-Za-z0-9_.-]+/g, "_");
    const link = h("a", { href, download: `beholder-${safeRun}-${this.lastMeta.frameId}.png` });
    document.body.append(link);
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(href), 10000);
  }
}
