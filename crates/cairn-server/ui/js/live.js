// A plan kept current in the page: its state (`GET /v1/plans/{id}`) refreshed after the events
// of its stream, at most every `every` ms (so a busy plan does not flood the page), resumed
// after a dropped connection from the last event id seen. Pages read `live.view` and register
// with `live.on(fn)`; `fn(view, events)` runs after each refresh with the events that caused it.

import * as api from './api.js';

export class LivePlan {
  /** Loads the plan and starts following it. Throws the ApiError of the first load. */
  static async open(id) {
    const view = await api.get(`/v1/plans/${encodeURIComponent(id)}`);
    const live = new LivePlan(id, view);
    live.follow();
    return live;
  }

  constructor(id, view) {
    this.id = id;
    this.view = view;
    this.status = 'connecting';
    this.listeners = new Set();
    this.statusListeners = new Set();
    this.pending = [];
    this.timer = null;
    this.sub = null;
    // Large plans answer large states: refresh them less often.
    this.every = view.total_steps > 2000 ? 1000 : 250;
  }

  follow() {
    // `follow=true`: an ended plan's stream stays open (a restore or a retry brings it back).
    this.sub = api.stream(`/v1/plans/${encodeURIComponent(this.id)}/events/stream?follow=true`, {
      after: this.view.last_seq,
      onEvent: (ev) => { this.pending.push(ev); this.schedule(); },
      onStatus: (s) => { this.status = s; for (const f of this.statusListeners) f(s); },
    });
  }

  schedule() {
    if (this.timer) return;
    this.timer = setTimeout(() => { this.timer = null; this.refresh(); }, this.every);
  }

  /** Re-reads the state now and tells the listeners. */
  async refresh() {
    const events = this.pending;
    this.pending = [];
    try {
      this.view = await api.get(`/v1/plans/${encodeURIComponent(this.id)}`);
      api.stats.refreshes += 1;
    } catch (e) {
      if (e instanceof api.ApiError && e.status === 404) { this.view = { ...this.view, deleted: true }; }
      else { this.pending = events.concat(this.pending); this.schedule(); return; }
    }
    for (const f of this.listeners) {
      try { f(this.view, events); } catch (err) { console.error(err); }
    }
  }

  /** `fn(view, events)` after every refresh; answers a function that unregisters it. */
  on(fn) { this.listeners.add(fn); return () => this.listeners.delete(fn); }

  /** `fn('live' | 'reconnecting' | 'closed')`; answers a function that unregisters it. */
  onStatus(fn) { this.statusListeners.add(fn); return () => this.statusListeners.delete(fn); }

  close() {
    clearTimeout(this.timer);
    if (this.sub) this.sub.close();
    this.listeners.clear();
    this.statusListeners.clear();
  }
}
