// Operator: market settings (tariffs, grid fee, mechanism, price rule, slot timeline) with the
// slot a change applies from; members' meters and their approval; deposits; rejected readings
// by reason; settlement lag.
import { api, get, post } from '../api.js';
import { t } from '../i18n.js';
import { h, field, form, submitting, showError, table, toast, money, num, time, dateTime, figures } from '../ui.js';
import { clock } from './home.js';

const NUMBERS = ['retail_per_kwh', 'feed_in_per_kwh', 'grid_fee_per_kwh', 'k_basis_points', 'window_opens_before_s', 'gate_closure_before_s', 'settlement_after_s'];

export async function render(main) {
  const settingsBox = h('div', { id: 'settings' });
  const versions = h('div', { id: 'versions' });
  const metersBox = h('div', { id: 'op-meters' });
  const secret = h('div', { 'aria-live': 'polite' });
  const rejections = h('div', { id: 'rejections' });
  const lag = h('div', { id: 'lag' });
  main.append(h('h1', {}, t('nav_operator')), h('div', { class: 'grid' },
    h('section', { class: 'card wide', 'aria-labelledby': 'set-h' }, h('h2', { id: 'set-h' }, t('market_settings')), settingsBox, versions),
    h('section', { class: 'card wide', 'aria-labelledby': 'mem-h' }, h('h2', { id: 'mem-h' }, t('members_meters')), secret, metersBox),
    h('section', { class: 'card', 'aria-labelledby': 'dep-h' }, h('h2', { id: 'dep-h' }, t('record_deposit')), depositForm()),
    h('section', { class: 'card', 'aria-labelledby': 'lag-h' }, h('h2', { id: 'lag-h' }, t('settlement_lag')), lag),
    h('section', { class: 'card wide', 'aria-labelledby': 'rej-h' }, h('h2', { id: 'rej-h' }, t('rejected_readings')), rejections)));

  async function loadSettings() {
    const { versions: list } = await get('/market/settings');
    const current = list[list.length - 1].settings;
    const inputs = {};
    const num$ = (name) => { inputs[name] = h('input', { type: 'number', min: 0, step: 1, required: true, value: current[name] }); return inputs[name]; };
    const mech = h('select', {}, ['call', 'continuous', 'pay-as-offer', 'sharing'].map((m) => h('option', { value: m, selected: m === current.mechanism }, t(`mech_${m}`))));
    const rule = h('select', {}, ['k-factor', 'midpoint', 'marginal-bid', 'marginal-ask'].map((m) => h('option', { value: m, selected: m === current.price_rule }, t(`rule_${m}`))));
    const result = h('p', { id: 'settings-result', 'aria-live': 'polite' });
    const f = form({ id: 'settings-form' },
      h('div', { class: 'row' }, field('retail_per_kwh', t('retail'), num$('retail_per_kwh'), t('per_kwh_units')), field('feed_in_per_kwh', t('feed_in'), num$('feed_in_per_kwh'), t('per_kwh_units')), field('grid_fee_per_kwh', t('grid_fee'), num$('grid_fee_per_kwh'), t('per_kwh_units'))),
      h('div', { class: 'row' }, field('mechanism', t('mechanism'), mech), field('price_rule', t('price_rule'), rule), field('k_basis_points', t('k_bp'), num$('k_basis_points'), t('k_hint'))),
      h('div', { class: 'row' }, field('window_opens_before_s', t('window_opens'), num$('window_opens_before_s'), t('seconds_before')), field('gate_closure_before_s', t('gate_closure'), num$('gate_closure_before_s'), t('seconds_before')), field('settlement_after_s', t('settlement'), num$('settlement_after_s'), t('seconds_after'))),
      h('p', { class: 'hint' }, t('settings_hint', { length: current.slot_length_s })),
      h('div', {}, h('button', { type: 'submit' }, t('save_settings'))), result);
    f.addEventListener('submit', (e) => {
      e.preventDefault();
      submitting(f, async () => {
        const body = { mechanism: mech.value, price_rule: rule.value };
        for (const n of NUMBERS) {
          const v = Number(inputs[n].value);
          if (inputs[n].value === '' || !Number.isInteger(v) || v < 0) return showError(f, n, t('whole_number'));
          body[n] = v;
        }
        if (body.feed_in_per_kwh > body.retail_per_kwh) return showError(f, 'feed_in_per_kwh', t('feed_in_above_retail'));
        const res = await api('PUT', '/market/settings', body);
        const slot = (await get(`/slots?from=${res.from_slot}&to=${res.from_slot}`)).slots[0];
        result.textContent = t('applies_from', { slot: res.from_slot, at: time(slot.delivery_start_s) });
        toast(result.textContent);
        await showVersions();
      }, (err) => { const m = /market\.([a-z_]+)/.exec(err.message); return m ? m[1] : null; });
    });
    settingsBox.replaceChildren(f);
    await showVersions();
  }
  async function showVersions() {
    const { versions: list } = await get('/market/settings');
    versions.replaceChildren(h('h3', {}, t('versions')), table(t('versions'), [t('from_slot'), t('retail'), t('feed_in'), t('grid_fee'), t('mechanism'), t('timeline')],
      list.map((v) => [String(v.from_slot), num(v.settings.retail_per_kwh), num(v.settings.feed_in_per_kwh), num(v.settings.grid_fee_per_kwh), `${v.settings.mechanism}${v.settings.mechanism === 'call' ? ` (${v.settings.price_rule})` : ''}`,
        `${v.settings.window_opens_before_s} / ${v.settings.gate_closure_before_s} / ${v.settings.settlement_after_s} s`]), [1, 2, 3]));
  }

  function depositForm() {
    const name = h('input', { type: 'text', required: true, autocapitalize: 'none' });
    const amount = h('input', { type: 'number', min: 1, step: 1, required: true });
    const reference = h('input', { type: 'text', required: true, maxlength: 128 });
    const f = form({ id: 'deposit-form' }, field('name', t('account'), name), field('amount', t('amount'), amount), field('reference', t('reference'), reference, t('reference_hint')), h('div', {}, h('button', { type: 'submit' }, t('record_deposit'))));
    f.addEventListener('submit', (e) => {
      e.preventDefault();
      submitting(f, async () => {
        if (!name.value.trim()) return showError(f, 'name', t('name_required'));
        const a = Number(amount.value);
        if (!Number.isInteger(a) || a < 1) return showError(f, 'amount', t('amount_invalid'));
        if (!reference.value.trim()) return showError(f, 'reference', t('reference_hint'));
        const res = await post(`/accounts/${encodeURIComponent(name.value.trim())}/deposits`, { amount: a, reference: reference.value.trim() });
        toast(t('deposit_recorded', { amount: money(a), name: res.account }));
        f.reset();
      }, (err) => (err.status === 404 || /account/.test(err.message) ? 'name' : /reference/.test(err.message) ? 'reference' : /amount/.test(err.message) ? 'amount' : null));
    });
    return f;
  }

  async function loadMeters() {
    let list;
    try {
      list = await get('/operator/meters');
    } catch (err) {
      metersBox.replaceChildren(h('p', { class: 'muted' }, t('meters_unavailable'), ` (${err.message})`));
      return;
    }
    const meters = list.meters || [];
    metersBox.replaceChildren(meters.length === 0 ? h('p', { class: 'muted' }, t('none')) : table(t('members_meters'), [t('account'), t('meter'), t('status'), t('capacity'), t('actions')],
      meters.map((m) => [m.owner || m.account || '–', m.meter_id, h('span', { class: `pill ${m.status}` }, t(`status_${m.status}`)),
        m.export_capacity_w != null ? `${num(m.export_capacity_w)} / ${num(m.import_capacity_w)} W` : '–', m.status === 'pending' ? approveForm(m) : ''])));
  }
  function approveForm(m) {
    const inputs = {
      export_capacity_w: h('input', { type: 'number', min: 1, step: 1, required: true }),
      import_capacity_w: h('input', { type: 'number', min: 1, step: 1, required: true }),
      manufacturer: h('input', { type: 'text', required: true }), model: h('input', { type: 'text', required: true }), serial: h('input', { type: 'text', required: true }),
    };
    const f = form({ class: 'approve' }, Object.entries(inputs).map(([k, el]) => field(k, t(`approve_${k}`, { meter: m.meter_id }), el)), h('div', {}, h('button', { type: 'submit' }, t('approve'))));
    f.addEventListener('submit', (e) => {
      e.preventDefault();
      submitting(f, async () => {
        const body = {};
        for (const [k, el] of Object.entries(inputs)) {
          if (!el.value.trim()) return showError(f, k, t('required'));
          body[k] = el.type === 'number' ? Number(el.value) : el.value.trim();
        }
        const res = await post(`/meters/${encodeURIComponent(m.meter_id)}/approval`, body);
        const user = res.mqtt_username || (res.mqtt && res.mqtt.username);
        const pass = res.mqtt_password || (res.mqtt && res.mqtt.password);
        toast(t('meter_approved', { meter: m.meter_id }));
        // The broker login is shown once, above the list, which is redrawn with the new status.
        secret.replaceChildren(...(user && pass ? [h('p', {}, t('mqtt_once_for', { meter: m.meter_id })), h('code', { class: 'secret', id: 'mqtt-secret' }, `${user} / ${pass}`)] : []));
        await loadMeters();
      }, (err) => { const m2 = /^([a-z_]+)/.exec(err.message); return m2 && inputs[m2[1]] ? m2[1] : null; });
    });
    const refuse = h('button', { type: 'button', class: 'danger', onclick: async () => {
      try { await api('DELETE', `/meters/${encodeURIComponent(m.meter_id)}`); toast(t('meter_refused', { meter: m.meter_id })); } catch (err) { toast(err.message); }
      await loadMeters();
    } }, t('refuse_named', { meter: m.meter_id }));
    return h('div', {}, h('details', {}, h('summary', {}, t('approve_named', { meter: m.meter_id })), f), refuse);
  }

  async function loadRejections() {
    const r = await get('/operator/rejections');
    rejections.replaceChildren(...[
      r.by_reason.length === 0 ? h('p', { class: 'muted' }, t('no_rejections')) : table(t('by_reason'), [t('reason'), t('count')], r.by_reason.map((x) => [x.reason, num(x.count)]), [1]),
      r.latest.length ? h('details', {}, h('summary', {}, t('latest_rejections')), table(t('latest_rejections'), [t('when'), t('meter'), t('reason'), t('detail')], r.latest.map((x) => [dateTime(x.received_ms), x.meter_id || '–', x.reason, x.detail]))) : null,
    ].filter(Boolean));
  }

  async function loadLag() {
    const c = await clock();
    const from = Math.max(0, c.current - 40);
    const [slots, batches] = await Promise.all([get(`/slots?from=${from}&to=${c.current}`), get(`/settlements?after=${Math.max(0, from - 1)}&limit=100`)]);
    const due = slots.slots.filter((x) => x.status === 'closed' && x.settlement_s < slots.now_s);
    const last = batches.settlements[batches.settlements.length - 1];
    const lastSlot = last && slots.slots.find((x) => x.slot === last.slot);
    const lagS = last && last.queued_for_chain_ms && lastSlot ? Math.max(0, Math.round(last.queued_for_chain_ms / 1000 - lastSlot.settlement_s)) : null;
    lag.replaceChildren(figures([[t('last_settled'), last ? String(last.slot) : '–'], [t('lag_to_chain'), lagS == null ? '–' : `${lagS} s`], [t('overdue'), String(due.length)]]),
      h('p', { class: 'hint' }, t('lag_hint')));
  }

  await Promise.all([loadSettings(), loadMeters(), loadRejections(), loadLag()]);
  const tick = setInterval(() => { loadLag(); loadRejections(); }, 10000);
  return () => clearInterval(tick);
}
