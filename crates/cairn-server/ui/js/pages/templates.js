// Templates: the latest version of each (`GET /v1/templates`), and one template's page
// (`GET /v1/templates/{name}`): its versions, the selected version's parameters and steps, and a
// start form generated from the version's parameter schema. The form has one field per input:
// a text box for a string, a number box for a number or an integer, a checkbox for a boolean, a
// list for an enum; required inputs are marked, defaults filled in. Starting posts
// `/v1/templates/{name}/instantiate` and opens the new plan. Values the form cannot type (an
// object, an array) are read as JSON. Below, two versions compared side by side
// (`GET /v1/templates/{name}/diff?from=&to=`): the version before the shown one against it, by
// default.

import * as api from '../api.js';
import { h, fill, time, json } from '../dom.js';
import { changes } from './plan/history.js';

export async function render(main, params, ctx) {
  if (params.name) return renderOne(main, params.name, params.version, ctx);
  const body = h('tbody', { id: 'templates-body' });
  main.append(
    h('h1', {}, 'Templates'),
    h('p', { class: 'muted' }, 'Plans with parameters. Push one with ',
      h('code', {}, 'cairn templates push FILE'), '; start one from its page.'),
    h('div', { class: 'table-scroll' }, h('table', { id: 'templates' },
      h('thead', {}, h('tr', {}, h('th', {}, 'Name'), h('th', {}, 'Version'), h('th', {}, 'Description'),
        h('th', {}, 'Pushed'))),
      body)));
  try {
    const page = await api.get('/v1/templates?limit=200');
    fill(body, page.items.length ? page.items.map((t) => h('tr', { dataset: { template: t.name } },
      h('td', {}, h('a', { href: `#/templates/${encodeURIComponent(t.name)}` }, t.name)),
      h('td', {}, String(t.version)),
      h('td', {}, t.description || ''),
      h('td', {}, `${time(t.created_at)} by ${t.created_by}`)))
      : h('tr', {}, h('td', { colspan: 4, class: 'muted' }, 'No templates yet.')));
  } catch (e) {
    ctx.fail(e);
  }
  return null;
}

async function renderOne(main, name, pinned, ctx) {
  let detail;
  try {
    detail = await api.get(`/v1/templates/${encodeURIComponent(name)}`);
  } catch (e) {
    fill(main, h('p', {}, `Template ${name}: ${e.message}. `, h('a', { href: '#/templates' }, 'All templates')));
    return null;
  }
  let shown = detail.latest;
  if (pinned && Number(pinned) !== detail.latest.version) {
    try {
      shown = await api.get(`/v1/templates/${encodeURIComponent(name)}/versions/${encodeURIComponent(pinned)}`);
    } catch (e) { ctx.fail(e); }
  }
  const versions = h('ul', { id: 'template-versions', class: 'plain' },
    detail.versions.slice().reverse().map((v) => h('li', { dataset: { version: v.version } },
      v.version === shown.version
        ? h('strong', {}, `version ${v.version}`)
        : h('a', { href: `#/templates/${encodeURIComponent(name)}/versions/${v.version}` }, `version ${v.version}`),
      ` · ${time(v.created_at)} by ${v.created_by}`)));
  const deleted = shown.deleted_at ? h('p', { class: 'flash error', id: 'template-deleted' },
    `Deleted ${time(shown.deleted_at)}: no new plans can be made of it.`) : null;
  const steps = (shown.plan.steps || []).map((s) => h('li', {}, h('code', {}, s.step_id), ` ${s.action} (${s.agent_type})`,
    s.when ? h('span', { class: 'muted' }, ` when ${s.when}`) : null));
  main.append(
    h('p', {}, h('a', { href: '#/templates' }, '← Templates')),
    h('h1', {}, `${name} `, h('span', { class: 'muted' }, `version ${shown.version}`)),
    shown.description ? h('p', {}, shown.description) : null,
    deleted,
    h('div', { class: 'columns' },
      h('section', { class: 'card' }, h('h2', {}, 'Start a plan'), startForm(name, shown, ctx)),
      h('section', { class: 'card' },
        h('h2', {}, 'Versions'), versions,
        h('h2', {}, 'Steps'), h('ol', { id: 'template-steps' }, steps),
        h('details', {}, h('summary', {}, 'Parameters (JSON Schema)'), h('pre', {}, json(shown.parameters))))),
    compareVersions(name, detail, shown, ctx));
  return null;
}

/** Two versions of the template side by side: each change before | after. */
function compareVersions(name, detail, shown, ctx) {
  const all = detail.versions.map((v) => v.version);
  const pick = (id, label, chosen) => h('select', { id, 'aria-label': label },
    all.map((v) => h('option', { value: String(v), selected: v === chosen }, `v${v}`)));
  const before = all.filter((v) => v < shown.version).pop() ?? shown.version;
  const from = pick('template-diff-from', 'Compare from version', before);
  const to = pick('template-diff-to', 'Compare to version', shown.version);
  const out = h('div', { id: 'template-diff', 'aria-live': 'polite' });
  // Only the answer to the latest question is drawn (answers can arrive out of order).
  let asked = 0;
  async function compare() {
    const mine = ++asked;
    try {
      const d = await api.get(`/v1/templates/${encodeURIComponent(name)}/diff${api.query({ from: from.value, to: to.value })}`);
      if (mine !== asked) return;
      fill(out, h('h3', {}, `Version ${d.from} → ${d.to}`), changes(d.diff));
    } catch (e) { if (mine === asked) ctx.fail(e); }
  }
  for (const sel of [from, to]) sel.addEventListener('change', compare);
  compare();
  return h('section', { class: 'card', id: 'template-compare' },
    h('h2', {}, 'Compare versions'),
    h('div', { class: 'toolbar' }, h('label', {}, 'Compare ', from), h('label', {}, ' with ', to)),
    out);
}

/** The start form of `version`, one field per input of its parameter schema. */
function startForm(name, version, ctx) {
  const schema = version.parameters || {};
  const props = schema.properties || {};
  const required = new Set(schema.required || []);
  const fields = Object.entries(props).map(([input, prop]) => field(input, prop || {}, required.has(input)));
  const planId = h('input', { id: 'start-plan-id', name: 'plan_id', placeholder: 'a fresh id' });
  const error = h('div', { id: 'start-error', role: 'alert', class: 'error', hidden: true });
  const can = ctx.can('operator');
  const button = h('button', { type: 'submit', id: 'start', class: 'primary', disabled: !can.ok || !!version.deleted_at,
    title: can.ok ? '' : can.why }, 'Start');
  // The server checks the inputs and names every failing one; the browser's own checks would
  // stop at the first.
  const form = h('form', { id: 'start-form', class: 'stack', novalidate: true },
    fields.map((f) => f.el),
    h('label', {}, 'Plan id ', h('span', { class: 'muted' }, '(optional)'), planId),
    error, button);
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    error.hidden = true;
    const inputs = {};
    const problems = [];
    for (const f of fields) {
      const got = f.read();
      if (got.error) problems.push(`${f.input}: ${got.error}`);
      else if (got.value !== undefined) inputs[f.input] = got.value;
    }
    if (problems.length) { showError(error, problems); return; }
    const body = { inputs, version: version.version };
    if (planId.value.trim()) body.plan_id = planId.value.trim();
    button.disabled = true;
    try {
      const plan = await api.post(`/v1/templates/${encodeURIComponent(name)}/instantiate`, body);
      ctx.flash(`Started plan ${plan.plan_id} from ${name} version ${version.version}`);
      ctx.navigate(`#/plans/${encodeURIComponent(plan.plan_id)}`);
    } catch (e) {
      const faults = (e.body && e.body.error && e.body.error.faults) || [];
      showError(error, faults.length ? faults.map((f) => `${f.path}: ${f.message}`) : [e.message]);
      button.disabled = false;
    }
  });
  return form;
}

function showError(el, lines) {
  fill(el, h('ul', {}, lines.map((l) => h('li', {}, l))));
  el.hidden = false;
}

/** One input's field: `{input, el, read() -> {value} | {error}}`. */
function field(input, prop, isRequired) {
  const id = `input-${input}`;
  const kind = Array.isArray(prop.enum) ? 'enum' : prop.type;
  const label = (control) => h('label', { for: id, dataset: { input } },
    input, isRequired ? h('abbr', { class: 'required', title: 'required' }, ' *') : null,
    prop.description ? h('span', { class: 'muted' }, ` ${prop.description}`) : null,
    control);
  const has = prop.default !== undefined;
  if (kind === 'boolean') {
    const box = h('input', { id, type: 'checkbox', checked: has ? !!prop.default : false });
    return { input, el: label(box), read: () => ({ value: box.checked }) };
  }
  if (kind === 'enum') {
    const select = h('select', { id },
      isRequired && !has ? h('option', { value: '' }, '— choose —') : null,
      !isRequired ? h('option', { value: '' }, has ? '(default)' : '(none)') : null,
      prop.enum.map((v) => h('option', { value: JSON.stringify(v), selected: has && v === prop.default }, String(v))));
    return {
      input, el: label(select),
      read: () => (select.value === '' ? (isRequired && !has ? { error: 'choose a value' } : {}) : { value: JSON.parse(select.value) }),
    };
  }
  const numeric = kind === 'number' || kind === 'integer';
  const text = h('input', {
    id, type: numeric ? 'number' : 'text', step: kind === 'integer' ? '1' : (numeric ? 'any' : undefined),
    min: prop.minimum, max: prop.maximum, required: isRequired && !has,
    value: has ? (typeof prop.default === 'string' ? prop.default : JSON.stringify(prop.default)) : '',
  });
  return {
    input, el: label(text),
    read: () => {
      const raw = text.value;
      if (raw === '') return isRequired && !has ? { error: 'required' } : {};
      if (numeric) {
        const n = Number(raw);
        return Number.isNaN(n) ? { error: 'not a number' } : { value: n };
      }
      if (kind === 'string' || kind === undefined) {
        if (kind === undefined) { try { return { value: JSON.parse(raw) }; } catch { return { value: raw }; } }
        return { value: raw };
      }
      try { return { value: JSON.parse(raw) }; } catch { return { error: 'not valid JSON' }; }
    },
  };
}
