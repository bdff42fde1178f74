// Home: live power at my meter as a flow picture (solar, battery, house, grid), today's
// self-sufficiency and self-consumption as gauges, today's energy by slot, and energy and money
// today, yesterday, this month and last month (money against what the utility alone would
// have cost).
import { get } from '../api.js';
import { t } from '../i18n.js';
import { h, s, watts, wh, money, pct, time, figures, loadUplot, chartWidth } from '../ui.js';
import { subscribe, onConnection } from '../live.js';

/** The slot being delivered now and the slot length, from the engine. */
export async function clock() {
  const c = await get('/slots/current');
  const length = c.next.delivery_end - c.next.delivery_start;
  return { now: c.now_s, current: c.delivering, length };
}

/**
 * Slot ranges: today (since midnight UTC, at most 96 slots: in accelerated demos a "day" is
 * 96 slots), the same length before it, and this month (at most 2976 slots).
 */
export function ranges({ now, current, length }) {
  const day = Math.floor(now / 86400) * 86400;
  const d = new Date(now * 1000);
  const month = Date.UTC(d.getUTCFullYear(), d.getUTCMonth(), 1) / 1000;
  const today = { from: Math.max(Math.floor(day / length), current - 95), to: current };
  const n = today.to - today.from + 1;
  const thisMonth = { from: Math.max(Math.floor(month / length), current - 2975), to: current };
  const previous = Date.UTC(d.getUTCFullYear(), d.getUTCMonth() - 1, 1) / 1000;
  return {
    today, accelerated: today.from !== Math.floor(day / length),
    yesterday: { from: today.from - n, to: today.from - 1 },
    month: thisMonth,
    lastMonth: { from: Math.max(Math.floor(previous / length), thisMonth.from - 2976), to: thisMonth.from - 1 },
  };
}

/** Sums over a range's slots (`answer` from GET /my/slots), with the engine's shares. */
export function totals(answer) {
  const rows = answer.slots;
  const sum = (k) => rows.reduce((a, r) => a + (r[k] || 0), 0);
  const settledRows = rows.filter((r) => r.settled !== null && r.settled !== undefined);
  const net = settledRows.reduce((a, r) => a + r.settled, 0);
  const utility = settledRows.reduce((a, r) => a + (r.utility_only || 0), 0);
  return {
    import: sum('import_wh'), export: sum('export_wh'), bought: sum('bought_wh'), sold: sum('sold_wh'), net, utility, saved: utility + net, settled: settledRows.length,
    pv: sum('pv_wh'), consumption: sum('consumption_wh'), sufficiency: answer.self_sufficiency_bp, consumed: answer.self_consumption_bp,
  };
}

/** The engine's sums (`format=totals`) in the shape of `totals`. */
export function fromTotals(x) {
  return {
    import: x.import_wh, export: x.export_wh, bought: x.bought_wh, sold: x.sold_wh, net: x.settled, utility: x.utility_only, saved: x.utility_only + x.settled, settled: x.settled_slots,
    pv: x.pv_wh, consumption: x.consumption_wh, sufficiency: x.self_sufficiency_bp, consumed: x.self_consumption_bp,
  };
}

/** Basis points as a percentage, or a dash. */
const bpPct = (bp) => (bp === null || bp === undefined ? '–' : `${Math.round(bp / 100)} %`);

/**
 * A half-circle gauge of a share in basis points (0–10 000), labelled for screen readers; its
 * value is in `data-bp` (empty when unknown).
 */
function gauge(id, label) {
  return h('figure', { class: 'gauge', id },
    s('svg', { viewBox: '0 0 120 70', role: 'img', 'aria-labelledby': `${id}-label ${id}-value` },
      s('path', { class: 'gauge-track', d: 'M 10 62 A 50 50 0 0 1 110 62', pathLength: 100 }),
      s('path', { class: 'gauge-value', d: 'M 10 62 A 50 50 0 0 1 110 62', pathLength: 100, 'stroke-dasharray': '0 100' }),
      s('text', { x: 60, y: 58, 'text-anchor': 'middle', id: `${id}-value` }, '–')),
    h('figcaption', { id: `${id}-label` }, label));
}

function setGauge(root, id, bp) {
  const el = root.querySelector(`#${id}`);
  if (!el) return;
  const known = bp !== null && bp !== undefined;
  el.dataset.bp = known ? String(bp) : '';
  el.querySelector('.gauge-value').setAttribute('stroke-dasharray', `${known ? bp / 100 : 0} 100`);
  el.querySelector(`#${id}-value`).textContent = bpPct(bp);
}

function flowPicture() {
  const wire = (id, d) => s('path', { id, class: 'wire', d });
  const node = (x, y, label, valueId, subId) => s('g', {},
    s('circle', { class: 'node', cx: x, cy: y, r: 44 }),
    s('text', { x, y: y - 12, 'text-anchor': 'middle' }, label),
    s('text', { x, y: y + 8, 'text-anchor': 'middle', id: valueId }, '–'),
    subId ? s('text', { x, y: y + 26, 'text-anchor': 'middle', id: subId, class: 'small' }, '') : null);
  // Each wire points toward the house: it runs forward while energy flows into the house
  // (solar producing, grid importing, battery discharging) and backward while it flows out.
  return s('svg', { class: 'flow', viewBox: '0 0 460 230', role: 'img', 'aria-labelledby': 'flow-title flow-desc' },
    s('title', { id: 'flow-title' }, t('power_now')),
    s('desc', { id: 'flow-desc' }, ''),
    wire('wire-pv', 'M 230 94 L 230 126'), wire('wire-grid', 'M 104 176 L 186 176'), wire('wire-batt', 'M 356 176 L 274 176'),
    node(230, 50, t('solar'), 'v-pv', null),
    node(60, 176, t('grid'), 'v-grid', 'v-grid-dir'), node(230, 176, t('home'), 'v-home', 'v-home-dir'), node(400, 176, t('battery'), 'v-batt', 'v-soc'));
}

export async function render(main, ctx) {
  const { meters } = await get('/meters');
  if (meters.length === 0) {
    main.append(h('h1', {}, t('nav_home')), h('section', { class: 'card' }, h('p', {}, t('no_meters')), h('a', { href: '#/account' }, t('link_meter'))));
    return null;
  }
  let meter = meters[0].meter_id;
  const picker = meters.length > 1 ? h('label', {}, `${t('meter')} `, h('select', { id: 'meter-pick', onchange: (e) => { meter = e.target.value; refreshPower(); } }, meters.map((m) => h('option', { value: m.meter_id }, m.meter_id)))) : null;
  const dot = h('span', { class: 'live-dot', 'aria-hidden': 'true' });
  const liveText = h('span', { id: 'live-state' }, '');
  const lastReading = h('span', { id: 'last-reading' }, '–');
  const liveCount = h('span', { id: 'live-count' }, '0');
  const chartBox = h('div', { class: 'chart', id: 'energy-chart' });
  const money$ = h('div', { id: 'money' });
  const shares = h('div', { id: 'shares' });
  const compare = h('div', { id: 'energy-compare' });
  main.append(h('h1', {}, t('nav_home')), h('div', { class: 'grid' },
    h('section', { class: 'card', 'aria-labelledby': 'power-h' },
      h('h2', { id: 'power-h' }, t('power_now'), ' ', picker),
      flowPicture(),
      h('p', { class: 'small muted' }, dot, liveText, ' · ', t('last_reading'), ' ', lastReading, ' · ', t('live_readings'), ' ', liveCount),
      h('p', { class: 'hint' }, t('flow_hint'))),
    h('section', { class: 'card', 'aria-labelledby': 'own-h' },
      h('h2', { id: 'own-h' }, t('own_energy_today')),
      h('div', { class: 'gauges' }, gauge('g-sufficiency', t('self_sufficiency_own')), gauge('g-consumption', t('self_consumption'))),
      h('p', { class: 'hint' }, t('gauges_hint'))),
    h('section', { class: 'card wide', 'aria-labelledby': 'compare-h' }, h('h2', { id: 'compare-h' }, t('energy_compare')), compare),
    h('section', { class: 'card span2', 'aria-labelledby': 'money-h' }, h('h2', { id: 'money-h' }, t('money')), money$, shares),
    h('section', { class: 'card wide', 'aria-labelledby': 'energy-h' }, h('h2', { id: 'energy-h' }, t('energy_by_slot')), chartBox, h('p', { class: 'hint', id: 'energy-hint' }))));

  const stopConn = onConnection((on) => { dot.classList.toggle('on', on); liveText.textContent = on ? t('live') : t('offline'); });

  let count = 0;
  let powerTimer = null;
  let lastPower = null;
  async function refreshPower() {
    powerTimer = null;
    const now = await get('/my/power');
    const m = now.meters.find((x) => x.meter_id === meter);
    if (!m || !m.reading) { lastReading.textContent = t('no_readings_yet'); return; }
    showPower({ grid: m.reading.power_w, pv: m.reading.pv_power_w, battery: m.battery_w, batteryReported: m.reading.battery_power_w != null, soc: m.reading.soc_bp }, m.reading.timestamp_ms);
  }
  /**
   * Draws the power now: grid (+ import), solar, battery (+ charging; its power shown when the
   * reading reports it, only its direction when it comes from counters, which in an
   * accelerated simulation run faster than the clock) and the house: grid + solar − battery.
   */
  function showPower(p, tsMs) {
    lastPower = p;
    const { grid, pv, battery, soc } = p;
    const set = (id, v) => { const el = main.querySelector(`#${id}`); if (el) el.textContent = v; };
    set('v-grid', grid == null ? '–' : watts(Math.abs(grid)));
    set('v-grid-dir', grid == null ? '' : grid > 0 ? t('importing') : grid < 0 ? t('exporting') : '');
    set('v-pv', pv == null ? '–' : watts(pv));
    const dir = battery == null ? null : battery > 0 ? t('charging') : battery < 0 ? t('discharging') : t('idle');
    // A meter whose battery reads 0 % and never moved has no battery to show.
    const noBattery = soc == null || (soc === 0 && !battery);
    const socText = soc == null ? '' : `${Math.round(soc / 100)} %`;
    set('v-batt', noBattery ? t('none') : p.batteryReported ? watts(Math.abs(battery)) : socText);
    set('v-soc', noBattery ? '' : [p.batteryReported ? socText : '', dir].filter(Boolean).join(' · '));
    const house = grid != null && pv != null && (battery != null || noBattery) ? Math.max(0, grid + pv - (noBattery ? 0 : battery)) : null;
    set('v-home', house == null ? meter : watts(house));
    set('v-home-dir', grid == null ? '' : grid > 0 ? t('need') : grid < 0 ? t('surplus') : t('balanced'));
    const wire = (id, value) => {
      const w = main.querySelector(`#${id}`);
      w.classList.toggle('active', !!value);
      w.classList.toggle('rev', value < 0);
    };
    wire('wire-grid', grid);
    wire('wire-pv', pv);
    wire('wire-batt', battery == null ? 0 : -battery);
    main.querySelector('#flow-desc').textContent = t('flow_desc', {
      solar: pv == null ? '–' : watts(pv),
      grid: grid == null ? '–' : `${watts(Math.abs(grid))} ${grid > 0 ? t('importing') : grid < 0 ? t('exporting') : ''}`,
      battery: noBattery ? t('none') : `${socText} ${dir || ''}`,
      house: house == null ? '–' : watts(house),
    });
    if (tsMs) lastReading.textContent = time(tsMs / 1000);
  }
  const stopLive = subscribe((e) => {
    if (e.type === 'reading' && e.meter_id === meter) {
      count += 1;
      liveCount.textContent = String(count);
      if (e.power_w !== null && e.power_w !== undefined) {
        const prev = lastPower || {};
        const reported = e.battery_power_w !== null && e.battery_power_w !== undefined;
        showPower({ grid: e.power_w, pv: e.pv_power_w ?? prev.pv, battery: reported ? e.battery_power_w : prev.battery, batteryReported: reported || !!prev.batteryReported, soc: e.soc_bp ?? prev.soc }, e.timestamp_ms || Date.now());
      }
      if (!powerTimer) powerTimer = setTimeout(refreshPower, 2000);
    }
    if (e.type === 'trades' || e.type === 'settled') scheduleSlots();
  });

  let plot = null;
  let slotsTimer = null;
  let refreshes = 0;
  let Y = null;
  let M = null;
  let P = null;
  const scheduleSlots = () => { if (!slotsTimer) slotsTimer = setTimeout(() => { slotsTimer = null; refreshSlots(); }, 1500); };
  async function refreshSlots() {
    const c = await clock();
    const r = ranges(c);
    // The month and the previous day change slowly: fetched on the first draw and every
    // tenth refresh (a month of slots means every reading of the month on the engine's side).
    const full = refreshes++ % 10 === 0;
    const [today, yesterday, month, lastMonth] = await Promise.all([
      get(`/my/slots?from=${r.today.from}&to=${r.today.to}`),
      full ? get(`/my/slots?from=${r.yesterday.from}&to=${r.yesterday.to}&format=totals`) : null,
      full ? get(`/my/slots?from=${r.month.from}&to=${r.month.to}&format=totals`) : null,
      full ? get(`/my/slots?from=${r.lastMonth.from}&to=${r.lastMonth.to}&format=totals`) : null,
    ]);
    if (full) { Y = fromTotals(yesterday); M = fromTotals(month); P = fromTotals(lastMonth); }
    const T = totals(today);
    // Signed as the household sees it: positive = earned, negative = paid.
    const signed = (v) => h('span', { class: v > 0 ? 'pos' : v < 0 ? 'neg' : null }, `${v > 0 ? '+' : ''}${money(v || 0)}`);
    const col = (x) => [signed(x.net), signed(-x.utility || 0), signed(x.saved)];
    money$.replaceChildren(h('div', { class: 'scroll', tabindex: 0, role: 'group', 'aria-label': t('money') }, h('table', { id: 'money-table' },
      h('caption', { class: 'sr-only' }, t('money')),
      h('thead', {}, h('tr', {}, h('td', {}), h('th', { scope: 'col', class: 'num' }, r.accelerated ? t('last_96') : t('today')), h('th', { scope: 'col', class: 'num' }, r.accelerated ? t('previous_96') : t('yesterday')), h('th', { scope: 'col', class: 'num' }, r.accelerated ? t('last_2976') : t('this_month')), h('th', { scope: 'col', class: 'num' }, r.accelerated ? t('previous_2976') : t('last_month')))),
      h('tbody', {}, [[t('paid_net'), 0], [t('utility_alone'), 1], [t('saved'), 2]].map(([label, i]) => h('tr', {}, h('th', { scope: 'row' }, label), [T, Y, M, P].map((x) => h('td', { class: 'num' }, col(x)[i]))))))),
    h('p', { class: 'hint' }, t('money_hint')));
    setGauge(main, 'g-sufficiency', T.sufficiency);
    setGauge(main, 'g-consumption', T.consumed);
    const periods = [r.accelerated ? t('last_96') : t('today'), r.accelerated ? t('previous_96') : t('yesterday'), r.accelerated ? t('last_2976') : t('this_month'), r.accelerated ? t('previous_2976') : t('last_month')];
    compare.replaceChildren(h('div', { class: 'scroll', tabindex: 0, role: 'group', 'aria-label': t('energy_compare') }, h('table', { id: 'compare-table' },
      h('caption', { class: 'sr-only' }, t('energy_compare')),
      h('thead', {}, h('tr', {}, h('td', {}), periods.map((p) => h('th', { scope: 'col', class: 'num' }, p)))),
      h('tbody', {}, [
        [t('solar_produced'), (x) => (x.pv ? wh(x.pv) : '–'), 'c-pv'],
        [t('consumption'), (x) => (x.consumption ? wh(x.consumption) : '–'), 'c-consumption'],
        [t('self_sufficiency_own'), (x) => bpPct(x.sufficiency), 'c-sufficiency'],
        [t('self_consumption'), (x) => bpPct(x.consumed), 'c-consumption-share'],
      ].map(([label, f, id]) => h('tr', { id }, h('th', { scope: 'row' }, label), [T, Y, M, P].map((x) => h('td', { class: 'num' }, f(x)))))))));
    shares.replaceChildren(figures([
      [t('bought_locally'), `${wh(T.bought)} (${pct(T.bought, T.import)})`, 'share-bought'],
      [t('sold_locally'), `${wh(T.sold)} (${pct(T.sold, T.export)})`, 'share-sold'],
    ]));
    await drawChart(today.slots, r.accelerated);
  }
  async function drawChart(rows, accelerated) {
    const uPlot = await loadUplot();
    const xs = rows.map((x) => x.start_s);
    const data = [xs, rows.map((x) => x.import_wh), rows.map((x) => (x.export_wh == null ? null : -x.export_wh)), rows.map((x) => x.bought_wh || null), rows.map((x) => (x.sold_wh ? -x.sold_wh : null)), rows.map((x) => x.pv_wh ?? null), rows.map((x) => x.consumption_wh ?? null)];
    main.querySelector('#energy-hint').textContent = `${accelerated ? t('last_96_hint') : ''} ${t('energy_hint')}`;
    if (plot) { plot.setData(data); return; }
    const bars = uPlot.paths.bars({ size: [0.8, 40] });
    plot = new uPlot({
      width: chartWidth(chartBox), height: 240,
      scales: { x: { time: true } },
      axes: [{}, { values: (u, v) => v.map((x) => `${x} Wh`), size: 70 }],
      series: [{ label: t('time') },
        { label: t('import'), stroke: '#b45309', fill: 'rgba(180,83,9,.45)', paths: bars },
        { label: t('export'), stroke: '#15803d', fill: 'rgba(21,128,61,.45)', paths: bars },
        { label: t('bought'), stroke: '#1e40af', width: 2 },
        { label: t('sold'), stroke: '#7c3aed', width: 2 },
        { label: t('solar'), stroke: '#ca8a04', width: 2 },
        { label: t('consumption'), stroke: '#374151', width: 2, dash: [6, 4] }],
    }, data, chartBox);
  }
  const onResize = () => plot && plot.setSize({ width: chartWidth(chartBox), height: 240 });
  window.addEventListener('resize', onResize);
  await Promise.all([refreshPower(), refreshSlots()]);
  const every = setInterval(refreshSlots, 15000);
  return () => { stopLive(); stopConn(); clearInterval(every); clearTimeout(powerTimer); clearTimeout(slotsTimer); window.removeEventListener('resize', onResize); if (plot) plot.destroy(); };
}
