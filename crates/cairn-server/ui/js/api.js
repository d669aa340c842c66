// The dashboard's only way to the server: JSON calls and event streams under /v1, each with the
// signed-in token in the Authorization header. The token lives in sessionStorage (this tab's
// session): never in a URL, never in a cookie, so nothing logs it and no other site can ride it.

const KEY = 'cairn.token';

export function token() { return sessionStorage.getItem(KEY) || ''; }
export function setToken(t) {
  if (t) sessionStorage.setItem(KEY, t); else sessionStorage.removeItem(KEY);
}

/** A refusal from the server: `status`, and the body's `code` and `message`. */
export class ApiError extends Error {
  constructor(status, body) {
    const e = (body && body.error) || {};
    super(e.message || `HTTP ${status}`);
    this.status = status;
    this.code = e.code || 'http_error';
    this.body = body;
  }
}

function headers(extra) {
  const h = { Accept: 'application/json', ...extra };
  const t = token();
  if (t) h.Authorization = `Bearer ${t}`;
  return h;
}

/** `method path` with an optional JSON body; answers the parsed JSON (null for 204). */
export async function call(method, path, body, { signal } = {}) {
  const init = { method, headers: headers(body === undefined ? {} : { 'Content-Type': 'application/json' }), signal };
  if (body !== undefined) init.body = JSON.stringify(body);
  const res = await fetch(path, init);
  const text = await res.text();
  let json = null;
  if (text) {
    try { json = JSON.parse(text); } catch { json = { error: { code: 'http_error', message: text } }; }
  }
  if (!res.ok) throw new ApiError(res.status, json);
  return json;
}

export const get = (path, opts) => call('GET', path, undefined, opts);
export const post = (path, body, opts) => call('POST', path, body === undefined ? {} : body, opts);
export const del = (path, opts) => call('DELETE', path, undefined, opts);

/** `?a=1&b=2` from an object, leaving out empty values. */
export function query(params) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) {
    if (v !== undefined && v !== null && v !== '') q.set(k, String(v));
  }
  const s = q.toString();
  return s ? `?${s}` : '';
}

/**
 * Counters a benchmark (or a curious person in the console) reads as `window.cairnStats`:
 * `events` received on every stream of the page, `refreshes` of what the page shows after
 * events (a plans page re-read, a plan state re-read).
 */
export const stats = { events: 0, refreshes: 0 };
window.cairnStats = stats;

/**
 * Follows a server-sent event stream (`/v1/plans/{id}/stream` or `/v1/events/stream`) with
 * `fetch`, so the token travels in a header. After a dropped connection it reconnects with
 * `Last-Event-ID` set to the last id seen, so no event is missed or repeated. `onEvent({id,
 * event, data})` gets each event (data parsed); `onStatus('live' | 'reconnecting' | 'closed',
 * error?)` follows the connection. Answers `{ close() }`.
 */
export function stream(path, { after, onEvent, onStatus = () => {} }) {
  let last = after === undefined || after === null ? null : String(after);
  let closed = false;
  let ctrl = null;
  let delay = 500;
  // A page left for another (kept in the back/forward cache) must not keep its stream open:
  // Chromium allows six connections to one server, and streams held by pages out of sight made
  // the next page's requests wait for a free connection until the server's idle timeout. The
  // loop below reconnects from the last id if the page is shown again.
  const onHide = () => { if (ctrl) ctrl.abort(); };
  window.addEventListener('pagehide', onHide);

  async function once() {
    ctrl = new AbortController();
    const h = headers({ Accept: 'text/event-stream' });
    if (last !== null) h['Last-Event-ID'] = last;
    const res = await fetch(path, { headers: h, signal: ctrl.signal, cache: 'no-store' });
    if (!res.ok) {
      let body = null;
      try { body = await res.json(); } catch { /* not JSON */ }
      throw new ApiError(res.status, body);
    }
    onStatus('live');
    delay = 500;
    const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
    let buf = '';
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      buf += value;
      let cut;
      while ((cut = buf.search(/\r?\n\r?\n/)) >= 0) {
        const frame = buf.slice(0, cut);
        buf = buf.slice(cut + (buf[cut] === '\r' ? 4 : 2));
        dispatch(frame);
      }
    }
  }

  function dispatch(frame) {
    let id = null, event = 'message', data = [];
    for (const line of frame.split(/\r?\n/)) {
      if (!line || line.startsWith(':')) continue;
      const i = line.indexOf(':');
      const field = i < 0 ? line : line.slice(0, i);
      let v = i < 0 ? '' : line.slice(i + 1);
      if (v.startsWith(' ')) v = v.slice(1);
      if (field === 'id') id = v;
      else if (field === 'event') event = v;
      else if (field === 'data') data.push(v);
    }
    if (id !== null) last = id;
    if (!data.length) return;
    stats.events += 1;
    let parsed = data.join('\n');
    try { parsed = JSON.parse(parsed); } catch { /* keep text */ }
    onEvent({ id, event, data: parsed });
  }

  (async () => {
    while (!closed) {
      try {
        await once();
      } catch (e) {
        if (closed) break;
        if (e instanceof ApiError && e.status >= 400 && e.status < 500) {
          onStatus('closed', e);
          return;
        }
      }
      if (closed) break;
      onStatus('reconnecting');
      await new Promise((r) => setTimeout(r, delay));
      delay = Math.min(delay * 2, 10_000);
    }
  })();

  return {
    close() {
      closed = true;
      window.removeEventListener('pagehide', onHide);
      if (ctrl) ctrl.abort();
      onStatus('closed');
    },
  };
}

/**
 * A list the server answers a page at a time, oldest first (`{items, next_cursor}`):
 * `first(limit)` reads it again from the start, `more(limit)` appends the next page,
 * `newer(limit, cursorOf)` appends what was added at its end since. `items` is what has been
 * read; `cursor` is null once the last page is in.
 */
export class Pager {
  constructor(path) {
    this.path = path; this.items = []; this.cursor = null; this.reading = null;
    this.following = Promise.resolve();
  }

  async first(limit) {
    const page = await get(`${this.path}${query({ limit: Math.min(limit, 1000) })}`);
    this.items = page.items;
    this.cursor = page.next_cursor || null;
  }

  /** Reads the next page. A call while one is still reading (a second click) waits for that
   *  one instead of reading the same page again, which would list it twice. */
  more(limit) {
    if (!this.reading) {
      this.reading = (async () => {
        try {
          const page = await get(`${this.path}${query({ limit, cursor: this.cursor })}`);
          this.items = this.items.concat(page.items);
          this.cursor = page.next_cursor || null;
        } finally {
          this.reading = null;
        }
      })();
    }
    return this.reading;
  }

  /** For a list that grows at its end: appends what was added after the last item read, so
   *  every page already read stays (reading the first page again drops those past the
   *  server's limit). `cursorOf(item)` is the cursor of a page that ends with `item`, or null
   *  if the item does not tell (then the first page is read again, as long as what is shown).
   *  Nothing is read while later pages are unread: the new items are among them. Calls run one
   *  after another, each after the items the one before added, so none is listed twice.
   *  Answers whether `items` changed. */
  newer(limit, cursorOf) {
    const read = async () => {
      const last = this.items[this.items.length - 1];
      if (last && this.cursor) return false;
      const cursor = last ? cursorOf(last) : null;
      if (!last || cursor == null) {
        await this.first(Math.max(limit, this.items.length + 10));
        return true;
      }
      const page = await get(`${this.path}${query({ limit, cursor })}`);
      if (!page.items.length) return false;
      this.items = this.items.concat(page.items);
      this.cursor = page.next_cursor || null;
      return true;
    };
    this.following = this.following.then(read, read);
    return this.following;
  }
}
