// Keeping the toolbar's settings and the run's config.json in step. Changes are sent one request at
// a time, in the order made; an answer never resets a control the user changed after that request
// was sent, nor one whose change is still waiting or in flight.
import { getJSON, postConfig } from "./api.js";

export class SettingsSync {
  /**
   * state: the dashboard's state (run, config, configBusy). show(reply, skip) shows an answer in
   * the controls except the keys in skip; refused(message, changes) and failed(message) report a
   * refused change and a failed read; done() after each answered change.
   */
  constructor(state, { show, refused, failed, done }) {
    Object.assign(this, { state, show, refused, failed, done });
    this.queue = []; // changes not yet sent: [{run, changes}], merged while for the same run
    this.posting = false; // a request is in flight
    this.postingKeys = new Set(); // the keys it changes
    this.changeSeq = 0; // counts the user's changes
    this.touched = {}; // key -> the number of the last change to it
  }

  /** Whether a change is waiting or in flight (a frame's settings may be older than the toolbar's). */
  get busy() {
    return this.queue.length > 0 || this.posting;
  }

  /** Read the run's settings and show them (a change made meanwhile is kept). */
  async load() {
    const run = this.state.run;
    const sentAt = this.changeSeq;
    try {
      const reply = await getJSON("config", { run });
      if (run === this.state.run) this.apply(reply, sentAt);
    } catch (error) {
      if (run === this.state.run) this.failed(`Could not read the settings: ${error.message}`);
    }
  }

  /**
   * The keys whose controls an answer asked for at change number sentAt must not reset: changed
   * by the user since, or still waiting in a request (other than the one answered, when own).
   */
  keysToKeep(sentAt, own) {
    const skip = new Set(Object.keys(this.touched).filter((key) => this.touched[key] > sentAt));
    for (const item of this.queue) for (const key of Object.keys(item.changes)) skip.add(key);
    if (!own) for (const key of this.postingKeys) skip.add(key);
    return skip;
  }

  /** Take an answer asked for when changeSeq was sentAt (own: the answer to our POST) into the state and show it. */
  apply(reply, sentAt, own = false) {
    const skip = this.keysToKeep(sentAt, own);
    const config = this.state.config;
    const kept = Object.fromEntries([...skip].filter((key) => config && key in config).map((key) => [key, config[key]]));
    this.state.config = { ...reply.config, ...kept };
    this.show(reply, skip);
  }

  /** Queue a change of settings of the run shown and send it when the request before it is answered. */
  change(changes) {
    const run = this.state.run;
    this.changeSeq++;
    for (const key of Object.keys(changes)) this.touched[key] = this.changeSeq;
    this.state.config = { ...(this.state.config || {}), ...changes };
    const last = this.queue[this.queue.length - 1];
    if (last && last.run === run) Object.assign(last.changes, changes);
    else this.queue.push({ run, changes: { ...changes } });
    this.send();
    this.countBusy();
  }

  /** Requests queued or in flight (state.configBusy: tests wait for 0). */
  countBusy() {
    this.state.configBusy = this.queue.length + (this.posting ? 1 : 0);
  }

  /** Send the oldest queued change (unless a request is in flight); on refusal say why. */
  async send() {
    if (this.posting || this.queue.length === 0) return;
    const { run, changes } = this.queue.shift();
    const sentAt = this.changeSeq;
    this.posting = true;
    this.postingKeys = new Set(Object.keys(changes));
    this.countBusy();
    try {
      const reply = await postConfig(run, changes);
      this.done();
      if (run === this.state.run) this.apply(reply, sentAt, true);
    } catch (error) {
      this.refused(error.message, changes, run === this.state.run);
      if (run === this.state.run) this.load(); // put back what is really on disk
    } finally {
      this.posting = false;
      this.postingKeys = new Set();
      this.send();
      this.countBusy();
    }
  }
}
