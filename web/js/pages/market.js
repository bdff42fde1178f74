// Market: the next delivery slots and their timeline, the order book of a slot, placing a bid
// or an offer with what it costs or earns, my open orders (amend, cancel), my trades, and my
// automatic trading rule.
import { api, get, post } from '../api.js';
import { t } from '../i18n.js';
import { h, field, form, submitting, showError, table, toast, time, wh, money, perKwh, num } from '../ui.js';
import { subscribe } from '../live.js';
import { clock, ranges } from './home.js';

const AHEAD = 8;

/** Where a slot stands at `now` (seconds). */
export function phase(slot, now) {
  if (slot.status === 'settled') return 'settled';
  if (now < slot.window_opens_s) return 'not_open';
  if (now < slot.gate_closure_s && slot.status === 'open') return 'window';
  if (now < slot.delivery_start_s) return 'gate_closed';
  if (now < slot.delivery_end_s) return 'delivering';
  return 'awaiting_settlement';
}

/** Which field an order error concerns, from the engine's message. */
export function orderField(err) {
  const m = err.message || '';
  if (/insufficient funds/i.test(m)) return 'energy_wh';
  if (/price|tariff|per kWh/i.test(m)) return 'price_per_kwh';
  if (/energy|Wh/.test(m)) return 'energy_wh';
  if (/slot|gate|window/i.test(m)) return 'slot';
  if (/meter/i.test(m)) return 'meter_id';
  return null;
}

export async function render(main) {
  const { meters } = await get('/meters');
  const state = { slots: [], now: 0, selected: null };
  const timeline = h('div', { id: 'timeline' });
  const depth = h('div', { id: 'depth' });
  const orders = h('div', { id: 'my-orders' });
  const trades = h('div', { id: 'my-trades' });
  const ruleBox = h('div', { id: 'rule' });

  // The order form.
  const meterSel = h('select', { required: true }, meters.map((m) => h('option', { value: m.meter_id }, m.meter_id)));
  const slotSel = h('select', { required: true });
  const sideBuy = h('input', { type: 'radio', name: 'side', value: 'buy', id: 'side-buy' });
  const sideSell = h('input', { type: 'radio', name: 'side', value: 'sell', id: 'side-sell', checked: true });
  const energy = h('input', { type: 'number', min: 1, step: 1, inputmode: 'numeric', required: true, value: 500 });
  const price = h('input', { type: 'number', min: 0, step: 1, inputmode: 'numeric', required: true });
  const band = h('p', { class: 'hint', id: 'band' });
  const preview = h('p', { id: 'order-preview', 'aria-live': 'polite' });
  const f = form({ id: 'order-form' },
    h('div', { class: 'row' }, field('meter_id', t('meter'), meterSel), field('slot', t('delivery_slot'), slotSel)),
    h('fieldset', {}, h('legend', {}, t('side')), h('label', { for: 'side-sell' }, sideSell, ' ', t('sell')), h('label', { for: 'side-buy' }, sideBuy, ' ', t('buy')),
      h('p', { class: 'error', 'data-error-for': 'side' })),
    h('div', { class: 'row' }, field('energy_wh', t('energy_wh'), energy), field('price_per_kwh', t('price_per_kwh'), price)),
    band, preview,
    h('div', {}, h('button', { type: 'submit' }, t('place_order'))));
  f.querySelector('[data-error-for=price_per_kwh]').before(band);
  price.setAttribute('aria-describedby', `band ${price.getAttribute('aria-describedby')}`);

  const selectedSlot = () => state.slots.find((x) => String(x.slot) === slotSel.value);
  function updatePreview() {
    const sl = selectedSlot();
    if (!sl) { band.textContent = t('no_open_slot'); preview.textContent = ''; return; }
    price.min = sl.feed_in_per_kwh; price.max = sl.retail_per_kwh;
    if (!price.value) price.value = Math.round((sl.feed_in_per_kwh + sl.retail_per_kwh) / 2);
    band.textContent = t('band_hint', { feed_in: num(sl.feed_in_per_kwh), retail: num(sl.retail_per_kwh), fee: num(sl.grid_fee_per_kwh), slot: sl.slot });
    const e = Number(energy.value); const p = Number(price.value);
    if (!(e > 0) || !(p >= 0)) { preview.textContent = ''; return; }
    const amount = Math.floor((e * p) / 1000);
    preview.textContent = sideBuy.checked
      ? t('preview_buy', { amount: money(amount), fee: money(Math.floor((e * sl.grid_fee_per_kwh) / 1000)) })
      : t('preview_sell', { amount: money(amount), bid: perKwh(p + sl.grid_fee_per_kwh) });
  }
  [energy, price, sideBuy, sideSell, slotSel].forEach((el) => el.addEventListener('input', updatePreview));
  slotSel.addEventListener('change', () => { state.selected = Number(slotSel.value); updatePreview(); refreshDepth(); });
  f.addEventListener('submit', (e) => {
    e.preventDefault();
    submitting(f, async () => {
      const sl = selectedSlot();
      if (!sl) return showError(f, 'slot', t('no_open_slot'));
      const e = Number(energy.value); const p = Number(price.value);
      if (!Number.isInteger(e) || e < 1) return showError(f, 'energy_wh', t('energy_invalid'));
      if (!Number.isInteger(p) || p < sl.feed_in_per_kwh || p > sl.retail_per_kwh) return showError(f, 'price_per_kwh', t('price_invalid', { feed_in: num(sl.feed_in_per_kwh), retail: num(sl.retail_per_kwh) }));
      const res = await post('/orders', { meter_id: meterSel.value, slot: sl.slot, side: sideBuy.checked ? 'buy' : 'sell', energy_wh: e, price_per_kwh: p });
      toast(t('order_placed', { id: res.order_id, slot: res.slot }));
      await Promise.all([refreshOrders(), refreshDepth()]);
    }, orderField);
  });

  main.append(h('h1', {}, t('nav_market')), h('div', { class: 'grid' },
    h('section', { class: 'card wide', 'aria-labelledby': 'tl-h' }, h('h2', { id: 'tl-h' }, t('next_slots')), timeline),
    h('section', { class: 'card', 'aria-labelledby': 'order-h' }, h('h2', { id: 'order-h' }, t('place_order')), meters.length ? f : h('p', {}, t('no_meters'))),
    h('section', { class: 'card', 'aria-labelledby': 'depth-h' }, h('h2', { id: 'depth-h' }, t('order_book')), depth),
    h('section', { class: 'card wide', 'aria-labelledby': 'orders-h' }, h('h2', { id: 'orders-h' }, t('my_open_orders')), orders),
    h('section', { class: 'card wide', 'aria-labelledby': 'trades-h' }, h('h2', { id: 'trades-h' }, t('my_trades')), trades),
    h('section', { class: 'card wide', 'aria-labelledby': 'rule-h' }, h('h2', { id: 'rule-h' }, t('auto_rule')), ruleBox)));

  async function refreshSlots() {
    const c = await clock();
    // Orders may go to any slot whose window is open (up to a day of slots ahead); the
    // timeline shows the next few.
    const res = await get(`/slots?from=${Math.max(0, c.current - 1)}&to=${c.current + AHEAD + 88}`);
    state.now = res.now_s;
    state.slots = res.slots;
    const shown = res.slots.slice(0, AHEAD + 2);
    state.length = c.length;
    const open = res.slots.filter((x) => phase(x, res.now_s) === 'window' && x.gate_closure_s - res.now_s >= 2);
    const keep = slotSel.value;
    slotSel.replaceChildren(...open.map((x) => h('option', { value: x.slot }, `${x.slot} · ${time(x.delivery_start_s)} (${t('gate_in', { s: x.gate_closure_s - res.now_s })})`)));
    if (open.some((x) => String(x.slot) === keep)) slotSel.value = keep;
    else if (open.length) slotSel.value = String(open[Math.min(1, open.length - 1)].slot);
    state.selected = Number(slotSel.value);
    timeline.replaceChildren(table(t('next_slots'), [t('slot'), t('delivery'), t('phase'), t('gate_closure'), t('band'), t('grid_fee'), t('clearing_price'), t('traded')],
      shown.map((x) => {
        const p = phase(x, res.now_s);
        return { attrs: { 'data-slot': x.slot }, cells: [String(x.slot), `${time(x.delivery_start_s)}–${time(x.delivery_end_s)}`, h('span', { class: `pill ${p === 'window' ? 'open' : p === 'settled' ? 'settled' : 'closed'}` }, t(`phase_${p}`)),
          time(x.gate_closure_s), `${num(x.feed_in_per_kwh)}–${num(x.retail_per_kwh)}`, num(x.grid_fee_per_kwh), x.clearing_price == null ? '–' : num(x.clearing_price), wh(x.traded_wh)] };
      }), [5, 6, 7]));
    updatePreview();
  }

  async function refreshDepth() {
    if (!state.selected && state.selected !== 0) { depth.replaceChildren(); return; }
    const book = await get(`/slots/${state.selected}/book`);
    const last = [...state.slots].reverse().find((x) => x.clearing_price != null);
    const rows = (levels) => levels.map((l) => [perKwh(l.price_per_kwh), wh(l.energy_wh), String(l.orders)]);
    depth.replaceChildren(
      h('p', {}, t('slot'), ' ', String(book.slot), ' · ', t('last_clearing'), ' ', last ? `${perKwh(last.clearing_price)} (${t('slot')} ${last.slot})` : '–'),
      h('div', { class: 'row' },
        h('div', { class: 'field' }, h('h3', {}, t('bids')), book.bids.length ? table(t('bids'), [t('price'), t('energy'), t('orders')], rows(book.bids), [1, 2]) : h('p', { class: 'muted' }, t('none'))),
        h('div', { class: 'field' }, h('h3', {}, t('offers')), book.asks.length ? table(t('offers'), [t('price'), t('energy'), t('orders')], rows(book.asks), [1, 2]) : h('p', { class: 'muted' }, t('none')))));
  }

  let lastOrders = null;
  // Each order's amend-or-cancel form, kept while the order is unchanged: the list changes
  // every slot (a rule's orders come and go), and an amend being typed must survive that.
  let actions = new Map();
  async function refreshOrders() {
    const { orders: list } = await get('/my/orders');
    const key = JSON.stringify(list);
    if (key === lastOrders) return;
    lastOrders = key;
    const kept = new Map();
    for (const o of list) {
      const version = `${o.energy_wh}:${o.price_per_kwh}`;
      const old = actions.get(o.order_id);
      kept.set(o.order_id, old && old.version === version ? old : { version, el: orderActions(o) });
    }
    actions = kept;
    // Moving the kept forms takes the focus out of them; it is given back.
    const focused = orders.contains(document.activeElement) ? document.activeElement : null;
    orders.replaceChildren(list.length === 0 ? h('p', { class: 'muted' }, t('no_open_orders')) : table(t('my_open_orders'), [t('order'), t('slot'), t('side'), t('energy'), t('price'), t('actions')],
      list.map((o) => ({ attrs: { 'data-order': o.order_id }, cells: [String(o.order_id), String(o.slot), t(o.side), wh(o.energy_wh), perKwh(o.price_per_kwh), kept.get(o.order_id).el] })), [3, 4]));
    if (focused && focused.isConnected) focused.focus();
  }

  function orderActions(o) {
    const e = h('input', { type: 'number', min: 1, step: 1, value: o.energy_wh });
    const p = h('input', { type: 'number', min: 0, step: 1, value: o.price_per_kwh });
    const amend = form({ class: 'amend' },
      h('div', { class: 'row' }, field('energy_wh', t('new_energy', { id: o.order_id }), e), field('price_per_kwh', t('new_price', { id: o.order_id }), p)),
      h('div', { class: 'row' }, h('button', { type: 'submit', class: 'secondary' }, t('amend')),
        h('button', { type: 'button', class: 'danger', 'aria-label': t('cancel_named', { id: o.order_id }), onclick: async () => {
          try { await api('DELETE', `/orders/${o.order_id}`); toast(t('order_cancelled', { id: o.order_id })); } catch (err) { toast(err.message); }
          await Promise.all([refreshOrders(), refreshDepth()]);
        } }, t('cancel'))));
    amend.addEventListener('submit', (ev) => {
      ev.preventDefault();
      submitting(amend, async () => {
        await api('PATCH', `/orders/${o.order_id}`, { energy_wh: Number(e.value), price_per_kwh: Number(p.value) });
        toast(t('order_amended', { id: o.order_id }));
        await Promise.all([refreshOrders(), refreshDepth()]);
      }, orderField);
    });
    return h('details', {}, h('summary', {}, t('amend_or_cancel')), amend);
  }

  async function refreshTrades() {
    const c = await clock();
    const res = await get(`/my/slots?from=${Math.max(0, c.current - 40)}&to=${c.current + AHEAD}`);
    const rows = res.slots.filter((x) => x.bought_wh || x.sold_wh).reverse();
    trades.replaceChildren(rows.length === 0 ? h('p', { class: 'muted' }, t('no_trades')) : table(t('my_trades'), [t('slot'), t('sold'), t('received'), t('bought'), t('paid'), t('settlement')],
      rows.map((x) => ({ attrs: { 'data-slot': x.slot }, cells: [String(x.slot), wh(x.sold_wh), money(x.received), wh(x.bought_wh), money(x.paid), x.settled == null ? h('span', { class: 'pill pending' }, t('pending')) : h('span', { class: 'pill settled' }, `${t('settled')} ${money(x.settled)}`)] })), [1, 2, 3, 4]));
  }

  async function refreshRule() {
    if (!meters.length) return;
    const meter = meterSel.value;
    let rule = null;
    try { rule = await get(`/meters/${encodeURIComponent(meter)}/rule`); } catch (err) { if (err.status !== 404) throw err; }
    const sell = h('input', { type: 'number', min: 0, step: 1, value: rule && rule.sell_at_least_per_kwh != null ? rule.sell_at_least_per_kwh : '' });
    const buy = h('input', { type: 'number', min: 0, step: 1, value: rule && rule.buy_at_most_per_kwh != null ? rule.buy_at_most_per_kwh : '' });
    const keep = h('input', { type: 'number', min: 0, max: 100, step: 1, value: rule && rule.keep_battery_above_bp != null ? rule.keep_battery_above_bp / 100 : '' });
    const rf = form({ id: 'rule-form' },
      h('p', { class: 'hint' }, t('rule_hint', { meter })),
      h('div', { class: 'row' }, field('sell_at_least_per_kwh', t('sell_at_least'), sell, t('empty_never_sell')), field('buy_at_most_per_kwh', t('buy_at_most'), buy, t('empty_never_buy')), field('keep_battery_above_bp', t('keep_battery'), keep)),
      h('div', { class: 'row' }, h('button', { type: 'submit' }, t('save_rule')), rule ? h('button', { type: 'button', class: 'danger', onclick: async () => { try { await api('DELETE', `/meters/${encodeURIComponent(meter)}/rule`); toast(t('rule_removed')); } catch (err) { toast(err.message); } refreshRule(); } }, t('remove_rule')) : null));
    const opt = (el, scale = 1) => (el.value === '' ? null : Math.round(Number(el.value) * scale));
    rf.addEventListener('submit', (ev) => {
      ev.preventDefault();
      submitting(rf, async () => {
        await api('PUT', `/meters/${encodeURIComponent(meter)}/rule`, { sell_at_least_per_kwh: opt(sell), buy_at_most_per_kwh: opt(buy), keep_battery_above_bp: opt(keep, 100) });
        toast(t('rule_saved'));
        refreshRule();
      }, (err) => (/sell/.test(err.message) ? 'sell_at_least_per_kwh' : /buy/.test(err.message) ? 'buy_at_most_per_kwh' : /battery/.test(err.message) ? 'keep_battery_above_bp' : null));
    });
    const preview = h('p', { id: 'rule-preview', 'aria-live': 'polite' });
    ruleBox.replaceChildren(rf, h('h3', {}, t('rule_preview')), preview, h('p', { class: 'hint' }, t('rule_preview_hint')));
    // What the rule would have done over the previous day of slots, from my own metered
    // slots (the rule's persistence forecast: each slot like the one before it) and each
    // slot's clearing price.
    const c = await clock();
    const r = ranges(c);
    const [mine, market] = await Promise.all([get(`/my/slots?from=${r.yesterday.from - 1}&to=${r.yesterday.to}`), get(`/slots?from=${r.yesterday.from}&to=${r.yesterday.to}`)]);
    const byIndex = new Map(mine.slots.map((x) => [x.slot, x]));
    const showPreview = () => {
      const sellAt = sell.value === '' ? null : Number(sell.value);
      const buyAt = buy.value === '' ? null : Number(buy.value);
      const p = { sold: 0, sellSlots: 0, sellCleared: 0, bought: 0, buySlots: 0, buyCleared: 0, earned: 0, paid: 0 };
      for (const sl of market.slots) {
        const before = byIndex.get(sl.slot - 1);
        if (!before || before.import_wh == null) continue;
        const net = before.import_wh - before.export_wh;
        const price = sl.clearing_price;
        if (net < 0 && sellAt != null) {
          p.sellSlots += 1; p.sold += -net;
          if (price != null && price >= sellAt) { p.sellCleared += 1; p.earned += Math.floor((-net * price) / 1000); }
        } else if (net > 0 && buyAt != null) {
          p.buySlots += 1; p.bought += net;
          if (price != null && price <= buyAt) { p.buyCleared += 1; p.paid += Math.floor((net * price) / 1000); }
        }
      }
      preview.textContent = t('rule_preview_text', { sellSlots: p.sellSlots, sold: wh(p.sold), sellCleared: p.sellCleared, earned: money(p.earned), buySlots: p.buySlots, bought: wh(p.bought), buyCleared: p.buyCleared, paid: money(p.paid) });
    };
    [sell, buy].forEach((el) => el.addEventListener('input', showPreview));
    showPreview();
  }
  meterSel.addEventListener('change', refreshRule);

  const refreshAll = async () => { await refreshSlots(); await Promise.all([refreshDepth(), refreshOrders(), refreshTrades()]); };
  await refreshAll();
  await refreshRule();
  let pending = null;
  const soon = () => { if (!pending) pending = setTimeout(() => { pending = null; refreshAll(); }, 700); };
  const stop = subscribe((e) => { if (e.type === 'order' || e.type === 'trades' || e.type === 'settled' || e.type === 'gate_closed' || e.type === 'cleared') soon(); });
  // The timeline moves on the clock, whatever happens in the market.
  const tick = setInterval(refreshAll, Math.max(3000, Math.min(30000, (state.length || 15) * 200)));
  return () => { stop(); clearInterval(tick); clearTimeout(pending); };
}
