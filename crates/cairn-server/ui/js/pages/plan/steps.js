// The steps tab (#/plans/{id}, the default): the dependency graph, the timeline of attempts,
// the step list and the selected step's details, kept in sync: selecting a step in any of them
// selects it in the others and puts it in the URL (#/plans/{id}/steps/{step}[/attempts/{n}]).
//
// Large plans: the list shows PAGE steps at a time (filtered by id and status, client-side over
// the state already loaded), the timeline shows the same rows (their spans read with
// `GET /v1/plans/{id}/attempts?steps=…`), the graph draws only what fits (graph.js), and the
// details read one step (`GET /v1/plans/{id}/steps/{step}`). Nothing draws 10,000 of anything.
//
// Hook for the interventions: when `../../interventions.js` exists and exports
// `stepActions(step, live, ctx)`, the details panel appends what it answers (an element);
// `step` is the step as the plan's state lists it (`live.view.steps[i]`) with `detail`, the
// answer of `GET /v1/plans/{id}/steps/{step}`.

import * as api from '../../api.js';
import { h, fill, badge, time, duration, json } from '../../dom.js';
import * as graph from '../../graph.js';
import * as timeline from '../../timeline.js';

const PAGE = 50;
const STATUSES = ['', 'pending', 'queued', 'running', 'awaiting_review', 'completed', 'failed', 'skipped', 'cancelled'];
/** Event types that may change any step (not only the one they name). */
const PLAN_WIDE = new Set(['plan_cancelled', 'checkpoint_restored', 'intervention_applied', 'plan_registered']);

let actionsModule = null;
function interventions() {
  if (!actionsModule) actionsModule = import('../../interventions.js').catch(() => null);
  return actionsModule;
}

export async function render(el, live, params, ctx) {
  const enc = encodeURIComponent(live.id);
  const st = {
    selected: params.step || null,
    attempt: params.attempt ? Number(params.attempt) : null,
    filter: '',
    status: '',
    page: 0,
    rows: [], // the indices of the filtered steps
    spans: [],
    detail: null,
    idx: graph.index(live.view.steps),
    version: live.view.version,
    count: live.view.steps.length,
    gen: 0,
    detailDrawn: '',
  };

  const filter = h('input', { id: 'steps-filter', type: 'search', placeholder: 'Find a step by id',
    'aria-label': 'Find steps by id', maxlength: '128' });
  const status = h('select', { id: 'steps-status', 'aria-label': 'Step status' },
    STATUSES.map((s) => h('option', { value: s }, s ? s.replace('_', ' ') : 'every status')));
  const summary = h('span', { id: 'steps-summary', class: 'muted' });
  const graphBox = h('div', { id: 'graph', class: 'graph' });
  const timeBox = h('div', { id: 'timeline', class: 'timeline' });
  const list = h('tbody', { id: 'steps-body' });
  const prev = h('button', { type: 'button', id: 'steps-prev', onclick: () => turn(-1) }, '← Previous');
  const next = h('button', { type: 'button', id: 'steps-next', onclick: () => turn(1) }, 'Next →');
  const where = h('span', { id: 'steps-page', class: 'muted' });
  const details = h('section', { id: 'step-details', class: 'card details', 'aria-live': 'polite' });

  // Up and down arrows in the list move the selection (and the focus) to the step before or
  // after, across pages.
  list.addEventListener('keydown', (e) => {
    if (e.key !== 'ArrowDown' && e.key !== 'ArrowUp') return;
    const steps = live.view.steps;
    const at = st.rows.indexOf(st.idx.byId.get(st.selected));
    const to = at < 0 ? st.page * PAGE : at + (e.key === 'ArrowDown' ? 1 : -1);
    if (to < 0 || to >= st.rows.length) return;
    e.preventDefault();
    const id = steps[st.rows[to]].step_id;
    select(id, null);
    const link = list.querySelector(`tr[data-step="${CSS.escape(id)}"] a`);
    if (link) link.focus();
  });

  let typing = null;
  filter.addEventListener('input', () => {
    clearTimeout(typing);
    typing = setTimeout(() => { st.filter = filter.value.trim(); st.page = 0; refilter(); follow(); showPage(true); }, 150);
  });
  status.addEventListener('change', () => { st.status = status.value; st.page = 0; refilter(); follow(); showPage(true); });

  fill(el,
    h('div', { class: 'toolbar' }, filter, status, summary),
    h('div', { class: 'grid2' },
      h('section', { class: 'card' }, h('h2', {}, 'Dependencies'), graphBox),
      h('section', { class: 'card' }, h('h2', {}, 'Timeline'), timeBox)),
    h('div', { class: 'grid2' },
      h('section', { class: 'card' }, h('h2', {}, 'Steps'),
        h('div', { class: 'scroll-x steps-scroll' }, h('table', { id: 'steps-list', class: 'steps' },
          h('thead', {}, h('tr', {}, h('th', {}, '#'), h('th', {}, 'Step'), h('th', {}, 'Status'),
            h('th', {}, 'Attempts'), h('th', { class: 'hide-narrow' }, 'Agent'), h('th', { class: 'hide-narrow' }, 'Took'))),
          list)),
        h('div', { class: 'toolbar' }, prev, where, next)),
      details));

  function refilter() {
    const steps = live.view.steps;
    const part = st.filter;
    const want = st.status;
    st.rows = [];
    for (let i = 0; i < steps.length; i += 1) {
      const s = steps[i];
      if (want && s.status !== want) continue;
      if (part && !s.step_id.includes(part)) continue;
      st.rows.push(i);
    }
    const counts = {};
    for (const s of steps) counts[s.status] = (counts[s.status] || 0) + 1;
    summary.textContent = `${steps.length.toLocaleString()} step${steps.length === 1 ? '' : 's'}: ${Object.entries(counts)
      .map(([k, n]) => `${n.toLocaleString()} ${k.replace('_', ' ')}`).join(', ')}`;
  }

  /** The page's step ids. */
  function pageIds() {
    const steps = live.view.steps;
    return st.rows.slice(st.page * PAGE, (st.page + 1) * PAGE).map((i) => steps[i].step_id);
  }

  /** Puts the selected step on the shown page when it passes the filters. */
  function follow() {
    if (!st.selected) return;
    const i = st.idx.byId.get(st.selected);
    const k = st.rows.indexOf(i);
    if (k >= 0) st.page = Math.floor(k / PAGE);
  }

  function turn(d) {
    const pages = Math.max(1, Math.ceil(st.rows.length / PAGE));
    st.page = Math.min(pages - 1, Math.max(0, st.page + d));
    showPage(true);
  }

  function drawList() {
    const steps = live.view.steps;
    const ids = pageIds();
    fill(list, ids.length ? ids.map((id) => {
      const i = st.idx.byId.get(id);
      const s = steps[i];
      const took = s.started_at && s.ended_at ? duration(Date.parse(s.ended_at) - Date.parse(s.started_at)) : '';
      const sel = id === st.selected;
      return h('tr', { class: sel ? 'selected' : '', dataset: { step: id }, 'aria-current': sel ? 'true' : null },
        h('td', { class: 'muted' }, String(i + 1)),
        h('td', {}, h('a', { href: stepHash(id), onclick: (e) => { e.preventDefault(); select(id, null); } }, id)),
        h('td', {}, badge(s.status), s.waiting_for ? h('div', { class: 'reason' }, `waits for ${s.waiting_for}`) : null),
        h('td', {}, String(s.attempts)),
        h('td', { class: 'hide-narrow' }, s.agent_type),
        h('td', { class: 'hide-narrow' }, took));
    }) : h('tr', {}, h('td', { colspan: '6', class: 'muted' }, 'No step matches.')));
    const pages = Math.max(1, Math.ceil(st.rows.length / PAGE));
    prev.disabled = st.page === 0;
    next.disabled = st.page >= pages - 1;
    const from = st.page * PAGE;
    where.textContent = st.rows.length
      ? `${(from + 1).toLocaleString()}–${Math.min(from + PAGE, st.rows.length).toLocaleString()} of ${st.rows.length.toLocaleString()}`
      : '';
  }

  /** Redraws `box` with `draw()`, giving the focus back to the same node or bar if it had it. */
  function keepFocus(box, draw) {
    const had = document.activeElement;
    if (!had || !box.contains(had)) { draw(); return; }
    const key = (el) => {
      const host = el.closest('[data-step]');
      return `${el.tagName}|${host ? host.dataset.step : ''}|${el.dataset.attempt || ''}`;
    };
    const want = key(had);
    draw();
    for (const el of box.querySelectorAll('a, button, [tabindex]')) {
      if (key(el) === want) { el.focus({ preventScroll: true }); break; }
    }
  }

  function drawGraph() {
    keepFocus(graphBox, () => graph.draw(graphBox, live.view, st.idx, st.selected, (id) => select(id, null)));
  }

  function drawTimeline() {
    keepFocus(timeBox, () => timeline.draw(timeBox, st.spans, { step: st.selected, attempt: st.attempt },
      (id, n) => select(id, n)));
  }

  async function loadSpans() {
    const ids = pageIds();
    const mine = ++st.gen;
    if (!ids.length) { st.spans = []; drawTimeline(); return; }
    try {
      const page = await api.get(`/v1/plans/${enc}/attempts${api.query({ steps: ids.join(',') })}`);
      if (mine !== st.gen) return;
      st.spans = page.items;
    } catch (e) {
      if (mine !== st.gen) return;
      ctx.fail(e);
      st.spans = [];
    }
    drawTimeline();
  }

  function showPage(spans) {
    keepFocus(list, drawList);
    if (spans) loadSpans(); else drawTimeline();
  }

  function stepHash(id, attempt) {
    return `#/plans/${enc}/steps/${encodeURIComponent(id)}${attempt ? `/attempts/${attempt}` : ''}`;
  }

  /** Selects a step (and an attempt) everywhere, and in the URL. */
  function select(id, attempt) {
    const changedStep = id !== st.selected;
    st.selected = id;
    st.attempt = attempt || null;
    ctx.replace(stepHash(id, st.attempt));
    const before = st.page;
    follow();
    drawGraph();
    showPage(st.page !== before);
    if (changedStep || !st.detail) loadDetail(); else drawDetail();
  }

  async function loadDetail() {
    const id = st.selected;
    if (!id) { drawDetail(); return; }
    try {
      const d = await api.get(`/v1/plans/${enc}/steps/${encodeURIComponent(id)}`);
      if (id !== st.selected) return;
      st.detail = d;
    } catch (e) {
      if (id !== st.selected) return;
      st.detail = null;
      if (e instanceof api.ApiError && e.status === 404) {
        details.dataset.shown = '';
        fill(details, h('h2', {}, id), h('p', { class: 'muted' }, 'This plan has no such step (any more).'));
        return;
      }
      ctx.fail(e);
    }
    drawDetail();
  }

  /** What the details panel shows of the plan's live view (besides the step read with
   *  `loadDetail`): an event that changes none of it leaves the panel as it is. */
  function detailKey() {
    const d = st.detail;
    if (!st.selected || !d || d.step_id !== st.selected) return `-\n${st.selected}`;
    const view = live.view.steps[st.idx.byId.get(d.step_id)];
    return [d.step_id, st.attempt, view ? view.status : '', view ? view.waiting_for || '' : '',
      live.view.total_steps, live.view.state].join('\n');
  }

  function drawDetail() {
    const d = st.detail;
    st.detailDrawn = detailKey();
    // The sections the user opened (the definition, …) stay open when the same step is drawn
    // again with news.
    const same = d && details.dataset.shown === d.step_id;
    const opened = new Set(same ? [...details.querySelectorAll('details[open] > summary')]
      .map((x) => x.textContent) : []);
    const restore = (box) => {
      for (const x of box.querySelectorAll('details > summary')) {
        if (opened.has(x.textContent)) x.parentElement.open = true;
      }
    };
    if (!st.selected || !d || d.step_id !== st.selected) {
      details.dataset.shown = '';
      fill(details, h('h2', {}, 'Step'), h('p', { class: 'muted' },
        'Select a step in the graph, the timeline or the list to see its attempts, output, scores and invocation.'));
      return;
    }
    const view = live.view.steps[st.idx.byId.get(d.step_id)];
    const def = d.definition;
    const latest = d.attempts[d.attempts.length - 1];
    const chosen = d.attempts.find((a) => a.attempt === st.attempt) || null;
    const kv = (k, v) => (v === undefined || v === null || v === '' ? null : [h('dt', {}, k), h('dd', {}, v)]);
    const actions = h('div', { id: 'step-actions', class: 'toolbar' });
    fill(details,
      h('h2', {}, d.step_id, ' ', badge(view ? view.status : d.status)),
      h('p', { class: 'muted' }, `${def.action} · ${def.agent_type} · step ${d.index + 1} of ${live.view.total_steps}`),
      actions,
      h('dl', { class: 'kv' },
        kv('Depends on', d.depends_on.length ? d.depends_on.map((dep, k) => [k ? ', ' : '',
          h('a', { href: stepHash(dep), onclick: (e) => { e.preventDefault(); select(dep, null); } }, dep)]) : 'nothing'),
        kv('Run', String(d.run)),
        kv('Idempotency key', h('code', { id: 'step-key' }, d.idempotency_key)),
        kv('Started', time(d.started_at)),
        kv('Ended', time(d.ended_at)),
        kv('Took', d.started_at && d.ended_at ? duration(Date.parse(d.ended_at) - Date.parse(d.started_at)) : ''),
        kv('Retries at', time(d.retry_at)),
        kv('Waiting for', view && view.waiting_for)),
      d.error ? [h('h3', {}, 'Error'), h('pre', { class: 'error', id: 'step-error' }, d.error)] : null,
      def.quality_gate ? gateTable(def.quality_gate, d.scores || (latest && latest.scores), latest) : null,
      d.output !== undefined && d.output !== null ? [h('h3', {}, 'Output'), h('pre', { id: 'step-output' }, json(d.output))] : null,
      h('h3', {}, `Attempts (${d.attempts.length})`),
      d.attempts.length ? attemptsTable(d) : h('p', { class: 'muted' }, 'None yet.'),
      chosen ? attemptDetail(chosen, def) : null,
      h('details', {}, h('summary', {}, 'Definition'), h('pre', {}, json(def))));
    details.dataset.shown = d.step_id;
    restore(details);
    interventions().then((mod) => {
      if (mod && typeof mod.stepActions === 'function' && view && actions.isConnected) {
        try {
          const node = mod.stepActions({ ...view, detail: d }, live, ctx);
          if (node) { actions.append(node); restore(node); }
        } catch (e) { console.error(e); }
      }
    });
  }

  function attemptsTable(d) {
    return h('div', { class: 'scroll-x' }, h('table', { id: 'attempts', class: 'attempts' },
      h('thead', {}, h('tr', {}, h('th', {}, '#'), h('th', {}, 'Outcome'), h('th', {}, 'Started'),
        h('th', {}, 'Took'), h('th', { class: 'hide-narrow' }, 'Run'))),
      h('tbody', {}, d.attempts.map((a) => h('tr', { class: a.attempt === st.attempt ? 'selected' : '',
        dataset: { attempt: String(a.attempt) } },
      h('td', {}, h('a', { href: stepHash(d.step_id, a.attempt),
        onclick: (e) => { e.preventDefault(); select(d.step_id, a.attempt === st.attempt ? null : a.attempt); } },
      String(a.attempt))),
      h('td', {}, badge(a.outcome), a.error ? h('div', { class: 'reason clip' }, a.error) : null),
      h('td', {}, time(a.started_at)),
      h('td', {}, a.ended_at ? duration(Date.parse(a.ended_at) - Date.parse(a.started_at)) : 'running'),
      h('td', { class: 'hide-narrow' }, String(a.run)))))));
  }

  function attemptDetail(a, def) {
    return h('section', { id: 'attempt-detail', class: 'card' },
      h('h3', {}, `Attempt ${a.attempt} `, badge(a.outcome)),
      h('dl', { class: 'kv' },
        kv2('Run', String(a.run)),
        kv2('Idempotency key', h('code', {}, a.idempotency_key)),
        kv2('Started', time(a.started_at)),
        kv2('Ended', a.ended_at ? time(a.ended_at) : 'still running'),
        kv2('Worker', a.worker_id),
        kv2('Review', a.review_id),
        kv2('Retried at', time(a.retry_at))),
      a.error ? [h('h4', {}, 'Error'), h('pre', { class: 'error' }, a.error)] : null,
      a.invocation ? [h('h4', {}, 'Invocation'),
        h('p', {}, h('code', {}, a.invocation.action), ' on ', h('code', {}, a.invocation.agent_type)),
        h('pre', { id: 'attempt-params' }, json(a.invocation.params))]
        : h('p', { class: 'muted' }, 'No invocation recorded (a log written before invocations were kept).'),
      def.quality_gate && a.scores ? gateTable(def.quality_gate, a.scores, a) : null,
      a.output !== undefined && a.output !== null ? [h('h4', {}, 'Output'), h('pre', {}, json(a.output))] : null);
  }

  function kv2(k, v) { return v === undefined || v === null || v === '' ? null : [h('dt', {}, k), h('dd', {}, v)]; }

  function gateTable(gate, scores, attempt) {
    const rows = [];
    const failed = new Set(((attempt && attempt.failed) || []).map((f) => f.criterion));
    const add = (kind, name, bound) => {
      const score = scores ? scores[name] : undefined;
      const has = typeof score === 'number';
      const ok = has && (kind === 'min' ? score >= bound : score <= bound);
      const crit = `${kind}_scores.${name}`;
      rows.push(h('tr', { class: ok ? '' : 'fail' },
        h('td', {}, name),
        h('td', {}, `${kind === 'min' ? '≥' : '≤'} ${bound}`),
        h('td', {}, has ? String(score) : '—'),
        h('td', {}, badge(!has && !scores ? 'pending' : ok && !failed.has(crit) ? 'pass' : 'fail'))));
    };
    for (const [n, b] of Object.entries(gate.min_scores || {})) add('min', n, b);
    for (const [n, b] of Object.entries(gate.max_scores || {})) add('max', n, b);
    return [h('h4', {}, 'Scores against the gate', attempt && attempt.verdict ? ` (verdict: ${attempt.verdict})` : ''),
      h('table', { class: 'gate' }, h('thead', {}, h('tr', {}, h('th', {}, 'Score'), h('th', {}, 'Bound'),
        h('th', {}, 'Value'), h('th', {}, ''))), h('tbody', {}, rows))];
  }

  // Live: after each refresh, redraw what changed. The timeline and details are read again
  // only when an event names one of their steps (or may change any step).
  const off = live.on((view, events) => {
    if (view.version !== st.version || view.steps.length !== st.count) {
      st.idx = graph.index(view.steps);
      st.version = view.version;
      st.count = view.steps.length;
    }
    refilter();
    const pages = Math.max(1, Math.ceil(st.rows.length / PAGE));
    if (st.page >= pages) st.page = pages - 1;
    const onPage = new Set(pageIds());
    let spans = false;
    let detail = false;
    for (const ev of events) {
      const type = ev.event;
      const step = ev.data && ev.data.data && ev.data.data.step_id;
      if (PLAN_WIDE.has(type)) { spans = true; detail = true; }
      if (step && onPage.has(step)) spans = true;
      if (step && step === st.selected) detail = true;
    }
    drawGraph();
    showPage(spans || !events.length);
    if (detail || !events.length) loadDetail();
    else if (detailKey() !== st.detailDrawn) drawDetail();
  });

  // First screen: list, graph and details at once; the timeline's spans follow.
  refilter();
  if (st.selected && !st.idx.byId.has(st.selected)) {
    ctx.flash(`This plan has no step ${st.selected}.`, 'error');
    st.selected = null;
  }
  follow();
  drawList();
  drawGraph();
  drawDetail();
  loadSpans();
  if (st.selected) loadDetail();
  const onResize = () => drawTimeline();
  window.addEventListener('resize', onResize);
  // Bars of attempts still running grow with the clock, between events too.
  const tick = setInterval(() => {
    if (!document.hidden && st.spans.some((r) => r.attempts.some((a) => !a.ended_at))) drawTimeline();
  }, 2000);
  return () => { off(); clearTimeout(typing); clearInterval(tick); window.removeEventListener('resize', onResize); };
}
