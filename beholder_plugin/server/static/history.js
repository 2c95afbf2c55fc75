// Pause and scrub through the kept frames (the history ring), play them back, export a range to
// mp4; and the list of the run's recordings and exports with download links.
import { getJSON, postJSON, routeUrl } from "./api.js";
import { h } from "./dom.js";

const SPEEDS = [1, 2, 5, 10, 15, 30]; // playback frames per second
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/** A kept frame's label: its step and the wall time it was asked for. */
export function keptLabel(entry) {
  const when = new Date(entry.time * 1000);
  const pad = (n, w = 2) => String(n).padStart(w, "0");
  const clock = `${pad(when.getHours())}:${pad(when.getMinutes())}:${pad(when.getSeconds())}.${pad(when.getMilliseconds(), 3)}`;
  return `step ${entry.step} · ${clock}`;
}

/**
 * Kept frames grouped by the process that wrote them (a restarted trainer is a new writer), writers
 * in the order they began, each one's frames in the order it made them (frame id). Returns
 * {entries, starts}: starts holds the index where each writer's frames begin.
 */
export function byWriter(entries) {
  const groups = new Map();
  for (const entry of entries) {
    if (!groups.has(entry.writer)) groups.set(entry.writer, []);
    groups.get(entry.writer).push(entry);
  }
  const ordered = [];
  const starts = [];
  for (const group of groups.values()) {
    starts.push(ordered.length);
    ordered.push(...group.sort((a, b) => a.frame_id - b.frame_id));
  }
  return { entries: ordered, starts };
}

/** A file size for people: 812 B, 34 kB, 5.1 MB. */
export function fileSize(bytes) {
  if (bytes < 1000) return `${bytes} B`;
  if (bytes < 1e6) return `${Math.round(bytes / 1000)} kB`;
  return `${(bytes / 1e6).toFixed(1)} MB`;
}

/**
 * The Pause/Live control and, while paused, the slider, playback and export controls. It reads
 * state.run and state.paused (the dashboard's state); onPause() and onLive() change them.
 */
export class HistoryBar {
  constructor({ state, onPause, onLive, showKept, onExported }) {
    Object.assign(this, { state, onPause, onLive, showKept, onExported });
    this.entries = [];
    this.starts = [0]; // where each writer's (process's) kept frames begin in entries
    this.index = -1;
    this.playing = false;
    this.range = [0, 0];
    this.toggle = h("button", { id: "live-toggle", type: "button", class: "live-toggle", onclick: () => this.flip() });
    this.slider = h("input", { type: "range", id: "history-slider", min: 0, max: 0, step: 1, "aria-label": "Kept frame",
      list: "history-writers" });
    // Tick marks on the slider where another process (a restarted trainer) began writing.
    this.boundaries = h("datalist", { id: "history-writers" });
    this.writersNote = h("span", { id: "history-writers-note", class: "note", hidden: true });
    this.slider.addEventListener("input", () => this.show(Number(this.slider.value)));
    this.label = h("span", { id: "history-label", class: "history-label" });
    this.play = h("button", { id: "history-play", type: "button", onclick: () => this.togglePlay() }, "Play");
    this.speed = h(
      "select",
      { id: "history-speed", "aria-label": "Playback speed" },
      SPEEDS.map((fps) => h("option", { value: fps, selected: fps === 10 }, `${fps} frames/s`)),
    );
    this.rangeLabel = h("span", { id: "export-range", class: "history-label" });
    this.exportStatus = h("span", { id: "export-status", class: "note", role: "status" });
    this.exportButton = h("button", { id: "export", type: "button", onclick: () => this.exportRange() }, "Export mp4");
    this.controls = h(
      "div",
      { id: "history-controls", class: "history-controls", hidden: true },
      h("button", { id: "history-prev", type: "button", title: "One frame back (←)", onclick: () => this.step(-1) }, "◀"),
      this.slider,
      this.boundaries,
      h("button", { id: "history-next", type: "button", title: "One frame on (→)", onclick: () => this.step(1) }, "▶"),
      this.label,
      this.writersNote,
      this.play,
      this.speed,
      h("span", { class: "history-export" },
        h("button", { id: "export-from", type: "button", onclick: () => this.mark(0) }, "Start here"),
        h("button", { id: "export-to", type: "button", onclick: () => this.mark(1) }, "End here"),
        this.rangeLabel,
        this.exportButton,
        this.exportStatus),
    );
    this.element = h("div", { class: "history-bar", id: "history-bar" }, this.toggle, this.controls);
    document.addEventListener("keydown", (event) => this.key(event));
    this.render();
  }

  /** Pause (and load the kept frames) or go back to live. */
  flip() {
    if (this.state.paused) this.live();
    else this.pause();
  }

  /** Pause: list the kept frames and show the newest. */
  async pause() {
    this.onPause();
    this.render();
    const run = this.state.run;
    let listed = [];
    try {
      listed = await getJSON("history", { run });
    } catch (error) {
      this.exportStatus.textContent = `Cannot list the kept frames: ${error.message}`;
    }
    if (!this.state.paused || run !== this.state.run) return;
    ({ entries: this.entries, starts: this.starts } = byWriter(listed));
    if (this.starts.length === 0) this.starts = [0];
    this.boundaries.replaceChildren(...this.starts.slice(1).map((i) => h("option", { value: String(i) })));
    const last = this.entries.length - 1;
    this.slider.max = String(Math.max(0, last));
    const [first] = this.segment(Math.max(0, last)); // the newest process's frames only
    this.range = [Math.max(first, last - 599), Math.max(0, last)];
    this.render();
    if (last >= 0) await this.show(last);
  }

  /** Back to streaming the latest frames. */
  live() {
    this.playing = false;
    this.index = -1;
    this.onLive();
    this.render();
  }

  /** Show kept frame i (clamped). */
  async show(i) {
    if (!this.state.paused || this.entries.length === 0) return;
    this.index = Math.min(this.entries.length - 1, Math.max(0, i));
    this.slider.value = String(this.index);
    this.render();
    await this.showKept(this.entries[this.index]);
  }

  /** Show the frame delta steps away (stopping playback). */
  step(delta) {
    this.playing = false;
    return this.show(this.index + delta);
  }

  /** Arrow keys step one kept frame while paused (unless another control owns them). */
  key(event) {
    if (!this.state.paused || (event.key !== "ArrowLeft" && event.key !== "ArrowRight")) return;
    const target = event.target;
    const typing = target instanceof HTMLElement && target.matches("input, select, textarea");
    if (typing && target !== this.slider) return; // arrows belong to that control
    event.preventDefault();
    this.step(event.key === "ArrowLeft" ? -1 : 1);
  }

  /** Play the kept frames from the one shown (from the first at the end) at the chosen speed, or stop. */
  async togglePlay() {
    if (this.playing) {
      this.playing = false;
      this.render();
      return;
    }
    this.playing = true;
    if (this.index >= this.entries.length - 1) await this.show(0);
    this.render();
    while (this.playing && this.state.paused && this.index < this.entries.length - 1) {
      await sleep(1000 / Number(this.speed.value));
      if (!this.playing) break;
      await this.show(this.index + 1);
    }
    this.playing = false;
    this.render();
  }

  /** [first, last] indices of the kept frames of the process that wrote frame i. */
  segment(i) {
    let k = this.starts.length - 1;
    while (k > 0 && this.starts[k] > i) k--;
    const end = k + 1 < this.starts.length ? this.starts[k + 1] - 1 : this.entries.length - 1;
    return [this.starts[k], end];
  }

  /** Set the start (0) or end (1) of the export range to the frame shown; the range stays in one process. */
  mark(which) {
    if (this.index < 0) return;
    this.range[which] = this.index;
    const [first, last] = this.segment(this.index);
    const other = this.range[1 - which];
    if (other < first || other > last) this.range[1 - which] = this.index;
    if (this.range[0] > this.range[1]) this.range[1 - which] = this.index;
    this.render();
  }

  /** Ask the plugin to encode the marked range to mp4, then list it. */
  async exportRange() {
    const [from, to] = this.range.map((i) => this.entries[i]);
    if (!from || !to) return;
    this.exportButton.disabled = true;
    this.exportStatus.textContent = "Encoding…";
    try {
      const fps = Number(this.speed.value);
      const done = await postJSON("export", { run: this.state.run }, { from: from.name, to: to.name, fps });
      this.exportStatus.textContent = `Exported ${done.frames} frames to ${done.name}`;
      this.onExported(done);
    } catch (error) {
      this.exportStatus.textContent = `Export failed: ${error.message}`;
    } finally {
      this.exportButton.disabled = false;
    }
  }

  /** Bring the buttons and labels up to date with the state. */
  render() {
    this.toggle.textContent = this.state.paused ? "Live" : "Pause";
    this.toggle.title = this.state.paused ? "Return to the live frames" : "Stop on the current frame and scrub through the kept ones";
    this.toggle.dataset.paused = String(this.state.paused);
    this.controls.hidden = !this.state.paused;
    this.play.textContent = this.playing ? "Stop" : "Play";
    const entry = this.entries[this.index];
    if (this.state.paused && this.entries.length === 0) {
      this.label.textContent = "No kept frames (the history ring is off or empty).";
    } else if (entry) {
      const process = this.starts.length > 1
        ? ` · process ${this.starts.filter((s) => s <= this.index).length} of ${this.starts.length}`
        : "";
      this.label.textContent = `${keptLabel(entry)} · frame ${this.index + 1} of ${this.entries.length}${process}`;
      this.slider.setAttribute("aria-valuetext", keptLabel(entry));
      this.slider.title = keptLabel(entry);
    } else {
      this.label.textContent = "Loading the kept frames…";
    }
    this.writersNote.hidden = !(this.state.paused && this.starts.length > 1);
    this.writersNote.textContent = this.starts.length > 1
      ? `${this.starts.length} processes wrote these frames (the trainer was restarted): the slider's marks ` +
        "show where each began, and an export stays within one"
      : "";
    const [a, b] = this.range.map((i) => this.entries[i]);
    this.rangeLabel.textContent = a && b ? `steps ${a.step}–${b.step} (${this.range[1] - this.range[0] + 1} frames)` : "";
    this.exportButton.disabled = !(a && b);
  }
}

// A recording whose file changed this recently, while recording is on, is the one being written.
const WRITING_S = 20;

/**
 * What a listed video is, in words: "exported", "recorded" (the trainer finished the file), "recording now"
 * (not finished, the newest, changed lately, recording on) or "unfinished" (a trainer killed while recording).
 */
export function videoKind(video, newestRecording, recording) {
  if (video.kind === "export") return "exported";
  if (video.kind !== "recording") return video.kind;
  if (video.finished !== false) return "recorded";
  const fresh = Date.now() / 1000 - video.time < WRITING_S;
  return video === newestRecording && recording && fresh ? "recording now" : "unfinished";
}

const UNFINISHED_TIP = "The trainer stopped before it finished this file (killed, or still stalled): it plays " +
  "up to where it stopped.";

/** The note after a video's link: its kind and size (an unfinished one says why on hover). */
function videoMeta(kind, size) {
  const title = kind === "unfinished" ? UNFINISHED_TIP : null;
  return h("span", { class: "note video-meta", title }, `${kind}, ${fileSize(size)}`);
}

/** The run's recordings and exports, newest first, each a download link. */
export class VideoList {
  /** getRun(): the run shown; isRecording(): whether its recording setting is on. */
  constructor(getRun, isRecording = () => false) {
    this.getRun = getRun;
    this.isRecording = isRecording;
    this.list = h("ul", { id: "videos", class: "videos" });
    this.element = h(
      "div",
      { class: "group videos-group" },
      h("div", { class: "legend" }, "Recordings and exports"),
      this.list,
    );
  }

  /** List the run's videos again. */
  async refresh() {
    const run = this.getRun();
    if (run === null) {
      this.list.replaceChildren();
      return;
    }
    let videos;
    try {
      videos = await getJSON("videos", { run });
    } catch (error) {
      this.list.replaceChildren(h("li", { class: "note" }, `Cannot list videos: ${error.message}`));
      return;
    }
    if (run !== this.getRun()) return;
    if (videos.length === 0) {
      this.list.replaceChildren(h("li", { class: "note" }, "None yet: record, or pause and export a range."));
      return;
    }
    const newest = videos.find((video) => video.kind === "recording");
    const recording = this.isRecording();
    this.list.replaceChildren(
      ...videos.map((video) =>
        h(
          "li",
          { dataset: { kind: video.kind } },
          h("a", { href: routeUrl("video", { run, name: video.name }), download: video.name.split("/").pop() }, video.name),
          " ",
          videoMeta(videoKind(video, newest, recording), video.size),
        ),
      ),
    );
  }
}
