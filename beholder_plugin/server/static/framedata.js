// Drawing "sections" frames in the browser from the frame-data route (docs/http-api.md): each
// section's compact palette indices, widened with the layout arithmetic of docs/protocol.md and
// coloured with a palette here, so that a colormap change is a redraw, not a new frame.

const MAGIC = "BHDATA1\0";
const PALETTE_BYTES = 768;

/** A frame-data answer that cannot be parsed (the feed then falls back to PNG frames). */
export class FrameDataError extends Error {}

/** Parse a frame-data answer: {doc, palette (768 bytes of RGB), indices (the sections' compact indices)}. */
export function parseFrameData(buffer) {
  const bytes = new Uint8Array(buffer);
  const magic = String.fromCharCode(...bytes.subarray(0, 8));
  if (magic !== MAGIC) throw new FrameDataError("not a frame-data answer (bad magic)");
  const length = new DataView(buffer).getUint32(8, true);
  let doc;
  try {
    doc = JSON.parse(new TextDecoder().decode(bytes.subarray(12, 12 + length)));
  } catch (error) {
    throw new FrameDataError(`frame-data description is not JSON: ${error.message}`);
  }
  const start = 12 + length;
  const palette = bytes.subarray(start, start + PALETTE_BYTES);
  const indices = bytes.subarray(start + PALETTE_BYTES);
  if (palette.length !== PALETTE_BYTES || indices.length !== doc.bytes) {
    throw new FrameDataError("frame-data answer is shorter than it says");
  }
  return { doc, palette, indices };
}

/** Nearest-neighbour source index of each of dst outputs, in float32 as layout.resize_indices computes it. */
export function resizeIndices(src, dst) {
  const scale = Math.fround(Math.fround(src) / Math.fround(dst));
  const out = new Int32Array(dst);
  for (let i = 0; i < dst; i++) {
    out[i] = Math.min(Math.floor(Math.fround(Math.fround(i) * scale)), src - 1);
  }
  return out;
}

const mapCache = new Map(); // compactMap results by "src/dst"

/** For each of dst pixels, which distinct sampled source index it shows (layout.compact_map). */
export function compactMap(src, dst) {
  const key = `${src}/${dst}`;
  let map = mapCache.get(key);
  if (map === undefined) {
    const indices = resizeIndices(src, dst);
    map = new Int32Array(dst);
    for (let i = 1; i < dst; i++) map[i] = map[i - 1] + (indices[i] !== indices[i - 1] ? 1 : 0);
    if (mapCache.size > 4096) mapCache.clear();
    mapCache.set(key, map);
  }
  return map;
}

/** 256 RGBA pixels (as little-endian Uint32 words) from 768 bytes of RGB. */
export function paletteWords(rgb) {
  const words = new Uint32Array(256);
  for (let i = 0; i < 256; i++) {
    words[i] = (0xff000000 | (rgb[3 * i + 2] << 16) | (rgb[3 * i + 1] << 8) | rgb[3 * i]) >>> 0;
  }
  return words;
}

/** 768 bytes of RGB from a "rrggbb" x 256 hex string (the colormaps route). */
export function paletteFromHex(hex) {
  const rgb = new Uint8Array(PALETTE_BYTES);
  for (let i = 0; i < PALETTE_BYTES; i++) rgb[i] = parseInt(hex.slice(2 * i, 2 * i + 2), 16);
  return rgb;
}

/**
 * Paint a parsed frame-data answer into an ImageData of the frame's size, with 256 palette words:
 * rows of the sections it holds are drawn; with fill, every other row is palette entry 0 (separators).
 */
export function paintFrameData(data, words, image, fill = true) {
  const { doc, indices } = data;
  const width = doc.width;
  const pixels = new Uint32Array(image.data.buffer, image.data.byteOffset, width * doc.height);
  if (fill) pixels.fill(words[0]);
  for (const rec of doc.sections) {
    const [srcH, srcW] = rec.source;
    const [rows, cols] = rec.compact;
    const colMap = compactMap(srcW, width);
    const rowMap = compactMap(srcH, rec.height);
    const wide = new Uint32Array(rows * width);
    for (let r = 0; r < rows; r++) {
      const from = rec.offset + r * cols;
      const base = r * width;
      for (let x = 0; x < width; x++) wide[base + x] = words[indices[from + colMap[x]]];
    }
    for (let y = 0; y < rec.height; y++) {
      const r = rowMap[y];
      pixels.set(wide.subarray(r * width, (r + 1) * width), (rec.top + y) * width);
    }
  }
  return image;
}
