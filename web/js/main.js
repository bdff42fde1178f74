// The app shell: who is signed in, the navigation, and one page at a time (#/page routes).
import { get, api } from './api.js';
import { t, lang, setLang } from './i18n.js';
import { h, toast } from './ui.js';
import * as live from './live.js';

const pages = {
  home: { path: '#/', load: () => import('./pages/home.js'), who: 'member' },
  market: { path: '#/market', load: () => import('./pages/market.js'), who: 'member' },
  wallet: { path: '#/wallet', load: () => import('./pages/wallet.js'), who: 'member' },
  prices: { path: '#/prices', load: () => import('./pages/prices.js'), who: 'anyone' },
  neighbourhood: { path: '#/neighbourhood', load: () => import('./pages/neighbourhood.js'), who: 'anyone' },
  join: { path: '#/join', load: () => import('./pages/join.js'), who: 'anyone' },
  operator: { path: '#/operator', load: () => import('./pages/operator.js'), who: 'operator' },
  account: { path: '#/account', load: () => import('./pages/account.js'), who: 'member' },
  signin: { path: '#/signin', load: () => import('./pages/account.js'), who: 'anyone', hidden: true },
  signup: { path: '#/signup', load: () => import('./pages/account.js'), who: 'anyone', hidden: true },
};

const ctx = {
  session: null,
  go(name) { location.hash = pages[name].path; },
  async refreshSession() {
    try { ctx.session = await get('/me'); } catch { ctx.session = null; }
    live.restart();
    renderChrome();
  },
  async signOut() {
    try {
      await api('DELETE', '/sessions');
    } catch (err) {
      toast(err.message);
      return;
    }
    ctx.session = null;
    live.restart();
    renderChrome();
    ctx.go('signin');
  },
};

function routeName() {
  const name = (location.hash.replace(/^#\/?/, '').split(/[/?]/)[0]) || 'home';
  return pages[name] ? name : 'home';
}

function renderChrome() {
  document.documentElement.lang = lang();
  const current = routeName();
  const nav = document.getElementById('nav');
  nav.replaceChildren(...Object.entries(pages)
    .filter(([, p]) => !p.hidden && (p.who === 'anyone' || (ctx.session && (p.who === 'member' || ctx.session.role === 'operator'))))
    .map(([name, p]) => h('a', { href: p.path, 'aria-current': name === current ? 'page' : null }, t(`nav_${name}`))));
  const who = document.getElementById('who');
  who.replaceChildren(...(ctx.session
    ? [h('span', { class: 'small' }, ctx.session.name, ' '), h('button', { type: 'button', class: 'secondary', id: 'sign-out', onclick: () => ctx.signOut() }, t('sign_out'))]
    : [h('a', { href: '#/signin' }, t('sign_in'))]));
  document.getElementById('lang').value = lang();
  document.querySelector('.skip').textContent = t('skip');
}

let cleanup = null;
let renderSeq = 0;

async function render() {
  const seq = ++renderSeq;
  if (cleanup) { try { cleanup(); } catch { /* a page that failed to clean up must not stop the next */ } cleanup = null; }
  let name = routeName();
  const page = pages[name];
  if (page.who !== 'anyone' && !ctx.session) { name = 'signin'; history.replaceState(null, '', '#/signin'); }
  else if (page.who === 'operator' && ctx.session.role !== 'operator') { name = 'home'; history.replaceState(null, '', '#/'); }
  renderChrome();
  const main = document.getElementById('main');
  const mod = await pages[name].load();
  if (seq !== renderSeq) return;
  // Each page draws into a view of its own: a page still loading when the user moves on
  // writes into its detached view, never into the next page.
  const view = h('div', { class: 'view' });
  main.replaceChildren(view);
  document.title = `${t(`nav_${name}`)} · Gridshare`;
  let done = null;
  try {
    done = (await mod.render(view, ctx, name)) || null;
  } catch (err) {
    if (seq === renderSeq) view.replaceChildren(h('p', { class: 'form-error', role: 'alert' }, err.message));
  }
  if (seq !== renderSeq) {
    if (done) done();
    return;
  }
  cleanup = done;
  if (seq === renderSeq && render.focusMain) main.focus({ preventScroll: false });
  render.focusMain = true;
}

window.addEventListener('hashchange', render);
window.addEventListener('gridshare:signed-out', () => {
  if (!ctx.session) return;
  ctx.session = null;
  toast(t('session_ended'));
  render();
});
document.getElementById('lang').addEventListener('change', (e) => { setLang(e.target.value); render(); });

(async () => {
  try { ctx.session = await get('/me'); } catch { ctx.session = null; }
  await render();
})();
