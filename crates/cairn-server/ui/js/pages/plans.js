// The plans list (#/plans): newest first, one page at a time (next/previous by cursor),
// filtered by state and searched by id on the server (`GET /v1/plans?state=&id_contains=`).
//
// Live: the all-plans event stream (`GET /v1/events/stream`) only marks the page stale; the
// visible page is read again at most once a second while events arrive, so a busy server
// costs one small request a second, never one per event. "Freeze" stops the re-reads (the
// events are still counted) until it is released.

import * as api from '../api.js';
import { h, fill, keepRowFocus, badge, time } from '../dom.js';

const STATES = ['', 'idle', 'running', 'paused', 'completed', 'failed', 'cancelled'];
const PAGE = 50;
/** The least time between two re-reads of the page, in ms. */
const EVERY = 1000;

// The filters survive leaving the page and coming back (this tab only).
const saved = { state: '', search: '' };

export async function render(main, _params, ctx) {
  const st = {
    state: saved.state,
    search: saved.search,
    cursors: [null], // cursors[i] = the cursor of page i (null: the first page)
    page: 0,
    next: null,
    frozen: false,
    missed: 0, // events seen while frozen
    stale: false,
    timer: null,
    last: 0,
    loading: null,
  };

  const stateSel = h('select', { id: 'plans-state', 'aria-label': 'State',
    onchange: () => { st.state = stateSel.value; saved.state = st.state; restart(); } },
  STATES.map((s) => h('option', { value: s, selected: s === st.state }, s || 'all states')));
  const search = h('input', { id: 'plans-search', type: 'search', placeholder: 'Search by id',
    'aria-label': 'Search plans by id', value: st.search, maxlength: '128' });
  let typing = null;
  search.addEventListener('input', () => {
    clearTimeout(typing);
    typing = setTimeout(() => { st.search = search.value.trim(); saved.search = st.search; restart(); }, 250);
  });
  const freeze = h('button', { id: 'plans-freeze', type: 'button', 'aria-pressed': 'false',
    title: 'Stop updating this list (events are still counted)', onclick: () => setFrozen(!st.frozen) }, 'Freeze');
  const liveNote = h('span', { id: 'plans-live', class: 'muted', 'aria-live': 'polite' }, 'connecting…');
  const body = h('tbody', { id: 'plans-body' });
  const prev = h('button', { id: 'plans-prev', type: 'button', onclick: () => go(st.page - 1) }, '← Newer');
  const next = h('button', { id: 'plans-next', type: 'button', onclick: () => go(st.page + 1) }, 'Older →');
  const where = h('span', { id: 'plans-page', class: 'muted' });

  main.append(
    h('h1', {}, 'Plans'),
    h('div', { class: 'toolbar' }, stateSel, search, freeze, liveNote),
    h('table', { id: 'plans', class: 'plans' },
      h('thead', {}, h('tr', {}, h('th', {}, 'Plan'), h('th', {}, 'State'), h('th', {}, 'Progress'),
        h('th', { class: 'hide-narrow' }, 'Created'), h('th', { class: 'hide-narrow' }, 'Updated'))),
      body),
    h('div', { class: 'toolbar' }, prev, where, next));

  function setFrozen(on) {
    st.frozen = on;
    freeze.setAttribute('aria-pressed', String(on));
    freeze.classList.toggle('primary', on);
    fill(freeze, on ? 'Frozen — release' : 'Freeze');
    if (!on && (st.missed || st.stale)) { st.missed = 0; load(); }
    showLive();
  }

  function showLive(status) {
    if (status) st.status = status;
    const s = st.status;
    let text = s === 'live' ? 'live' : s === 'reconnecting' ? 'reconnecting…' : s === 'closed' ? 'not live' : 'connecting…';
    if (st.frozen) text = `frozen${st.missed ? ` · ${st.missed} event${st.missed === 1 ? '' : 's'} since` : ''}`;
    liveNote.textContent = text;
    liveNote.dataset.status = st.frozen ? 'frozen' : (s || '');
  }

  function restart() { st.cursors = [null]; st.page = 0; load(); }
  function go(page) {
    if (page < 0 || page >= st.cursors.length) return;
    st.page = page;
    load();
  }

  async function load() {
    st.stale = false;
    st.last = Date.now();
    const mine = {};
    st.loading = mine;
    let page;
    try {
      page = await api.get(`/v1/plans${api.query({ limit: PAGE, state: st.state, id_contains: st.search,
        cursor: st.cursors[st.page] })}`);
    } catch (e) { if (st.loading === mine) ctx.fail(e); return; }
    if (st.loading !== mine) return; // a newer load is on its way
    api.stats.refreshes += 1;
    st.next = page.next_cursor;
    st.cursors.length = st.page + 1;
    if (page.next_cursor) st.cursors.push(page.next_cursor);
    // A plan's link that had the focus (someone going down the list with Tab) keeps it.
    keepRowFocus(body, 'plan', () => fill(body, page.items.length ? page.items.map(row)
      : h('tr', {}, h('td', { colspan: '5', class: 'muted' },
        st.search || st.state ? 'No plan matches.' : 'No plans yet. Register one with the API or `cairn plans register`.'))));
    prev.disabled = st.page === 0;
    next.disabled = !page.next_cursor;
    const from = st.page * PAGE;
    fill(where, page.items.length ? `${from + 1}–${from + page.items.length}` : '');
  }

  function row(p) {
    const pr = p.progress;
    const done = pr.completed + pr.skipped;
    const bar = h('span', {});
    bar.style.width = `${pr.total ? Math.round((100 * done) / pr.total) : 0}%`;
    const counts = [`${done}/${pr.total}`];
    if (pr.running) counts.push(`${pr.running} running`);
    if (pr.failed) counts.push(`${pr.failed} failed`);
    return h('tr', { dataset: { plan: p.plan_id, state: p.state } },
      h('td', {}, h('a', { href: `#/plans/${encodeURIComponent(p.plan_id)}` }, p.plan_id),
        p.query ? h('div', { class: 'muted clip' }, p.query) : null),
      h('td', {}, badge(p.state), p.pause_reason ? h('div', { class: 'reason' }, p.pause_reason.replace('_', ' ')) : null),
      h('td', {}, h('span', { class: 'progress', role: 'progressbar', 'aria-valuemin': '0',
        'aria-valuemax': String(pr.total), 'aria-valuenow': String(done) }, bar),
      ' ', h('span', { class: 'counts' }, counts.join(' · '))),
      h('td', { class: 'hide-narrow' }, time(p.created_at)),
      h('td', { class: 'hide-narrow' }, time(p.updated_at)));
  }

  // Events only mark the page stale; a timer re-reads it at most every EVERY ms.
  function stale() {
    if (st.frozen) { st.missed += 1; showLive(); return; }
    st.stale = true;
    if (st.timer) return;
    const wait = Math.max(0, st.last + EVERY - Date.now());
    st.timer = setTimeout(() => { st.timer = null; if (st.stale && !st.frozen) load(); }, wait);
  }

  const sub = api.stream('/v1/events/stream', { onEvent: stale, onStatus: (s) => showLive(s) });
  await load();
  return () => { sub.close(); clearTimeout(st.timer); clearTimeout(typing); };
}
