// The Audit tab: the plan's interventions (`GET /v1/plans/{id}/interventions`, oldest first),
// applied and refused, each with its user, reason, time, outcome, the plan version it made and
// the fields it changed (before → after). New ones appear as the plan's stream reports them.

import * as api from '../../api.js';
import { h, reconcile, badge, time, json } from '../../dom.js';

const PAGE = 100;

export async function render(el, live, _params, ctx) {
  const base = `/v1/plans/${encodeURIComponent(live.id)}/interventions`;
  const body = h('tbody', { id: 'audit-body' });
  const more = h('button', { type: 'button', id: 'audit-more', hidden: true }, 'Later interventions');
  const summary = h('p', { class: 'muted', id: 'audit-summary' });
  el.append(summary,
    h('div', { class: 'table-scroll' }, h('table', { id: 'audit' },
      h('thead', {}, h('tr', {}, h('th', {}, 'When'), h('th', {}, 'User'), h('th', {}, 'Intervention'),
        h('th', {}, 'Outcome'), h('th', { class: 'hide-narrow' }, 'Version'), h('th', {}, 'Reason and changes'))),
      body)),
    more);

  const list = new api.Pager(base);
  // The rows drawn, by intervention: a record never changes once written, so reading the list
  // again keeps each row as it is (a diff opened for reading stays open).
  const rows = new Map();

  async function load(limit = PAGE) {
    try { await list.first(limit); draw(); } catch (e) { ctx.fail(e); }
  }

  /** Adds the interventions recorded since the last one shown, keeping every page the user
   *  loaded. A page's cursor is the log position of its last intervention, which the
   *  intervention's id names (`iv-<seq>`; this page ships with the server). */
  async function refresh() {
    const seq = (iv) => (/^iv-(\d+)$/.exec(iv.intervention_id || '') || [])[1] ?? null;
    try { if (await list.newer(PAGE, seq)) draw(); } catch (e) { ctx.fail(e); }
  }

  more.addEventListener('click', async () => {
    try { await list.more(PAGE); draw(); } catch (e) { ctx.fail(e); }
  });

  function draw() {
    const { items, cursor } = list;
    more.hidden = !cursor;
    const failed = items.filter((i) => i.status === 'failed').length;
    summary.textContent = items.length
      ? `${items.length} intervention${items.length === 1 ? '' : 's'}${cursor ? ' so far' : ''}` +
        (failed ? `, ${failed} refused` : '') + ', oldest first.'
      : 'No one has intervened in this plan.';
    const keys = items.map((iv, i) => `${iv.intervention_id || `#${i}`}|${iv.status}|${iv.created_at}`);
    reconcile(body, items.map((iv, i) => {
      let r = rows.get(keys[i]);
      if (!r) { r = row(iv); rows.set(keys[i], r); }
      return r;
    }));
    if (rows.size > items.length) {
      const kept = new Set(keys);
      for (const k of rows.keys()) if (!kept.has(k)) rows.delete(k);
    }
  }

  function row(iv) {
    const diff = iv.diff || [];
    return h('tr', { dataset: { iv: iv.intervention_id || '' }, class: `iv ${iv.status}` },
      h('td', {}, time(iv.created_at)),
      h('td', {}, iv.user),
      h('td', {}, h('code', {}, iv.type), iv.step_id ? ` ${iv.step_id}` : '',
        h('div', { class: 'muted mono' }, iv.intervention_id || '')),
      h('td', {}, badge(iv.status), iv.error ? h('div', { class: 'refusal' }, iv.error) : null),
      h('td', { class: 'hide-narrow num' }, iv.plan_version),
      h('td', {},
        iv.reason ? h('div', { class: 'iv-reason' }, `“${iv.reason}”`) : h('div', { class: 'muted' }, 'no reason given'),
        diff.length ? h('details', { class: 'iv-diff' },
          h('summary', {}, `${diff.length} change${diff.length === 1 ? '' : 's'}`),
          h('table', { class: 'diff' }, h('tbody', {}, diff.map((c) => h('tr', {},
            h('td', { class: 'mono' }, c.path),
            h('td', { class: 'before' }, h('pre', {}, json(c.before))),
            h('td', { class: 'after' }, h('pre', {}, json(c.after)))))))) : null,
        h('details', { class: 'iv-payload' }, h('summary', {}, 'Request'), h('pre', {}, json(iv.payload)))));
  }

  const off = live.on((_v, events) => {
    if (events.some((e) => e.event === 'intervention_applied' || e.event === 'intervention_failed')) {
      refresh();
    }
  });
  await load();
  return off;
}
