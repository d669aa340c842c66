// A plan's dependency graph as SVG: a layered layout (a step's level is one more than its
// deepest dependency's), columns left to right, edges from a dependency to its dependent,
// nodes coloured by status.
//
// A large plan is never laid out whole: above FULL steps (or when a level is taller than
// fits), the graph shows the selected step with its dependencies and dependents up to two
// levels away, at most WIDE per column ("+n more" for the rest), and a line counting the plan's
// steps per level. Every node is a keyboard-operable button (Enter or Space selects it).

import { svg, h } from './dom.js';

/** Plans up to this many steps are drawn whole. */
export const FULL = 60;
/** At most this many nodes per column. */
const WIDE = 12;
const NODE_W = 132;
const NODE_H = 26;
const COL = 172;
const ROW = 36;
const PAD = 28;

/** Indices, levels and dependents of the steps of a PlanView (O(steps + edges)). */
export function index(steps) {
  const byId = new Map();
  steps.forEach((s, i) => byId.set(s.step_id, i));
  const deps = steps.map((s) => (s.depends_on || []).map((d) => byId.get(d)).filter((j) => j !== undefined));
  const dependents = steps.map(() => []);
  deps.forEach((ds, i) => { for (const j of ds) dependents[j].push(i); });
  const level = new Int32Array(steps.length).fill(-1);
  // Iterative depth-first: a dependency's level is known before its dependent's.
  for (let root = 0; root < steps.length; root += 1) {
    if (level[root] >= 0) continue;
    const stack = [root];
    const onStack = new Set([root]);
    while (stack.length) {
      const i = stack[stack.length - 1];
      let pending = false;
      for (const j of deps[i]) {
        if (level[j] < 0 && !onStack.has(j)) { stack.push(j); onStack.add(j); pending = true; }
      }
      if (pending) continue;
      let l = 0;
      for (const j of deps[i]) l = Math.max(l, level[j] + 1);
      level[i] = l;
      stack.pop();
      onStack.delete(i);
    }
  }
  let levels = 0;
  for (const l of level) levels = Math.max(levels, l + 1);
  return { byId, deps, dependents, level, levels };
}

/**
 * Draws the graph of `view` into `el`. `selected` is a step id or null; `onSelect(id)` is
 * called when a node is chosen. `idx` is `index(view.steps)` (kept by the caller across draws).
 */
export function draw(el, view, idx, selected, onSelect) {
  const steps = view.steps;
  const sel = selected !== null && selected !== undefined ? idx.byId.get(selected) : undefined;
  const perLevel = new Array(idx.levels).fill(0);
  for (const l of idx.level) perLevel[l] += 1;
  const whole = steps.length <= FULL && Math.max(0, ...perLevel) <= 2 * WIDE;

  // Columns: level -> list of step indices (or a "+n more" marker).
  const columns = new Map();
  let note = '';
  if (whole) {
    steps.forEach((_, i) => {
      const l = idx.level[i];
      if (!columns.has(l)) columns.set(l, []);
      columns.get(l).push(i);
    });
  } else {
    const centre = sel !== undefined ? sel : defaultCentre(steps);
    const keep = new Map([[centre, 0]]);
    // Two levels up (dependencies) and two down (dependents), WIDE per ring.
    let ring = [centre];
    for (let d = 1; d <= 2; d += 1) {
      const nextRing = [];
      for (const i of ring) for (const j of idx.deps[i]) if (!keep.has(j)) { keep.set(j, -d); nextRing.push(j); }
      ring = nextRing;
    }
    ring = [centre];
    for (let d = 1; d <= 2; d += 1) {
      const nextRing = [];
      for (const i of ring) for (const j of idx.dependents[i]) if (!keep.has(j)) { keep.set(j, d); nextRing.push(j); }
      ring = nextRing;
    }
    for (const [i, rel] of keep) {
      if (!columns.has(rel)) columns.set(rel, []);
      columns.get(rel).push(i);
    }
    note = `${steps.length.toLocaleString()} steps in ${idx.levels.toLocaleString()} levels; showing `
      + `${steps[centre] ? steps[centre].step_id : ''} with its dependencies and dependents two levels either way.`;
  }
  const keys = [...columns.keys()].sort((a, b) => a - b);
  const pos = new Map();
  const more = [];
  let rows = 0;
  keys.forEach((key, c) => {
    let list = columns.get(key).sort((a, b) => a - b);
    if (list.length > WIDE * (whole ? 2 : 1)) {
      const cap = WIDE * (whole ? 2 : 1) - 1;
      // Keep the selection visible in a cut column.
      const head = list.slice(0, cap);
      if (sel !== undefined && list.includes(sel) && !head.includes(sel)) head[cap - 1] = sel;
      more.push({ c, row: head.length, n: list.length - head.length });
      list = head;
    }
    list.forEach((i, r) => pos.set(i, { x: PAD + c * COL, y: PAD + r * ROW }));
    rows = Math.max(rows, list.length + (more.length && more[more.length - 1].c === c ? 1 : 0));
  });
  const width = PAD * 2 + Math.max(1, keys.length) * COL - (COL - NODE_W);
  const height = PAD * 2 + Math.max(1, rows) * ROW - (ROW - NODE_H);

  const edges = svg('g', { class: 'edges' });
  for (const [i, p] of pos) {
    for (const j of idx.deps[i]) {
      const q = pos.get(j);
      if (!q) continue;
      const x1 = q.x + NODE_W, y1 = q.y + NODE_H / 2, x2 = p.x, y2 = p.y + NODE_H / 2;
      const mid = (x1 + x2) / 2;
      const hot = i === sel || j === sel;
      // An edge that skips a column on the same row would run under the nodes between: it
      // bows above them.
      const bow = y1 === y2 && x2 - x1 > COL ? NODE_H * 0.9 : 0;
      edges.append(svg('path', { d: `M${x1},${y1} C${mid},${y1 - bow * 1.6} ${mid},${y2 - bow * 1.6} ${x2},${y2}`,
        class: hot ? 'edge hot' : 'edge', 'marker-end': 'url(#arrow)' }));
    }
  }
  const nodes = svg('g', { class: 'nodes' });
  for (const [i, p] of pos) {
    const s = steps[i];
    const label = s.step_id.length > 17 ? `${s.step_id.slice(0, 16)}…` : s.step_id;
    const g = svg('g', { class: `node ${s.status}${i === sel ? ' selected' : ''}`, transform: `translate(${p.x},${p.y})`,
      tabindex: '0', role: 'button', 'aria-label': `step ${s.step_id}, ${s.status}`, dataset: { step: s.step_id },
      onclick: () => onSelect(s.step_id),
      onkeydown: (e) => { if (e.key === 'Enter' || e.key === ' ') { e.preventDefault(); onSelect(s.step_id); } } },
    svg('title', {}, `${s.step_id} · ${s.status} · ${s.agent_type}`),
    svg('rect', { width: NODE_W, height: NODE_H, rx: 4 }),
    svg('text', { x: 8, y: NODE_H / 2 + 4 }, label));
    nodes.append(g);
  }
  for (const m of more) {
    nodes.append(svg('text', { class: 'more', x: PAD + m.c * COL + 8, y: PAD + m.row * ROW + NODE_H / 2 + 4 },
      `+${m.n.toLocaleString()} more`));
  }
  const defs = svg('defs', {}, svg('marker', { id: 'arrow', viewBox: '0 0 8 8', refX: '8', refY: '4',
    markerWidth: '7', markerHeight: '7', orient: 'auto-start-reverse' }, svg('path', { d: 'M0,0 L8,4 L0,8 z', class: 'arrow' })));
  const pic = svg('svg', { id: 'graph-svg', width, height, viewBox: `0 0 ${width} ${height}`,
    role: 'group', 'aria-label': 'Dependency graph' }, defs, edges, nodes);
  // The picture scrolls in its own box; the note stays readable under it.
  const box = h('div', { class: 'graph-scroll' }, pic);
  el.replaceChildren(box);
  if (note) el.append(h('p', { class: 'muted graph-note' }, note, ' ', levelsLine(perLevel)));
  // Bring the selection into view inside the scrolling box.
  const p = sel !== undefined ? pos.get(sel) : undefined;
  if (p && box.scrollWidth > box.clientWidth) box.scrollLeft = Math.max(0, p.x + NODE_W / 2 - box.clientWidth / 2);
}

/** The step a large graph centres on when none is selected: the first running, else the first
 *  not ended, else the first. */
export function defaultCentre(steps) {
  let i = steps.findIndex((s) => s.status === 'running' || s.status === 'queued');
  if (i < 0) i = steps.findIndex((s) => !['completed', 'skipped', 'failed', 'cancelled'].includes(s.status));
  return i < 0 ? 0 : i;
}

function levelsLine(perLevel) {
  const shown = perLevel.slice(0, 12).map((n, l) => `L${l + 1}: ${n.toLocaleString()}`);
  return `Steps per level: ${shown.join(', ')}${perLevel.length > 12 ? ', …' : ''}.`;
}
