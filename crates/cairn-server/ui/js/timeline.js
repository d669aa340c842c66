// A timeline of attempts as SVG: one row per step (the rows the step list shows), one bar per
// attempt from its start to its end (to now while it runs), coloured by outcome. Clicking a
// row's label or a bar selects the step (a bar also selects its attempt); rows and bars are
// keyboard-operable.

import { svg, h, time, duration } from './dom.js';

const LABEL = 130;
const ROW = 20;
const BAR = 12;
const AXIS = 22;

/**
 * Draws `rows` (`[{step_id, index, attempts: [{attempt, outcome, started_at, ended_at}]}]`)
 * into `el`. `selected` = {step, attempt}; `onSelect(step, attempt|null)`.
 */
export function draw(el, rows, selected, onSelect) {
  const now = Date.now();
  let t0 = Infinity;
  let t1 = -Infinity;
  for (const r of rows) {
    for (const a of r.attempts) {
      const s = Date.parse(a.started_at);
      const e = a.ended_at ? Date.parse(a.ended_at) : now;
      t0 = Math.min(t0, s);
      t1 = Math.max(t1, e);
    }
  }
  const width = Math.max(320, el.clientWidth || 600);
  const plot = width - LABEL - 12;
  const height = AXIS + Math.max(1, rows.length) * ROW + 4;
  const nothing = !Number.isFinite(t0);
  if (nothing) { t0 = now; t1 = now + 1000; }
  if (t1 - t0 < 1000) t1 = t0 + 1000;
  const x = (t) => LABEL + ((t - t0) / (t1 - t0)) * plot;

  const pic = svg('svg', { id: 'timeline-svg', width, height, viewBox: `0 0 ${width} ${height}`,
    role: 'group', 'aria-label': 'Timeline of attempts' });
  // Axis: start, middle and end times, and the span.
  const axis = svg('g', { class: 'axis' });
  for (const f of [0, 0.5, 1]) {
    const t = t0 + f * (t1 - t0);
    const xx = LABEL + f * plot;
    axis.append(svg('line', { x1: xx, x2: xx, y1: AXIS - 4, y2: height, class: 'tick' }));
    axis.append(svg('text', { x: xx, y: AXIS - 8, 'text-anchor': f === 0 ? 'start' : f === 1 ? 'end' : 'middle' },
      f === 0 ? time(new Date(t).toISOString()).slice(11) : f === 1 ? `+${duration(t1 - t0)}` : `+${duration(t - t0)}`));
  }
  pic.append(axis);

  rows.forEach((r, k) => {
    const y = AXIS + k * ROW;
    const isSel = selected && selected.step === r.step_id;
    const row = svg('g', { class: `trow${isSel ? ' selected' : ''}`, dataset: { step: r.step_id } });
    row.append(svg('rect', { class: 'tband', x: 0, y, width, height: ROW }));
    const label = r.step_id.length > 18 ? `${r.step_id.slice(0, 17)}…` : r.step_id;
    const pick = (attempt) => () => onSelect(r.step_id, attempt);
    const keys = (attempt) => (e) => {
      if (e.key === 'Enter' || e.key === ' ') { e.preventDefault(); onSelect(r.step_id, attempt); }
    };
    row.append(svg('text', { class: 'tlabel', x: 4, y: y + ROW / 2 + 4, tabindex: '0', role: 'button',
      'aria-label': `step ${r.step_id}`, onclick: pick(null), onkeydown: keys(null) }, label,
    svg('title', {}, r.step_id)));
    for (const a of r.attempts) {
      const s = Date.parse(a.started_at);
      const e = a.ended_at ? Date.parse(a.ended_at) : now;
      const x1 = x(s);
      const w = Math.max(3, x(e) - x1);
      const on = isSel && selected.attempt === a.attempt;
      row.append(svg('rect', { class: `bar ${a.outcome}${on ? ' selected' : ''}${a.ended_at ? '' : ' open'}`,
        x: x1, y: y + (ROW - BAR) / 2, width: w, height: BAR, rx: 2, tabindex: '0', role: 'button',
        'aria-label': `attempt ${a.attempt} of ${r.step_id}: ${a.outcome}`, dataset: { attempt: String(a.attempt) },
        onclick: pick(a.attempt), onkeydown: keys(a.attempt) },
      svg('title', {}, `${r.step_id} attempt ${a.attempt} (run ${a.run}): ${a.outcome.replace(/_/g, ' ')}\n`
        + `${time(a.started_at)} → ${a.ended_at ? time(a.ended_at) : 'now'} (${duration(e - s)})`)));
    }
    pic.append(row);
  });
  el.replaceChildren(pic);
  if (nothing) el.append(h('p', { class: 'muted' }, 'No attempt has started among these steps yet.'));
}
