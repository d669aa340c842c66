// The Order tab: the steps still to run (pending: the only ones `reorder_steps` may move) as a
// list reordered by drag and drop, or from the keyboard (Alt+ArrowUp/Down on a focused step),
// saved through the intervention dialog (dry-run diff, reason, expected_version). The steps
// that started or ended are listed apart: they keep their place. Selecting any step shows the
// interventions on it.
//
// The user's draft order survives live refreshes: steps that start meanwhile leave it, new
// pending steps join it at the end, so what Save sends is always a permutation of the pending
// steps as the server has them.

import { h, fill, badge } from '../../dom.js';
import { intervene, stepActions, unavailable } from '../../interventions.js';

/** Steps shown per window of a list (a 10,000-step plan stays light); "Show more" adds more. */
const WINDOW = 300;

const pendingOf = (view) => view.steps.filter((s) => s.status === 'pending').map((s) => s.step_id);

/** `draft` kept where it still applies: its pending steps in its order, then the new ones. */
export function reconcile(draft, pending) {
  const now = new Set(pending);
  const kept = draft.filter((id) => now.has(id));
  const have = new Set(kept);
  return kept.concat(pending.filter((id) => !have.has(id)));
}

const same = (a, b) => a.length === b.length && a.every((x, i) => x === b[i]);

export function render(el, live, params, ctx) {
  let draft = null; // the user's order of the pending steps, or null while untouched
  let selected = params.step || null;
  let shown = WINDOW;
  let othersShown = WINDOW;
  let dragging = null;
  let drawn = '';
  let actionsDrawn = '';
  let note = '';

  const list = h('ol', { id: 'order-list', class: 'order-list', 'aria-describedby': 'order-help' });
  const others = h('ul', { id: 'order-others', class: 'order-list fixed' });
  const save = h('button', { id: 'order-save', type: 'button', class: 'primary', onclick: () => saveOrder() }, 'Save order…');
  const reset = h('button', { id: 'order-reset', type: 'button', onclick: () => { draft = null; note = ''; draw(true); } }, 'Reset');
  const why = h('span', { id: 'order-why', class: 'reason' });
  const noteEl = h('p', { id: 'order-note', class: 'reason', role: 'status' });
  const head = h('p', { class: 'muted', id: 'order-count' });
  const actions = h('div', { id: 'order-actions' });
  const othersHead = h('h2', {}, 'Started or ended (they keep their place)');
  const othersCard = h('section', { class: 'card', id: 'order-fixed' }, othersHead, others);

  fill(el, h('div', { class: 'grid2 order-grid' },
    h('div', {},
      h('section', { class: 'card' },
        h('h2', {}, 'Steps still to run'),
        h('p', { class: 'muted', id: 'order-help' },
          'Drag a step to its new place, or focus it and press Alt+↑ / Alt+↓. Save shows what changes before anything is applied.'),
        head, h('div', { class: 'toolbar' }, save, reset, why), noteEl, list),
      othersCard),
    h('section', { class: 'card order-side', 'aria-label': 'Selected step' }, actions)));

  function order() { return draft || pendingOf(live.view); }

  function draw(force = false) {
    const view = live.view;
    const pending = pendingOf(view);
    if (draft) {
      const next = reconcile(draft, pending);
      if (!same(next, draft)) note = 'The plan changed while you were editing: steps that started left your order, new pending steps joined it at the end.';
      draft = same(next, pending) ? null : next;
    }
    const ids = order();
    const byId = new Map(view.steps.map((s) => [s.step_id, s]));
    const rest = view.steps.filter((s) => s.status !== 'pending');
    // Rebuilding the lists while a drag is under way would drop it: the next refresh will.
    const key = `${ids.join('\n')}|${rest.map((s) => `${s.step_id}:${s.status}`).join('\n')}|${selected}|${shown}|${othersShown}`;
    if ((force || key !== drawn) && !dragging) {
      drawn = key;
      const focused = document.activeElement && document.activeElement.closest && document.activeElement.closest('#order-list li');
      const refocus = focused ? focused.dataset.step : null;
      fill(list, ids.slice(0, shown).map((id, i) => item(byId.get(id) || { step_id: id, status: 'pending' }, i, ids.length)));
      if (ids.length > shown) {
        list.append(h('li', { class: 'more' }, h('button', { type: 'button', onclick: () => { shown += WINDOW; draw(true); } },
          `Show ${Math.min(WINDOW, ids.length - shown)} more of ${ids.length - shown}`)));
      }
      if (!ids.length) list.append(h('li', { class: 'muted' }, 'No step is pending: nothing can be reordered.'));
      fill(others, rest.slice(0, othersShown).map((s) => fixed(s)));
      if (rest.length > othersShown) {
        others.append(h('li', { class: 'more' }, h('button', { type: 'button', onclick: () => { othersShown += WINDOW; draw(true); } },
          `Show ${Math.min(WINDOW, rest.length - othersShown)} more of ${rest.length - othersShown}`)));
      }
      othersCard.hidden = !rest.length;
      if (refocus) { const again = list.querySelector(`li[data-step="${CSS.escape(refocus)}"]`); if (again) again.focus(); }
    }
    head.textContent = `${ids.length} pending step${ids.length === 1 ? '' : 's'}${draft ? ' · order changed, not saved' : ''}`;
    noteEl.textContent = note;
    noteEl.hidden = !note;
    const role = ctx.can('operator');
    const reason = !role.ok ? role.why : unavailable('reorder_steps', undefined, view.state)
      || (!draft ? 'no change yet: move a step first' : '');
    save.disabled = !!reason;
    if (reason) save.title = reason; else save.removeAttribute('title');
    reset.disabled = !draft;
    why.textContent = reason ? `Save: ${reason}` : '';
    drawActions(byId, force);
  }

  /** The selected step's panel. Drawn again only when what it shows changes (or when asked):
   *  a running plan's every event must not take away a position being typed or the focus on
   *  one of its buttons. */
  function drawActions(byId, force) {
    const step = selected ? byId.get(selected) : null;
    const ids = order();
    const key = [selected, step ? `${step.status}|${step.attempts}|${step.error || ''}` : '-',
      live.view.state, ids.length, ids.indexOf(selected), ctx.can('operator').ok].join('\n');
    if (!force && key === actionsDrawn) return;
    actionsDrawn = key;
    if (!selected) { fill(actions, h('h2', {}, 'Step'), h('p', { class: 'muted' }, 'Select a step to act on it.')); return; }
    if (!step) { fill(actions, h('h2', {}, 'Step'), h('p', { class: 'muted' }, `Step ${selected} is no longer in the plan.`)); return; }
    fill(actions,
      h('h2', {}, 'Step ', h('code', {}, step.step_id), ' ', badge(step.status)),
      h('p', { class: 'muted' }, `${step.action} · ${step.agent_type} · attempts ${step.attempts}`),
      step.error ? h('p', { class: 'iv-error' }, step.error) : null,
      stepActions(step, live, ctx),
      step.status === 'pending' && ctx.can('operator').ok ? moveTo(step.step_id) : null);
  }

  /** "Move to position n" among the pending steps: for a long plan, where a drag cannot reach. */
  function moveTo(id) {
    const ids = order();
    const input = h('input', { id: 'order-to', type: 'number', min: 1, max: ids.length, value: String(ids.indexOf(id) + 1),
      class: 'order-to', 'aria-label': `New position of ${id} among the pending steps` });
    return h('form', { class: 'toolbar', onsubmit: (e) => {
      e.preventDefault();
      const to = Math.min(Math.max(1, Math.round(Number(input.value)) || 1), ids.length);
      const next = order().filter((x) => x !== id);
      next.splice(to - 1, 0, id);
      place(next);
    } }, h('label', { for: 'order-to' }, 'Move to position'), input,
    h('span', { class: 'muted' }, `of ${ids.length}`), h('button', { type: 'submit' }, 'Move'));
  }

  function select(id) {
    selected = id;
    draw();
    // One column (a phone): the actions are below the lists; bring them into view.
    if (window.matchMedia('(max-width: 800px)').matches) actions.scrollIntoView({ block: 'nearest' });
  }

  function item(step, i, n) {
    const id = step.step_id;
    const may = ctx.can('operator');
    if (!may.ok) {
      return h('li', {
        class: `order-item${id === selected ? ' selected' : ''}`, tabindex: 0, title: `Reordering ${may.why}`,
        dataset: { step: id }, 'aria-current': id === selected ? 'true' : null,
        onclick: () => select(id),
        onkeydown: (e) => { if (e.key === 'Enter' || e.key === ' ') { e.preventDefault(); select(id); } },
      }, h('span', { class: 'pos' }, `${i + 1}.`), h('code', {}, id), ' ', h('span', { class: 'muted' }, step.action || ''), ' ', badge(step.status));
    }
    const up = h('button', { type: 'button', class: 'icon', tabindex: -1, title: 'Move up', 'aria-label': `Move ${id} up`,
      disabled: i === 0, onclick: (e) => { e.stopPropagation(); move(id, -1); } }, '▲');
    const down = h('button', { type: 'button', class: 'icon', tabindex: -1, title: 'Move down', 'aria-label': `Move ${id} down`,
      disabled: i === n - 1, onclick: (e) => { e.stopPropagation(); move(id, 1); } }, '▼');
    return h('li', {
      class: `order-item${id === selected ? ' selected' : ''}`, draggable: 'true', tabindex: 0,
      dataset: { step: id }, 'aria-current': id === selected ? 'true' : null,
      'aria-label': `${id}, ${step.status}, position ${i + 1} of ${n}`,
      onclick: () => select(id),
      onkeydown: (e) => keys(e, id),
      ondragstart: (e) => {
        dragging = id;
        e.dataTransfer.effectAllowed = 'move';
        e.dataTransfer.setData('text/plain', id);
        e.currentTarget.classList.add('dragging');
      },
      ondragend: () => { dragging = null; clearMarks(); draw(true); },
    }, h('span', { class: 'grip', 'aria-hidden': 'true' }, '⠿'), h('span', { class: 'pos' }, `${i + 1}.`),
    h('code', {}, id), ' ', h('span', { class: 'muted' }, step.action || ''), ' ', badge(step.status), up, down);
  }

  function fixed(step) {
    return h('li', {
      class: `order-item fixed${step.step_id === selected ? ' selected' : ''}`, tabindex: 0,
      dataset: { step: step.step_id }, 'aria-current': step.step_id === selected ? 'true' : null,
      onclick: () => select(step.step_id),
      onkeydown: (e) => { if (e.key === 'Enter' || e.key === ' ') { e.preventDefault(); select(step.step_id); } },
    }, h('code', {}, step.step_id), ' ', h('span', { class: 'muted' }, step.action || ''), ' ', badge(step.status));
  }

  function keys(e, id) {
    if (e.key === 'Enter' || e.key === ' ') { e.preventDefault(); select(id); return; }
    if (e.altKey && (e.key === 'ArrowUp' || e.key === 'ArrowDown')) {
      e.preventDefault();
      move(id, e.key === 'ArrowUp' ? -1 : 1);
      return;
    }
    if (!e.altKey && (e.key === 'ArrowUp' || e.key === 'ArrowDown')) {
      e.preventDefault();
      const sib = e.key === 'ArrowUp' ? e.currentTarget.previousElementSibling : e.currentTarget.nextElementSibling;
      if (sib && sib.dataset.step) sib.focus();
    }
  }

  /** Moves `id` by `by` places (keyboard, buttons), keeping the focus on it. */
  function move(id, by) {
    const ids = order().slice();
    const i = ids.indexOf(id);
    const j = i + by;
    if (i < 0 || j < 0 || j >= ids.length) return;
    ids.splice(i, 1);
    ids.splice(j, 0, id);
    place(ids);
    const again = list.querySelector(`li[data-step="${CSS.escape(id)}"]`);
    if (again) again.focus();
  }

  function place(ids) {
    note = '';
    draft = same(ids, pendingOf(live.view)) ? null : ids;
    draw(true);
  }

  function clearMarks() {
    for (const li of list.querySelectorAll('.drop-before, .drop-after, .dragging')) li.classList.remove('drop-before', 'drop-after', 'dragging');
  }

  /** Where a drop at `e` lands: `{target, after}` or null. */
  function dropAt(e) {
    const li = e.target.closest && e.target.closest('li.order-item');
    if (!li || !list.contains(li)) return null;
    const r = li.getBoundingClientRect();
    return { target: li, after: e.clientY > r.top + r.height / 2 };
  }

  list.addEventListener('dragover', (e) => {
    if (!dragging) return;
    const at = dropAt(e);
    if (!at) return;
    e.preventDefault();
    e.dataTransfer.dropEffect = 'move';
    for (const li of list.querySelectorAll('.drop-before, .drop-after')) li.classList.remove('drop-before', 'drop-after');
    at.target.classList.add(at.after ? 'drop-after' : 'drop-before');
  });
  list.addEventListener('drop', (e) => {
    const at = dropAt(e);
    const id = dragging || e.dataTransfer.getData('text/plain');
    if (!at || !id) return;
    e.preventDefault();
    dragging = null;
    clearMarks();
    const target = at.target.dataset.step;
    if (target === id) { draw(true); return; }
    const ids = order().filter((x) => x !== id);
    ids.splice(ids.indexOf(target) + (at.after ? 1 : 0), 0, id);
    place(ids);
  });

  function saveOrder() {
    const mine = draft;
    if (!mine) return;
    intervene({
      title: 'Reorder the pending steps',
      live, ctx,
      build: (view) => {
        const next = reconcile(draft || mine, pendingOf(view));
        return { type: 'reorder_steps', order: next };
      },
      onApplied: () => { draft = null; note = ''; draw(true); },
    });
  }

  draw(true);
  const off = live.on(() => draw());
  return () => off();
}
