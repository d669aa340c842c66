// Sign in with a token (`cairn tokens create …` or the one `cairn serve` printed at first
// start). Kept in this tab's sessionStorage only.

import * as api from '../api.js';
import { h } from '../dom.js';
import { signIn } from '../app.js';

export async function render(main, _params, ctx) {
  if (await signIn()) { ctx.navigate('#/plans'); return; }
  const input = h('input', { type: 'password', id: 'token', name: 'token', autocomplete: 'off',
    placeholder: 'cairn_…', 'aria-label': 'API token' });
  const error = h('p', { class: 'reason', role: 'alert' });
  const form = h('form', { class: 'card signin', onsubmit: async (ev) => {
    ev.preventDefault();
    api.setToken(input.value.trim());
    if (await signIn()) { ctx.navigate('#/plans'); return; }
    api.setToken('');
    error.textContent = 'That token was not accepted (unknown, revoked or expired).';
  } },
  h('h1', {}, 'Sign in'),
  h('p', { class: 'muted' }, 'Paste an API token. It is kept for this tab only.'),
  input, error,
  h('button', { class: 'primary', type: 'submit', id: 'signin' }, 'Sign in'));
  main.append(form);
  input.focus();
}
