// Small DOM helpers, number formats and form errors shown by the field they concern.
import { t, lang } from './i18n.js';

/** Builds an element: h('p', {class: 'x'}, 'text', child, ...). */
export function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
    else if (k === 'class') el.className = v;
    else if (v === true) el.setAttribute(k, '');
    else el.setAttribute(k, String(v));
  }
  for (const c of children.flat(Infinity)) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

const SVG = 'http://www.w3.org/2000/svg';
/** An SVG element. */
export function s(tag, attrs, ...children) {
  const el = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs || {})) if (v !== null && v !== undefined) el.setAttribute(k, String(v));
  for (const c of children.flat()) if (c !== null && c !== undefined) el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return el;
}

const nf = () => new Intl.NumberFormat(lang());
export const num = (v) => (v === null || v === undefined ? '–' : nf().format(v));
/** Energy in Wh, shown as Wh or kWh. */
export function wh(v) {
  if (v === null || v === undefined) return '–';
  return Math.abs(v) >= 10000 ? `${new Intl.NumberFormat(lang(), { maximumFractionDigits: 1 }).format(v / 1000)} kWh` : `${num(v)} Wh`;
}
/** Power in W or kW. */
export function watts(v) {
  if (v === null || v === undefined) return '–';
  return Math.abs(v) >= 10000 ? `${new Intl.NumberFormat(lang(), { maximumFractionDigits: 1 }).format(v / 1000)} kW` : `${num(Math.round(v))} W`;
}
/** Money in token units (integers, as the engine settles them). */
export const money = (v) => (v === null || v === undefined ? '–' : `${num(v)} ${t('units')}`);
/** Network tokens from base units (18 decimals, a decimal string or a BigInt), to 2 places. */
export function tokens(v) {
  if (v === null || v === undefined) return '–';
  const units = BigInt(v);
  const cents = (units + 5n * 10n ** 15n) / 10n ** 16n;
  const whole = new Intl.NumberFormat(lang()).format(cents / 100n);
  const frac = String(cents % 100n).padStart(2, '0');
  const sep = new Intl.NumberFormat(lang()).format(1.5).charAt(1);
  return `${whole}${sep}${frac} ${t('network_tokens')}`;
}
export const perKwh = (v) => (v === null || v === undefined ? '–' : `${num(v)} ${t('units')}/kWh`);
export const pct = (part, whole) => (whole ? `${new Intl.NumberFormat(lang(), { maximumFractionDigits: 0 }).format((100 * part) / whole)} %` : '–');
export const time = (s) => new Date(s * 1000).toLocaleTimeString(lang(), { hour: '2-digit', minute: '2-digit', second: '2-digit', hour12: false });
export const dateTime = (ms) => new Date(ms).toLocaleString(lang());

let uid = 0;
/**
 * A labelled input with its hint and its own error line: h('div.field') holding label,
 * control (aria-describedby the hint and the error) and `<p class=error id=...>`.
 */
export function field(name, label, control, hint) {
  const id = `f-${name}-${++uid}`;
  control.id = id;
  control.name = name;
  const err = h('p', { class: 'error', id: `${id}-error`, 'data-error-for': name });
  const described = [hint ? `${id}-hint` : null, `${id}-error`].filter(Boolean).join(' ');
  control.setAttribute('aria-describedby', described);
  return h('div', { class: 'field' },
    h('label', { for: id }, label), control,
    hint ? h('p', { class: 'hint', id: `${id}-hint` }, hint) : null, err);
}

/** A form with a form-level error line at the top. */
export function form(attrs, ...children) {
  return h('form', { novalidate: true, ...attrs }, h('p', { class: 'form-error', role: 'alert' }), ...children);
}

export function clearErrors(f) {
  f.querySelectorAll('[aria-invalid]').forEach((el) => el.removeAttribute('aria-invalid'));
  f.querySelectorAll('.error').forEach((el) => { el.textContent = ''; });
  const top = f.querySelector('.form-error');
  if (top) top.textContent = '';
}

/** Shows `message` next to the field `name` of form `f` (or at the top if no such field). */
export function showError(f, name, message) {
  const line = name && f.querySelector(`[data-error-for="${name}"]`);
  if (line) {
    line.textContent = message;
    const control = f.elements.namedItem(name);
    const el = control && (control.length !== undefined && !control.tagName ? control[0] : control);
    if (el) { el.setAttribute('aria-invalid', 'true'); el.focus(); }
    return;
  }
  const top = f.querySelector('.form-error');
  top.textContent = message;
  top.setAttribute('tabindex', '-1');
  top.focus();
}

/**
 * Shows an API error by its field: the answer's `field` when it names one of the form's
 * fields, else a `name: ...` prefix of the message, else `guess(message)`, else the form.
 */
export function showApiError(f, err, guess) {
  let name = err.field;
  if (!name || !f.querySelector(`[data-error-for="${name}"]`)) {
    const m = /^([a-z_]+):/.exec(err.message || '');
    name = m && f.querySelector(`[data-error-for="${m[1]}"]`) ? m[1] : (guess ? guess(err) : null);
  }
  let message = err.message;
  if (err.status === 429 && err.retryAfter) message = `${message} (${t('retry_after', { s: err.retryAfter })})`;
  showError(f, name, message);
}

/** Runs `work` with the form's submit button disabled; errors are shown by their field. */
export async function submitting(f, work, guess) {
  clearErrors(f);
  const button = f.querySelector('button[type=submit]');
  if (button) button.disabled = true;
  try {
    return await work();
  } catch (err) {
    showApiError(f, err, guess);
    return undefined;
  } finally {
    if (button) button.disabled = false;
  }
}

export function toast(message) {
  const el = document.getElementById('toast');
  el.textContent = message;
  el.classList.add('show');
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => el.classList.remove('show'), 3500);
}

/** A figure list: [[label, value], ...] as <dl class=figures>. */
export const figures = (pairs, attrs) => h('dl', { class: 'figures', ...attrs }, pairs.map(([k, v, id]) => h('div', {}, h('dt', {}, k), h('dd', id ? { id } : {}, v))));

/** A table from header cells and rows of cells; numeric columns right-aligned. */
export function table(caption, heads, rows, numeric = []) {
  // A table wider than a phone scrolls sideways; the region takes focus so a keyboard can.
  return h('div', { class: 'scroll', tabindex: 0, role: 'group', 'aria-label': caption || null }, h('table', {},
    caption ? h('caption', { class: 'sr-only' }, caption) : null,
    h('thead', {}, h('tr', {}, heads.map((x, i) => h('th', { scope: 'col', class: numeric.includes(i) ? 'num' : null }, x)))),
    h('tbody', {}, rows.map((r) => h('tr', r.attrs || {}, (r.cells || r).map((c, i) => h('td', { class: numeric.includes(i) ? 'num' : null }, c)))))));
}

let uplotLoading;
/** uPlot, loaded on first use (it is not needed to sign in). */
export function loadUplot() {
  if (!uplotLoading) {
    uplotLoading = new Promise((resolve, reject) => {
      const css = h('link', { rel: 'stylesheet', href: '/vendor/uPlot.min.css' });
      document.head.append(css);
      const script = h('script', { src: '/vendor/uPlot.iife.min.js' });
      script.onload = () => resolve(window.uPlot);
      script.onerror = () => reject(new Error('chart library failed to load'));
      document.head.append(script);
    });
  }
  return uplotLoading;
}

/** The width a chart inside `el` should have. */
export const chartWidth = (el) => Math.max(260, Math.floor(el.getBoundingClientRect().width || el.parentElement.getBoundingClientRect().width) - 4);
