// A plan: header (state, progress, controls) and tabs. Each tab is a module
// `./plan/<tab>.js` exporting `render(el, live, params, ctx)` (may answer a cleanup function);
// `live` is the LivePlan (live.js): `live.view`, `live.on(fn)`, `live.refresh()`.
//
// Deep links: #/plans/{id} (steps tab), #/plans/{id}/steps/{step},
// #/plans/{id}/steps/{step}/attempts/{n}, #/plans/{id}/{tab}.

import { h, fill, badge, time } from '../dom.js';
import { LivePlan } from '../live.js';

export const TABS = [
  ['steps', 'Steps'],
  ['order', 'Order'],
  ['checkpoints', 'Checkpoints'],
  ['history', 'History'],
  ['audit', 'Audit'],
  ['events', 'Events'],
];

export async function render(main, params, ctx) {
  let live;
  try {
    live = await LivePlan.open(params.plan);
  } catch (e) {
    ctx.fail(e);
    main.append(h('p', {}, h('a', { href: '#/plans' }, '← Plans')));
    return undefined;
  }
  const tab = params.tab || 'steps';
  const enc = encodeURIComponent(live.id);
  const header = h('div', { id: 'plan-header' });
  const info = h('div', {});
  // Kept across refreshes (controls.js redraws it only when what it shows changed), so a
  // control does not vanish under the pointer or the keyboard focus.
  const controlsEl = h('div', { id: 'plan-controls', class: 'toolbar' });
  // The rollback's progress, when the plan has one: its status, then each compensation in the
  // order it runs (done first, then pending) with its own status, attempts and error.
  const rollbackEl = h('section', { id: 'plan-rollback-panel', class: 'rollback', 'aria-label': 'Rollback' });
  header.append(info, controlsEl, rollbackEl);
  const conn = h('span', { id: 'plan-conn', class: 'muted' });
  const tabs = h('nav', { class: 'toolbar tabs', 'aria-label': 'Plan sections' },
    TABS.map(([key, label]) => h('a', {
      href: `#/plans/${enc}${key === 'steps' ? '' : `/${key}`}`,
      class: key === tab ? 'current' : '', 'aria-current': key === tab ? 'page' : null,
      dataset: { tab: key } }, label)));
  const body = h('section', { id: 'plan-tab' });
  main.append(h('p', {}, h('a', { href: '#/plans' }, '← Plans')), header, conn, tabs, body);

  const drawHeader = (v) => {
    const done = v.completed_steps.length + v.skipped_steps.length;
    const bar = h('span', {});
    bar.style.width = `${v.total_steps ? Math.round((100 * done) / v.total_steps) : 0}%`;
    const extra = [];
    if (v.running_steps.length) extra.push(`${v.running_steps.length} running`);
    if ((v.queued_steps || []).length) extra.push(`${v.queued_steps.length} waiting for a worker`);
    if (v.failed_steps.length) extra.push(`${v.failed_steps.length} failed`);
    fill(info,
      h('h1', {}, v.plan_id, ' ', badge(v.state)),
      v.deleted ? h('p', { class: 'flash error', role: 'alert' }, 'This plan has been deleted; what is shown is its last state.') : null,
      v.query ? h('p', { class: 'muted' }, v.query) : null,
      h('p', { id: 'plan-progress' },
        h('span', { class: 'progress', role: 'progressbar', 'aria-valuemin': '0',
          'aria-valuemax': String(v.total_steps), 'aria-valuenow': String(done) }, bar), ' ',
        `${done.toLocaleString()}/${v.total_steps.toLocaleString()} steps done`,
        extra.length ? ` · ${extra.join(' · ')}` : '',
        ` · version ${v.version}`,
        v.pause_reason ? ` · paused: ${v.pause_reason.replace('_', ' ')}` : '',
        v.failure ? ` · ${v.failure}` : '',
        h('span', { class: 'muted hide-narrow' }, ` · created ${time(v.created_at)} · updated ${time(v.updated_at)}`)));
    fill(rollbackEl, rollbackPanel(v));
    rollbackEl.hidden = !v.rollback;
    if (controls) controls(controlsEl, live, ctx);
  };
  // The controls (start, pause, resume, cancel) come from ./plan/controls.js when present.
  let controls = null;
  try { controls = (await import('./plan/controls.js')).render; } catch { controls = null; }
  drawHeader(live.view);
  const offView = live.on((v) => drawHeader(v));
  const offStatus = live.onStatus((s) => {
    conn.textContent = s === 'live' ? '' : s === 'reconnecting' ? 'Connection lost; reconnecting…' : '';
  });

  let tabCleanup = null;
  try {
    const mod = await import(`./plan/${tab}.js`);
    tabCleanup = await mod.render(body, live, params, ctx);
  } catch (e) {
    fill(body, h('p', { class: 'muted' }, `This tab is not available: ${e.message || e}`));
  }
  return () => {
    offView(); offStatus();
    if (typeof tabCleanup === 'function') tabCleanup();
    live.close();
  };
}

/** The rollback panel of the plan `v` (nothing when it has no rollback). */
export function rollbackPanel(v) {
  const r = v.rollback;
  if (!r) return null;
  const byId = new Map(v.steps.map((s) => [s.step_id, s]));
  const rows = [...r.done, ...r.pending].map((id, i) => {
    const c = (byId.get(id) || {}).compensation || { status: 'pending', attempts: 0 };
    return h('tr', { dataset: { step: id, status: c.status } },
      h('td', {}, String(i + 1)),
      h('td', {}, h('a', { href: `#/plans/${encodeURIComponent(v.plan_id)}/steps/${encodeURIComponent(id)}` }, id)),
      h('td', {}, badge(c.status)),
      h('td', {}, String(c.attempts)),
      h('td', { class: 'muted' }, c.error || ''));
  });
  return [
    h('h2', {}, 'Rollback ', badge(r.status)),
    h('p', { id: 'plan-rollback-summary' },
      `${r.done.length} done · ${r.pending.length} pending · the plan ends ${r.then}`,
      r.status === 'failed' && r.pending.length
        ? ` · stopped at ${r.pending[0]}: retry or skip its compensation (Steps tab), or Roll back again to try it again`
        : ''),
    rows.length
      ? h('table', { class: 'compact' },
        h('thead', {}, h('tr', {}, h('th', {}, '#'), h('th', {}, 'Compensates'), h('th', {}, 'Status'),
          h('th', {}, 'Attempts'), h('th', {}, 'Error'))),
        h('tbody', {}, rows))
      : h('p', { class: 'muted' }, 'Nothing to compensate.'),
  ];
}
