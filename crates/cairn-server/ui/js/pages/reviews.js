// The review inbox across plans (`GET /v1/reviews`, oldest opened first): each review's plan,
// step and attempt (linked to the plan page), its scores against the gate's bounds, the failed
// criteria, the output held for it, the votes so far and the deadline. A review is decided with
// the plan's `approve_step` / `reject_step` intervention naming the attempt the reviewer saw,
// so a decision about an attempt that has since changed is refused (409) rather than applied
// to the wrong one. A second vote is refused (409) too; a user outside the gate's reviewers, a
// self review and a role that may not intervene are forbidden (403): the card shows the server's
// why.
//
// The list follows the all-plans event stream: a review opened or decided elsewhere updates the
// page without a reload; a card whose review did not change is kept (with what was typed in it).

import * as api from '../api.js';
import { h, reconcile, badge, time, json } from '../dom.js';

const PAGE = 50;
/** Events after which the inbox is read again. */
const REVIEW_EVENTS = new Set(['review_opened', 'intervention_applied', 'plan_completed',
  'plan_failed', 'plan_cancelled', 'checkpoint_restored', 'step_completed', 'step_failed']);

export async function render(main, _params, ctx) {
  const state = h('select', { id: 'reviews-state', 'aria-label': 'Which reviews' },
    h('option', { value: 'open' }, 'Open'),
    h('option', { value: 'closed' }, 'Closed'),
    h('option', { value: '' }, 'All'));
  const planFilter = h('input', { id: 'reviews-plan', type: 'search', placeholder: 'plan id',
    'aria-label': 'Only the reviews of this plan' });
  const list = h('div', { id: 'reviews-list', 'aria-live': 'polite' });
  const more = h('button', { type: 'button', id: 'reviews-more', hidden: true }, 'Older reviews');
  const count = h('span', { class: 'muted', id: 'reviews-count' });
  const may = ctx.can('operator');
  main.append(
    h('h1', {}, 'Reviews'),
    h('p', { class: 'muted' }, 'Results a quality gate held for a person. Approving lets the plan go on ' +
      'with the output; rejecting fails the step, or runs it again with your reason as feedback.'),
    h('form', { class: 'toolbar', onsubmit: (e) => { e.preventDefault(); refilter(); } },
      h('label', {}, 'Show ', state), h('label', {}, 'Plan ', planFilter),
      h('button', { type: 'submit' }, 'Filter'), count),
    list, more);
  if (!may.ok) list.before(h('p', { class: 'reason', id: 'reviews-role' }, `Deciding reviews ${may.why}.`));

  /** cardId(r) -> {card, key}; key changes when the review does. */
  const cards = new Map();
  let cursor = null;
  let loading = null;
  let again = false;

  /** Another filter: the cards shown so far are of the old one. */
  function refilter() {
    for (const c of cards.values()) c.card.remove();
    cards.clear();
    reload();
  }
  state.addEventListener('change', refilter);

  async function fetchPage(after) {
    return api.get(`/v1/reviews${api.query({ state: state.value, plan_id: planFilter.value.trim(),
      limit: PAGE, cursor: after })}`);
  }

  /** Reads the first page again; keeps unchanged cards as they are. */
  async function reload() {
    // One read at a time; a reload asked for meanwhile runs once after it (with the filter
    // as it is then).
    if (loading) { again = true; return loading; }
    loading = (async () => {
      try {
        const page = await fetchPage(null);
        const seen = new Set();
        const order = [];
        for (const r of page.items) {
          seen.add(cardId(r));
          order.push(cardFor(r));
        }
        // Cards of later pages the user loaded stay while their reviews still match.
        for (const [id, c] of cards) if (!seen.has(id) && c.page > 0) order.push(c.card);
        for (const [id, c] of cards) if (!seen.has(id) && c.page === 0) { c.card.remove(); cards.delete(id); }
        // Unchanged cards stay in the page untouched: a reload while someone types a reason
        // or corrects an output must not take their text box (and its focus) away.
        reconcile(list, order.length ? order : [h('p', { class: 'muted', id: 'reviews-empty' },
          state.value === 'open' ? 'No review is waiting.' : 'No reviews.')]);
        cursor = page.next_cursor || null;
        more.hidden = !cursor;
        count.textContent = `${cards.size} shown`;
      } catch (e) { ctx.fail(e); } finally {
        loading = null;
        if (again) { again = false; reload(); }
      }
    })();
    return loading;
  }

  more.addEventListener('click', async () => {
    if (!cursor) return;
    try {
      const page = await fetchPage(cursor);
      for (const r of page.items) list.append(cardFor(r, 1));
      cursor = page.next_cursor || null;
      more.hidden = !cursor;
      count.textContent = `${cards.size} shown`;
    } catch (e) { ctx.fail(e); }
  });

  function cardFor(r, page = 0) {
    const key = `${r.state}|${r.attempt}|${(r.votes || []).length}|${r.outcome || ''}`;
    const have = cards.get(cardId(r));
    if (have && have.key === key) return have.card;
    const card = reviewCard(r, ctx, reload);
    if (have) have.card.replaceWith(card);
    cards.set(cardId(r), { card, key, page: have ? have.page : page });
    return card;
  }

  // At most one reload a second however busy the server is (a reload already scheduled
  // covers the events that arrive before it runs).
  let timer = null;
  const sub = api.stream('/v1/events/stream', {
    onEvent: (ev) => {
      if (!REVIEW_EVENTS.has(ev.event) || timer) return;
      timer = setTimeout(() => { timer = null; reload(); }, 1000);
    },
  });
  await reload();
  return () => { clearTimeout(timer); sub.close(); };
}

/** A review's id across plans (and in its elements' ids: `review-…`, `reason-…`, `output-…`):
 *  a review id (`rv-<seq>`) is unique within its plan only, so two plans' reviews can share it. */
function cardId(r) {
  return `${r.plan_id}-${r.review_id}`;
}

/** One review: what it holds and, while open, the decision form. */
function reviewCard(r, ctx, reload) {
  const plan = encodeURIComponent(r.plan_id);
  const stepLink = `#/plans/${plan}/steps/${encodeURIComponent(r.step_id)}/attempts/${r.attempt}`;
  const votes = r.votes || [];
  const approvals = votes.filter((v) => v.decision === 'approve').length;
  return h('article', { class: 'card review', id: `review-${cardId(r)}`,
    dataset: { review: r.review_id, plan: r.plan_id, step: r.step_id } },
  h('header', { class: 'review-head' },
    h('h2', {}, h('a', { href: `#/plans/${plan}` }, r.plan_id), ' · ',
      h('a', { href: stepLink }, `${r.step_id} attempt ${r.attempt}`)),
    badge(r.outcome || r.state),
    h('span', { class: 'muted' }, `opened ${time(r.opened_at)}`),
    r.closed_at ? h('span', { class: 'muted' }, `closed ${time(r.closed_at)}`) : null,
    r.deadline ? h('span', { class: 'deadline' }, `deadline ${time(r.deadline)} (${until(r.deadline)})`)
      : h('span', { class: 'muted' }, 'no deadline')),
  h('div', { class: 'grid2' },
    h('div', {}, h('h3', {}, 'Scores against the gate'), scoresTable(r)),
    h('div', {}, h('h3', {}, `Votes: ${approvals} of ${r.quorum} approvals needed`),
      votes.length ? h('ul', { class: 'votes' }, votes.map((v) => h('li', {},
        badge(v.decision === 'approve' ? 'approved' : 'rejected'), ' ', h('strong', {}, v.user),
        ` ${time(v.at)}`, v.retry ? ' (retry)' : '', v.reason ? ` — ${v.reason}` : ''))) : h('p', { class: 'muted' }, 'No votes yet.'))),
  h('details', { class: 'review-output' }, h('summary', {}, 'Output held for review'),
    h('pre', {}, json(r.output))),
  r.state === 'open' ? decision(r, ctx, reload) : null);
}

/** Every score the attempt reported, with the bound it was held to, then the criteria with no
 *  score at all (a missing score fails its criterion). */
function scoresTable(r) {
  const failed = r.failed || [];
  const byName = new Map();
  for (const f of failed) {
    const [kind, ...rest] = f.criterion.split('.');
    byName.set(rest.join('.'), { ...f, kind });
  }
  const rows = [];
  for (const [name, score] of Object.entries(r.scores || {})) {
    const f = byName.get(name);
    byName.delete(name);
    rows.push(h('tr', { class: f ? 'fail' : '' },
      h('td', {}, name), h('td', { class: 'num' }, fmt(score)),
      h('td', {}, f ? bound(f) : ''), h('td', {}, f ? badge('fail') : '')));
  }
  for (const [name, f] of byName) {
    rows.push(h('tr', { class: 'fail' }, h('td', {}, name), h('td', { class: 'muted' }, 'not reported'),
      h('td', {}, bound(f)), h('td', {}, badge('fail'))));
  }
  if (!rows.length) return h('p', { class: 'muted' }, 'No scores; the gate reviews every result.');
  return h('table', { class: 'scores' },
    h('thead', {}, h('tr', {}, h('th', {}, 'Score'), h('th', {}, 'Value'), h('th', {}, 'Bound'), h('th', {}, ''))),
    h('tbody', {}, rows));
}

function bound(f) {
  return `${f.kind === 'max_scores' ? '≤' : '≥'} ${fmt(f.bound)}`;
}

function fmt(n) {
  return typeof n === 'number' ? String(Math.round(n * 1000) / 1000) : String(n);
}

/** `in 4 m` / `5 m ago` from now to an RFC 3339 time. */
function until(t) {
  const ms = new Date(t).getTime() - Date.now();
  if (Number.isNaN(ms)) return '';
  const m = Math.round(Math.abs(ms) / 60000);
  const s = m < 1 ? 'under a minute' : m < 120 ? `${m} m` : `${Math.round(m / 60)} h`;
  return ms >= 0 ? `in ${s}` : `${s} ago`;
}

/** Approve / reject with a reason (required to reject), for the attempt shown. */
function decision(r, ctx, reload) {
  const may = ctx.can('operator');
  const id = cardId(r);
  const reason = h('textarea', { id: `reason-${id}`, class: 'reason-input', rows: 2,
    placeholder: 'Why (required to reject; recorded in the audit trail)', disabled: !may.ok });
  const retry = h('input', { type: 'checkbox', id: `retry-${id}`, disabled: !may.ok });
  const refusal = h('p', { class: 'refusal', role: 'alert', hidden: true });
  const btn = (cls, label, decide) => h('button', { type: 'button', class: cls, disabled: !may.ok,
    title: may.ok ? null : may.why, dataset: { decide } }, label);
  const approve = btn('primary approve', 'Approve', 'approve');
  const reject = btn('danger reject', 'Reject', 'reject');
  // An approver may correct the output instead of sending the attempt back (a reason is then
  // required); left untouched, the attempt's own output is approved.
  const original = json(r.output);
  const edited = h('textarea', { id: `output-${id}`, class: 'output-input', rows: 6,
    spellcheck: 'false', disabled: !may.ok, 'aria-label': 'Corrected output (JSON)' });
  edited.value = original;
  const correct = h('details', { class: 'correct' },
    h('summary', {}, 'Approve with a corrected output'),
    h('p', { class: 'muted' }, 'Edit the JSON object below; Approve then records it as the step\'s output.'),
    edited);

  async function send(kind) {
    refusal.hidden = true;
    const text = reason.value.trim();
    if (kind === 'reject' && !text) {
      showRefusal('A rejection needs a reason: it is recorded, and a retry gets it as feedback.');
      reason.focus();
      return;
    }
    const body = { type: kind === 'approve' ? 'approve_step' : 'reject_step', step_id: r.step_id,
      attempt: r.attempt, reason: text || null };
    if (kind === 'reject') body.retry = retry.checked;
    if (kind === 'approve' && correct.open && edited.value.trim() !== original.trim()) {
      let output;
      try { output = JSON.parse(edited.value); } catch (e) {
        showRefusal(`The corrected output is not JSON: ${e.message}`);
        edited.focus();
        return;
      }
      if (!output || typeof output !== 'object' || Array.isArray(output)) {
        showRefusal('The corrected output must be a JSON object.');
        edited.focus();
        return;
      }
      if (!text) {
        showRefusal('Correcting the output needs a reason: it is recorded with the change.');
        reason.focus();
        return;
      }
      body.output = output;
    }
    approve.disabled = reject.disabled = true;
    try {
      const rec = await api.post(`/v1/plans/${encodeURIComponent(r.plan_id)}/interventions`, body);
      ctx.flash(`${kind === 'approve' ? 'Approved' : 'Rejected'} ${r.plan_id} / ${r.step_id} attempt ${r.attempt}` +
        (rec.status === 'applied' ? '' : ` (${rec.status})`));
      await reload();
    } catch (e) {
      approve.disabled = reject.disabled = false;
      if (e instanceof api.ApiError && e.status === 409) {
        // The review closed or moved to another attempt, or this user already voted: the server
        // says which.
        showRefusal(`Not applied: ${e.message}`);
        await reload();
      } else if (e instanceof api.ApiError && e.status === 403) {
        showRefusal(`Refused: ${e.message}`);
      } else if (e instanceof api.ApiError) {
        showRefusal(`${e.message} (${e.code})`);
      } else {
        ctx.fail(e);
      }
    }
  }
  function showRefusal(text) { refusal.textContent = text; refusal.hidden = false; }

  approve.addEventListener('click', () => send('approve'));
  reject.addEventListener('click', () => send('reject'));
  return h('div', { class: 'decision' },
    h('label', { for: `reason-${id}` }, 'Reason'), reason, correct,
    h('div', { class: 'toolbar' }, approve, reject,
      h('label', { class: 'retry' }, retry, ' reject with a new attempt (the reason is its feedback)'),
      may.ok ? null : h('span', { class: 'reason' }, may.why)),
    refusal);
}
