// A plan: header (state, progress, controls) and tabs. Each tab is a module
// `./plan/<tab>.js` exporting `render(el, live, params, ctx)` (may answer a cleanup function);
// `live` is the LivePlan (live.js): `live.view`, `live.on(fn)`, `live.refresh()`.
//
// Deep links: #/plans/{id} (steps tab), #/plans/{id}/steps/{step},
// #/plans/{id}/steps/{step}/attempts/{n}, #/plans/{id}/{tab}.

import { h, fill, badge } from '../dom.js';
import { LivePlan } from '../live.js';

export const TABS = [
  ['steps', 'Steps'],
  ['order', 'Order'],
  ['checkpoints', 'Checkpoints'],
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
    fill(header,
      h('h1', {}, v.plan_id, ' ', badge(v.state)),
      h('p', { class: 'muted' }, v.query),
      h('p', {}, `${done}/${v.total_steps} steps done · version ${v.version}`,
        v.pause_reason ? ` · paused: ${v.pause_reason}` : '',
        v.failure ? ` · ${v.failure}` : ''),
      h('div', { id: 'plan-controls', class: 'toolbar' }));
    if (controls) controls(header.querySelector('#plan-controls'), live, ctx);
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
