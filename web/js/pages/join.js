// Should I join? A household's return on PV, a battery, the meter box and the stake, from its
// year simulated in a shipped neighbourhood through the market and the token's price drawn
// along many paths: POST /api/v1/roi, the very calculation `simulate roi` prints. Three numbers
// up front, the rest folded; moving the token sliders re-asks (the engine keeps the simulated
// year, so only the projection is redone).
import { post } from '../api.js';
import { t, lang } from '../i18n.js';
import { h, field, form, figures, table, loadUplot, chartWidth, clearErrors, showApiError } from '../ui.js';

// [name in the request, label key, default, step, percent?] — percent fields are shown ×100.
const FRONT = [['annual_kwh', 'roi_annual_kwh', 4000, 100], ['pv_kwp', 'roi_pv_kwp', 8, 0.5], ['battery_kwh', 'roi_battery_kwh', 8, 0.5]];
const ADVANCED = [
  ['costs.pv_per_kwp', 'roi_pv_cost', 1300, 10], ['costs.battery_per_kwh', 'roi_battery_cost', 600, 10],
  ['costs.meter_box', 'roi_meter_box', 350, 10], ['costs.installation', 'roi_installation', 1500, 10],
  ['costs.operation_per_year', 'roi_operation', 150, 10],
  ['tariffs.retail_change', 'roi_retail_change', 2, 0.5, true],
  ['token.drift', 'roi_drift', 0, 1, true],
  ['network.meters', 'roi_meters', 2000, 100], ['network.growth', 'roi_growth', 25, 5, true],
  ['finance.discount_rate', 'roi_discount', 4, 0.5, true], ['finance.lifetime_years', 'roi_lifetime', 25, 1],
];
// The sliders: the token's price now and its volatility (the answer follows them as they move).
const SLIDERS = [['token.price', 'roi_token_price', 0.05, 0, 0.5, 0.005], ['token.volatility', 'roi_volatility', 80, 0, 200, 5, true]];

function setPath(obj, path, value) {
  const keys = path.split('.');
  let o = obj;
  for (const k of keys.slice(0, -1)) o = (o[k] ??= {});
  o[keys[keys.length - 1]] = value;
}

export async function render(main) {
  // The chart library loads while the household types, not after the answer arrived (a
  // failure shows when the chart is drawn).
  loadUplot().catch(() => {});
  const inputs = new Map();
  const number = (name, value, step) => {
    const el = h('input', { type: 'number', inputmode: 'decimal', step, value });
    inputs.set(name, el);
    return el;
  };
  const front = FRONT.map(([name, key, def, step]) => field(name, t(key), number(name, def, step)));
  const sliders = SLIDERS.map(([name, key, def, min, max, step, percent]) => {
    const el = h('input', { type: 'range', min, max, step, value: def });
    inputs.set(name, el);
    const shown = h('output', { for: null, 'aria-hidden': 'true' });
    const show = () => { shown.textContent = percent ? `${el.value} %` : el.value; el.setAttribute('aria-valuetext', shown.textContent); };
    show();
    el.addEventListener('input', () => { show(); schedule(); });
    const f = field(name, t(key), el);
    f.querySelector('label').append(' ', shown);
    return f;
  });
  const advanced = ADVANCED.map(([name, key, def, step]) => field(name, t(key), number(name, def, step)));
  const percentFields = new Set([...ADVANCED, ...SLIDERS].filter((x) => x[x.length - 1] === true).map((x) => x[0]));

  const button = h('button', { type: 'submit' }, t('roi_calculate'));
  const f = form({ id: 'roi-form', 'aria-labelledby': 'roi-in-h' },
    h('div', { class: 'row' }, front),
    h('div', { class: 'row' }, sliders),
    h('details', { id: 'roi-advanced' }, h('summary', {}, t('roi_more')), h('div', { class: 'row' }, advanced),
      h('p', { class: 'hint' }, t('roi_more_hint'))),
    h('div', { class: 'row' }, button));
  const status = h('p', { id: 'roi-status', class: 'hint', role: 'status', 'aria-live': 'polite' });
  const headline = h('div', { id: 'roi-headline' });
  const fan = h('div', { class: 'chart', id: 'roi-fan', 'aria-describedby': 'roi-fan-hint' });
  const spread = h('div', { id: 'roi-spread' });
  const split = h('div', { id: 'roi-split' });
  const stress = h('div', { id: 'roi-stress' });
  main.append(h('h1', {}, t('nav_join')), h('p', { class: 'hint' }, t('roi_intro')),
    h('section', { class: 'card', 'aria-labelledby': 'roi-in-h' }, h('h2', { id: 'roi-in-h' }, t('roi_inputs')), f, status),
    h('section', { class: 'card', 'aria-labelledby': 'roi-out-h' }, h('h2', { id: 'roi-out-h' }, t('roi_answer')), headline,
      h('h3', {}, t('roi_fan')), fan, h('p', { class: 'hint', id: 'roi-fan-hint' }, t('roi_fan_label'), ' ', t('roi_fan_hint')), spread),
    h('div', { class: 'grid' },
      h('section', { class: 'card', 'aria-labelledby': 'roi-split-h' }, h('h2', { id: 'roi-split-h' }, t('roi_split')), split),
      h('section', { class: 'card', 'aria-labelledby': 'roi-stress-h' }, h('h2', { id: 'roi-stress-h' }, t('roi_stress')), stress)));

  let plot = null;
  let seq = 0;
  let timer = null;
  function schedule() { clearTimeout(timer); timer = setTimeout(() => calculate(), 150); }

  function body() {
    const out = {};
    for (const [name, el] of inputs) {
      if (el.value.trim() === '') continue;
      const v = Number(el.value);
      setPath(out, name, percentFields.has(name) ? v / 100 : v);
    }
    return out;
  }

  async function calculate() {
    const mine = ++seq;
    clearErrors(f);
    const started = performance.now();
    status.textContent = t('roi_calculating');
    let r;
    try {
      r = await post('/roi', body());
    } catch (err) {
      if (mine !== seq) return;
      status.textContent = '';
      const folded = err.field && inputs.has(err.field) && inputs.get(err.field).closest('details');
      if (folded) folded.open = true;
      showApiError(f, err);
      return;
    }
    if (mine !== seq) return;
    await draw(r);
    const ms = Math.round(performance.now() - started);
    status.textContent = t('roi_done', { paths: r.input.token.paths, ms });
    main.dataset.answeredMs = String(ms);
  }

  let currency = 'EUR';
  const cur = (v) => {
    if (v === null || v === undefined) return '–';
    try {
      return new Intl.NumberFormat(lang(), { style: 'currency', currency, maximumFractionDigits: 0 }).format(v);
    } catch {
      return `${new Intl.NumberFormat(lang(), { maximumFractionDigits: 0 }).format(v)} ${currency}`;
    }
  };
  const pc = (v) => (v === null || v === undefined ? t('roi_none') : `${new Intl.NumberFormat(lang(), { maximumFractionDigits: 1 }).format(v * 100)} %`);
  const yrs = (v) => (v === null || v === undefined ? t('roi_never') : t('roi_years', { n: new Intl.NumberFormat(lang(), { maximumFractionDigits: 1 }).format(v) }));

  async function draw(r) {
    currency = r.currency;
    const y = r.year_one;
    const be = r.break_even_token_price;
    headline.replaceChildren(figures([
      [t('roi_investment'), cur(r.investment), 'roi-investment'],
      [t('roi_npv_median'), cur(r.npv.p50), 'roi-npv-p50'],
      [t('roi_loss'), `${new Intl.NumberFormat(lang(), { maximumFractionDigits: 0 }).format(r.probability_of_loss * 100)} %`, 'roi-loss'],
      [t('roi_year_one'), cur(y.saving), 'roi-year-one'],
      [t('roi_joining_adds'), cur(y.joining_adds)],
      [t('roi_break_even'), be === null ? t('roi_no_price') : be === 0 ? t('roi_any_price') : `${new Intl.NumberFormat(lang(), { maximumFractionDigits: 4 }).format(be)} ${currency}`, 'roi-break-even'],
    ]));
    spread.replaceChildren(table(t('roi_spread'), [t('roi_outcome'), 'P10', 'P50', 'P90'], [
      [t('roi_npv'), cur(r.npv.p10), cur(r.npv.p50), cur(r.npv.p90)],
      [t('roi_irr'), pc(r.irr.p10), pc(r.irr.p50), pc(r.irr.p90)],
      [t('roi_payback'), yrs(r.payback_years.p10), yrs(r.payback_years.p50), yrs(r.payback_years.p90)],
      [t('roi_discounted_payback'), yrs(r.discounted_payback_years.p10), yrs(r.discounted_payback_years.p50), yrs(r.discounted_payback_years.p90)],
    ], [1, 2, 3]), h('p', { class: 'hint' }, t('roi_spread_hint')));
    const s = r.split;
    const parts = [[t('roi_own_use'), s.own_use], [t('roi_local'), s.local_trading], [t('roi_feed_in'), s.feed_in], [t('roi_tokens'), s.token_rewards]];
    const total = parts.reduce((a, [, v]) => a + Math.max(0, v), 0) || 1;
    split.replaceChildren(table(t('roi_split'), [t('roi_source'), t('roi_present_value'), t('roi_share')],
      [...parts.map(([k, v]) => [k, cur(v), `${Math.round((100 * Math.max(0, v)) / total)} %`]),
        [t('roi_stake'), cur(s.stake), ''], [t('roi_costs'), cur(s.costs), '']], [1, 2]),
    h('p', { class: 'hint', id: 'roi-token-share' }, t('roi_token_share', { n: Math.round(s.token_share * 100) })));
    stress.replaceChildren(table(t('roi_stress'), [t('roi_scenario'), t('roi_npv'), t('roi_irr'), t('roi_payback')],
      r.stress.map((x) => ({ attrs: { 'data-stress': x.id }, cells: [t(`roi_stress_${x.id.replace(/-/g, '_')}`), cur(x.npv), pc(x.irr), yrs(x.payback_years)] })), [1, 2, 3]));
    const uPlot = await loadUplot();
    if (plot) plot.destroy();
    const d = r.fan;
    plot = new uPlot({
      width: chartWidth(fan), height: 300, scales: { x: { time: false } },
      axes: [{ label: t('roi_year') }, { size: 80, values: (u, v) => v.map((x) => cur(x)) }],
      series: [{ label: t('roi_year') },
        { label: 'P10', stroke: '#93c5fd' }, { label: 'P25', stroke: '#3b82f6' },
        { label: t('roi_median'), stroke: '#1e3a8a', width: 2 },
        { label: 'P75', stroke: '#3b82f6' }, { label: 'P90', stroke: '#93c5fd' }],
      bands: [{ series: [5, 1], fill: 'rgba(59,130,246,0.12)' }, { series: [4, 2], fill: 'rgba(59,130,246,0.22)' }],
    }, [d.years, d.p10, d.p25, d.p50, d.p75, d.p90], fan);
  }

  f.addEventListener('submit', (e) => { e.preventDefault(); calculate(); });
  const onResize = () => plot && plot.setSize({ width: chartWidth(fan), height: 300 });
  window.addEventListener('resize', onResize);
  return () => { clearTimeout(timer); seq += 1; window.removeEventListener('resize', onResize); if (plot) plot.destroy(); };
}
