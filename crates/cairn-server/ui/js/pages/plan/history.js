// The History tab: every version of the plan's definition (`GET /v1/plans/{id}/versions`) with
// what made it (registration, an intervention, a restore), who and when; and the structural
// diff between two chosen versions (`GET /v1/plans/{id}/diff?from=&to=`), side by side: what
// each change was before | after. The defaults compare the latest version with the one before.
// New versions appear as the plan's stream reports interventions and restores.

import * as api from '../../api.js';
import { h, fill, time, json } from '../../dom.js';

export async function render(el, live, _params, ctx) {
  const base = `/v1/plans/${encodeURIComponent(live.id)}`;
  const body = h('tbody', { id: 'history-body' });
  const from = h('select', { id: 'history-from', 'aria-label': 'Compare from version' });
  const to = h('select', { id: 'history-to', 'aria-label': 'Compare to version' });
  const summary = h('p', { class: 'muted', id: 'history-summary' });
  const diffEl = h('section', { id: 'history-diff', class: 'card', 'aria-live': 'polite' });
  el.append(summary,
    h('div', { class: 'table-scroll' }, h('table', { id: 'history' },
      h('thead', {}, h('tr', {}, h('th', {}, 'Version'), h('th', {}, 'When'), h('th', {}, 'User'),
        h('th', {}, 'Cause'), h('th', { class: 'hide-narrow' }, 'Seq'))),
      body)),
    h('div', { class: 'toolbar' }, h('label', {}, 'Compare ', from), h('label', {}, ' with ', to)),
    diffEl);

  let versions = [];
  // The pair the user chose; null: the defaults (latest against the one before).
  let chosen = null;

  async function load() {
    try {
      versions = (await api.call('GET', `${base}/versions`)).versions;
      draw();
      await compare();
    } catch (e) { ctx.fail(e); }
  }

  function draw() {
    summary.textContent = `${versions.length} version${versions.length === 1 ? '' : 's'} of the definition, oldest first.`;
    fill(body, versions.map((v) => h('tr', { dataset: { version: String(v.version) } },
      h('td', { class: 'num' }, v.version),
      h('td', {}, time(v.at)),
      h('td', {}, v.user),
      h('td', {}, cause(v.cause)),
      h('td', { class: 'hide-narrow num' }, v.seq))));
    const n = versions.length;
    const [f, t] = chosen || [versions[Math.max(n - 2, 0)]?.version, versions[n - 1]?.version];
    for (const [sel, pick] of [[from, f], [to, t]]) {
      fill(sel, versions.map((v) => h('option', { value: String(v.version), selected: v.version === pick },
        `v${v.version} · ${v.cause.type}`)));
    }
  }

  function cause(c) {
    const bits = [];
    if (c.step_id) bits.push(`step ${c.step_id}`);
    if (c.source_plan_id) bits.push(`from plan ${c.source_plan_id}`);
    if (c.checkpoint_id) bits.push(c.checkpoint_id);
    if (c.intervention_id) bits.push(c.intervention_id);
    return [h('code', {}, c.type), bits.length ? ` ${bits.join(' · ')}` : '',
      c.reason ? h('div', { class: 'iv-reason' }, `“${c.reason}”`) : null];
  }

  // Answers can arrive out of order (changing both selectors asks twice): only the answer to
  // the latest question is drawn.
  let asked = 0;
  async function compare() {
    const mine = ++asked;
    if (!versions.length) { fill(diffEl); return; }
    try {
      const d = await api.call('GET', `${base}/diff${api.query({ from: from.value, to: to.value })}`);
      if (mine !== asked) return;
      fill(diffEl, h('h2', {}, `Version ${d.from} → ${d.to}`), changes(d.diff));
    } catch (e) { if (mine === asked) ctx.fail(e); }
  }

  for (const sel of [from, to]) {
    sel.addEventListener('change', () => { chosen = [Number(from.value), Number(to.value)]; compare(); });
  }

  const off = live.on((_v, events) => {
    if (events.some((e) => e.event === 'intervention_applied' || e.event === 'checkpoint_restored')) {
      load();
    }
  });
  await load();
  return off;
}

/** One row per change: what, then before | after (the templates page shows its diffs so too). */
export function changes(d) {
  const rows = [];
  const row = (sign, what, before, after) => rows.push(h('tr', { class: `change ${sign.name}` },
    h('td', { class: 'sign', 'aria-label': sign.name }, sign.mark),
    h('td', { class: 'mono' }, what),
    h('td', { class: 'before' }, before === undefined ? '' : h('pre', {}, json(before))),
    h('td', { class: 'after' }, after === undefined ? '' : h('pre', {}, json(after)))));
  const ADDED = { mark: '+', name: 'added' }, REMOVED = { mark: '-', name: 'removed' };
  const CHANGED = { mark: '~', name: 'changed' }, MOVED = { mark: '↕', name: 'moved' };
  const field = (what, c) => row(c.before === undefined ? ADDED : c.after === undefined ? REMOVED : CHANGED,
    what, c.before, c.after);
  for (const c of d.plan || []) field(c.path, c);
  for (const p of d.parameters || []) field(`parameter ${p.name}`, p);
  for (const r of d.removed || []) row(REMOVED, `step ${r.step_id} (was ${r.position + 1})`, r.definition, undefined);
  for (const a of d.added || []) row(ADDED, `step ${a.step_id} (at ${a.position + 1})`, undefined, a.definition);
  for (const m of d.moved || []) row(MOVED, `step ${m.step_id}`, `position ${m.from + 1}`, `position ${m.to + 1}`);
  for (const c of d.changed || []) for (const f of c.fields) field(`step ${c.step_id} ${f.path}`, f);
  if (!rows.length) return h('p', { class: 'muted', id: 'history-same' }, 'The two versions are the same.');
  return h('div', { class: 'table-scroll' }, h('table', { class: 'diff', id: 'history-changes' },
    h('thead', {}, h('tr', {}, h('th', {}, ''), h('th', {}, 'Change'), h('th', {}, 'Before'), h('th', {}, 'After'))),
    h('tbody', {}, rows)));
}
