// Small helpers to build the DOM without innerHTML (so nothing the server sends is parsed as
// markup) and to format what plans carry.

/** `h('button', {class: 'primary', onclick: fn}, 'Pause')`. Attributes starting with `on` are
 *  listeners; `dataset`, `disabled`, `hidden`, `value` are set as properties. */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith('on') && typeof v === 'function') el.addEventListener(k.slice(2), v);
    else if (k === 'dataset') Object.assign(el.dataset, v);
    else if (k === 'class') el.className = v;
    else if (['disabled', 'hidden', 'value', 'checked', 'selected', 'open'].includes(k)) el[k] = v;
    else el.setAttribute(k, v === true ? '' : String(v));
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const c of children.flat(Infinity)) {
    if (c === undefined || c === null || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
}

/** Replaces the children of `el`. */
export function fill(el, ...children) {
  el.replaceChildren();
  append(el, children);
  return el;
}

/** Makes `nodes` the children of `el`, in order, moving only those out of place. Unlike
 *  `fill`, a child that stays where it was is not taken out of the page, so a text box in it
 *  keeps the focus, the caret and what the user is typing while the list around it changes. */
export function reconcile(el, nodes) {
  const keep = new Set(nodes);
  for (const c of [...el.childNodes]) if (!keep.has(c)) c.remove();
  let at = el.firstChild;
  for (const n of nodes) {
    if (n === at) at = at.nextSibling;
    else el.insertBefore(n, at);
  }
  return el;
}

/** Runs `draw()`, which draws the rows of `box` anew, and gives the focus back to the same
 *  kind of element in the row with the same `data-<key>` if one of the old rows had it (someone
 *  going down a live list with Tab keeps their place). */
export function keepRowFocus(box, key, draw) {
  const had = document.activeElement;
  const row = had && box.contains(had) ? had.closest(`[data-${key}]`) : null;
  draw();
  if (!row) return;
  const again = box.querySelector(`[data-${key}="${CSS.escape(row.dataset[key])}"] ${had.tagName.toLowerCase()}`);
  if (again) again.focus({ preventScroll: true });
}

/** An SVG element (the graph and the timeline). */
export function svg(tag, attrs = {}, ...children) {
  const el = document.createElementNS('http://www.w3.org/2000/svg', tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith('on') && typeof v === 'function') el.addEventListener(k.slice(2), v);
    else if (k === 'dataset') Object.assign(el.dataset, v);
    else el.setAttribute(k, String(v));
  }
  append(el, children);
  return el;
}

/** A status badge: `<span class="state running">running</span>`. */
export function badge(state) {
  return h('span', { class: `state ${state}` }, String(state).replace('_', ' '));
}

/** `2026-12-06 07:12:03` in the browser's time zone, from an RFC 3339 string or micros. */
export function time(t) {
  if (t === undefined || t === null || t === '') return '';
  const d = typeof t === 'number' ? new Date(t / 1000) : new Date(t);
  if (Number.isNaN(d.getTime())) return String(t);
  const p = (n) => String(n).padStart(2, '0');
  return `${d.getFullYear()}-${p(d.getMonth() + 1)}-${p(d.getDate())} ${p(d.getHours())}:${p(d.getMinutes())}:${p(d.getSeconds())}`;
}

/** `1.2 s`, `3 m 04 s`, from milliseconds. */
export function duration(ms) {
  if (ms === undefined || ms === null || Number.isNaN(ms)) return '';
  if (ms < 1000) return `${Math.round(ms)} ms`;
  const s = ms / 1000;
  if (s < 60) return `${s.toFixed(1)} s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m} m ${String(Math.floor(s % 60)).padStart(2, '0')} s`;
  return `${Math.floor(m / 60)} h ${String(m % 60).padStart(2, '0')} m`;
}

/** Pretty JSON for a <pre>. */
export function json(v) { return JSON.stringify(v, null, 2); }
