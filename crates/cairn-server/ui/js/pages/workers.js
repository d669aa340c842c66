// Workers and health: the remote workers the server has seen (`GET /v1/workers`: their agent
// types, when they last polled, the tasks they hold), the tasks waiting for a worker, and links
// to /metrics, /openapi.json and /docs.
//
// What waits is shown twice: counted by agent type across every plan (the `queued` of
// `GET /v1/workers`, from the server's task queue), and step by step, read from the running
// plans (`GET /v1/plans?state=running`, then each plan's `steps` whose status is `queued`, with
// `waiting_for`). At most MAX_PLANS running plans are read per refresh (the page says when
// there are more). Refreshed every few seconds while open.

import * as api from '../api.js';
import { h, fill, time } from '../dom.js';

const MAX_PLANS = 25;
const EVERY_MS = 5000;

export async function render(main, _params, ctx) {
  const workers = h('tbody', { id: 'workers-body' });
  const queued = h('tbody', { id: 'queued-body' });
  const byType = h('tbody', { id: 'queued-types-body' });
  const note = h('p', { class: 'muted', id: 'queued-note' });
  const health = h('span', { id: 'health', class: 'muted' });
  const updated = h('span', { class: 'muted', id: 'workers-updated' });
  main.append(
    h('h1', {}, 'Workers'),
    h('p', { class: 'toolbar' },
      h('a', { href: '/metrics', target: '_blank', rel: 'noopener' }, 'Metrics (/metrics)'),
      h('a', { href: '/docs' }, 'API reference (/docs)'),
      h('a', { href: '/openapi.json', target: '_blank', rel: 'noopener' }, 'OpenAPI document'),
      health, updated),
    h('section', { class: 'card' },
      h('h2', {}, 'Workers seen'),
      h('p', { class: 'muted' }, 'Remote workers polling this server (cairn worker, or any client of /v1/tasks), ' +
        'since it started. Agent types with a local executor run in the server and need none.'),
      h('div', { class: 'table-scroll' }, h('table', { id: 'workers' },
        h('thead', {}, h('tr', {}, h('th', {}, 'Worker'), h('th', {}, 'Agent types'),
          h('th', {}, 'Last poll'), h('th', {}, 'Tasks held'))),
        workers))),
    h('section', { class: 'card' },
      h('h2', {}, 'Waiting for a worker'),
      h('div', { class: 'table-scroll' }, h('table', { id: 'queued-types' },
        h('thead', {}, h('tr', {}, h('th', {}, 'Agent type'), h('th', {}, 'Tasks waiting'),
          h('th', {}, 'Workers polling for it'))),
        byType)),
      h('h3', {}, 'Steps waiting'),
      h('div', { class: 'table-scroll' }, h('table', { id: 'queued' },
        h('thead', {}, h('tr', {}, h('th', {}, 'Plan'), h('th', {}, 'Step'), h('th', {}, 'Agent type'),
          h('th', {}, 'Waiting for'))),
        queued)),
      note));

  let stopped = false;
  let timer = null;

  async function refresh() {
    try {
      const [w, plans, ready] = await Promise.all([
        api.get('/v1/workers'),
        api.get(`/v1/plans${api.query({ state: 'running', limit: MAX_PLANS })}`),
        fetch('/readyz', { cache: 'no-store' }).then((r) => r.ok).catch(() => false),
      ]);
      if (stopped) return;
      health.textContent = ready ? '· server ready' : '· server not ready (see /readyz)';
      drawWorkers(w.items);
      drawTypes(w.queued || [], w.items);
      const views = await Promise.all(plans.items.map((p) =>
        api.get(`/v1/plans/${encodeURIComponent(p.plan_id)}`).catch(() => null)));
      if (stopped) return;
      drawQueued(views.filter(Boolean), w.items, plans.next_cursor);
      updated.textContent = `· updated ${time(new Date().toISOString())}`;
    } catch (e) {
      if (!stopped) ctx.fail(e);
    }
    if (!stopped) timer = setTimeout(refresh, EVERY_MS);
  }

  function drawWorkers(items) {
    fill(workers, items.length ? items.map((w) => h('tr', { dataset: { worker: w.worker_id } },
      h('td', { class: 'mono' }, w.worker_id),
      h('td', {}, w.agent_types.map((t) => h('code', { class: 'tag' }, t))),
      h('td', {}, time(w.last_poll_at)),
      h('td', {}, w.tasks.length ? w.tasks.map((t) => h('div', { class: 'mono' }, t)) : h('span', { class: 'muted' }, 'none'))))
      : h('tr', {}, h('td', { colspan: 4, class: 'muted' }, 'No worker has polled this server since it started.')));
  }

  function drawTypes(queuedTypes, ws) {
    fill(byType, queuedTypes.length ? queuedTypes.map((q) => {
      const n = ws.filter((w) => w.agent_types.includes(q.agent_type)).length;
      return h('tr', { dataset: { type: q.agent_type } },
        h('td', {}, h('code', {}, q.agent_type)), h('td', { class: 'num' }, q.tasks),
        h('td', {}, n ? String(n) : h('span', { class: 'refusal' }, 'none')));
    }) : h('tr', {}, h('td', { colspan: 3, class: 'muted' }, 'No task is waiting for a worker.')));
  }

  function drawQueued(views, ws, more) {
    const rows = [];
    for (const v of views) {
      for (const s of v.steps) {
        if (s.status !== 'queued') continue;
        const served = ws.some((w) => w.agent_types.includes(s.agent_type));
        rows.push(h('tr', { dataset: { plan: v.plan_id, step: s.step_id } },
          h('td', {}, h('a', { href: `#/plans/${encodeURIComponent(v.plan_id)}` }, v.plan_id)),
          h('td', {}, h('a', { href: `#/plans/${encodeURIComponent(v.plan_id)}/steps/${encodeURIComponent(s.step_id)}` }, s.step_id)),
          h('td', {}, h('code', {}, s.agent_type)),
          h('td', {}, s.waiting_for || 'a worker', served ? '' : h('div', { class: 'refusal' },
            `no worker polls for ${s.agent_type}: start one with cairn worker --agent-type ${s.agent_type}`))));
      }
    }
    fill(queued, rows.length ? rows
      : h('tr', {}, h('td', { colspan: 4, class: 'muted' }, 'No step is waiting for a worker.')));
    note.textContent = more
      ? `Read from the ${views.length} most recently listed running plans; more plans are running.`
      : `Read from the ${views.length} running plan${views.length === 1 ? '' : 's'}.`;
  }

  await refresh();
  return () => { stopped = true; clearTimeout(timer); };
}
