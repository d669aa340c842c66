// The Events tab: the plan's log, one page at a time (`GET /v1/plans/{id}/events?after=&limit=`),
// each event with its seq, time, type, actor and step, its JSON a click away. Pages go by seq
// (first, earlier, later, latest, or from a given seq), so a plan with a long log is read a page
// at a time. On the latest page, "Follow" appends what the plan's stream brings (kept to a few
// pages, oldest dropped).

import * as api from '../../api.js';
import { h, fill, reconcile, time, json } from '../../dom.js';

export async function render(el, live, _params, ctx) {
  const base = `/v1/plans/${encodeURIComponent(live.id)}/events`;
  const size = h('select', { id: 'ev-size', 'aria-label': 'Events per page' },
    [50, 100, 500].map((n) => h('option', { value: n, selected: n === 100 }, `${n} a page`)));
  const from = h('input', { id: 'ev-from', type: 'number', min: 0, placeholder: 'seq',
    'aria-label': 'Show from this seq' });
  const type = h('select', { id: 'ev-type', 'aria-label': 'Only this type (on this page)' },
    h('option', { value: '' }, 'all types'));
  const follow = h('input', { type: 'checkbox', id: 'ev-follow', checked: true });
  const btn = (bid, label, fn) => h('button', { type: 'button', id: bid, onclick: fn }, label);
  const first = btn('ev-first', '« First', () => go(0));
  const prev = btn('ev-prev', '‹ Earlier', () => go(Math.max(0, firstSeq() - 1 - n())));
  const next = btn('ev-next', 'Later ›', () => go(cursor === null ? lastSeq() : Number(cursor)));
  const last = btn('ev-last', 'Latest »', () => go(Math.max(0, live.view.last_seq - n())));
  const where = h('span', { class: 'muted', id: 'ev-where' });
  const body = h('tbody', { id: 'ev-body' });
  el.append(
    h('div', { class: 'toolbar' }, first, prev, next, last,
      h('form', { class: 'inline', onsubmit: (e) => { e.preventDefault(); go(Math.max(0, Number(from.value || 1) - 1)); } },
        h('label', {}, 'From seq ', from), h('button', { type: 'submit' }, 'Go')),
      size, type, h('label', {}, follow, ' Follow'), where),
    h('div', { class: 'table-scroll' }, h('table', { id: 'events' },
      h('thead', {}, h('tr', {}, h('th', {}, 'Seq'), h('th', {}, 'Time'), h('th', {}, 'Type'),
        h('th', { class: 'hide-narrow' }, 'Actor'), h('th', {}, 'Step'), h('th', {}, 'Event'))),
      body)));

  let items = [];
  let cursor = null;
  // The rows drawn, by seq: drawn again, an event keeps its row (and its JSON open if it was).
  const rows = new Map();
  let drawnTypes = null;
  const n = () => Number(size.value);
  const firstSeq = () => (items.length ? items[0].seq : 1);
  const lastSeq = () => (items.length ? items[items.length - 1].seq : 0);

  async function go(after) {
    try {
      const page = await api.get(`${base}${api.query({ after, limit: n() })}`);
      items = page.items;
      cursor = page.next_cursor ?? null;
      draw();
    } catch (e) { ctx.fail(e); }
  }

  function draw() {
    const total = live.view.last_seq;
    prev.disabled = first.disabled = firstSeq() <= 1;
    next.disabled = last.disabled = cursor === null && lastSeq() >= total;
    where.textContent = items.length
      ? `events ${firstSeq()}–${lastSeq()} of ${Math.max(total, lastSeq())}` : 'no events here';
    const types = [...new Set(items.map((e) => e.type))].sort();
    if (types.join('\n') !== drawnTypes) {
      // Only when the page's types change: a list being chosen from stays open.
      drawnTypes = types.join('\n');
      const keep = type.value;
      fill(type, h('option', { value: '' }, 'all types'),
        types.map((t) => h('option', { value: t, selected: t === keep }, t)));
    }
    reconcile(body, items.filter((e) => !type.value || e.type === type.value).map((e) => {
      let r = rows.get(e.seq);
      if (!r) { r = row(e); rows.set(e.seq, r); }
      return r;
    }));
    if (rows.size > items.length) {
      const kept = new Set(items.map((e) => e.seq));
      for (const seq of rows.keys()) if (!kept.has(seq)) rows.delete(seq);
    }
  }

  function row(e) {
    const d = e.data || {};
    const step = d.step_id || (d.step && d.step.step_id) || '';
    return h('tr', { dataset: { seq: e.seq, type: e.type } },
      h('td', { class: 'num' }, e.seq),
      h('td', { class: 'nowrap' }, time(e.at)),
      h('td', {}, h('code', {}, e.type), e.checkpoint ? h('span', { class: 'muted' }, ` · checkpoint (${e.checkpoint.trigger})`) : null),
      h('td', { class: 'hide-narrow' }, e.actor),
      h('td', {}, step),
      h('td', {}, h('details', {}, h('summary', {}, 'JSON'), h('pre', {}, json(e)))));
  }

  type.addEventListener('change', draw);
  size.addEventListener('change', () => go(Math.max(0, firstSeq() - 1)));

  const off = live.on((_v, events) => {
    // Only the latest page grows, and only while following.
    if (!follow.checked || cursor !== null) { draw(); return; }
    const fresh = events.map((ev) => ev.data).filter((e) => e && typeof e.seq === 'number' && e.seq > lastSeq());
    if (!fresh.length) { draw(); return; }
    items = items.concat(fresh);
    if (items.length > 5 * n()) items = items.slice(items.length - 5 * n());
    draw();
  });
  await go(Math.max(0, live.view.last_seq - n()));
  return off;
}
