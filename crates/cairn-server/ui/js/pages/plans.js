// The plans list: newest first, one page at a time.

import * as api from '../api.js';
import { h, badge, time } from '../dom.js';

export async function render(main, _params, ctx) {
  const body = h('tbody', { id: 'plans-body' });
  main.append(
    h('h1', {}, 'Plans'),
    h('table', { id: 'plans' },
      h('thead', {}, h('tr', {}, h('th', {}, 'Plan'), h('th', {}, 'State'), h('th', {}, 'Progress'),
        h('th', { class: 'hide-narrow' }, 'Created'), h('th', { class: 'hide-narrow' }, 'Updated'))),
      body));
  try {
    const page = await api.get(`/v1/plans${api.query({ limit: 50 })}`);
    for (const p of page.items) {
      const pr = p.progress;
      body.append(h('tr', { dataset: { plan: p.plan_id } },
        h('td', {}, h('a', { href: `#/plans/${encodeURIComponent(p.plan_id)}` }, p.plan_id),
          h('div', { class: 'muted' }, p.query)),
        h('td', {}, badge(p.state)),
        h('td', {}, `${pr.completed + pr.skipped}/${pr.total}`),
        h('td', { class: 'hide-narrow' }, time(p.created_at)),
        h('td', { class: 'hide-narrow' }, time(p.updated_at))));
    }
  } catch (e) { ctx.fail(e); }
}
