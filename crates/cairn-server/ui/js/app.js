// The dashboard's shell: signs in, routes `#/…` to a page module, and gives pages what they
// share (`ctx`). A page module exports `render(main, params, ctx)`, which may answer a cleanup
// function called when the page is left (close streams, timers).
//
// Routes (deep links): #/plans, #/plans/{id}, #/plans/{id}/steps/{step},
// #/plans/{id}/steps/{step}/attempts/{n}, #/plans/{id}/{tab} (audit, checkpoints, history, events),
// #/reviews, #/templates, #/templates/{name}, #/templates/{name}/versions/{v}, #/workers,
// #/cluster, #/signin.

import * as api from './api.js';
import { h, fill } from './dom.js';

const ROUTES = [
  [/^\/?$/, () => import('./pages/plans.js'), () => ({})],
  [/^\/plans\/?$/, () => import('./pages/plans.js'), () => ({})],
  [/^\/plans\/([^/]+)\/steps\/([^/]+)\/attempts\/([^/]+)$/, () => import('./pages/plan.js'),
    (m) => ({ plan: m[1], step: m[2], attempt: m[3] })],
  [/^\/plans\/([^/]+)\/steps\/([^/]+)$/, () => import('./pages/plan.js'),
    (m) => ({ plan: m[1], step: m[2] })],
  [/^\/plans\/([^/]+)\/([a-z]+)$/, () => import('./pages/plan.js'), (m) => ({ plan: m[1], tab: m[2] })],
  [/^\/plans\/([^/]+)$/, () => import('./pages/plan.js'), (m) => ({ plan: m[1] })],
  [/^\/reviews\/?$/, () => import('./pages/reviews.js'), () => ({})],
  [/^\/templates\/?$/, () => import('./pages/templates.js'), () => ({})],
  [/^\/templates\/([^/]+)\/versions\/([^/]+)$/, () => import('./pages/templates.js'),
    (m) => ({ name: m[1], version: m[2] })],
  [/^\/templates\/([^/]+)$/, () => import('./pages/templates.js'), (m) => ({ name: m[1] })],
  [/^\/workers\/?$/, () => import('./pages/workers.js'), () => ({})],
  [/^\/cluster\/?$/, () => import('./pages/cluster.js'), () => ({})],
  [/^\/signin$/, () => import('./pages/signin.js'), () => ({})],
];

const RANK = { viewer: 1, operator: 2, admin: 3 };

/** What every page gets. */
export const ctx = {
  /** `{user, role}` of the signed-in token, or null. */
  who: null,
  /** `{ok: true}` when the signed-in role includes `needed` (viewer, operator, admin), else
   *  `{ok: false, why}` with the sentence a disabled control shows. */
  can(needed) {
    const role = ctx.who && ctx.who.role;
    if (role && (RANK[role] || 0) >= RANK[needed]) return { ok: true, why: '' };
    return { ok: false, why: `needs the ${needed} role; you are ${role || 'signed out'}` };
  },
  /** A message above the page: kind `ok` or `error`. */
  flash(message, kind = 'ok') {
    const el = document.getElementById('flash');
    fill(el, message);
    el.className = `flash ${kind}`;
    el.hidden = false;
    clearTimeout(ctx._flashTimer);
    if (kind === 'ok') ctx._flashTimer = setTimeout(() => { el.hidden = true; }, 4000);
  },
  /** Goes to `#/…` (adds a history entry). */
  navigate(hash) { location.hash = hash; },
  /** Replaces the current route without a new history entry (selection changes). */
  replace(hash) { history.replaceState(null, '', hash); },
  /** Shows an API error as a flash and answers it (for `catch`). */
  fail(e) {
    ctx.flash(e instanceof api.ApiError ? `${e.message} (${e.code})` : String(e), 'error');
    return e;
  },
};

let cleanup = null;
let generation = 0;

async function route() {
  const mine = ++generation;
  const path = location.hash.replace(/^#/, '') || '/plans';
  if (typeof cleanup === 'function') { try { cleanup(); } catch { /* page already gone */ } }
  cleanup = null;
  const main = document.getElementById('main');
  document.getElementById('flash').hidden = true;
  if (!ctx.who && path !== '/signin') {
    if (!(await signIn())) { location.hash = '#/signin'; return; }
  }
  for (const a of document.querySelectorAll('#nav a[data-section]')) {
    a.classList.toggle('current', path.startsWith(`/${a.dataset.section}`));
  }
  for (const [re, load, params] of ROUTES) {
    const m = path.match(re);
    if (!m) continue;
    let mod;
    try { mod = await load(); } catch (e) { fill(main, h('p', {}, `This page failed to load: ${e}`)); return; }
    if (mine !== generation) return;
    fill(main);
    const decoded = Object.fromEntries(Object.entries(params(m)).map(([k, v]) => [k, decodeURIComponent(v)]));
    cleanup = await mod.render(main, decoded, ctx);
    if (mine !== generation && typeof cleanup === 'function') { cleanup(); return; }
    // The page's first screen is in the DOM; once the browser has painted it, mark the time
    // (`performance.getEntriesByName('cairn:ready')`: what the benchmark reads).
    requestAnimationFrame(() => setTimeout(() => performance.mark('cairn:ready', { detail: path })));
    return;
  }
  fill(main, h('p', {}, 'No such page. ', h('a', { href: '#/plans' }, 'Plans')));
}

/** Asks the server who the stored token (or no token, under --no-auth) belongs to. */
export async function signIn() {
  try {
    ctx.who = await api.get('/v1/whoami');
  } catch (e) {
    ctx.who = null;
    if (!(e instanceof api.ApiError && e.status === 401)) ctx.fail(e);
  }
  showWho();
  return !!ctx.who;
}

export function signOut() {
  api.setToken('');
  ctx.who = null;
  showWho();
  location.hash = '#/signin';
}

function showWho() {
  const el = document.getElementById('who');
  if (!ctx.who) { fill(el); return; }
  fill(el, `${ctx.who.user} · ${ctx.who.role} `,
    api.token() ? h('button', { type: 'button', onclick: signOut }, 'Sign out') : null);
}

window.addEventListener('hashchange', route);
route();
