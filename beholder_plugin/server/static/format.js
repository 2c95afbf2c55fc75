// Number and time formatting for the info panel and the status line.

/** A statistic as the original showed it, like 1.234e-02 ("n/a" when missing). */
export function sci(value) {
  if (value === null || value === undefined || !Number.isFinite(Number(value))) return "n/a";
  return Number(value)
    .toExponential(3)
    .replace(/e([+-])(\d)$/, "e$10$2");
}

/** An array shape like [3, 3, 64, 128]. */
export function shape(dims) {
  return Array.isArray(dims) ? `[${dims.join(", ")}]` : "[]";
}

/** A duration in seconds, short: 0.3 s, 12 s, 4 min, 2 h. */
export function age(seconds) {
  if (seconds === null || seconds === undefined || !Number.isFinite(seconds)) return "no frame";
  if (seconds < 10) return `${Math.max(0, seconds).toFixed(1)} s`;
  if (seconds < 120) return `${Math.round(seconds)} s`;
  if (seconds < 7200) return `${Math.round(seconds / 60)} min`;
  return `${Math.round(seconds / 3600)} h`;
}

/** A number rounded to 4 significant digits, without trailing zeros: 1.119, 0.0003052, 1.235e+6. */
export function rounded(value, digits = 4) {
  const number = Number(value);
  if (value === null || value === undefined || !Number.isFinite(number)) return "n/a";
  if (number === 0) return "0";
  const magnitude = Math.abs(number);
  if (magnitude >= 1e6 || magnitude < 1e-4) return number.toExponential(digits - 1).replace(/\.?0+e/, "e");
  return String(Number(number.toPrecision(digits)));
}

/**
 * Numbers shown side by side (a colour bar's bounds) in one compact format, 4 significant digits:
 * all plain (-0.25, 1.5) or, when any needs it, all as powers of ten (5.673e-10, 1.178e-6).
 */
export function compactNumbers(values, digits = 4) {
  const numbers = values.map(Number);
  const tiny = (v) => v !== 0 && Math.abs(v) < 1e-3;
  const scientific = numbers.some((v) => Number.isFinite(v) && (tiny(v) || Math.abs(v) >= 1e6));
  return numbers.map((v) => {
    if (!Number.isFinite(v)) return String(v);
    if (v === 0) return "0";
    if (!scientific) return String(Number(v.toPrecision(digits)));
    return v.toExponential(digits - 1).replace(/\.?0+e/, "e").replace("e+", "e");
  });
}

/** What a frame shows, as the Values control names it ("a placeholder" when nothing was passed). */
export const VALUES_NAMES = {
  trainable_variables: "Trainable variables",
  gradients: "Gradients",
  activations: "Activations",
  arrays: "Arrays",
  frames: "Image",
  placeholder: "a placeholder",
};

/**
 * A section name that fits (fits(text) is true), told from its neighbours: its leading parts shortened to
 * their first letter, one at a time from the left, numbers kept whole ("b.e.l.0.a.self.query.weight", not
 * "bert.encoder.layer.0.attentio…", where the names differ); still too long, "…" and as much of its end as fits.
 */
export function shortName(name, fits) {
  if (fits(name)) return name;
  const parts = name.split(/([./:])/); // names and the separators between them
  for (let i = 0; i < parts.length - 1; i += 2) {
    if (!/^\d+$/.test(parts[i])) parts[i] = parts[i].slice(0, 1);
    const short = parts.join("");
    if (fits(short)) return short;
  }
  const short = parts.join("");
  let [low, high] = [0, short.length - 1]; // the most end characters kept after "…": low fit, high + 1 do not
  while (low < high) {
    const mid = Math.ceil((low + high) / 2);
    if (fits(`…${short.slice(short.length - mid)}`)) low = mid;
    else high = mid - 1;
  }
  return `…${short.slice(short.length - low)}`;
}
