// The plan's controls in its header: start, pause (at the step boundary or immediately, with an
// optional time to resume by itself), resume, cancel (after a confirmation). Each is disabled
// with the reason when the role or the plan's state does not allow it; a refusal from the
// server is shown with ctx.fail and the plan read again.
//
// `render(el, live, ctx)` is called again after every refresh of the plan.

import * as api from '../../api.js';
import { h, fill } from '../../dom.js';

/** What each state allows (the server decides; this only explains a disabled button). */
const ALLOWED = {
  start: ['idle'],
  pause: ['running'],
  resume: ['paused'],
  cancel: ['idle', 'running', 'paused'],
  rollback: ['failed', 'cancelled'],
};

// A dialog left open survives the header being drawn again.
let openDialog = null;

export function render(el, live, ctx) {
  const v = live.view;
  const role = ctx.can('operator');
  const enc = encodeURIComponent(live.id);
  // Drawn again only when what the controls show changed (not on every refresh).
  const key = JSON.stringify([v.state, v.resume_at || null, role.ok, v.plan_id,
    v.rollback ? v.rollback.status : null]);
  if (el.dataset.key === key) return;
  el.dataset.key = key;

  const why = (action) => {
    if (!role.ok) return role.why;
    if (!ALLOWED[action].includes(v.state)) return `the plan is ${v.state.replace('_', ' ')}`;
    if (action === 'rollback' && v.rollback && v.rollback.status !== 'failed') return 'the plan has been rolled back';
    if (action === 'cancel' && v.rollback && v.rollback.status === 'running') return 'the plan is rolling back';
    return '';
  };

  async function send(action, body, button) {
    if (button) button.disabled = true;
    try {
      const answer = await api.post(`/v1/plans/${enc}/${action}`, body);
      // A rollback (or a cancel with rollback) answers its compensations and the plan.
      live.view = answer.plan || answer;
      const comps = answer.compensations ? `; ${answer.compensations.length} compensation${answer.compensations.length === 1 ? '' : 's'} to run` : '';
      ctx.flash(`${action[0].toUpperCase()}${action.slice(1)}: the plan is ${live.view.state}${comps}.`);
    } catch (e) {
      ctx.fail(e);
    }
    await live.refresh();
  }

  // A disabled control says why in its tooltip and in a visible line under the controls; one
  // line per distinct reason ("Start, Resume: the plan is running").
  const reasons = new Map();
  const control = (action, label, onclick, cls = '') => {
    const reason = why(action);
    if (reason) {
      if (!reasons.has(reason)) reasons.set(reason, []);
      reasons.get(reason).push([action, label.replace('…', '')]);
    }
    const k = reason ? [...reasons.keys()].indexOf(reason) : -1;
    return h('button', { type: 'button', id: `plan-${action}`, class: cls, disabled: !!reason,
      title: reason ? `${label.replace('…', '')}: ${reason}` : label,
      'aria-describedby': reason ? `plan-why-${k}` : null, onclick }, label);
  };

  const buttons = [
    control('start', 'Start', (e) => send('start', {}, e.currentTarget), 'primary'),
    control('pause', 'Pause…', () => openPause()),
    control('resume', 'Resume', (e) => send('resume', {}, e.currentTarget), 'primary'),
    control('cancel', 'Cancel…', () => openCancel(), 'danger'),
    control('rollback', 'Roll back…', () => openRollback(), 'danger'),
  ];
  const notes = [...reasons.entries()].map(([reason, list], k) => h('span', { class: 'reason', id: `plan-why-${k}`,
    dataset: { actions: list.map(([a]) => a).join(' ') } }, `${list.map(([, l]) => l).join(', ')}: ${reason}`));
  if (v.state === 'paused' && v.resume_at) {
    notes.push(h('span', { class: 'muted' }, `resumes by itself at ${new Date(v.resume_at).toLocaleString()}`));
  }
  fill(el, h('div', { class: 'toolbar' }, buttons), notes.length ? h('div', { class: 'reasons' }, notes) : null);

  function dialog(id, title, fields, confirmLabel, onConfirm, cls = 'primary') {
    if (openDialog) openDialog.close();
    const confirm = h('button', { type: 'submit', id: `${id}-confirm`, class: cls }, confirmLabel);
    const cancel = h('button', { type: 'button', id: `${id}-close`, onclick: () => close() }, 'Back');
    const form = h('form', { class: 'dialog-body', onsubmit: async (e) => {
      e.preventDefault();
      confirm.disabled = true;
      await onConfirm(form);
      close();
    } }, h('h2', {}, title), fields, h('div', { class: 'toolbar' }, confirm, cancel));
    const d = h('dialog', { id, class: 'dialog', 'aria-label': title }, form);
    // Escape closes a modal <dialog> by itself (the `cancel` event); the header may be redrawn
    // meanwhile, so the dialog lives in <body>.
    d.addEventListener('close', () => { d.remove(); if (openDialog === handle) openDialog = null; });
    document.body.append(d);
    d.showModal();
    const first = d.querySelector('input, select, textarea, button');
    if (first) first.focus();
    const handle = { close };
    openDialog = handle;
    function close() { if (d.open) d.close(); else d.remove(); }
  }

  function openPause() {
    const mode = h('fieldset', {}, h('legend', {}, 'Running steps'),
      h('label', {}, h('input', { type: 'radio', name: 'mode', value: 'boundary', checked: true, id: 'pause-boundary' }),
        ' finish first (pause at the step boundary)'),
      h('br'),
      h('label', {}, h('input', { type: 'radio', name: 'mode', value: 'immediate', id: 'pause-immediate' }),
        ' stop now (interrupt them; they run again on resume)'));
    const at = h('input', { type: 'datetime-local', id: 'pause-resume-at', name: 'resume_at' });
    const reason = h('input', { type: 'text', id: 'pause-reason', name: 'reason', placeholder: 'optional', maxlength: '500' });
    dialog('pause-dialog', `Pause ${v.plan_id}`, [
      mode,
      h('label', { class: 'field' }, 'Resume by itself at (optional, your time zone)', at),
      h('label', { class: 'field' }, 'Reason', reason),
    ], 'Pause', async (form) => {
      const body = { mode: form.elements.mode.value };
      if (at.value) {
        const t = new Date(at.value);
        if (Number.isNaN(t.getTime())) { ctx.flash('The resume time is not a valid time.', 'error'); return; }
        body.resume_at = t.toISOString();
      }
      if (reason.value.trim()) body.reason = reason.value.trim();
      await send('pause', body);
    });
  }

  function openCancel() {
    const reason = h('input', { type: 'text', id: 'cancel-reason', name: 'reason', placeholder: 'optional', maxlength: '500' });
    const preview = h('div', { id: 'cancel-rollback-preview', 'aria-live': 'polite' });
    const withRollback = h('input', { type: 'checkbox', id: 'cancel-rollback', name: 'rollback',
      onchange: async () => {
        if (!withRollback.checked) { fill(preview); return; }
        fill(preview, h('p', { class: 'muted' }, 'Reading what the rollback would run…'));
        try {
          const dry = await api.post(`/v1/plans/${enc}/cancel`, { rollback: true, dry_run: true });
          fill(preview, compensationList(dry));
        } catch (e) {
          fill(preview, h('p', { class: 'flash error' }, e.message || String(e)));
        }
      } });
    dialog('cancel-dialog', `Cancel ${v.plan_id}?`, [
      h('p', {}, 'Running steps are stopped and no further step runs. A cancelled plan can still be restored from a checkpoint.'),
      h('label', {}, withRollback, ' roll back what it did first (run the compensations of its steps, newest first)'),
      preview,
      h('label', { class: 'field' }, 'Reason', reason),
    ], 'Cancel the plan', async () => {
      const body = reason.value.trim() ? { reason: reason.value.trim() } : {};
      if (withRollback.checked) body.rollback = true;
      await send('cancel', body);
    }, 'danger');
  }

  // The compensations of a dry run, in the order they would run.
  function compensationList(dry) {
    if (!dry.compensations.length) return h('p', { class: 'muted', id: 'rollback-none' }, 'Nothing to compensate.');
    return [
      h('p', {}, `${dry.compensations.length} compensation${dry.compensations.length === 1 ? '' : 's'}, in this order:`),
      h('ol', { id: 'rollback-preview' }, dry.compensations.map((c) =>
        h('li', { dataset: { step: c.step_id } }, `${c.step_id}: ${c.action} (${c.agent_type})`))),
    ];
  }

  async function openRollback() {
    let dry;
    try {
      dry = await api.post(`/v1/plans/${enc}/rollback`, { dry_run: true });
    } catch (e) {
      ctx.fail(e);
      return;
    }
    const reason = h('input', { type: 'text', id: 'rollback-reason', name: 'reason', placeholder: 'optional', maxlength: '500' });
    const continuing = v.rollback && v.rollback.status === 'failed';
    dialog('rollback-dialog', `Roll back ${v.plan_id}?`, [
      h('p', {}, continuing
        ? 'The rollback stopped on a failed compensation: it continues from there (that compensation is tried again).'
        : 'The compensations of the steps the plan ran run one at a time, newest start first; the plan runs meanwhile, then ends ' + v.state + ' again.'),
      compensationList(dry),
      h('label', { class: 'field' }, 'Reason', reason),
    ], 'Roll back', async () => {
      await send('rollback', reason.value.trim() ? { reason: reason.value.trim() } : {});
    }, 'danger');
  }
}
