// Interventions from the page: a toolbar of what an operator may do to one step (skip, retry,
// rerun from it, complete by hand, modify, add before/after, remove) and the dialog every intervention goes
// through, reorder included (pages/plan/order.js opens it too).
//
// The dialog first sends the intervention with `dry_run: true` and shows the diff the server
// answers, in words; it takes a reason and applies with `expected_version` set to the version
// that dry run saw. When the plan moved meanwhile (409), it says so, re-runs the dry run against
// the plan as it is now and lets the user apply again. The enabling rules below mirror the
// server's loosely so a control says why it is unavailable; the server's answer is the truth.

import * as api from './api.js';
import { h, fill, badge, json } from './dom.js';

/** Step statuses each action accepts, and the sentence a disabled control shows. */
const RULES = {
  skip_step: [['pending', 'failed', 'awaiting_review'], 'only a pending, failed or awaiting_review step can be skipped'],
  retry_step: [['failed', 'cancelled', 'completed'], 'only a failed, cancelled or completed step can be retried'],
  rerun_from: [['completed', 'failed', 'skipped', 'cancelled'], 'only a step that has ended can be rerun with what follows it'],
  complete_step: [['pending', 'queued', 'running', 'failed'], 'only a pending, queued, running or failed step can be completed by hand'],
  modify_step: [['pending', 'failed', 'awaiting_review'], 'only a pending, failed or awaiting_review step can be modified'],
  add_before: [null, ''],
  add_after: [null, ''],
  remove_step: [['pending', 'awaiting_review'], 'only a pending or awaiting_review step can be removed'],
};

const LABELS = {
  skip_step: 'Skip', retry_step: 'Retry', rerun_from: 'Rerun from here', complete_step: 'Complete by hand', modify_step: 'Modify',
  add_before: 'Add before', add_after: 'Add after', remove_step: 'Remove',
};

/** Fields of a step `modify_step` may change (the server's list). */
export const PATCHABLE = ['action', 'agent_type', 'params', 'retry', 'timeout_ms', 'when', 'depends_on',
  'quality_gate', 'pause_before', 'pause_after'];

const STRUCTURAL = new Set(['modify_step', 'add_before', 'add_after', 'remove_step', 'reorder_steps']);

/** Why `action` cannot be used on a plan in state `plan` with a step in `status` now, or ''. */
export function unavailable(action, status, plan) {
  if (plan === 'cancelled') return 'the plan is cancelled; a cancelled plan cannot be changed';
  const terminal = plan === 'completed' || plan === 'failed';
  if (STRUCTURAL.has(action) && terminal && !(action === 'modify_step' && plan === 'failed')) {
    return `the plan is ${plan}; its definition can no longer change`;
  }
  const [allowed, why] = RULES[action] || [null, ''];
  if (allowed && status !== undefined && !allowed.includes(status)) return `step is ${status.replace('_', ' ')}; ${why}`;
  return '';
}

/**
 * The actions on one step (`step` from `live.view.steps`): a toolbar whose buttons open the
 * intervention dialog. A control the role or the step's status does not allow is disabled and
 * says why (title, and a visible list below the buttons).
 */
export function stepActions(step, live, ctx) {
  const role = ctx.can('operator');
  const plan = live.view.state;
  const why = [];
  const buttons = Object.keys(LABELS).map((action) => {
    const reason = role.ok ? unavailable(action, step.status, plan) : role.why;
    if (reason && role.ok) why.push(h('li', {}, h('strong', {}, LABELS[action]), `: ${reason}`));
    return h('button', {
      type: 'button', class: action === 'remove_step' ? 'danger' : '',
      disabled: !!reason, title: reason || null, dataset: { action },
      onclick: () => open(action, step.step_id, live, ctx),
    }, LABELS[action]);
  });
  return h('div', { class: 'step-actions', dataset: { step: step.step_id } },
    h('div', { class: 'toolbar', role: 'toolbar', 'aria-label': `Interventions on step ${step.step_id}` }, buttons),
    !role.ok ? h('p', { class: 'reason' }, `Changing this step ${role.why}.`) : null,
    why.length ? h('details', { class: 'reason' },
      h('summary', {}, `Why ${why.length === 1 ? 'one action is' : `${why.length} actions are`} unavailable`),
      h('ul', {}, why)) : null);
}

/** Opens the dialog for `action` on `stepId`. */
function open(action, stepId, live, ctx) {
  const spec = {
    skip_step: () => ({ title: `Skip step ${stepId}`, build: () => ({ type: 'skip_step', step_id: stepId }) }),
    retry_step: () => ({ title: `Retry step ${stepId}`, build: () => ({ type: 'retry_step', step_id: stepId }) }),
    remove_step: () => ({ title: `Remove step ${stepId}`, build: () => ({ type: 'remove_step', step_id: stepId }) }),
    rerun_from: () => ({ title: `Rerun from step ${stepId}`, build: () => ({ type: 'rerun_from', step_id: stepId }) }),
    complete_step: () => ({
      title: `Complete step ${stepId} by hand`,
      editor: { label: 'The step\'s output (JSON)', initial: '{\n  \n}', check: (v) => ({ value: v }) },
      build: (_view, output) => ({ type: 'complete_step', step_id: stepId, output }),
    }),
    modify_step: () => modifySpec(stepId, live),
    add_before: () => addSpec(stepId, 'before', live),
    add_after: () => addSpec(stepId, 'after', live),
  }[action];
  return intervene({ ...spec(), live, ctx });
}

/** Modify: the step's changeable fields as JSON; the change is sent as a JSON merge patch. */
function modifySpec(stepId, live) {
  let original = null;
  return {
    title: `Modify step ${stepId}`,
    editor: {
      label: `Step ${stepId}'s definition (JSON; changeable fields: ${PATCHABLE.join(', ')})`,
      // The state lists no params: the definition comes from the plan's snapshot.
      initial: async () => {
        const snap = await api.get(`/v1/plans/${encodeURIComponent(live.id)}/snapshot`);
        const def = (snap.plan.steps || []).find((s) => s.step_id === stepId);
        if (!def) throw new Error(`step ${stepId} is not in the plan any more`);
        original = Object.fromEntries(PATCHABLE.filter((k) => k in def).map((k) => [k, def[k]]));
        return json(original);
      },
      check: (v) => {
        if (!isObject(v)) return { error: 'the definition must be a JSON object' };
        if ('step_id' in v) return { error: 'step_id cannot change (add a step and remove this one instead)' };
        const bad = Object.keys(v).filter((k) => !PATCHABLE.includes(k));
        if (bad.length) return { error: `${bad.join(', ')} cannot be modified; allowed: ${PATCHABLE.join(', ')}` };
        const patch = mergePatch(original, v);
        if (patch === undefined) return { error: 'nothing changed yet' };
        return { value: patch };
      },
    },
    build: (_view, patch) => ({ type: 'modify_step', step_id: stepId, patch }),
  };
}

/** Add before/after: a JSON editor for the new step, started from a copy of this one's kind. */
function addSpec(stepId, where, live) {
  const near = live.view.steps.find((s) => s.step_id === stepId) || {};
  const ids = new Set(live.view.steps.map((s) => s.step_id));
  let n = 1;
  while (ids.has(`${stepId}-new${n > 1 ? n : ''}`)) n += 1;
  const fresh = { step_id: `${stepId}-new${n > 1 ? n : ''}`, action: near.action || '', agent_type: near.agent_type || '', params: {} };
  return {
    title: `Add a step ${where} ${stepId}`,
    editor: {
      label: 'The new step (JSON, as in a plan document)',
      initial: json(fresh),
      check: (v) => {
        if (!isObject(v)) return { error: 'a step must be a JSON object' };
        if (typeof v.step_id !== 'string' || !v.step_id) return { error: 'step_id: a non-empty string is needed' };
        return { value: v };
      },
    },
    build: (_view, step) => ({ type: 'add_step', step, [where]: stepId }),
  };
}

function isObject(v) { return v !== null && typeof v === 'object' && !Array.isArray(v); }

/** The RFC 7386 merge patch that turns `a` into `b` (undefined when they are equal). */
export function mergePatch(a, b) {
  if (!isObject(a) || !isObject(b)) return JSON.stringify(a) === JSON.stringify(b) ? undefined : b;
  const out = {};
  for (const k of Object.keys(a)) if (!(k in b)) out[k] = null;
  for (const [k, v] of Object.entries(b)) {
    const d = k in a ? mergePatch(a[k], v) : v;
    if (d !== undefined) out[k] = d;
  }
  return Object.keys(out).length ? out : undefined;
}

/**
 * The intervention dialog. `build(view, edited)` answers the request body (without the
 * envelope) for the plan as it is in `view`; `editor` (optional) is `{label, initial (text or
 * async fn), check(parsed) -> {value} | {error}}`. `onApplied(record)` runs after success.
 * Answers the <dialog> element (open).
 */
export function intervene({ title, editor, build, live, ctx, onApplied }) {
  const dialog = h('dialog', { id: 'iv-dialog', class: 'iv-dialog', 'aria-labelledby': 'iv-title' });
  const preview = h('div', { id: 'iv-preview', 'aria-live': 'polite' }, h('p', { class: 'muted' }, 'Preparing the preview…'));
  const conflict = h('div', { id: 'iv-conflict', class: 'iv-conflict', role: 'alert', hidden: true });
  const stale = h('p', { id: 'iv-stale', class: 'iv-conflict', role: 'status', hidden: true });
  const error = h('p', { id: 'iv-error', class: 'iv-error', role: 'alert', hidden: true });
  const reason = h('input', { id: 'iv-reason', type: 'text', maxlength: 4096, autocomplete: 'off',
    placeholder: 'Why (kept in the audit log)', oninput: () => sync() });
  const apply = h('button', { id: 'iv-apply', type: 'button', class: 'primary', disabled: true, onclick: () => run(false) }, 'Apply');
  const cancel = h('button', { id: 'iv-cancel', type: 'button', onclick: () => dialog.close() }, 'Cancel');
  const parse = h('p', { id: 'iv-parse', class: 'iv-error', role: 'status', hidden: true });
  const area = editor ? h('textarea', { id: 'iv-editor', spellcheck: 'false', 'aria-describedby': 'iv-parse',
    oninput: () => { edited(); } }) : null;

  // What the last dry run answered: the record, the version it saw, and the body it previewed.
  let seen = null;
  let busy = false;
  let timer = null;
  let ticket = 0;

  fill(dialog,
    h('h2', { id: 'iv-title' }, title),
    editor ? h('label', { for: 'iv-editor' }, editor.label) : null, area, parse,
    conflict, stale,
    h('h3', {}, 'What changes'), preview,
    error,
    h('label', { for: 'iv-reason' }, 'Reason'), reason,
    h('div', { class: 'toolbar' }, apply, cancel,
      h('span', { class: 'reason', id: 'iv-hint' })));
  // The plan moved while the dialog is open: say so (Apply would be refused) and offer a fresh
  // preview. Leaving the page closes the dialog.
  const offLive = live.on((v) => {
    if (!seen || seen.version === null || v.version === seen.version || busy) return;
    fill(stale, `The plan changed since this preview (version ${seen.version} → ${v.version}). `,
      h('button', { type: 'button', onclick: () => { stale.hidden = true; run(true); } }, 'Preview again'));
    stale.hidden = false;
  });
  const leave = () => dialog.close();
  window.addEventListener('hashchange', leave);
  // The control that opened the dialog may have been redrawn meanwhile (a live refresh): give
  // the focus back to its successor, so a keyboard user is where they were.
  const opener = document.activeElement;
  const again = opener && opener.dataset && opener.dataset.action
    ? `[data-action="${CSS.escape(opener.dataset.action)}"]` : null;
  dialog.addEventListener('close', () => {
    clearTimeout(timer); offLive(); window.removeEventListener('hashchange', leave); dialog.remove();
    setTimeout(() => {
      if (opener && opener.isConnected) { opener.focus(); return; }
      const next = again && document.querySelector(again);
      if (next && !next.disabled) next.focus(); else document.getElementById('main')?.focus();
    }, 0);
  });
  document.body.append(dialog);
  dialog.showModal();

  function sync() {
    const hint = dialog.querySelector('#iv-hint');
    let why = '';
    if (busy) why = 'working…';
    else if (!seen || seen.record.status !== 'would_apply') why = 'the preview must succeed first';
    else if (!reason.value.trim()) why = 'give a reason';
    apply.disabled = !!why;
    if (why) apply.title = why; else apply.removeAttribute('title');
    hint.textContent = why ? `Apply: ${why}` : '';
  }

  /** The editor's value checked, or null (with the message shown). */
  function current() {
    if (!editor) return { value: undefined };
    let v;
    try { v = JSON.parse(area.value); } catch (e) {
      parse.textContent = `Not JSON: ${e.message}`; parse.hidden = false; return null;
    }
    const c = editor.check(v);
    if (c.error) { parse.textContent = c.error; parse.hidden = false; return null; }
    parse.hidden = true;
    return c;
  }

  function edited() {
    // A preview still on its way is of the text before this edit: drop it.
    ticket += 1; busy = false; seen = null; sync();
    clearTimeout(timer);
    if (!current()) { fill(preview, h('p', { class: 'muted' }, 'The preview follows a valid edit.')); return; }
    timer = setTimeout(() => run(true), 300);
  }

  /** A dry run (`dry`) or the real thing, against the plan as the page knows it now. */
  async function run(dry) {
    const c = current();
    if (!c) return;
    const mine = ++ticket;
    const body = build(live.view, c.value);
    if (body && body.error) { fill(preview, h('p', { class: 'iv-error' }, body.error)); return; }
    busy = true; sync();
    error.hidden = true;
    try {
      if (dry) {
        const rec = await api.post(`/v1/plans/${encodeURIComponent(live.id)}/interventions`, { ...body, dry_run: true });
        if (mine !== ticket) return;
        seen = { record: rec, version: versionBefore(rec), body };
        stale.hidden = true;
        fill(preview, describe(rec));
      } else {
        const rec = await api.post(`/v1/plans/${encodeURIComponent(live.id)}/interventions`,
          { ...seen.body, reason: reason.value.trim(), expected_version: seen.version });
        dialog.close();
        ctx.flash(`${title}: applied (${rec.intervention_id}, plan version ${rec.plan_version}).`);
        await live.refresh();
        if (onApplied) onApplied(rec);
        return;
      }
    } catch (e) {
      if (mine !== ticket) return;
      const rec = e instanceof api.ApiError && e.body && e.body.error && e.body.error.intervention;
      if (dry) {
        seen = rec ? { record: rec, version: null, body } : null;
        fill(preview, h('p', { class: 'iv-error', id: 'iv-refused' },
          e instanceof api.ApiError ? `The server refuses this: ${e.message}` : String(e)));
      } else if (e instanceof api.ApiError && e.status === 409) {
        // Someone (or something) changed the plan since the preview: show it as it is now.
        const was = seen.version;
        await live.refresh();
        const now = live.view.version;
        fill(conflict,
          h('strong', {}, was !== now ? 'Someone else changed the plan.' : 'The plan changed since the preview.'),
          ' ', `The server refused the change: ${e.message}. `,
          was !== now ? `The plan moved from version ${was} to ${now}. ` : '',
          'The preview below is against the plan as it is now; check it and apply again.');
        conflict.hidden = false;
        busy = false;
        seen = null;
        return run(true);
      } else {
        error.textContent = e instanceof api.ApiError ? `${e.message} (${e.code})` : String(e);
        error.hidden = false;
      }
    } finally {
      if (mine === ticket) { busy = false; sync(); }
    }
  }

  (async () => {
    if (editor) {
      let text;
      try { text = typeof editor.initial === 'function' ? await editor.initial() : editor.initial; } catch (e) {
        fill(preview, h('p', { class: 'iv-error' }, `Cannot load the step: ${e.message || e}`));
        return;
      }
      area.value = text;
      area.focus();
      edited();
    } else {
      reason.focus();
      run(true);
    }
  })();
  return dialog;
}

/** The plan version a dry-run record was computed against. */
function versionBefore(rec) {
  const v = (rec.diff || []).find((c) => c.path === 'version');
  return v ? v.before : rec.plan_version;
}

function short(v) {
  if (v === null || v === undefined) return '—';
  const s = typeof v === 'string' ? v : JSON.stringify(v);
  return s.length > 160 ? `${s.slice(0, 157)}…` : s;
}

/** The dry run's diff in words: one line per change, steps by name, order as moves. */
export function describe(rec) {
  const lines = [];
  const diff = rec.diff || [];
  for (const c of diff) {
    const p = c.path;
    if (p === 'version') continue;
    if (p === 'status') {
      lines.push(h('li', {}, 'Plan state: ', badge(c.before), ' → ', badge(c.after)));
    } else if (p === 'order') {
      lines.push(...orderLines(c.before || [], c.after || []));
    } else if (p.startsWith('steps.')) {
      const [, id, ...rest] = p.split('.');
      const field = rest.join('.');
      if (!field && c.before === null) {
        lines.push(h('li', {}, 'New step ', h('code', {}, id), ':', h('pre', { class: 'iv-json' }, json(c.after))));
      } else if (!field && c.after === null) {
        lines.push(h('li', {}, 'Step ', h('code', {}, id), ' is removed'));
      } else if (field === 'status') {
        lines.push(h('li', {}, 'Step ', h('code', {}, id), ': ', badge(c.before), ' → ', badge(c.after)));
      } else if (field === 'run') {
        lines.push(h('li', {}, 'Step ', h('code', {}, id), ` runs again (run ${c.before} → ${c.after})`));
      } else {
        lines.push(h('li', {}, 'Step ', h('code', {}, id), ' ', h('code', {}, field), ': ',
          h('del', {}, short(c.before)), ' → ', h('ins', {}, short(c.after))));
      }
    } else {
      lines.push(h('li', {}, h('code', {}, p), ': ', h('del', {}, short(c.before)), ' → ', h('ins', {}, short(c.after))));
    }
  }
  if (rec.type === 'complete_step' && rec.payload && 'output' in rec.payload) {
    lines.push(h('li', {}, 'Output of ', h('code', {}, rec.step_id), ':', h('pre', { class: 'iv-json' }, json(rec.payload.output))));
  }
  const v = diff.find((c) => c.path === 'version');
  const head = v ? `Plan version ${v.before} → ${v.after}.` : `Plan version ${rec.plan_version} (unchanged).`;
  return h('div', { id: 'iv-diff' },
    h('p', {}, head),
    lines.length ? h('ul', { class: 'iv-changes' }, lines) : h('p', { class: 'muted' }, 'Nothing changes.'),
    h('details', {}, h('summary', {}, 'The diff as JSON'), h('pre', { class: 'iv-json' }, json(diff))));
}

/** A change of the plan's order, said as insertions, removals and moves (at most 50 lines). */
function orderLines(before, after) {
  const out = [];
  const a = new Set(before);
  const b = new Set(after);
  for (const [i, id] of after.entries()) if (!a.has(id)) out.push(h('li', {}, 'Step ', h('code', {}, id), ` is inserted at position ${i + 1}`));
  const kept = before.filter((id) => b.has(id));
  const keptAfter = after.filter((id) => a.has(id));
  const moved = [];
  for (let i = 0; i < keptAfter.length; i += 1) {
    if (kept[i] !== keptAfter[i]) moved.push(keptAfter[i]);
  }
  if (moved.length) {
    const pos = new Map(before.map((id, i) => [id, i + 1]));
    const posAfter = new Map(after.map((id, i) => [id, i + 1]));
    out.push(h('li', {}, `New order (${moved.length} step${moved.length === 1 ? '' : 's'} change place):`,
      h('ol', { class: 'iv-moves' }, moved.slice(0, 50).map((id) => h('li', {},
        h('code', {}, id), `: position ${pos.get(id)} → ${posAfter.get(id)}`))),
      moved.length > 50 ? h('p', { class: 'muted' }, `… and ${moved.length - 50} more`) : null));
  }
  return out;
}
