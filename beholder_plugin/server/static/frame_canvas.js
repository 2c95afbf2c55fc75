// The frame on screen: a canvas showing a PNG, or frame data painted here with the chosen colormap
// (so a colormap change is a redraw), and for tall frames only the rows near the screen.
import { frameContent, getJSON, routeUrl } from "./api.js";
import { h } from "./dom.js";
import { paintFrameData, paletteFromHex, paletteWords } from "./framedata.js";

// Live frames taller than this are fetched around the rows on screen only (plus a screen each side).
const VIEWPORT_MIN_ROWS = 4000;
// At 1:1 zoom, frames smaller than this (an MNIST digit) are shown enlarged by a whole factor, crisp,
// up to this many CSS pixels wide and tall (a section frame's width) and to the room beside the info.
const SMALL_FRAME_PX = 768;

/** The whole factor a width × height frame is shown enlarged by at 1:1 zoom, in room CSS px (0: unknown). */
export function upscaleFactor(width, height, room) {
  let factor = Math.floor(SMALL_FRAME_PX / Math.max(1, width, height));
  if (room > 0) factor = Math.min(factor, Math.floor(room / Math.max(1, width)));
  return Math.max(1, factor);
}

export class FrameCanvas {
  /** state: the dashboard's state (run, paused, kept, config, and the drawing counters it updates). */
  constructor(state) {
    this.state = state;
    this.canvas = h("canvas", { id: "frame", class: "frame", width: 1, height: 1 });
    this.lastBlob = null; // the PNG on screen (user frames, placeholders), else null
    this.lastData = null; // the frame data on screen ("sections" frames, drawn here), else null
    this.palettes = null; // palette words by colormap name, from the colormaps route
    this.colormaps = []; // the colormap names, in the order the route lists them
    this.image = null; // the ImageData frames are painted into, reused while the size stays
    this.covered = null; // [first, last] rows of the canvas painted from the frame on screen (all: null)
    this.viewportLoads = 0; // counts viewport fetches, so that a slow one never paints over a newer one
    this.viewportBusy = false; // a viewport fetch is in flight
    this.viewportAgain = false; // the page scrolled meanwhile
    this.hidden = () => false; // whether the canvas is off screen (set by the dashboard)
    this.roomWatch = null; // a ResizeObserver on the row the frame shares with the info panel
  }

  /** The CSS pixels the frame has beside the info panel (0 while that row is not laid out). */
  room() {
    const wrap = this.canvas.parentElement;
    const row = wrap?.parentElement;
    if (!row || !row.clientWidth) return 0;
    const gap = parseFloat(getComputedStyle(row).columnGap) || 0;
    const others = [...row.children].filter((el) => el !== wrap);
    return row.clientWidth - others.reduce((sum, el) => sum + el.offsetWidth + gap, 0);
  }

  /** Set the size a small frame is shown at (1:1 zoom: style.css), and again whenever the row's room changes. */
  fitSmall() {
    const row = this.canvas.parentElement?.parentElement;
    if (row && !this.roomWatch) {
      // (a frame later: resizing inside the observer's own callback would be a loop)
      this.roomWatch = new ResizeObserver(() => requestAnimationFrame(() => this.fitSmall()));
      this.roomWatch.observe(row);
    }
    const factor = upscaleFactor(this.canvas.width, this.canvas.height, this.room());
    this.canvas.style.setProperty("--shown-width", `${this.canvas.width * factor}px`);
    this.canvas.dataset.upscale = String(factor);
  }

  /** Fetch every colormap's palette once (retrying), then call onNames(names in their order). */
  async loadPalettes(onNames) {
    try {
      const maps = await getJSON("colormaps");
      this.colormaps = Object.keys(maps);
      this.palettes = Object.fromEntries(
        Object.entries(maps).map(([name, hex]) => [name, paletteWords(paletteFromHex(hex))]),
      );
      onNames(this.colormaps);
    } catch (_) {
      setTimeout(() => this.loadPalettes(onNames), 2000); // frames use their own palette meanwhile
    }
  }

  /** Forget the frame on screen (another run is shown). */
  clear() {
    this.lastBlob = null;
    this.lastData = null;
    this.covered = null;
  }

  /** Draw a frame: parsed frame data, or a PNG Blob already decoded as bitmap; whether the size changed. */
  draw(content, bitmap) {
    const canvas = this.canvas;
    const isPng = content instanceof Blob;
    const { width, height } = isPng ? bitmap : content.doc;
    const resized = canvas.width !== width || canvas.height !== height;
    if (resized) {
      canvas.width = width;
      canvas.height = height;
    }
    this.lastBlob = isPng ? content : null;
    this.lastData = isPng ? null : content;
    this.state.transport = isPng ? "png" : "data";
    if (resized || !this.roomWatch) this.fitSmall();
    if (isPng) {
      canvas.getContext("2d").drawImage(bitmap, 0, 0);
      bitmap.close();
      this.state.colormap = null;
    } else {
      this.paint();
    }
    return resized;
  }

  /** The palette words to paint frame data with: the chosen colormap's, else the frame's own. */
  paletteFor(data) {
    const wanted = this.state.config?.colormap;
    if (wanted && wanted !== data.doc.colormap && this.palettes?.[wanted]) {
      return { name: wanted, words: this.palettes[wanted] };
    }
    if (!data.words) data.words = paletteWords(data.palette);
    return { name: data.doc.colormap, words: data.words };
  }

  /** Paint the frame data on screen into the canvas again when the chosen colormap is not the one drawn. */
  repaintIfRecoloured() {
    if (this.lastData && this.state.config?.colormap !== this.state.colormap) this.paint();
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
    this.state.rows = rows === null ? null : rows.join("-");
    this.state.colormap = name;
    this.state.paints++;
  }

  /** Rows of a tall frame on screen, widened by margin screens each side: [first, last], or null (fetch all). */
  screenRows(margin) {
    const height = this.canvas.height;
    if (height <= VIEWPORT_MIN_ROWS || this.hidden() || this.lastData === null) return null;
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
    const kept = this.state.paused ? this.state.kept : null;
    try {
      const response = await fetch(routeUrl("frame-data", { run: this.state.run, frame: kept || undefined, rows }),
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

  /** The frame on screen as a PNG Blob (the served PNG, or the canvas for frames drawn here); null if none. */
  async pngBlob() {
    if (this.lastBlob) return this.lastBlob;
    if (!this.lastData) return null;
    if (this.covered !== null) await this.fetchRows(null); // only rows near the screen were painted
    return new Promise((resolve) => this.canvas.toBlob(resolve, "image/png"));
  }
}
