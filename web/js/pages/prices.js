// Prices: the clearing price per slot against the retail and feed-in tariffs, over a day or a
// week of slots.
import { get } from '../api.js';
import { t } from '../i18n.js';
import { h, figures, perKwh, wh, loadUplot, chartWidth } from '../ui.js';
import { clock } from './home.js';

export async function render(main) {
  const box = h('div', { class: 'chart', id: 'price-chart' });
  const summary = h('div', { id: 'price-summary' });
  let span = 96;
  const buttons = [[96, t('day')], [672, t('week')]].map(([n, label]) => h('button', { type: 'button', class: n === span ? null : 'secondary', 'aria-pressed': String(n === span), onclick: () => { span = n; buttons.forEach((b, i) => { const on = [96, 672][i] === n; b.className = on ? '' : 'secondary'; b.setAttribute('aria-pressed', String(on)); }); draw(); } }, label));
  main.append(h('h1', {}, t('nav_prices')), h('section', { class: 'card', 'aria-labelledby': 'pr-h' },
    h('h2', { id: 'pr-h' }, t('prices_title')), h('div', { class: 'row', role: 'group', 'aria-label': t('period') }, buttons), box, summary, h('p', { class: 'hint' }, t('prices_hint'))));
  let plot = null;
  async function draw() {
    const c = await clock();
    const res = await get(`/slots?from=${Math.max(0, c.current - span + 1)}&to=${c.current}`);
    const rows = res.slots;
    const data = [rows.map((x) => x.delivery_start_s), rows.map((x) => x.clearing_price), rows.map((x) => x.retail_per_kwh), rows.map((x) => x.feed_in_per_kwh)];
    const cleared = rows.filter((x) => x.clearing_price != null);
    const avg = cleared.length ? Math.round(cleared.reduce((a, x) => a + x.clearing_price, 0) / cleared.length) : null;
    summary.replaceChildren(figures([[t('slots_cleared'), `${cleared.length} / ${rows.length}`], [t('average_clearing'), perKwh(avg)], [t('traded'), wh(rows.reduce((a, x) => a + x.traded_wh, 0))], [t('retail_now'), perKwh(rows.length ? rows[rows.length - 1].retail_per_kwh : null)], [t('feed_in_now'), perKwh(rows.length ? rows[rows.length - 1].feed_in_per_kwh : null)]]));
    const uPlot = await loadUplot();
    if (plot) plot.destroy();
    const step = uPlot.paths.stepped({ align: 1 });
    plot = new uPlot({
      width: chartWidth(box), height: 260, scales: { x: { time: true } },
      axes: [{}, { size: 70 }],
      series: [{ label: t('time') },
        { label: t('clearing_price'), stroke: '#1e40af', width: 2, paths: step, points: { show: true, size: 5 } },
        { label: t('retail'), stroke: '#b91c1c', width: 1.5, dash: [6, 4], paths: step },
        { label: t('feed_in'), stroke: '#15803d', width: 1.5, dash: [6, 4], paths: step }],
    }, data, box);
  }
  await draw();
  const tick = setInterval(draw, 30000);
  const onResize = () => plot && plot.setSize({ width: chartWidth(box), height: 260 });
  window.addEventListener('resize', onResize);
  return () => { clearInterval(tick); window.removeEventListener('resize', onResize); if (plot) plot.destroy(); };
}
