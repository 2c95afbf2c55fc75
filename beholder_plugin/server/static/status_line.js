// What the header says about the run: the status line (connected, paused, stale...), the trainer's
// health (failures, skipped frames) and the offer to show the values update() was given.
import { h } from "./dom.js";
import { modeText } from "./frame_caption.js";
import { VALUES_NAMES, age } from "./format.js";
import { keptLabel } from "./history.js";

// No frame for this long (plus three frame intervals at the configured FPS) reads as "trainer stopped?".
const STALE_AFTER_S = 5;
// Skipped frames read as a problem (in red) above this share of the frames due in the last minute.
const SKIP_ALARM = 0.05;
// ... and when there are at least this many of them: 1 skip in a short run's 3 frames is no problem.
const SKIP_ALARM_MIN = 3;
const SKIP_WINDOW_S = 60;
// What update() is given for each Values choice.
const GIVEN = { trainable_variables: "variables", arrays: "arrays", frames: "a frame" };

/** What a frame shows, in words: "Gradients (variance)", "Image" (an image has no mode). */
function shownText(values, mode) {
  const name = VALUES_NAMES[values] || values;
  return values === "frames" || !mode ? name : `${name} (${modeText(mode)})`;
}

/** The shown run's "ended" record when the frame of this meta is the last its trainer wrote, else null. */
export function endedOn(state, meta) {
  const ended = meta ? state.runs.find((r) => r.run === state.run)?.ended : null;
  return ended && ended.writer === meta.writer && ended.frame_id === meta.frameId ? ended : null;
}

/**
 * The note for a run whose training ended while Values or Mode is on another choice than its last
 * frame shows (no trainer is left to draw the new choice), or on a variance frame (near black when the
 * values hardly moved at the end; unless windowNoted: the variance window's note says it), or "" when
 * none is due.
 */
export function endedNoteText(meta, config, windowNoted = false) {
  if (!meta || !config || meta.values === "placeholder") return "";
  const otherValues = Boolean(meta.values) && meta.values !== config.values;
  const otherMode = meta.values !== "frames" && Boolean(meta.mode) && meta.mode !== config.mode;
  if (!otherValues && !otherMode) {
    return meta.values !== "frames" && meta.mode === "variance" && !windowNoted
      ? "Training ended on a variance frame: how much each value moved over the last frames, not the " +
        'values. To end on the values themselves, pass mode="current" to Beholder(...) or choose current ' +
        "values before the trainer runs again."
      : "";
  }
  if (meta.ending && !otherValues) {
    return `Training ended: this last frame shows the weights it ended with, as current values, ` +
      `not ${modeText(config.mode)}; Pause to scrub back through the frames before it.`;
  }
  return `Training ended: this frame shows ${shownText(meta.values, meta.mode)}, ` +
    `not ${shownText(config.values, config.mode)}. ` +
    "A new Values or Mode choice applies only when a trainer runs again.";
}

/**
 * The frame on screen, in words: "step 4,120 · frame 412 (768×793)". The step (update() calls) leads,
 * so that the frame count is not read as the step; a frame without a step says "frame 412 (768×793)".
 */
export function frameText(meta) {
  const step = Number.isFinite(meta.step) ? `step ${meta.step.toLocaleString("en-US")} · ` : "";
  return `${step}frame ${meta.frameId} (${meta.width}×${meta.height})`;
}

export class StatusLine {
  /** state: the dashboard's state; onShowValues(choice) switches Values to what the trainer was given. */
  constructor(state, onShowValues) {
    this.state = state;
    this.onShowValues = onShowValues;
    this.status = h("div", { class: "status", id: "status", role: "status" }, "Connecting…");
    this.health = h("div", { class: "health", id: "trainer-health", role: "status", hidden: true });
    this.offer = h("div", { class: "offer", id: "values-offer", role: "status", hidden: true });
    this.endedNote = h("div", { class: "offer ended-note", id: "ended-note", role: "status", hidden: true });
    this.skipSamples = [];
  }

  /** Say it in the status line (until the next render). */
  say(text) {
    this.status.textContent = text;
  }

  /** The status line for the state, the live feed's {connected, error}, the frame on screen's meta and the fps. */
  render(live, meta, fps) {
    const state = this.state;
    let text;
    let mood = "down";
    if (state.serverUp === false) {
      text = "Not connected: TensorBoard is not answering; retrying…";
    } else if (state.serverUp === null) {
      text = "Connecting…";
    } else if (state.run === null) {
      text =
        "No runs yet: start a training script that creates Beholder(\"<logdir>/run1\") (see below); " +
        "its run appears here within seconds.";
      mood = "idle";
    } else if (state.paused) {
      text = meta?.kept
        ? `Paused on a kept frame: ${keptLabel({ step: meta.step, time: meta.time })} (frame ${meta.frameId}). Press Live to stream again.`
        : "Paused. Press Live to stream again.";
      mood = "idle";
    } else if (!live.connected && live.error && live.error.status) {
      // (TensorBoard answered: the run's files are the trouble, not the connection)
      text = `Connected, but this run's frame cannot be read: ${live.error.message}; retrying…`;
      mood = "failing";
    } else if (!live.connected && live.error) {
      text = `Not connected: ${live.error.message}; retrying…`;
    } else if (meta === null) {
      text = "Connected; waiting for the first frame of this run…";
      mood = "idle";
    } else {
      ({ text, state: mood } = this.streaming(meta, fps));
    }
    const chosen = state.chosenRun;
    if (chosen && state.run !== null && chosen !== state.run && !state.runs.some((r) => r.run === chosen)) {
      const gone = state.seenRuns.has(chosen)
        ? `Run "${chosen}" is not in the logdir now (deleted?); showing "${state.run}" until it is back`
        : `Run "${chosen}" (from the link) is not in this logdir; showing "${state.run}"`;
      text = `${gone} · ${text}`;
    }
    this.status.textContent = text;
    this.status.dataset.state = mood;
    this.renderEndedNote(mood === "ended" ? meta : null);
  }

  /** The ended run's note (endedNoteText) for the frame on screen's meta; null hides it. */
  renderEndedNote(meta) {
    const text = endedNoteText(meta, this.state.config, this.state.windowNoted);
    this.endedNote.hidden = !text;
    if (this.endedNote.textContent !== text) this.endedNote.textContent = text;
  }

  /** Hide the trainer's health (another run is shown: its own comes with its first frame). */
  clearHealth() {
    this.health.hidden = true;
    this.health.replaceChildren();
    this.skipSamples = [];
  }

  /** The status while streaming: receiving, paused by FPS 0, ended, or no frame for a while (trainer stopped?). */
  streaming(meta, fps) {
    const frameAge = Date.now() / 1000 - meta.time;
    const configured = Number(this.state.config?.FPS);
    const frame = frameText(meta);
    const ended = endedOn(this.state, meta);
    if (ended) {
      // The trainer closed its Beholder after this frame (close(), the end of fit, the process exiting).
      return {
        text: `Training ended ${age(Date.now() / 1000 - ended.time)} ago (its Beholder was closed) · showing its last frame: ${frame}`,
        state: "ended",
      };
    }
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
        text: `No frame for ${age(frameAge)}: trainer stopped, or no longer calling update()? (Updates per second is ${configured}) · showing ${frame}`,
        state: "stale",
      };
    }
    // A remote logdir (s3://, gs://...): the trainer caps its frame rate; say so, with the kind of storage.
    const remote = meta.storage && meta.storage !== "local"
      ? ` · remote logdir (${meta.storage}://)${meta.maxFps ? `: up to ${meta.maxFps} frames/s` : ""}`
      : "";
    return { text: `Connected · ${frame}, ${age(frameAge)} old · ${fps.toFixed(1)} frames/s${remote}`, state: "up" };
  }

  /**
   * The trainer's failure count, last error and skipped frames, from the frame header, when any.
   * Failures are in red; skips only when they are a real share of the frames (at least SKIP_ALARM_MIN,
   * and over SKIP_ALARM of those due in the last SKIP_WINDOW_S), else a plain count.
   */
  renderHealth(meta) {
    const parts = [];
    const failures = [];
    if (meta.failures > 0) failures.push(`The trainer reports ${meta.failures} failed update() call${meta.failures === 1 ? "" : "s"}`);
    if (meta.lastError) failures.push(`last error: ${meta.lastError}`);
    if (failures.length) parts.push(h("span", { class: "alarm", id: "health-failures" }, failures.join("; ")));
    const { share, skipped } = this.skipShare(meta);
    if (meta.skipped > 0) {
      const alarm = share > SKIP_ALARM && skipped >= SKIP_ALARM_MIN;
      const text = `${meta.skipped} frame${meta.skipped === 1 ? "" : "s"} skipped while its worker was busy` +
        (alarm ? ` (${Math.round(share * 100)} % of the last minute's frames)` : "");
      if (parts.length) parts.push("; ");
      parts.push(h("span", { class: alarm ? "alarm" : "plain", id: "health-skips" }, text));
    }
    this.health.hidden = parts.length === 0;
    this.health.replaceChildren(...parts);
    this.health.dataset.failures = String(meta.failures || 0);
  }

  /** {share, skipped}: the share of frames skipped in the last minute of this writer's frames (their
   * headers' counts), and how many. */
  skipShare(meta) {
    if (meta.kept) return { share: 0, skipped: 0 };
    const now = performance.now();
    const seen = this.skipSamples.filter((s) => s.writer === meta.writer && s.at >= now - SKIP_WINDOW_S * 1000);
    seen.push({ writer: meta.writer, at: now, skipped: meta.skipped || 0, frames: meta.frameId || 0 });
    this.skipSamples = seen;
    const first = seen[0];
    const last = seen[seen.length - 1];
    // With one sample only (a run just opened), the whole run's counts stand for the last minute.
    const skipped = seen.length > 1 ? last.skipped - first.skipped : last.skipped;
    const frames = seen.length > 1 ? last.frames - first.frames : last.frames;
    return { share: skipped > 0 ? skipped / (skipped + Math.max(0, frames)) : 0, skipped };
  }

  /**
   * A placeholder for values the trainer did not pass, while it passed others (e.g. arrays while
   * Values is on trainable variables): say so, with one button that shows what it passed.
   */
  renderOffer(meta) {
    const values = this.state.config?.values;
    // (not before the run's settings are known: a frame can come first; showSettings() renders it then)
    const known = this.state.config !== null;
    const offered = known && meta.values === "placeholder" && !meta.kept ? meta.offered || [] : [];
    const choice = offered.find((name) => name !== values);
    this.offer.hidden = !choice;
    if (!choice) {
      this.offer.replaceChildren();
      return;
    }
    const selected = VALUES_NAMES[values] || values || "another choice";
    const given = offered.filter((name) => name !== values).map((name) => GIVEN[name] || name);
    this.offer.replaceChildren(
      `The trainer's update() was given ${given.join(" and ")}, but Values is on "${selected}". `,
      h("button", {
        type: "button",
        id: "show-offered",
        dataset: { values: choice },
        onclick: () => this.onShowValues(choice),
      }, `Show ${VALUES_NAMES[choice].toLowerCase()}`),
    );
  }
}
