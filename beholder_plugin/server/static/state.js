// The dashboard's one state object: which run is shown, whether it is paused (and on which kept
// frame), its settings as the toolbar shows them, and the counters of the frames drawn. Every
// part of the dashboard reads the same object; the Dashboard is what changes it.

/** The state of the tab. window.beholder is a read-only view of it (readOnlyView) for tests and benchmarks. */
export class DashboardState {
  constructor() {
    this.run = null; // the run shown
    // The run the user chose (the Run box, or the URL's run=): shown whenever it exists; while it does
    // not (its directory deleted to start it afresh), another is shown and the status says so.
    this.chosenRun = null;
    this.seenRuns = new Set(); // every run the plugin has listed since the page opened
    this.runs = []; // the runs the plugin lists: [{run, age, storage, ended?}]
    this.paused = false; // the history bar is on: live frames are not fetched
    this.kept = null; // the kept frame on screen (its history name), null while live
    this.windowNoted = false; // the variance window's note is up (an ended run's variance is said there)
    this.config = null; // the run's settings as the toolbar shows them (changes not yet answered included)
    this.view = "frame"; // "frame" or "distributions" (the two-run comparison is on "frame" with another run)
    this.zoom = "1";
    this.serverUp = null; // null until the first answer, then whether TensorBoard answers
    this.connected = false; // the live feed's connection
    // The frame on screen, and counters of what was drawn.
    this.framesReceived = 0;
    this.frameId = null;
    this.writer = null;
    this.step = undefined;
    this.values = null;
    this.width = 0;
    this.height = 0;
    this.transport = null; // how the frame on screen came: "data" (drawn here from frame-data) or "png"
    this.colormap = null; // the colormap it was drawn with (frame data only)
    this.paints = 0; // how many times frame data was painted (frames and colormap redraws)
    this.rows = null; // the rows of the last frame data painted ("A-B"), null when whole
    this.configBusy = 0; // settings changes not yet answered
    // The draw log: the last 500 frames {frameId, writer, time: ms since epoch when drawn}. A benchmark
    // may empty it (it is a log for readers, never read back by the dashboard).
    this.drawn = [];
  }
}

/** A live view of state that reads every field and refuses to set or delete any. */
export function readOnlyView(state) {
  const refuse = () => {
    throw new TypeError("window.beholder is read-only: the dashboard's state changes only through the dashboard");
  };
  return new Proxy(state, { set: refuse, deleteProperty: refuse, defineProperty: refuse });
}
