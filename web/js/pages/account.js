// Sign in, sign up, and the account page: linked meters and API tokens for bots.
import { api, get, post } from '../api.js';
import { t } from '../i18n.js';
import { h, field, form, submitting, showError, table, toast, dateTime } from '../ui.js';

export function render(main, ctx, name) {
  if (name === 'signin') return signIn(main, ctx);
  if (name === 'signup') return signUp(main, ctx);
  return account(main, ctx);
}

const nameGuess = (err) => (err.status === 401 ? 'password' : /password/i.test(err.message) ? 'password' : /name/i.test(err.message) ? 'name' : null);

function credentialsForm(id, submitLabel, passwordHint, onSubmit) {
  const nameInput = h('input', { type: 'text', autocomplete: 'username', required: true, autocapitalize: 'none', spellcheck: 'false' });
  const passwordInput = h('input', { type: 'password', autocomplete: id === 'signup' ? 'new-password' : 'current-password', required: true });
  const f = form({ id: `${id}-form` },
    field('name', t('name'), nameInput, id === 'signup' ? t('name_hint') : null),
    field('password', t('password'), passwordInput, passwordHint),
    h('div', {}, h('button', { type: 'submit' }, submitLabel)));
  f.addEventListener('submit', (e) => {
    e.preventDefault();
    const creds = { name: nameInput.value.trim(), password: passwordInput.value };
    onSubmit(f, creds);
  });
  return f;
}

function signIn(main, ctx) {
  const f = credentialsForm('signin', t('sign_in'), null, (f, creds) => submitting(f, async () => {
    if (!creds.name) return showError(f, 'name', t('name_required'));
    if (!creds.password) return showError(f, 'password', t('password_required'));
    try {
      await post('/sessions', creds);
    } catch (err) {
      if (err.status === 401) err.message = t('wrong_password');
      throw err;
    }
    await ctx.refreshSession();
    ctx.go('home');
  }, nameGuess));
  main.append(h('section', { class: 'card auth' },
    h('h1', {}, t('sign_in')), f,
    h('p', {}, t('no_account'), ' ', h('a', { href: '#/signup' }, t('sign_up'))),
    h('p', { class: 'hint' }, t('demo_hint'))));
}

function signUp(main, ctx) {
  const f = credentialsForm('signup', t('create_account'), t('password_hint'), (f, creds) => submitting(f, async () => {
    if (!/^[a-z0-9][a-z0-9._-]*[a-z0-9]$/i.test(creds.name) || creds.name.length < 3) return showError(f, 'name', t('name_hint'));
    if (creds.password.length < 12) return showError(f, 'password', t('password_hint'));
    await post('/accounts', creds);
    await post('/sessions', creds);
    await ctx.refreshSession();
    toast(t('welcome'));
    ctx.go('account');
  }, nameGuess));
  main.append(h('section', { class: 'card auth' },
    h('h1', {}, t('sign_up')), f,
    h('p', {}, t('have_account'), ' ', h('a', { href: '#/signin' }, t('sign_in')))));
}

async function account(main, ctx) {
  const meters = h('div', { id: 'meters' });
  const tokens = h('div', { id: 'tokens' });
  main.append(h('h1', {}, t('nav_account')), h('div', { class: 'grid' },
    h('section', { class: 'card wide', 'aria-labelledby': 'meters-h' }, h('h2', { id: 'meters-h' }, t('my_meters')), meters, linkMeterForm(() => loadMeters(meters))),
    h('section', { class: 'card wide', 'aria-labelledby': 'tokens-h' }, h('h2', { id: 'tokens-h' }, t('api_tokens')), h('p', { class: 'hint' }, t('tokens_hint')), tokens, tokenForm(tokens, () => loadTokens(tokens)))));
  await Promise.all([loadMeters(meters), loadTokens(tokens)]);
}

async function loadMeters(el) {
  const { meters } = await get('/meters');
  el.replaceChildren(meters.length === 0 ? h('p', { class: 'muted' }, t('no_meters')) : table(t('my_meters'), [t('meter'), t('status'), t('capacity'), t('public_key')],
    meters.map((m) => [m.meter_id, h('span', { class: `pill ${m.status || 'approved'}` }, t(`status_${m.status || 'approved'}`)),
      m.export_capacity_w != null ? `${m.export_capacity_w} / ${m.import_capacity_w} W` : '–', h('code', { class: 'small' }, `${m.public_key.slice(0, 18)}…`)])));
}

function linkMeterForm(done) {
  const id = h('input', { type: 'text', required: true, autocapitalize: 'none', spellcheck: 'false', pattern: '[A-Za-z0-9._-]{1,32}' });
  const key = h('textarea', { rows: 3, required: true, spellcheck: 'false' });
  const f = form({ id: 'link-meter' },
    h('h3', {}, t('link_meter')),
    field('meter_id', t('meter_id'), id, t('meter_id_hint')),
    field('public_key', t('public_key'), key, t('public_key_hint')),
    h('div', {}, h('button', { type: 'submit' }, t('link_meter'))));
  f.addEventListener('submit', (e) => {
    e.preventDefault();
    submitting(f, async () => {
      if (!id.value.trim()) return showError(f, 'meter_id', t('meter_id_hint'));
      if (!/^[0-9a-fA-F]{130}$/.test(key.value.trim())) return showError(f, 'public_key', t('public_key_malformed'));
      const res = await post('/meters', { meter_id: id.value.trim(), public_key: key.value.trim() });
      f.reset();
      toast(t('meter_linked', { id: res.meter_id }));
      await done();
    }, (err) => (/key/i.test(err.message) ? 'public_key' : /meter/i.test(err.message) ? 'meter_id' : null));
  });
  return f;
}

async function loadTokens(el) {
  let list;
  try {
    list = await get('/tokens');
  } catch (err) {
    // Before the engine lists tokens (GET /api/v1/tokens), creating them still works.
    el.replaceChildren();
    return;
  }
  const tokens = list.tokens || [];
  el.replaceChildren(tokens.length === 0 ? h('p', { class: 'muted' }, t('no_tokens')) : table(t('api_tokens'), [t('label'), t('expires'), t('actions')],
    tokens.map((tk) => [tk.label, tk.expires_ms ? dateTime(tk.expires_ms) : '–',
      h('button', { type: 'button', class: 'danger', 'aria-label': t('revoke_named', { label: tk.label }), onclick: async () => {
        try { await api('DELETE', `/tokens/${encodeURIComponent(tk.id)}`); await loadTokens(el); } catch (err) { toast(err.message); }
      } }, t('revoke'))])));
}

function tokenForm(list, done) {
  const label = h('input', { type: 'text', required: true, maxlength: 64 });
  const secret = h('div', { 'aria-live': 'polite' });
  const f = form({ id: 'token-form' },
    field('label', t('label'), label, t('label_hint')),
    h('div', {}, h('button', { type: 'submit' }, t('create_token'))), secret);
  f.addEventListener('submit', (e) => {
    e.preventDefault();
    submitting(f, async () => {
      if (!label.value.trim()) return showError(f, 'label', t('label_hint'));
      const res = await post('/tokens', { label: label.value.trim() });
      secret.replaceChildren(h('p', {}, t('token_once')), h('code', { class: 'secret' }, res.token || res.secret));
      f.querySelector('input').value = '';
      await done();
    });
  });
  return f;
}
