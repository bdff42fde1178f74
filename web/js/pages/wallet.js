// Wallet: balance, what bids and purchases hold, what is available; deposits and
// withdrawals; my settled slots and their batches on chain; my meters' stake and rewards as the
// staking contract holds them.
import { get, post } from '../api.js';
import { t } from '../i18n.js';
import { h, field, form, submitting, showError, table, toast, money, wh, dateTime, figures, tokens } from '../ui.js';
import { subscribe } from '../live.js';
import { clock, ranges } from './home.js';

/**
 * Links the browser's wallet (EIP-1193 `window.ethereum`) as this account's chain address:
 * asks it for an account, has it sign the engine's challenge (EIP-712 typed data, the
 * Settlement contract's domain), then sends the signatures. Returns the linked address, or
 * null when the household declined in its wallet.
 */
async function linkBrowserWallet(status) {
  const wallet = window.ethereum;
  if (!wallet || typeof wallet.request !== 'function') throw new Error(t('no_browser_wallet'));
  const declined = (err) => err && (err.code === 4001 || err.code === 'ACTION_REJECTED');
  try {
    status.textContent = t('wallet_asking');
    const [address] = await wallet.request({ method: 'eth_requestAccounts' });
    if (!address) throw new Error(t('no_browser_wallet'));
    const challenge = await post('/me/wallet/challenge', { address });
    status.textContent = t('wallet_signing');
    const sign = (typed) => wallet.request({ method: 'eth_signTypedData_v4', params: [address, JSON.stringify(typed)] });
    const linkSignature = await sign(challenge.link);
    const openSignature = challenge.open ? await sign(challenge.open) : undefined;
    await post('/me/wallet', { address, nonce: challenge.nonce, link_signature: linkSignature, ...(openSignature ? { open_signature: openSignature } : {}) });
    status.textContent = '';
    return address;
  } catch (err) {
    if (declined(err)) {
      status.textContent = t('wallet_declined');
      return null;
    }
    throw err;
  }
}

export async function render(main) {
  const funds = h('div', { id: 'funds' });
  const funding = h('div', { id: 'funding' });
  const settled = h('div', { id: 'settlements' });
  const stakes = h('div', { id: 'stakes' });
  const csv = h('p', { id: 'csv' });
  const address = h('div', { id: 'chain-address' });
  // A household with a wallet of its own withdraws from it; the engine holds no key to ask with.
  const ownWithdraw = h('p', { class: 'hint', id: 'withdraw-own', hidden: true });
  const amount = h('input', { type: 'number', min: 1, step: 1, inputmode: 'numeric', required: true });
  const wf = form({ id: 'withdraw-form' }, field('amount', t('amount'), amount, t('withdraw_hint')), h('div', {}, h('button', { type: 'submit' }, t('withdraw'))));
  wf.addEventListener('submit', (e) => {
    e.preventDefault();
    submitting(wf, async () => {
      const a = Number(amount.value);
      if (!Number.isInteger(a) || a < 1) return showError(wf, 'amount', t('amount_invalid'));
      const r = await post('/withdrawals', { amount: a });
      toast(r && r.paid_to ? t('withdrawal_requested', { amount: money(a), address: r.paid_to, when: dateTime(r.ready_at * 1000) }) : t('withdrawn', { amount: money(a) }));
      wf.reset();
      await refresh();
      if (r && r.paid_to) awaitConfirmation(r.withdrawal_pending);
    }, (err) => (/amount|insufficient/i.test(err.message) ? 'amount' : null));
  });
  main.append(h('h1', {}, t('nav_wallet')), h('div', { class: 'grid' },
    h('section', { class: 'card', 'aria-labelledby': 'funds-h' }, h('h2', { id: 'funds-h' }, t('funds')), funds),
    h('section', { class: 'card', 'aria-labelledby': 'wd-h' }, h('h2', { id: 'wd-h' }, t('withdraw')), wf, ownWithdraw),
    h('section', { class: 'card wide', 'aria-labelledby': 'addr-h', hidden: true }, h('h2', { id: 'addr-h' }, t('chain_address')), address),
    h('section', { class: 'card wide', 'aria-labelledby': 'set-h' }, h('h2', { id: 'set-h' }, t('settlements')), h('p', { class: 'hint' }, t('settlements_hint')), settled),
    h('section', { class: 'card wide', 'aria-labelledby': 'stake-h' }, h('h2', { id: 'stake-h' }, t('stake_rewards')), h('p', { class: 'hint' }, t('stake_hint')), stakes),
    h('section', { class: 'card wide', 'aria-labelledby': 'fund-h' }, h('h2', { id: 'fund-h' }, t('deposits_withdrawals')), funding),
    h('section', { class: 'card wide', 'aria-labelledby': 'csv-h' }, h('h2', { id: 'csv-h' }, t('export_csv')), csv)));

  // A withdrawal asked on chain is held back once the chain confirms the request: asked
  // every second (for a minute at most) until the pending amount moves, so it shows then.
  let confirming = null;
  function awaitConfirmation(before, tries = 60) {
    clearTimeout(confirming);
    confirming = setTimeout(async () => {
      const b = await get('/balance').catch(() => null);
      if (b && b.withdrawal_pending !== before) await refresh();
      else if (tries > 1) awaitConfirmation(before, tries - 1);
    }, 1000);
  }
  async function refresh() {
    const c = await clock();
    const r = ranges(c);
    const link = (range, label) => h('a', { href: `/api/v1/my/slots?from=${range.from}&to=${range.to}&format=csv`, download: '' }, label);
    csv.replaceChildren(t('export_csv_hint'), ' ', link(r.today, r.accelerated ? t('last_96') : t('today')), ' · ', link(r.month, t('this_month')));
    const from = Math.max(0, c.current - 95);
    const [b, f, mine, batches, me] = await Promise.all([get('/balance'), get('/funding'), get(`/my/slots?from=${from}&to=${c.current}`), get(`/settlements?after=${Math.max(0, from - 1)}&limit=200`), get('/me')]);
    const chain = me.chain;
    funds.replaceChildren(figures([
      [t('balance'), money(b.balance), 'f-balance'], [t('held_by_bids'), money(b.held_by_bids), 'f-bids'],
      [t('held_by_purchases'), money(b.held_by_purchases), 'f-purchases'],
      ...(b.withdrawal_pending ? [[t('withdrawal_pending'), money(b.withdrawal_pending), 'f-withdrawing']] : []),
      [t('available'), money(b.available), 'f-available']]),
    h('p', { class: 'hint' }, t('funds_hint')),
    ...(chain && chain.address ? [h('p', { class: 'hint', id: 'chain-money' }, t('chain_money', { contract: chain.settlement_contract || '', address: chain.address }))] : []));
    showAddress(chain);
    funding.replaceChildren(f.funding.length === 0 ? h('p', { class: 'muted' }, t('none')) : table(t('deposits_withdrawals'), [t('when'), t('kind'), t('amount'), t('reference')],
      f.funding.map((x) => [dateTime(x.at_ms), x.amount > 0 ? t('deposit') : t('withdrawal'), money(Math.abs(x.amount)), x.reference]), [2]));
    const queued = new Map(batches.settlements.map((x) => [x.slot, x]));
    const rows = mine.slots.filter((x) => x.settled !== null && x.settled !== undefined).reverse();
    settled.replaceChildren(rows.length === 0 ? h('p', { class: 'muted' }, t('no_settlements')) : table(t('settlements'), [t('slot'), t('net_amount'), t('utility_alone'), t('import'), t('export'), t('bought'), t('sold'), t('on_chain'), t('inclusion')],
      rows.map((x) => {
        const q = queued.get(x.slot);
        return { attrs: { 'data-slot': x.slot }, cells: [String(x.slot), h('span', { class: x.settled >= 0 ? 'pos' : 'neg' }, money(x.settled)), money(x.utility_only == null ? null : -x.utility_only), wh(x.import_wh), wh(x.export_wh), wh(x.bought_wh), wh(x.sold_wh),
          q && q.queued_for_chain_ms ? `${t('batch')} ${q.batch_id} · ${dateTime(q.queued_for_chain_ms)}` : h('span', { class: 'pill pending' }, t('pending')),
          x.bought_wh || x.sold_wh ? inclusionCell(x.slot) : t('no_trades_short')] };
      }), [1, 2, 3, 4, 5, 6]));
  }
  /**
   * The account's chain address: held by the engine (custodial) or the household's own wallet.
   * A custodial household links a wallet of its own from the browser (EIP-1193: the wallet signs
   * the engine's EIP-712 challenge, and the account's OpenAccount for the Settlement contract),
   * or exports the custodial key to import it into a wallet.
   */
  function showAddress(chain) {
    address.parentElement.hidden = !(chain && chain.address);
    const own = Boolean(chain && chain.address && !chain.custodial);
    wf.hidden = own;
    ownWithdraw.hidden = !own;
    if (own) ownWithdraw.textContent = t('withdraw_own', { contract: chain.settlement_contract || '' });
    if (!chain || !chain.address) return;
    const status = h('p', { id: 'address-status', 'aria-live': 'polite' });
    const parts = [h('p', {}, h('code', { class: 'address' }, chain.address), ' ', h('span', { class: 'pill' }, chain.custodial ? t('custodial') : t('own_wallet'))),
      h('p', { class: 'hint' }, chain.custodial ? t('custodial_hint') : t('own_wallet_hint'))];
    if (chain.custodial) {
      const linkButton = h('button', { type: 'button', id: 'link-wallet' }, t('link_wallet'));
      linkButton.addEventListener('click', async () => {
        linkButton.disabled = true;
        status.textContent = '';
        try {
          const linked = await linkBrowserWallet(status);
          if (linked) {
            toast(t('wallet_linked', { address: linked }));
            await refresh();
          }
        } catch (err) {
          status.textContent = err.message || String(err);
        } finally {
          linkButton.disabled = false;
        }
      });
      const password = h('input', { type: 'password', autocomplete: 'current-password', required: true });
      const shown = h('div', { id: 'exported-key' });
      const ef = form({ id: 'export-key-form' }, field('password', t('password_again'), password, t('export_key_hint')), h('div', {}, h('button', { type: 'submit', class: 'secondary' }, t('export_key'))), shown);
      ef.addEventListener('submit', (e) => {
        e.preventDefault();
        submitting(ef, async () => {
          const r = await post('/me/custodial-key/export', { password: password.value });
          password.value = '';
          shown.replaceChildren(h('p', { class: 'neg' }, t('exported_key_warning')), h('p', {}, h('code', { class: 'secret', id: 'private-key' }, r.private_key)));
        }, () => 'password');
      });
      parts.push(h('div', { class: 'actions' }, linkButton), status, h('details', {}, h('summary', {}, t('export_key')), ef));
    }
    address.replaceChildren(...parts);
  }

  /** Each of my meters' stake and rewards, read from the staking contract by the engine. */
  async function refreshStakes() {
    const { meters } = await get('/meters');
    const answers = await Promise.all(meters.map((m) => get(`/meters/${encodeURIComponent(m.meter_id)}/stake`).catch((err) => ({ meter_id: m.meter_id, error: err.message }))));
    if (answers.length === 0) { stakes.replaceChildren(h('p', { class: 'muted' }, t('no_meters'))); return; }
    const state = (a) => (a.error ? a.error : !a.registered ? t('not_registered_on_chain') : a.slashed ? t('slashed') : a.attested ? t('attested') : t('not_attested'));
    const rewards = (a) => (a.epochs || []).reduce((sum, e) => sum + BigInt(e.reward), 0n);
    // The engine proves the epochs of meters that made it their delegate; its latest attempt.
    const proofs = (a) => {
      if (!a.registered) return '–';
      if (!a.proved_by_engine) return t('proofs_by_owner');
      const p = (a.proofs || [])[0];
      if (!p) return t('proofs_none_yet');
      return p.status === 'failed' ? h('span', { class: 'neg' }, t('proof_failed', { epoch: p.epoch, error: p.last_error || '' })) : t('proof_proved', { epoch: p.epoch });
    };
    stakes.replaceChildren(table(t('stake_rewards'), [t('meter'), t('on_chain'), t('staked'), t('unbonding'), t('claimable'), t('rewards_recent'), t('credited_recent'), t('proofs')],
      answers.map((a) => ({ attrs: { 'data-meter': a.meter_id, 'data-registered': a.registered ? 'true' : 'false' }, cells: [a.meter_id, state(a), a.registered ? tokens(a.staked) : '–', a.registered ? tokens(a.unbonding) : '–', a.registered ? tokens(a.claimable) : '–', a.registered ? tokens(rewards(a)) : '–', a.registered ? wh(a.epochs.reduce((sum, e) => sum + e.credited_wh, 0)) : '–', proofs(a)] })), [2, 3, 4, 5, 6]));
  }
  // Inclusion checks done in this page, kept across refreshes of the table.
  const checks = new Map();
  function inclusionCell(slot) {
    const out = h('span', { class: 'inclusion', 'aria-live': 'polite' }, checks.get(slot) || '');
    const button = h('button', { type: 'button', class: 'secondary', 'aria-label': t('check_slot', { slot }), onclick: async () => {
      button.disabled = true;
      try {
        const [{ checkInclusion }, answer] = await Promise.all([import('../merkle.js'), get(`/my/settlements/${slot}/proof`)]);
        // Against the root the Settlement contract holds; an engine settling on no chain can
        // only show its own root.
        const root = answer.chain_root || (answer.on_chain ? null : answer.root);
        if (!root) {
          checks.set(slot, t('not_on_chain_yet'));
        } else {
          const results = checkInclusion(answer, root);
          const ok = results.length > 0 && results.every((r) => r.leafMatches && r.included);
          const where = answer.chain_root ? t('root_on_chain') : t('root_of_engine');
          checks.set(slot, ok ? `${t('included', { n: results.length, root: `${root.slice(0, 10)}…` })} ${where}` : t('not_included'));
        }
      } catch (err) {
        checks.set(slot, err.message);
      }
      out.textContent = checks.get(slot);
      button.disabled = false;
    } }, t('check'));
    return h('span', {}, button, ' ', out);
  }
  await Promise.all([refresh(), refreshStakes()]);
  let pending = null;
  const stop = subscribe((e) => { if ((e.type === 'trades' || e.type === 'settled') && !pending) pending = setTimeout(() => { pending = null; refresh(); }, 1000); });
  const tick = setInterval(refresh, 10000);
  return () => { stop(); clearInterval(tick); clearTimeout(pending); clearTimeout(confirming); };
}
