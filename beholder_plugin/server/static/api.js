// Talking to the plugin's HTTP routes (see docs/http-api.md).
import { FrameDataError, parseFrameData } from "./framedata.js";

// index.js is served at /data/plugin/beholder/static/; the routes are one level up.
const BASE = new URL("../", import.meta.url);

/** An HTTP failure carrying the plugin's error message. */
export class HttpError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

/** The absolute URL of a plugin route with query parameters. */
export function routeUrl(route, params = {}) {
  const url = new URL(route, BASE);
  for (const [key, value] of Object.entries(params)) {
    if (value !== undefined && value !== null) url.searchParams.set(key, String(value));
  }
  return url.href;
}

async function failure(response) {
  let message = `${response.status} ${response.statusText}`;
  try {
    const body = await response.json();
    if (body && body.error) message = body.error;
  } catch (_) {
    // not JSON: keep the status line
  }
  return new HttpError(response.status, message);
}

/** GET a JSON route. */
export async function getJSON(route, params = {}, signal = undefined) {
  const response = await fetch(routeUrl(route, params), { cache: "no-store", signal });
  if (!response.ok) throw await failure(response);
  return response.json();
}

/** POST a partial config to a run; resolves to {config, writable, problem}. */
export async function postConfig(run, changes) {
  const response = await fetch(routeUrl("config", { run }), {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify(changes),
  });
  if (!response.ok) throw await failure(response);
  return response.json();
}

/** POST a JSON body to a route; resolves to the JSON answer (HttpError with the plugin's message). */
export async function postJSON(route, params, body) {
  const response = await fetch(routeUrl(route, params), {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify(body),
  });
  if (!response.ok) throw await failure(response);
  return response.json();
}

/** What the X-Beholder-* headers of a frame answer say about it (docs/http-api.md). */
export function frameMeta(response) {
  const header = (name) => response.headers.get(name);
  const [width, height] = (header("X-Beholder-Size") || "0x0").split("x").map(Number);
  const lastError = header("X-Beholder-Last-Error");
  return {
    etag: header("ETag") || "",
    frameId: Number(header("X-Beholder-Frame-Id")),
    time: Number(header("X-Beholder-Frame-Time")),
    writer: header("X-Beholder-Writer"),
    values: header("X-Beholder-Values"),
    step: Number(header("X-Beholder-Step")),
    colormap: header("X-Beholder-Colormap"),
    mode: header("X-Beholder-Mode"),
    ending: header("X-Beholder-Ending") === "1", // close()'s frame of the weights training ended with
    failures: Number(header("X-Beholder-Failures") || 0),
    skipped: Number(header("X-Beholder-Skipped") || 0),
    lastError: lastError ? decodeURIComponent(lastError) : null,
    storage: header("X-Beholder-Storage") || "local",
    maxFps: header("X-Beholder-Max-Fps") ? Number(header("X-Beholder-Max-Fps")) : null,
    offered: (header("X-Beholder-Offered") || "").split(",").filter(Boolean),
    width,
    height,
  };
}

/** A frame answer's content: parsed frame data (application/octet-stream) or a PNG Blob. */
export async function frameContent(response) {
  const type = response.headers.get("Content-Type") || "";
  if (type.startsWith("application/octet-stream")) return parseFrameData(await response.arrayBuffer());
  return response.blob();
}

/** GET a kept frame (frame-data?frame=, PNG for user frames); resolves to {content, meta}. */
export async function getKeptFrame(run, name, signal = undefined) {
  const response = await fetch(routeUrl("frame-data", { run, frame: name }), { cache: "no-store", signal });
  if (!response.ok) throw await failure(response);
  const content = await frameContent(response);
  return { content, meta: { ...frameMeta(response), kept: name } };
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/**
 * Long-polls live-data for one run and hands every new frame to onFrame(content, meta), content
 * being parsed frame data or, for user frames and placeholders (or with usePng), a PNG Blob.
 * onStatus({connected, error}) reports the connection; failures are retried
 * with a growing delay, so a restarted TensorBoard is picked up by itself.
 */
export class LiveFeed {
  constructor(onFrame, onStatus) {
    this.onFrame = onFrame;
    this.onStatus = onStatus;
    this.generation = 0;
    this.controller = null;
    this.usePng = false; // true: the PNG route (/live), e.g. where the frame-data route is missing
    this.rows = () => null; // the rows to ask for ("A-B", a viewport), or null for whole frames
  }

  /** Follow a run (stopping any previous one). */
  start(run) {
    this.stop();
    const generation = ++this.generation;
    this.controller = new AbortController();
    this.loop(run, generation, this.controller.signal);
  }

  /** Stop following; an in-flight request is aborted. */
  stop() {
    this.generation++;
    if (this.controller) this.controller.abort();
    this.controller = null;
  }

  async loop(run, generation, signal) {
    let etag = "";
    let backoff = 250;
    while (generation === this.generation) {
      try {
        const rows = this.usePng ? null : this.rows();
        const url = routeUrl(this.usePng ? "live" : "live-data", { run, after: etag, timeout: 10, rows });
        const response = await fetch(url, { cache: "no-store", signal });
        if (generation !== this.generation) return;
        if (response.status === 204) {
          this.onStatus({ connected: true, error: null });
          continue;
        }
        if (!response.ok) throw await failure(response);
        const content = await frameContent(response);
        if (generation !== this.generation) return;
        const meta = { ...frameMeta(response), kept: null };
        etag = meta.etag;
        await this.onFrame(content, meta);
        this.onStatus({ connected: true, error: null });
        backoff = 250;
      } catch (error) {
        if (signal.aborted || generation !== this.generation) return;
        if (error instanceof FrameDataError) this.usePng = true; // draw PNG frames from now on
        this.onStatus({ connected: false, error });
        await sleep(backoff);
        backoff = Math.min(backoff * 2, 4000);
      }
    }
  }
}
