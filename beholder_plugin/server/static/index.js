// Entry point of the Beholder tab. TensorBoard loads this module in the plugin
// iframe and calls render(); everything else lives in the modules it imports.
import { Dashboard } from "./dashboard.js";
import { readOnlyView } from "./state.js";

/** Build the dashboard in the iframe's document and start it. */
export async function render() {
  const style = document.createElement("link");
  style.rel = "stylesheet";
  style.href = new URL("./style.css", import.meta.url).href;
  document.head.appendChild(style);
  const dashboard = new Dashboard(document.body);
  // Exposed for tests and the benchmark (frame counters, current run): the state, read-only.
  window.beholder = readOnlyView(dashboard.state);
  // What the distributions and compare views draw, for tests: plain data, no DOM.
  window.beholderDebug = {
    distributions: () => Object.fromEntries(dashboard.distributions.data),
    compare: () => dashboard.compare.debug,
    seenNames: () => [...(dashboard.chooser.seen.get(dashboard.state.run) || [])],
    hoverAt: () => dashboard.inspector.hoverAt,
    timeline: () => dashboard.timeline.debug,
  };
  await dashboard.start();
}
