// Cluster: the engine nodes sharing the server's store (`GET /v1/nodes`): each node's address,
// how long ago its latest heartbeat was, whether it counts as alive (a heartbeat within three
// lease periods), how many plans it owns, and which one is the node serving this page.
// A SQLite store has one node, this one. Refreshed every few seconds while open.

import * as api from '../api.js';
import { h, fill, time, badge } from '../dom.js';

const EVERY_MS = 3000;

/** `4 s ago`, `2 m 05 s ago`, from an RFC 3339 time. */
function ago(t, now) {
  const s = Math.max(0, Math.round((now - new Date(t).getTime()) / 1000));
  if (s < 60) return `${s} s ago`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m} m ${String(s % 60).padStart(2, '0')} s ago`;
  return `${Math.floor(m / 60)} h ${String(m % 60).padStart(2, '0')} m ago`;
}

export async function render(main, _params, ctx) {
  const body = h('tbody', { id: 'nodes-body' });
  const summary = h('p', { id: 'nodes-summary' });
  const updated = h('span', { class: 'muted', id: 'nodes-updated' });
  main.append(
    h('h1', {}, 'Cluster'),
    h('p', { class: 'toolbar' }, summary, updated),
    h('section', { class: 'card' },
      h('h2', {}, 'Nodes'),
      h('p', { class: 'muted' }, 'Every cairn node sharing this database. Each plan is driven by one node at a time; ' +
        'any node answers any request. A node that stops sending heartbeats is shown gone, ' +
        'and its plans are taken over by the others.'),
      h('div', { class: 'table-scroll' }, h('table', { id: 'nodes' },
        h('thead', {}, h('tr', {}, h('th', {}, 'Node'), h('th', {}, 'State'), h('th', {}, 'Heartbeat'),
          h('th', { class: 'num' }, 'Plans owned'), h('th', {}, 'Address'), h('th', {}, 'Started'))),
        body))));

  let stopped = false;
  let timer = null;

  function draw(nodes) {
    const now = Date.now();
    fill(body, nodes.length ? nodes.map((n) => h('tr', { dataset: { node: n.node_id, self: String(n.self) }, class: n.self ? 'self' : null },
      h('td', { class: 'mono' }, n.node_id, n.self ? h('span', { class: 'tag this-node' }, 'this node') : null),
      h('td', {}, badge(n.alive ? 'alive' : 'gone')),
      h('td', { title: time(n.heartbeat_at) }, ago(n.heartbeat_at, now)),
      h('td', { class: 'num' }, String(n.plans_owned)),
      h('td', { class: 'mono' }, n.address || h('span', { class: 'muted' }, 'none')),
      h('td', {}, time(n.started_at))))
      : h('tr', {}, h('td', { colspan: 6, class: 'muted' }, 'No node has sent a heartbeat yet.')));
    const alive = nodes.filter((n) => n.alive).length;
    const plans = nodes.reduce((sum, n) => sum + n.plans_owned, 0);
    fill(summary, `${alive} of ${nodes.length} node${nodes.length === 1 ? '' : 's'} alive · ` +
      `${plans} plan${plans === 1 ? '' : 's'} owned`);
  }

  async function refresh() {
    try {
      const list = await api.get('/v1/nodes');
      if (stopped) return;
      draw(list.nodes);
      updated.textContent = ` · updated ${time(new Date().toISOString())}`;
    } catch (e) {
      if (!stopped) ctx.fail(e);
    }
    if (!stopped) timer = setTimeout(refresh, EVERY_MS);
  }

  await refresh();
  return () => { stopped = true; clearTimeout(timer); };
}
