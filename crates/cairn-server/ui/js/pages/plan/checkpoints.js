// The Checkpoints tab: the plan's checkpoints on a timeline (by time, oldest left) and in a
// table; the state at one (`GET …/checkpoints/{cid}`: steps done, failed and skipped, the
// outputs then known, the definition then); create one; restore the plan to one (confirmed,
// with a reason); fork a new plan from one (its id links to it); export the plan's snapshot or
// the checkpoint as a JSON file. Downloads are fetched with the token in the header and handed
// to the browser as a Blob URL, so no token goes into a link.

import * as api from '../../api.js';
import { h, fill, keepRowFocus, svg, badge, time, json } from '../../dom.js';

const PAGE = 1000;

export async function render(el, live, _params, ctx) {
  const id = live.id;
  const base = `/v1/plans/${encodeURIComponent(id)}/checkpoints`;
  const may = ctx.can('operator');
  const label = h('input', { id: 'cp-label', type: 'text', placeholder: 'label (optional)',
    'aria-label': 'Label of the new checkpoint', disabled: !may.ok });
  const create = h('button', { type: 'button', id: 'cp-create', disabled: !may.ok,
    title: may.ok ? null : may.why }, 'Create checkpoint');
  const exportPlan = h('button', { type: 'button', id: 'cp-export-plan' }, 'Export snapshot');
  const timeline = h('div', { id: 'cp-timeline', class: 'cp-timeline' });
  const body = h('tbody', { id: 'cp-body' });
  const more = h('button', { type: 'button', id: 'cp-more', hidden: true }, 'Later checkpoints');
  const detail = h('section', { id: 'cp-detail', class: 'card', 'aria-live': 'polite' },
    h('p', { class: 'muted' }, 'Select a checkpoint to see the state at it.'));
  el.append(
    h('div', { class: 'toolbar' }, label, create, exportPlan,
      may.ok ? null : h('span', { class: 'reason' }, `Creating, restoring and forking ${may.why}.`)),
    timeline,
    h('div', { class: 'cp-layout' },
      h('div', { class: 'cp-list' },
        h('table', { id: 'cp-table' },
          h('thead', {}, h('tr', {}, h('th', {}, 'Checkpoint'), h('th', {}, 'Trigger'),
            h('th', {}, 'Seq'), h('th', {}, 'Taken'))),
          body),
        more),
      detail));

  const list = new api.Pager(base);
  let selected = null;

  async function load() {
    try { await list.first(PAGE); draw(); } catch (e) { ctx.fail(e); }
  }

  /** Adds the checkpoints taken since the last one shown (the list is oldest first: new ones
   *  come last), keeping every page the user loaded. While later pages are still unread, the
   *  new ones are among them ("Later checkpoints"). A checkpoint is never taken back (a restore
   *  adds one), so nothing shown goes stale. */
  async function refresh() {
    // A page's cursor is the seq of its last checkpoint (this page ships with the server).
    try { if (await list.newer(PAGE, (c) => String(c.seq))) draw(); } catch (e) { ctx.fail(e); }
  }

  more.addEventListener('click', async () => {
    try { await list.more(PAGE); draw(); } catch (e) { ctx.fail(e); }
  });

  function draw() {
    const { items } = list;
    more.hidden = !list.cursor;
    // The checkpoint whose button has the focus keeps it.
    keepRowFocus(body, 'cp', () => fill(body, items.length ? items.map((c) => h('tr', {
      class: c.checkpoint_id === selected ? 'selected' : '', dataset: { cp: c.checkpoint_id } },
    h('td', {}, h('button', { type: 'button', class: 'link', onclick: () => select(c.checkpoint_id) },
      c.checkpoint_id), c.label ? h('div', { class: 'muted' }, c.label) : null),
    h('td', {}, c.trigger), h('td', { class: 'num' }, c.seq), h('td', {}, time(c.created_at))))
      : h('tr', {}, h('td', { colspan: 4, class: 'muted' }, 'No checkpoints yet.'))));
    drawTimeline();
  }

  /** Dots on a time axis; a run of checkpoints too close to tell apart is spread by order. */
  function drawTimeline() {
    const { items } = list;
    if (!items.length) { fill(timeline); return; }
    const W = 1000, H = 56, pad = 14;
    const ts = items.map((c) => new Date(c.created_at).getTime());
    const t0 = Math.min(...ts), t1 = Math.max(...ts);
    const span = Math.max(t1 - t0, 1);
    const x = (i) => pad + (W - 2 * pad) * (items.length === 1 ? 0.5
      : 0.5 * ((ts[i] - t0) / span) + 0.5 * (i / (items.length - 1)));
    const dots = items.map((c, i) => svg('g', {
      class: `cp-dot ${c.trigger}${c.checkpoint_id === selected ? ' selected' : ''}`,
      tabindex: items.length <= 200 ? 0 : null, role: 'button',
      'aria-label': `${c.checkpoint_id}, ${c.trigger}, ${time(c.created_at)}`,
      dataset: { cp: c.checkpoint_id },
      onclick: () => select(c.checkpoint_id),
      onkeydown: (e) => { if (e.key === 'Enter' || e.key === ' ') { e.preventDefault(); select(c.checkpoint_id); } } },
    svg('title', {}, `${c.checkpoint_id} · ${c.trigger}${c.label ? ` · ${c.label}` : ''} · ${time(c.created_at)}`),
    svg('circle', { cx: x(i), cy: H / 2, r: c.checkpoint_id === selected ? 8 : 6 })));
    fill(timeline, svg('svg', { viewBox: `0 0 ${W} ${H}`, preserveAspectRatio: 'none',
      class: 'cp-svg', role: 'group', 'aria-label': 'Checkpoints by time' },
    svg('line', { x1: pad, x2: W - pad, y1: H / 2, y2: H / 2, class: 'cp-axis' }), dots),
    h('div', { class: 'cp-axis-labels muted' }, h('span', {}, time(items[0].created_at)), h('span', {}, time(items[items.length - 1].created_at))));
  }

  async function select(cid) {
    selected = cid;
    draw();
    fill(detail, h('p', { class: 'muted' }, `Loading ${cid}…`));
    let cp;
    try {
      cp = await api.get(`${base}/${encodeURIComponent(cid)}`);
    } catch (e) { ctx.fail(e); fill(detail, h('p', { class: 'muted' }, 'This checkpoint could not be read.')); return; }
    if (selected !== cid) return;
    const steps = (cp.plan && cp.plan.steps) || [];
    const done = new Set(cp.completed_steps), failed = new Set(cp.failed_steps), skipped = new Set(cp.skipped_steps);
    const stateOf = (s) => (done.has(s) ? 'completed' : failed.has(s) ? 'failed' : skipped.has(s) ? 'skipped' : 'pending');
    const restore = h('button', { type: 'button', id: 'cp-restore', class: 'danger', disabled: !may.ok,
      title: may.ok ? null : may.why, onclick: () => restoreDialog(cp) }, 'Restore the plan to this');
    const fork = h('button', { type: 'button', id: 'cp-fork', disabled: !may.ok,
      title: may.ok ? null : may.why, onclick: () => forkDialog(cp) }, 'Fork a new plan from this');
    const exp = h('button', { type: 'button', id: 'cp-export', onclick: () => download(
      `${id}-${cid}.json`, cp) }, 'Export this checkpoint');
    fill(detail,
      h('h2', {}, cp.checkpoint_id, ' ', h('span', { class: 'muted' }, cp.trigger)),
      h('p', {}, `Taken ${time(cp.created_at)} at event ${cp.seq}`, cp.label ? ` · ${cp.label}` : ''),
      h('div', { class: 'toolbar' }, restore, fork, exp,
        may.ok ? null : h('span', { class: 'reason' }, may.why)),
      h('p', {}, `${cp.completed_steps.length} completed · ${cp.failed_steps.length} failed · ` +
        `${cp.skipped_steps.length} skipped of ${steps.length} steps`),
      h('details', { open: steps.length <= 50 }, h('summary', {}, 'Steps at this checkpoint'),
        h('ul', { class: 'cp-steps' }, steps.slice(0, 500).map((s) => h('li', {}, badge(stateOf(s.step_id)), ' ', s.step_id))),
        steps.length > 500 ? h('p', { class: 'muted' }, `… and ${steps.length - 500} more (export to see them all)`) : null),
      h('details', {}, h('summary', {}, 'Outputs known at this checkpoint'), h('pre', {}, json(cp.context))));
  }

  function restoreDialog(cp) {
    dialog({
      title: `Restore ${id} to ${cp.checkpoint_id}?`,
      text: 'The plan goes back to the state at this checkpoint: steps after it will run again. ' +
        'The log keeps everything that happened; the restore is recorded with your reason.',
      confirm: 'Restore', danger: true, extra: null,
      async run(reason) {
        const v = await api.post(`${base}/${encodeURIComponent(cp.checkpoint_id)}/restore`, { reason });
        ctx.flash(`Restored ${id} to ${cp.checkpoint_id}: ${v.state}, version ${v.version}`);
        live.refresh();
        load();
      },
    });
  }

  function forkDialog(cp) {
    const newId = h('input', { id: 'fork-id', type: 'text', placeholder: 'new plan id (optional: one is made up)' });
    dialog({
      title: `Fork a new plan from ${cp.checkpoint_id}`,
      text: `A new plan starts from the state at this checkpoint; ${id} is not changed.`,
      confirm: 'Fork', extra: h('label', {}, 'New plan id ', newId),
      async run(reason) {
        const v = await api.post(`${base}/${encodeURIComponent(cp.checkpoint_id)}/fork`,
          { new_plan_id: newId.value.trim() || null, reason });
        fill(detail.querySelector('.fork-result') || detail.appendChild(h('p', { class: 'fork-result' })),
          'Forked: ', h('a', { href: `#/plans/${encodeURIComponent(v.plan_id)}`, id: 'fork-link' }, v.plan_id));
        ctx.flash(`Forked ${v.plan_id} from ${cp.checkpoint_id}`);
      },
    });
  }

  /** A modal <dialog> (Escape closes it) with a reason; `run(reason)` errors stay in it. */
  function dialog({ title, text, confirm, danger, extra, run }) {
    const reason = h('textarea', { id: 'dialog-reason', rows: 2, placeholder: 'Reason (recorded)' });
    const err = h('p', { class: 'refusal', role: 'alert', hidden: true });
    const ok = h('button', { type: 'submit', id: 'dialog-confirm', class: danger ? 'danger' : 'primary' }, confirm);
    const d = h('dialog', { class: 'dialog', 'aria-label': title },
      h('form', { method: 'dialog', onsubmit: async (e) => {
        e.preventDefault();
        ok.disabled = true;
        err.hidden = true;
        try {
          await run(reason.value.trim() || null);
          d.close();
        } catch (ex) {
          err.textContent = ex instanceof api.ApiError ? `Refused: ${ex.message} (${ex.code})` : String(ex);
          err.hidden = false;
          ok.disabled = false;
        }
      } },
      h('h2', {}, title), h('p', {}, text), extra, h('label', { for: 'dialog-reason' }, 'Reason'), reason, err,
      h('div', { class: 'toolbar' }, ok,
        h('button', { type: 'button', id: 'dialog-cancel', onclick: () => d.close() }, 'Cancel'))));
    d.addEventListener('close', () => d.remove());
    document.body.append(d);
    d.showModal();
    reason.focus();
  }

  create.addEventListener('click', async () => {
    create.disabled = true;
    try {
      const c = await api.post(base, { label: label.value.trim() || null });
      label.value = '';
      ctx.flash(`Checkpoint ${c.checkpoint_id} taken`);
      await refresh();
      select(c.checkpoint_id);
    } catch (e) { ctx.fail(e); } finally { create.disabled = false; }
  });

  exportPlan.addEventListener('click', async () => {
    try {
      download(`${id}-snapshot.json`, await api.get(`/v1/plans/${encodeURIComponent(id)}/snapshot`));
    } catch (e) { ctx.fail(e); }
  });

  // A running plan takes a checkpoint per step: read the list again at most every 2 s.
  let again = null;
  const off = live.on((_v, events) => {
    if (again || !events.some((e) => e.event === 'checkpoint_created' || e.event === 'checkpoint_restored'
      || (e.data && e.data.checkpoint))) return;
    again = setTimeout(() => { again = null; refresh(); }, 2000);
  });
  await load();
  return () => {
    off();
    clearTimeout(again);
    for (const d of document.querySelectorAll('dialog.dialog')) d.remove();
  };
}

/** Saves `value` as a JSON file through a Blob URL (revoked once the click has been handled). */
function download(name, value) {
  const url = URL.createObjectURL(new Blob([JSON.stringify(value, null, 2)], { type: 'application/json' }));
  const a = h('a', { href: url, download: name, hidden: true });
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10_000);
}
