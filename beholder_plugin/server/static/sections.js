// Choosing sections: a filter box and a tree of name scopes with a checkbox each. Both become ONE
// string, the config's "filter" (protocol/filters.py, docs/protocol.md): its first line is the box,
// plain text found anywhere in a name, or /a regular expression/ (RE2 on the trainer, which never
// backtracks); each further line is a hidden scope. The browser checks /.../ with its own RegExp for
// a quick inline error; the plugin checks it with RE2 and its refusal is shown the same way.
import { h } from "./dom.js";

export const MAX_FILTER_CHARS = 1000; // the validator's limit (docs/protocol.md)
const SEND_AFTER_MS = 400; // typing pauses this long before the filter is sent
const SCOPE_SPLIT = /[/.]/; // name scopes: "sequential/conv1/kernel", "features.0.weight"

/** Whether the box's text is a regular expression (between slashes) rather than plain text. */
export function isExpression(text) {
  return text.length >= 2 && text.startsWith("/") && text.endsWith("/");
}

/** null when text is a usable filter, else why not (bad syntax, too long). Plain text always is. */
export function filterProblem(text) {
  if (text.length > MAX_FILTER_CHARS) return `at most ${MAX_FILTER_CHARS} characters`;
  if (text.includes("\n")) return "one line only";
  if (!isExpression(text)) return null;
  try {
    new RegExp(text.slice(1, -1));
  } catch (error) {
    return `not a valid regular expression: ${error.message}`;
  }
  return null;
}

/** The one filter for the config: the box's text, then one hidden scope per line. */
export function combineFilter(text, hiddenScopes) {
  const scopes = [...hiddenScopes].filter((scope) => scope && !scope.includes("\n")).sort();
  return [text, ...scopes].join("\n");
}

/** The box's text and the hidden scopes of a config's filter (combineFilter read back). */
export function splitFilter(filter) {
  const [text, ...scopes] = String(filter).split("\n");
  return { text, hidden: scopes.filter((scope) => scope) };
}

/**
 * A name -> kept? function for a filter, as the trainer reads it (null when the browser cannot tell).
 * With `shown` (the names of the latest frame, which the trainer chose with RE2), an expression is
 * not run here: the browser's RegExp backtracks, and a shared link could otherwise hang the tab.
 */
export function filterMatcher(filter, shown = null) {
  const { text, hidden } = splitFilter(filter);
  let found = (name) => name.includes(text);
  if (isExpression(text) && shown !== null) {
    found = (name) => shown.has(name);
  } else if (isExpression(text)) {
    let regex;
    try {
      regex = new RegExp(text.slice(1, -1));
    } catch (_) {
      return null;
    }
    found = (name) => regex.test(name);
  }
  const under = (name, scope) => name === scope || (name.startsWith(scope) && "/.".includes(name[scope.length]));
  return (name) => !hidden.some((scope) => under(name, scope)) && found(name);
}

/** The scopes of a name, outermost first: [{prefix, label}], prefix ending before a "/" or "." (the name last). */
export function scopesOf(name) {
  const text = String(name);
  const out = [];
  let at = 0;
  for (const part of text.split(SCOPE_SPLIT)) {
    at += part.length;
    out.push({ prefix: text.slice(0, at), label: part });
    at += 1;
  }
  return out;
}

/** A tree of scopes: nodes {prefix, label, children: Map prefix -> node, names: the names under it}. */
export function scopeTree(names) {
  const root = { prefix: null, label: "", children: new Map(), names: [] };
  for (const name of names) for (const node of nodesOf(root, name)) node.names.push(name);
  return root;
}

/** The tree's nodes from the top down to a name or scope prefix, made where missing (with no names). */
function nodesOf(root, text) {
  const path = [];
  let node = root;
  for (const { prefix, label } of scopesOf(text)) {
    if (!node.children.has(prefix)) node.children.set(prefix, { prefix, label, children: new Map(), names: [] });
    node = node.children.get(prefix);
    path.push(node);
  }
  return path;
}

/** The filter box and the scope tree; onFilter(regex) is called with the combined expression to send. */
export class SectionChooser {
  constructor({ onFilter }) {
    this.onFilter = onFilter;
    // The names the tree lists: those of the kind of values shown now (the frame's "values"), seen in
    // this page session; names of one kind are no sections of another ("0.weight" of gradients is no
    // weight, activations are named after modules), so each kind keeps its own set.
    this.seen = new Map(); // run -> Set of the section names seen of the kind shown now
    this.seenByKind = new Map(); // run -> Map values kind -> Set of the section names seen of it
    this.kind = null; // the kind of values of the latest table
    this.flags = new Map(); // section name -> "NaN" | "Inf" text while its latest stats are non-finite
    this.hidden = new Set(); // scope prefixes unticked in the tree
    this.shown = new Set(); // the section names of the latest frame (what the trainer's filter kept)
    this.collapsed = new Set(); // scope prefixes the user folded
    this.run = null;
    this.sent = null; // the last expression sent (or adopted from the config)
    this.keepBox = false; // set by refused(): the next config answer leaves the box alone
    this.timer = null;
    this.treeKey = "";
    this.input = h("input", {
      type: "text",
      id: "section-filter",
      class: "section-filter",
      placeholder: "filter: text, or /regex/ e.g. /conv|dense/",
      title: "Plain text is found anywhere in a section name; text between slashes, /conv|dense/, is a "
        + "regular expression (RE2 syntax, no look-arounds or back-references)",
      "aria-label": "Section filter: plain text, or a regular expression between slashes",
      spellcheck: "false",
      autocomplete: "off",
      "data-key": "filter",
    });
    this.input.addEventListener("input", () => this.typed());
    this.input.addEventListener("keydown", (event) => {
      if (event.key === "Enter") this.send();
    });
    this.problem = h("p", { class: "error", id: "section-filter-error", role: "alert", hidden: true });
    this.effective = h("p", { class: "note filter-effective", id: "section-filter-effective", hidden: true });
    this.tree = h("div", { class: "scope-tree", id: "scope-tree" });
    this.element = h(
      "div",
      { class: "group sections-group", id: "sections-group" },
      h("label", { class: "legend", for: "section-filter" }, "Sections"),
      this.input,
      this.problem,
      this.effective,
      h("details", { class: "scope-details", id: "scope-details", open: true },
        h("summary", {}, "Name scopes"), this.tree),
    );
    this.readUrl();
  }

  /** The URL's state (#beholder&filter=...&hide=...), read once when the page opens. */
  readUrl() {
    const params = urlParams();
    this.urlWanted = params.has("filter") || params.has("hide");
    this.input.value = params.get("filter") || "";
    for (const scope of params.getAll("hide")) this.hidden.add(scope);
  }

  /**
   * The URL's hash changed in the open page (a pasted link, the back button): take the filter and hidden
   * scopes it names, if any and other than the box's; sent now, or, when another run is about to be shown
   * (later), once that run's config is in (as at page load).
   */
  followUrl(later) {
    const params = urlParams();
    if (!params.has("filter") && !params.has("hide")) return;
    const text = params.get("filter") || "";
    const hidden = new Set(params.getAll("hide"));
    const same = text === this.input.value && hidden.size === this.hidden.size
      && [...hidden].every((scope) => this.hidden.has(scope));
    if (same && !later) return;
    this.input.value = text;
    this.hidden = hidden;
    this.keepBox = false;
    this.urlWanted = later;
    if (!later) {
      this.send();
      return;
    }
    this.showProblem();
    this.renderTree();
  }

  /** The expression for the box and the tree as they are now (null while the box is invalid). */
  current() {
    const text = this.input.value;
    if (filterProblem(text) !== null) return null;
    const combined = combineFilter(text, this.hidden);
    return combined.length > MAX_FILTER_CHARS ? null : combined;
  }

  /** The box changed: check it at once, send it after a pause. */
  typed() {
    clearTimeout(this.timer);
    if (this.showProblem()) return;
    this.timer = setTimeout(() => this.send(), SEND_AFTER_MS);
  }

  /** Show why the box (or the combined expression) cannot be sent; true when it cannot. */
  showProblem() {
    let problem = filterProblem(this.input.value);
    if (problem === null && combineFilter(this.input.value, this.hidden).length > MAX_FILTER_CHARS) {
      problem = `the filter and the hidden scopes together pass ${MAX_FILTER_CHARS} characters`;
    }
    this.problem.textContent = problem ? `Filter not applied: ${problem}` : "";
    this.problem.hidden = problem === null;
    this.input.classList.toggle("invalid", problem !== null);
    return problem !== null;
  }

  /** Send the combined expression (unless invalid or unchanged) and keep the state in the URL. */
  send() {
    clearTimeout(this.timer);
    if (this.showProblem()) return;
    const combined = this.current();
    writeUrl(this.input.value, this.hidden);
    this.renderTree();
    if (combined === this.sent || this.run === null) return;
    this.sent = combined;
    this.onFilter(combined);
  }

  /** Another run is shown: its names, and its config's filter, take over. */
  setRun(run) {
    this.run = run;
    this.treeKey = "";
    this.kind = null;
    this.flags.clear();
    if (!this.seen.has(run)) this.seen.set(run, new Set());
    this.renderTree();
  }

  /** The plugin refused the filter sent (RE2 reads it otherwise than the browser): say why, keep the box. */
  refused(message) {
    this.problem.textContent = `Filter not applied: ${message}`;
    this.problem.hidden = false;
    this.input.classList.add("invalid");
    this.keepBox = true;
  }

  /** The run's config says filter: adopt it unless it is what this page sent (or the URL asks for more). */
  applyConfig(filter) {
    const value = typeof filter === "string" ? filter : "";
    this.effective.hidden = value === "";
    this.effective.textContent = value ? `In force: ${describeFilter(value)}` : "";
    if (this.keepBox) {
      this.keepBox = false; // the answer after a refusal: the box keeps what the user typed
      this.sent = value;
      return;
    }
    if (this.urlWanted) {
      this.urlWanted = false; // a shared link: apply its filter to this run once
      this.send();
      return;
    }
    if (value === this.current() || value === this.sent) {
      this.sent = value;
      return;
    }
    this.sent = value;
    const { text, hidden } = splitFilter(value);
    this.hidden = new Set(hidden);
    this.input.value = text;
    this.showProblem();
    writeUrl(text, this.hidden);
    this.renderTree();
  }

  /**
   * Remember the names of a frame's sections (of the kind of values `kind`) and which show NaN or Inf;
   * redraw the tree if that changed. Another kind than the last table's: the tree lists that kind's
   * names (seen before, or from now on) instead; hidden scopes stay hidden (they are the filter's).
   */
  noteSections(sections, kind = null) {
    if (!this.seenByKind.has(this.run)) this.seenByKind.set(this.run, new Map());
    const kinds = this.seenByKind.get(this.run);
    if (!kinds.has(kind)) kinds.set(kind, new Set());
    const names = kinds.get(kind);
    if (kind !== this.kind || this.seen.get(this.run) !== names) this.flags.clear(); // another kind's flags
    this.kind = kind;
    this.seen.set(this.run, names);
    this.shown = new Set(sections.map((rec) => rec.name));
    for (const rec of sections) {
      names.add(rec.name);
      const flag = nonFiniteFlag(rec.stats);
      if (flag) this.flags.set(rec.name, flag);
      else this.flags.delete(rec.name);
    }
    this.renderTree();
  }

  /** Tick or untick a scope: hidden scopes leave the filter, and the trainer stops gathering them. */
  toggle(prefix, visible) {
    if (visible) this.hidden.delete(prefix);
    else this.hidden.add(prefix);
    this.treeKey = "";
    this.send();
  }

  /** Draw the tree of the run's names (only when names, flags, hidden scopes or the filter changed). */
  renderTree() {
    const names = [...(this.seen.get(this.run) || [])];
    const combined = this.current();
    const byFrame = combined !== null && isExpression(splitFilter(combined).text);
    const key = JSON.stringify([names, [...this.flags], [...this.hidden], combined, [...this.collapsed],
      byFrame ? [...this.shown] : null]);
    if (key === this.treeKey) return;
    this.treeKey = key;
    const matcher = combined === null ? null : filterMatcher(combined, this.shown);
    const root = scopeTree(names);
    for (const prefix of this.hidden) nodesOf(root, prefix); // unticked by a shared link, maybe never seen
    this.tree.replaceChildren(
      ...(names.length ? [...root.children.values()].map((node) => this.renderNode(node, false, matcher))
        : [h("p", { class: "note" }, "Section names appear here with the first frame of arrays.")]),
    );
  }

  /** One scope (or section) with its checkbox, red when a section under it shows NaN or Inf. */
  renderNode(node, parentHidden, matcher) {
    const hidden = this.hidden.has(node.prefix);
    const flagged = node.names.filter((name) => this.flags.has(name));
    const leaf = node.children.size === 0;
    const box = h("input", {
      type: "checkbox",
      checked: !hidden && !parentHidden,
      disabled: parentHidden,
      "data-scope": node.prefix,
      "aria-label": `Show ${node.prefix}`,
      onchange: (event) => this.toggle(node.prefix, event.target.checked),
    });
    const shown = matcher === null || node.names.some((name) => matcher(name));
    const label = h(
      "label",
      { class: "scope-label", title: node.prefix },
      box,
      h("span", { class: "scope-name" }, node.label),
      leaf ? null : h("span", { class: "scope-count" }, ` (${node.names.length})`),
      flagged.length ? h("span", { class: "flag", title: flagged.join(", ") }, ` ${flagText(flagged, this.flags)}`) : null,
    );
    const attrs = {
      class: `scope${leaf ? " leaf" : ""}${flagged.length ? " nonfinite" : ""}${shown ? "" : " filtered-out"}`,
      dataset: { scope: node.prefix, flagged: String(flagged.length > 0) },
    };
    if (leaf) return h("div", attrs, label);
    const details = h(
      "details",
      { ...attrs, open: !this.collapsed.has(node.prefix) },
      h("summary", {}, label),
      [...node.children.values()].map((child) => this.renderNode(child, parentHidden || hidden, matcher)),
    );
    details.addEventListener("toggle", () => {
      if (details.open) this.collapsed.delete(node.prefix);
      else this.collapsed.add(node.prefix);
    });
    return details;
  }
}

/** A config's filter for people: the box's text, then the hidden scopes. */
function describeFilter(filter) {
  const { text, hidden } = splitFilter(filter);
  const found = text === "" ? "every section" : isExpression(text) ? `names matching ${text}` : `names with "${text}"`;
  return hidden.length ? `${found}, not under ${hidden.join(", ")}` : found;
}

/** "NaN" or "Inf" (or both) when a stats record counts non-finite values, else null. */
export function nonFiniteFlag(stats) {
  if (!stats || typeof stats !== "object") return null;
  const parts = [];
  if (Number(stats.nan) > 0) parts.push("NaN");
  if (Number(stats.inf) > 0) parts.push("Inf");
  return parts.length ? parts.join("+") : null;
}

/** The red note of a scope: what its flagged sections show. */
function flagText(flagged, flags) {
  const kinds = new Set(flagged.flatMap((name) => flags.get(name).split("+")));
  return `⚠ ${[...kinds].join("+")}`;
}

/** The top page's location (TensorBoard's), or this frame's when it cannot be reached. */
function topWindow() {
  try {
    void window.top.location.href; // throws when another origin
    return window.top;
  } catch (_) {
    return window;
  }
}

/** The URL's parameters after the tab name: "#beholder&filter=conv" -> filter=conv. */
export function urlParams() {
  const hash = topWindow().location.hash.replace(/^#/, "");
  const at = hash.indexOf("&");
  return new URLSearchParams(at < 0 ? "" : hash.slice(at + 1));
}

/**
 * Call changed() when the top page's hash changes while it shows this tab (a link pasted into the open
 * page, the back button); until this frame's page goes. The URL writes here (replaceState) fire none.
 */
export function onUrlChange(changed) {
  const win = topWindow();
  const listener = () => {
    const tab = win.location.hash.replace(/^#/, "").split("&")[0];
    if (tab === "" || tab === "beholder") changed();
  };
  win.addEventListener("hashchange", listener);
  if (win !== window) window.addEventListener("pagehide", () => win.removeEventListener("hashchange", listener));
}

/** Keep the filter box and hidden scopes in the top page's URL, so that the view can be shared. */
function writeUrl(text, hidden) {
  editUrl((params) => {
    params.delete("filter");
    params.delete("hide");
    if (text) params.set("filter", text);
    for (const scope of [...hidden].sort()) params.append("hide", scope);
  });
}

/** Keep the run shown in the top page's URL (#beholder&run=...), so that a reload or a link opens it. */
export function writeUrlRun(run) {
  editUrl((params) => {
    if (run) params.set("run", run);
    else params.delete("run");
  });
}

/** Change the parameters after the tab name in the top page's URL (edit(params) changes them). */
function editUrl(edit) {
  const win = topWindow();
  const hash = win.location.hash.replace(/^#/, "");
  const at = hash.indexOf("&");
  const tab = at < 0 ? hash : hash.slice(0, at);
  const params = new URLSearchParams(at < 0 ? "" : hash.slice(at + 1));
  edit(params);
  const rest = params.toString();
  const url = new URL(win.location.href);
  url.hash = `${tab || "beholder"}${rest ? `&${rest}` : ""}`;
  if (url.href !== win.location.href) win.history.replaceState(win.history.state, "", url.href);
}
