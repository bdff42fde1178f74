// End to end: the real `market-engine demo` binary (engine, embedded broker, twelve simulated
// homes read by real meter agents) driven through Debian's Chromium with playwright-core.
// Every page is checked with axe-core and photographed at desktop and phone width into
// web/screenshots/.
//
// The engine binary: $GRIDSHARE_ENGINE_BIN, else $CARGO_TARGET_DIR/debug/market-engine (built
// by `cargo build --workspace`).
import { test, before, after, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import { generateKeyPairSync, randomBytes } from 'node:crypto';
import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { startDemo, launch, checkA11y, shoot, web } from './harness.js';

let demo;
let browser;

before(async () => {
  demo = await startDemo();
  browser = await launch();
});

after(async () => {
  if (browser) await browser.close();
  if (demo) await demo.stop();
});

/** A new page in a fresh context (its own cookies), at desktop width. */
async function fresh() {
  const context = await browser.newContext({ viewport: { width: 1280, height: 900 }, locale: 'en-GB' });
  const page = await context.newPage();
  page.on('pageerror', (e) => pageErrors.push(`${page.url()}: ${e.message}`));
  return page;
}

/** Script errors of the app in any page: none may happen (checked after each test). */
const pageErrors = [];
afterEach(() => {
  const errors = pageErrors.splice(0);
  assert.deepEqual(errors, [], `errors in the app's scripts:\n${errors.join('\n')}`);
});

async function signIn(page, name, password) {
  await page.goto(`${demo.url}#/signin`);
  await page.locator('#signin-form').getByLabel('Name').fill(name);
  await page.locator('#signin-form').getByLabel('Password').fill(password);
  await page.locator('#signin-form').getByRole('button', { name: 'Sign in' }).click();
}

/**
 * Signs a demo home in, once it exists: the demo creates its homes one after the other after
 * printing its address (a debug build hashes each password for a while), so a test run alone
 * may come before the later ones.
 */
async function signInHome(page, name) {
  for (let i = 0; ; i += 1) {
    await signIn(page, name, 'demo-password');
    const out = page.locator('#sign-out');
    const wrong = page.locator('#signin-form [data-error-for="password"]').filter({ hasText: /./ });
    await out.or(wrong).waitFor();
    if (await out.isVisible()) return;
    assert.ok(i < 60, `${name} could not sign in for a minute`);
    await page.waitForTimeout(1000);
  }
}

/** The error line of field `name` in `form` (a locator). */
const errorOf = (form, name) => form.locator(`[data-error-for="${name}"]`);

/** An uncompressed SEC1 P-256 public key, as `meter-agent keygen` prints it. */
function p256PublicKeyHex() {
  const { publicKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' });
  const jwk = publicKey.export({ format: 'jwk' });
  const hex = (b64) => Buffer.from(b64, 'base64url').toString('hex').padStart(64, '0');
  return `04${hex(jwk.x)}${hex(jwk.y)}`;
}

test('sign up, then link a meter: a malformed key, an off-curve key and a taken meter id are each shown by their field', async () => {
  const page = await fresh();
  await page.goto(`${demo.url}#/signup`);
  const form = page.locator('#signup-form');
  const name = `newcomer-${process.pid}`;
  await form.getByLabel('Name').fill(name);
  await form.getByLabel('Password').fill('short');
  await form.getByRole('button', { name: 'Create account' }).click();
  await assert.doesNotReject(errorOf(form, 'password').filter({ hasText: '12' }).waitFor());
  await form.getByLabel('Password').fill('a long enough passphrase');
  await form.getByRole('button', { name: 'Create account' }).click();
  await page.locator('#link-meter').waitFor();
  assert.match(await page.locator('#who').innerText(), new RegExp(name));

  const link = page.locator('#link-meter');
  await link.getByLabel('Meter id').fill(`m-${process.pid}`);
  await link.getByLabel('Public key').fill('04abcd');
  await link.getByRole('button', { name: 'Link a meter' }).click();
  await errorOf(link, 'public_key').filter({ hasText: '130 hexadecimal' }).waitFor();
  assert.equal(await link.getByLabel('Public key').getAttribute('aria-invalid'), 'true');
  // 130 hex digits, but not a point on the curve: the engine refuses it, shown by the field.
  await link.getByLabel('Public key').fill(`04${'00'.repeat(64)}`);
  await link.getByRole('button', { name: 'Link a meter' }).click();
  await errorOf(link, 'public_key').filter({ hasText: /key/i }).waitFor();
  // A meter id someone else has: refused (409), shown by the id.
  await link.getByLabel('Meter id').fill('home-01');
  await link.getByLabel('Public key').fill(p256PublicKeyHex());
  await link.getByRole('button', { name: 'Link a meter' }).click();
  await errorOf(link, 'meter_id').filter({ hasText: /already/ }).waitFor();
  await link.getByLabel('Meter id').fill(`m-${process.pid}`);
  await link.getByRole('button', { name: 'Link a meter' }).click();
  await page.locator('#meters table').getByText(`m-${process.pid}`).waitFor();
  // Its readings count once the operator approves it (the operator test below does).
  await page.locator('#meters tr', { hasText: `m-${process.pid}` }).getByText('waiting for approval').waitFor();
  await page.context().close();
});

test('a wrong password is shown by the password field; a demo home sees live readings arrive', async () => {
  const page = await fresh();
  await signIn(page, 'home-02', 'not-the-password');
  const form = page.locator('#signin-form');
  await errorOf(form, 'password').filter({ hasText: 'Wrong name or password' }).waitFor();
  assert.equal(await form.getByLabel('Password').getAttribute('aria-invalid'), 'true');
  await signIn(page, 'home-02', 'demo-password');
  await page.locator('#live-count').waitFor();
  // Readings arrive over the live stream without a reload.
  await page.waitForFunction(() => Number(document.querySelector('#live-count').textContent) >= 2, null, { timeout: 20_000 });
  await page.waitForFunction(() => document.querySelector('#v-grid').textContent !== '–', null, { timeout: 20_000 });
  await page.context().close();
});

test('Home: solar, battery, house and grid power now from the signed readings, and today\'s self-sufficiency and self-consumption as gauges, compared with the previous period', async () => {
  const page = await fresh();
  // home-02 has solar panels and no battery; the demo's homes start at 10:00 of their day.
  await signIn(page, 'home-02', 'demo-password');
  await page.locator('#live-count').waitFor();
  const watts = (text) => {
    const m = /([\d.,]+)\s*(k?W)/.exec(text);
    return m ? Number(m[1].replace(/,/g, '')) * (m[2] === 'kW' ? 1000 : 1) : null;
  };
  await page.waitForFunction(() => /\d/.test(document.querySelector('#v-pv').textContent), null, { timeout: 20_000 });
  const pv = watts(await page.locator('#v-pv').textContent());
  assert.ok(pv > 0, `solar in the demo's daytime: ${await page.locator('#v-pv').textContent()}`);
  // The house's own power: grid + solar − battery, so a number too.
  await page.waitForFunction(() => /\d\s*k?W/.test(document.querySelector('#v-home').textContent), null, { timeout: 20_000 });
  assert.ok(watts(await page.locator('#v-home').textContent()) >= 0);
  assert.match(await page.locator('#flow-desc').textContent(), /Solar: [\d.,]+ k?W/);
  assert.equal(await page.locator('#wire-pv').getAttribute('class'), 'wire active');
  // The gauges fill once two slot boundaries have readings (a slot is 15 s in the demo).
  for (const id of ['g-sufficiency', 'g-consumption']) {
    await page.waitForFunction((g) => document.querySelector(`#${g}`).dataset.bp, id, { timeout: 90_000 });
    const bp = Number(await page.locator(`#${id}`).getAttribute('data-bp'));
    assert.ok(bp >= 0 && bp <= 10_000, `${id}: ${bp}`);
    assert.match(await page.locator(`#${id}-value`).textContent(), /^\d{1,3} %$/);
  }
  // Compared with the previous day and the months, from the same figures.
  const row = page.locator('#c-pv');
  await row.locator('td').first().filter({ hasText: /Wh/ }).waitFor({ timeout: 30_000 });
  assert.equal(await page.locator('#compare-table thead th').count(), 4);
  // A home with a battery shows its power and state of charge.
  await page.context().close();
  const other = await fresh();
  await signIn(other, 'home-01', 'demo-password');
  await other.locator('#live-count').waitFor();
  await other.waitForFunction(() => /%/.test(document.querySelector('#v-soc').textContent), null, { timeout: 20_000 });
  assert.match(await other.locator('#v-batt').textContent(), /\d\s*k?W/);
  await other.context().close();
});

test('market: an invalid order and an over-budget bid are shown by their field; an offer trades after gate closure, its settlement reaches the wallet and the browser finds it in the batch root', async () => {
  const page = await fresh();
  await signIn(page, 'home-03', 'demo-password');
  await page.locator('#live-count').waitFor();
  await page.goto(`${demo.url}#/market`);
  const form = page.locator('#order-form');
  await form.getByLabel('Delivery slot').locator('option').first().waitFor({ state: 'attached' });

  // A price above the retail tariff.
  await form.getByLabel('Sell').check();
  await form.getByLabel('Energy (Wh)').fill('200');
  await form.getByLabel(/Limit price/).fill('999999');
  await form.getByRole('button', { name: 'Place a bid or an offer' }).click();
  await errorOf(form, 'price_per_kwh').filter({ hasText: /between/ }).waitFor();
  // A bid the account cannot pay for: the engine refuses it with what it needs.
  await form.getByLabel('Buy').check();
  await form.getByLabel('Energy (Wh)').fill('5000000');
  await form.getByLabel(/Limit price/).fill('30000');
  await form.getByRole('button', { name: 'Place a bid or an offer' }).click();
  await errorOf(form, 'energy_wh').filter({ hasText: /insufficient funds/ }).waitFor();
  assert.equal(await form.getByLabel('Energy (Wh)').getAttribute('aria-invalid'), 'true');

  // An offer at the feed-in tariff (the lowest ask there can be) in the next slot whose gate
  // is at least 4 s away.
  const slot = await page.evaluate(async () => {
    const current = await (await fetch('/api/v1/slots/current')).json();
    const res = await (await fetch(`/api/v1/slots?from=${current.delivering}&to=${current.delivering + 6}`)).json();
    return res.slots.find((s) => s.status === 'open' && s.window_opens_s <= res.now_s && s.gate_closure_s - res.now_s >= 4);
  });
  assert.ok(slot, 'an open slot');
  await form.getByLabel('Delivery slot').selectOption(String(slot.slot));
  await form.getByLabel('Sell').check();
  await form.getByLabel('Energy (Wh)').fill('150');
  await form.getByLabel(/Limit price/).fill(String(slot.feed_in_per_kwh));
  const placed = page.waitForResponse((r) => r.url().endsWith('/api/v1/orders') && r.request().method() === 'POST');
  await form.getByRole('button', { name: 'Place a bid or an offer' }).click();
  const { order_id: orderId } = await (await placed).json();
  // The offer is listed among my open orders (the home's rule may have its own in the slot).
  await page.locator(`#my-orders tr[data-order="${orderId}"]`).waitFor({ timeout: 10_000 });
  // After gate closure the offer has traded: the slot's trades name it, and "My trades" shows
  // the slot with energy sold.
  const traded = page.locator(`#my-trades tr[data-slot="${slot.slot}"]`);
  await traded.waitFor({ timeout: 60_000 });
  const trades = await page.evaluate(async (s) => (await (await fetch(`/api/v1/slots/${s}`)).json()).trades, slot.slot);
  const mine = trades.filter((t) => t.ask === orderId);
  assert.ok(mine.length > 0, `offer ${orderId} traded in slot ${slot.slot}: ${JSON.stringify(trades)}`);
  assert.ok(!(await page.locator(`#my-orders tr[data-order="${orderId}"]`).count()), 'no longer open');
  assert.doesNotMatch(await traded.locator('td').nth(1).innerText(), /^0 Wh$/);
  // The slot settles against the signed readings; the wallet lists it.
  await page.goto(`${demo.url}#/wallet`);
  const settledRow = page.locator(`#settlements tr[data-slot="${slot.slot}"]`);
  await settledRow.waitFor({ timeout: 90_000 });
  // The browser checks that the trades are in the batch's Merkle root (keccak256 in the page).
  // The root it checks against is the one the Settlement contract holds (read from the chain);
  // until the batch is confirmed there, the page says so, and the check is asked again.
  const inclusion = settledRow.locator('.inclusion');
  for (let i = 0; i < 30; i += 1) {
    await settledRow.getByRole('button', { name: /Check that my trades/ }).click();
    await inclusion.filter({ hasText: /./ }).waitFor({ timeout: 15_000 });
    if (!/not on chain yet/.test(await inclusion.innerText())) break;
    await page.waitForTimeout(1000);
  }
  await inclusion.filter({ hasText: /✓ \d+ trade\(s\) included in root 0x[0-9a-f]+… \(read from the Settlement contract\)/ }).waitFor({ timeout: 15_000 });
  // The home's meter is registered and staked on the chain's staking contract.
  const stake = page.locator('#stakes tr[data-meter="home-03"]');
  await stake.waitFor({ timeout: 15_000 });
  assert.equal(await stake.getAttribute('data-registered'), 'true');
  assert.match(await stake.locator('td').nth(1).innerText(), /registered, attested/);
  // The demo stakes the contract's minimum (100 GRID) plus a tenth per home number.
  assert.match(await stake.locator('td').nth(2).innerText(), /^120\.00 GRID$/);
  await page.context().close();
});

test('every page passes axe-core and is photographed at desktop and phone width', async () => {
  const dir = join(web, 'screenshots');
  mkdirSync(dir, { recursive: true });
  const pages = [
    ['signin', null], ['signup', null], ['prices', null], ['neighbourhood', null], ['join', null],
    ['home', 'home-02'], ['market', 'home-02'], ['wallet', 'home-02'], ['account', 'home-02'],
    ['operator', 'operator'],
  ];
  const failures = [];
  for (const [viewport, size] of [['desktop', { width: 1280, height: 900 }], ['phone', { width: 390, height: 844 }]]) {
    for (const [name, who] of pages) {
      const context = await browser.newContext({ viewport: size, locale: 'en-GB', bypassCSP: true, isMobile: viewport === 'phone', hasTouch: viewport === 'phone' });
      const page = await context.newPage();
      if (who) {
        await signIn(page, who, who === 'operator' ? demo.operatorPassword : 'demo-password');
        await page.locator('#sign-out').waitFor();
      }
      await page.goto(`${demo.url}#/${name === 'home' ? '' : name}`);
      await page.locator('main h1').waitFor();
      await page.waitForLoadState('networkidle').catch(() => {});
      // Charts and tables fill in after their data arrives.
      await page.waitForTimeout(1200);
      const violations = await checkA11y(page);
      for (const v of violations) failures.push(`${name} (${viewport}): ${v.id}: ${v.help} — ${v.nodes.map((n) => n.target.join(' ')).slice(0, 3).join('; ')}`);
      await shoot(page, join(dir, `${name}-${viewport}.png`));
      await context.close();
    }
  }
  assert.deepEqual(failures, [], failures.join('\n'));
});

test('should I join: a newcomer\'s three numbers get a fan chart, the spread and the stress scenarios (the engine\'s answer, as simulate roi computes it); the token sliders re-ask; a bad value is shown by its field', async () => {
  // bypassCSP: axe-core is injected as an inline script, which the engine's CSP forbids.
  const context = await browser.newContext({ viewport: { width: 1280, height: 900 }, locale: 'en-GB', bypassCSP: true });
  const page = await context.newPage();
  page.on('pageerror', (e) => pageErrors.push(`${page.url()}: ${e.message}`));
  await page.goto(`${demo.url}#/join`);
  const f = page.locator('#roi-form');
  await f.getByLabel('Electricity you use a year (kWh)').fill('3500');
  await f.getByLabel('PV peak power (kWp)').fill('6');
  await f.getByLabel('Battery (kWh)').fill('5');
  const firstAnswer = page.waitForResponse((r) => r.url().endsWith('/api/v1/roi') && r.request().method() === 'POST', { timeout: 180_000 });
  const started = Date.now();
  await f.getByRole('button', { name: 'Calculate' }).click();
  await firstAnswer;
  const answeredMs = Date.now() - started;
  // A debug engine simulates the year in seconds, a release one in well under one.
  await page.locator('#roi-fan canvas').waitFor({ timeout: 180_000 });
  const firstMs = Date.now() - started;
  // The same request straight to the API: the page shows the engine's numbers.
  const answer = await page.evaluate(async () => (await fetch('/api/v1/roi', { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ annual_kwh: 3500, pv_kwp: 6, battery_kwh: 5, token: { price: 0.05, volatility: 0.8 } }) })).json());
  assert.equal(answer.input.annual_kwh, 3500);
  assert.equal(answer.fan.years.length, 26);
  const euros = (v) => new Intl.NumberFormat('en-GB', { style: 'currency', currency: answer.currency, maximumFractionDigits: 0 }).format(v);
  assert.equal(await page.locator('#roi-npv-p50').innerText(), euros(answer.npv.p50));
  const spread = page.locator('#roi-spread tbody tr').first();
  const row = await spread.innerText();
  assert.ok(row.includes(euros(answer.npv.p10)) && row.includes(euros(answer.npv.p90)), `${row} shows P10 ${euros(answer.npv.p10)} and P90 ${euros(answer.npv.p90)}`);
  assert.equal(await page.locator('#roi-stress tbody tr').count(), answer.stress.length);
  assert.ok(answer.stress.some((x) => x.id === 'network-stops') && answer.stress.some((x) => x.id === 'crash-90'));
  await page.locator('#roi-token-share').waitFor();

  // Moving the volatility slider re-asks; the household's year is cached, so only the
  // projection is redone.
  await f.getByLabel(/Token volatility/).focus();
  const responded = page.waitForResponse((r) => r.url().endsWith('/api/v1/roi') && r.request().method() === 'POST');
  const moved = Date.now();
  await page.keyboard.press('End'); // 200 % a year, the most the calculator takes
  const second = await (await responded).json();
  assert.equal(second.input.token.volatility, 2);
  assert.ok(second.npv.p10 < answer.npv.p10, 'a wilder token widens the spread downwards');
  await page.locator('#roi-spread tbody tr').first().filter({ hasText: euros(second.npv.p10) }).waitFor();
  const sliderMs = Date.now() - moved;
  console.log(`should I join: three numbers to fan chart ${firstMs} ms (the year simulated; the engine's answer in after ${answeredMs} ms), volatility slider to new answer ${sliderMs} ms (cached year; includes the 150 ms debounce)`);

  const violations = await checkA11y(page);
  assert.deepEqual(violations, [], JSON.stringify(violations, null, 1));
  mkdirSync(join(web, 'screenshots'), { recursive: true });
  await shoot(page, join(web, 'screenshots', 'join-answer-desktop.png'));

  // A lifetime of zero is refused by the engine and shown by the field, inside the folded part.
  await page.locator('#roi-advanced summary').click();
  await f.getByLabel('Lifetime (years)').fill('0');
  await f.getByRole('button', { name: 'Calculate' }).click();
  await errorOf(f, 'finance.lifetime_years').filter({ hasText: 'lifetime_years' }).waitFor();
  assert.equal(await f.getByLabel('Lifetime (years)').getAttribute('aria-invalid'), 'true');
  await page.context().close();
});

test('German: the same pages speak German from the one catalogue', async () => {
  const page = await fresh();
  await page.goto(`${demo.url}#/signin`);
  await page.locator('#lang').selectOption('de');
  await page.locator('main h1', { hasText: 'Anmelden' }).waitFor();
  assert.equal(await page.evaluate(() => document.documentElement.lang), 'de');
  await page.context().close();
});

test('the operator changes the grid fee (a household sees the new band from the slot it applies to) and approves a newcomer\'s meter', async () => {
  const op = await fresh();
  await signIn(op, 'operator', demo.operatorPassword);
  await op.locator('#sign-out').waitFor();
  await op.goto(`${demo.url}#/operator`);
  const settings = op.locator('#settings-form');
  await settings.getByLabel('Grid fee').fill('2500');
  await settings.getByRole('button', { name: 'Save settings' }).click();
  const result = op.locator('#settings-result').filter({ hasText: 'Applies from slot' });
  await result.waitFor();
  const from = Number(/slot (\d+)/.exec(await result.innerText())[1]);

  // The newcomer's meter (linked in the first test) waits for approval; the operator approves
  // it with its rated capacity and installed device.
  const meterId = `m-${process.pid}`;
  const row = op.locator('#op-meters tr', { hasText: meterId });
  await row.getByText('Approve m-').click();
  await row.getByLabel(`Export capacity of ${meterId} (W)`).fill('5000');
  await row.getByLabel(`Import capacity of ${meterId} (W)`).fill('10000');
  await row.getByLabel('Manufacturer').fill('Fronius');
  await row.getByLabel('Model').fill('Symo GEN24');
  await row.getByLabel('Serial number').fill('SN-4711');
  await row.getByRole('button', { name: 'Approve', exact: true }).click();
  await op.locator('#op-meters tr', { hasText: meterId }).getByText('approved').waitFor();
  // The meter's broker login is issued with the approval and shown once.
  assert.match(await op.locator('#mqtt-secret').innerText(), new RegExp(`^${meterId} / \\S{16,}`));
  await op.context().close();

  const page = await fresh();
  await signIn(page, 'home-05', 'demo-password');
  await page.locator('#live-count').waitFor();
  await page.goto(`${demo.url}#/market`);
  const order = page.locator('#order-form');
  const slotSelect = order.getByLabel('Delivery slot');
  // The slot opens for orders within a slot length or so; the select lists it then.
  await slotSelect.locator(`option[value="${from}"]`).waitFor({ state: 'attached', timeout: 60_000 });
  await slotSelect.selectOption(String(from));
  await page.locator('#band').filter({ hasText: 'grid fee 2,500 per kWh' }).waitFor();
  await slotSelect.selectOption(String(from - 1));
  await page.locator('#band').filter({ hasText: 'grid fee 1,000 per kWh' }).waitFor();
  await page.context().close();
});

test('API tokens for bots: created (the secret shown once, and it works), listed, revoked', async () => {
  const page = await fresh();
  await signIn(page, 'home-07', 'demo-password');
  await page.locator('#sign-out').waitFor();
  await page.goto(`${demo.url}#/account`);
  const form = page.locator('#token-form');
  await form.getByLabel('Label').fill('trading bot');
  await form.getByRole('button', { name: 'Create token' }).click();
  const secret = (await form.locator('code.secret').innerText()).trim();
  assert.match(secret, /^[0-9a-f]{32,}$/);
  // The token acts as the account, without the session cookie.
  const me = await page.evaluate(async (tk) => (await fetch('/api/v1/me', { credentials: 'omit', headers: { authorization: `Bearer ${tk}` } })).json(), secret);
  assert.equal(me.name, 'home-07');
  const row = page.locator('#tokens tr', { hasText: 'trading bot' });
  await row.waitFor();
  await row.getByRole('button', { name: 'Revoke token trading bot' }).click();
  await row.waitFor({ state: 'detached' });
  const status = await page.evaluate(async (tk) => (await fetch('/api/v1/me', { credentials: 'omit', headers: { authorization: `Bearer ${tk}` } })).status, secret);
  assert.equal(status, 401, 'a revoked token no longer works');
  await page.context().close();
});

test('sign out ends the session on the engine, not only in the page', async () => {
  const page = await fresh();
  await signIn(page, 'home-06', 'demo-password');
  await page.locator('#sign-out').click();
  await page.locator('#signin-form').waitFor();
  assert.equal(await page.evaluate(async () => (await fetch('/api/v1/me')).status), 401);
  await page.context().close();
});

test('the string catalogue: English and German have the same keys, and every key the app uses exists', async () => {
  const { readFileSync, readdirSync } = await import('node:fs');
  globalThis.localStorage = { getItem: () => null, setItem: () => {} };
  globalThis.navigator = { language: 'en' };
  const { catalogues } = await import('../js/i18n.js');
  const en = Object.keys(catalogues.en).sort();
  assert.deepEqual(Object.keys(catalogues.de).sort(), en, 'German has exactly the English keys');
  const files = ['main.js', 'ui.js', ...readdirSync(join(web, 'js/pages')).map((f) => `pages/${f}`)];
  const used = new Set();
  for (const f of files) {
    for (const m of readFileSync(join(web, 'js', f), 'utf8').matchAll(/\bt\('([a-z_0-9-]+)'/g)) used.add(m[1]);
  }
  assert.ok(used.size > 100, `found the keys in use (${used.size})`);
  assert.deepEqual([...used].filter((k) => !(k in catalogues.en)), [], 'keys used but missing from the catalogue');
});

/** A context that lets axe-core's inline script in (the engine's CSP forbids inline scripts). */
async function freshForAxe() {
  const context = await browser.newContext({ viewport: { width: 1280, height: 900 }, locale: 'en-GB', bypassCSP: true });
  const page = await context.newPage();
  page.on('pageerror', (e) => pageErrors.push(`${page.url()}: ${e.message}`));
  return page;
}

/** A figure of the wallet's funds (`#f-…`) in token units. */
async function unitsOf(page, id) {
  const text = await page.locator(`#${id}`).innerText();
  const m = /^(-?[\d,]+) units$/.exec(text.trim());
  assert.ok(m, `#${id}: ${text}`);
  return Number(m[1].replace(/,/g, ''));
}

test('wallet: a withdrawal on chain is asked of the Settlement contract, shows as pending within seconds with the balance unchanged and less available; the page passes axe-core', async () => {
  // A new member whose money moves only by what this test does (the demo's homes trade and
  // settle every slot, so their balance moves under any assertion).
  const name = `saver-${process.pid}`;
  const page = await freshForAxe();
  await page.goto(`${demo.url}#/signup`);
  const signup = page.locator('#signup-form');
  await signup.getByLabel('Name').fill(name);
  await signup.getByLabel('Password').fill('a long enough passphrase');
  await signup.getByRole('button', { name: 'Create account' }).click();
  await page.locator('#link-meter').waitFor();

  // The operator records the member's bank transfer; the engine deposits it on chain for them.
  const op = await fresh();
  await signIn(op, 'operator', demo.operatorPassword);
  await op.locator('#sign-out').waitFor();
  await op.goto(`${demo.url}#/operator`);
  const dep = op.locator('#deposit-form');
  await dep.getByLabel('Account').fill(name);
  await dep.getByLabel('Amount (units)').fill('5000');
  await dep.getByLabel('Reference').fill(`transfer-${process.pid}`);
  await dep.getByRole('button', { name: 'Record a deposit' }).click();
  await op.locator('#toast').filter({ hasText: name }).waitFor();
  await op.context().close();

  await page.goto(`${demo.url}#/wallet`);
  await page.locator('#f-balance', { hasText: '5,000 units' }).waitFor({ timeout: 30_000 });
  assert.equal(await unitsOf(page, 'f-available'), 5000);
  assert.equal(await page.locator('#f-withdrawing').count(), 0, 'nothing pending yet');
  // Where the money is: the Settlement contract, under the member's (custodial) address.
  const me = await page.evaluate(async () => (await fetch('/api/v1/me')).json());
  const chainLine = await page.locator('#chain-money').innerText();
  assert.ok(me.chain && me.chain.address, `a chain address: ${JSON.stringify(me.chain)}`);
  assert.ok(chainLine.includes(me.chain.address) && chainLine.includes(me.chain.settlement_contract), chainLine);
  // The engine holds the key: the address card says so and offers to link a wallet instead.
  assert.equal(me.chain.custodial, true);
  const card = page.locator('#chain-address');
  await card.filter({ hasText: me.chain.address }).filter({ hasText: 'held by the engine' }).waitFor();
  await card.getByRole('button', { name: 'Link my browser wallet' }).waitFor();

  // The deposit reaches the contract from the engine's operator key; until it is there the
  // contract refuses the request, which the page shows by the amount.
  const wf = page.locator('#withdraw-form');
  let answer = null;
  for (let i = 0; i < 30 && !answer; i += 1) {
    await wf.getByLabel('Amount (units)').fill('1200');
    const responded = page.waitForResponse((r) => r.url().endsWith('/api/v1/withdrawals'));
    await wf.getByRole('button', { name: 'Withdraw' }).click();
    const r = await responded;
    if (r.status() === 202) answer = await r.json();
    else await page.waitForTimeout(1000);
  }
  assert.ok(answer, 'the contract took the withdrawal request');
  assert.equal(answer.requested, 1200);
  assert.equal(answer.paid_to.toLowerCase(), me.chain.address.toLowerCase());
  await page.locator('#toast').filter({ hasText: /Withdrawal of 1,200 units asked of the Settlement contract: paid to 0x[0-9a-f]{40} from / }).waitFor();
  // Once the chain confirms the request the engine holds the amount back: shown as pending,
  // the balance unchanged until the contract pays it out after its delay.
  // The engine follows the chain's events every 2 s; the page asks every second after the
  // request.
  const asked = Date.now();
  await page.locator('#f-withdrawing', { hasText: '1,200 units' }).waitFor({ timeout: 15_000 });
  console.log(`wallet: withdrawal request to "Withdrawal pending" shown ${Date.now() - asked} ms`);
  assert.equal(await page.locator('#f-withdrawing').evaluate((dd) => dd.previousElementSibling.textContent), 'Withdrawal pending');
  assert.equal(await unitsOf(page, 'f-balance'), 5000);
  assert.equal(await unitsOf(page, 'f-available'), 3800);
  const balance = await page.evaluate(async () => (await fetch('/api/v1/balance')).json());
  assert.deepEqual([balance.balance, balance.withdrawal_pending, balance.available], [5000, 1200, 3800]);
  // More than is available now is refused by the field.
  await wf.getByLabel('Amount (units)').fill('3801');
  await wf.getByRole('button', { name: 'Withdraw' }).click();
  await errorOf(wf, 'amount').filter({ hasText: /3800 token units available/ }).waitFor();

  const violations = await checkA11y(page);
  assert.deepEqual(violations, [], JSON.stringify(violations, null, 1));
  mkdirSync(join(web, 'screenshots'), { recursive: true });
  await shoot(page, join(web, 'screenshots', 'wallet-withdrawal-desktop.png'));
  await page.context().close();
});

/** The open slot whose gate closes at least `s` seconds from now, as the engine lists it. */
function openSlot(page, s) {
  return page.evaluate(async (ahead) => {
    const current = await (await fetch('/api/v1/slots/current')).json();
    const res = await (await fetch(`/api/v1/slots?from=${current.delivering}&to=${current.delivering + 40}`)).json();
    return res.slots.find((x) => x.status === 'open' && x.window_opens_s <= res.now_s && x.gate_closure_s - res.now_s >= ahead);
  }, s);
}

test('market: my open orders — an amend being typed survives the list changing, the amend and a cancel show in the list and the API agrees', async () => {
  const page = await fresh();
  await signInHome(page, 'home-09');
  await page.goto(`${demo.url}#/market`);
  const form = page.locator('#order-form');
  await form.getByLabel('Delivery slot').locator('option').first().waitFor({ state: 'attached' });
  // A slot well ahead: the gate stays open for the whole test (the home's rule orders only
  // in the next few slots).
  const slot = await openSlot(page, 90);
  assert.ok(slot, 'an open slot a minute and a half ahead');
  const place = async (energy) => {
    await form.getByLabel('Delivery slot').selectOption(String(slot.slot));
    await form.getByLabel('Sell').check();
    await form.getByLabel('Energy (Wh)').fill(String(energy));
    await form.getByLabel(/Limit price/).fill(String(slot.feed_in_per_kwh + 10));
    const placed = page.waitForResponse((r) => r.url().endsWith('/api/v1/orders') && r.request().method() === 'POST');
    await form.getByRole('button', { name: 'Place a bid or an offer' }).click();
    const { order_id: id } = await (await placed).json();
    await page.locator(`#my-orders tr[data-order="${id}"]`).waitFor({ timeout: 10_000 });
    return id;
  };
  const first = await place(300);
  const row = page.locator(`#my-orders tr[data-order="${first}"]`);
  await row.getByText('Amend or cancel').click();
  await row.getByLabel(`New energy (Wh) for order ${first}`).fill('250');
  await row.getByLabel(`New price for order ${first}`).fill(String(slot.feed_in_per_kwh + 12));
  // Another order changes the list while the amend is being typed: what is typed stays.
  const second = await place(400);
  assert.equal(await row.locator('details').evaluate((d) => d.open), true, 'the amend form stays open');
  assert.equal(await row.getByLabel(`New energy (Wh) for order ${first}`).inputValue(), '250');
  await row.getByRole('button', { name: 'Amend' }).click();
  await page.locator('#toast').filter({ hasText: `Order ${first} amended.` }).waitFor();
  await row.locator('td').nth(3).filter({ hasText: /^250 Wh$/ }).waitFor();
  assert.match(await row.locator('td').nth(4).innerText(), new RegExp(`^${(slot.feed_in_per_kwh + 12).toLocaleString('en-GB')} units/kWh$`));

  const other = page.locator(`#my-orders tr[data-order="${second}"]`);
  await other.getByText('Amend or cancel').click();
  await other.getByRole('button', { name: `Cancel order ${second}` }).click();
  await page.locator('#toast').filter({ hasText: `Order ${second} cancelled.` }).waitFor();
  await other.waitFor({ state: 'detached' });
  // The engine agrees: the first order amended, the second gone.
  const { orders } = await page.evaluate(async () => (await fetch('/api/v1/my/orders')).json());
  const amended = orders.find((o) => o.order_id === first);
  assert.deepEqual([amended.energy_wh, amended.price_per_kwh, amended.slot], [250, slot.feed_in_per_kwh + 12, slot.slot]);
  assert.ok(!orders.some((o) => o.order_id === second), 'the cancelled order is no longer open');
  await page.context().close();
});

test('market: a household sets its automatic trading rule, sees its preview, sees the orders the rule places among its open orders, and removes it', async () => {
  const page = await fresh();
  await signInHome(page, 'home-08');
  await page.goto(`${demo.url}#/market`);
  const rf = page.locator('#rule-form');
  await rf.waitFor();
  const band = await page.evaluate(async () => {
    const current = await (await fetch('/api/v1/slots/current')).json();
    return (await (await fetch(`/api/v1/slots?from=${current.delivering}&to=${current.delivering}`)).json()).slots[0];
  });
  // Prices no demo rule uses, so an order at them is this rule's.
  const sellAt = band.feed_in_per_kwh + 7;
  const buyAt = band.retail_per_kwh - 3;
  await rf.getByLabel('Sell surplus at no less than (per kWh)').fill(String(sellAt));
  await rf.getByLabel('Buy need at no more than (per kWh)').fill(String(buyAt));
  await rf.getByLabel('Keep the battery above (%)').fill('10');
  // The preview: what the rule would have done over the previous day of my own slots.
  await page.locator('#rule-preview').filter({ hasText: /^Offered surplus in \d+ slots .*Bid for the need in \d+ slots/ }).waitFor();
  await rf.getByRole('button', { name: 'Save rule' }).click();
  await page.locator('#toast').filter({ hasText: 'Rule saved.' }).waitFor();
  const rule = await page.evaluate(async () => (await fetch('/api/v1/meters/home-08/rule')).json());
  assert.deepEqual(rule, { meter_id: 'home-08', sell_at_least_per_kwh: sellAt, buy_at_most_per_kwh: buyAt, keep_battery_above_bp: 1000 });
  // The page shows the saved rule.
  await rf.getByLabel('Sell surplus at no less than (per kWh)').and(page.locator(`[value="${sellAt}"]`)).waitFor();

  // The engine places one order a slot from the meter's forecast, at the rule's price for
  // the side it forecasts: it appears among my open orders without a reload.
  const prices = [sellAt, buyAt].map((p) => `${p.toLocaleString('en-GB')} units/kWh`);
  const handle = await page.waitForFunction((want) => [...document.querySelectorAll('#my-orders tr[data-order]')]
    .find((tr) => want.includes(tr.children[4].textContent))?.dataset.order, prices, { timeout: 30_000 });
  const orderId = Number(await handle.jsonValue());
  const ruleRow = page.locator(`#my-orders tr[data-order="${orderId}"]`);
  const side = await ruleRow.locator('td').nth(2).innerText();
  const slot = Number(await ruleRow.locator('td').nth(1).innerText());
  assert.equal(await ruleRow.locator('td').nth(4).innerText(), side === 'sell' ? prices[0] : prices[1]);
  // The engine has it as home-08's order in that slot, open or already traded there.
  const { orders } = await page.evaluate(async () => (await fetch('/api/v1/my/orders')).json());
  const open = orders.find((o) => o.order_id === orderId);
  if (open) {
    assert.deepEqual([open.meter_id, open.slot, open.price_per_kwh], ['home-08', slot, side === 'sell' ? sellAt : buyAt]);
  } else {
    const trades = await page.evaluate(async (s) => (await (await fetch(`/api/v1/slots/${s}`)).json()).trades, slot);
    assert.ok(trades.some((t) => t.ask === orderId || t.bid === orderId), `order ${orderId} traded in slot ${slot}`);
  }

  await rf.getByRole('button', { name: 'Remove rule' }).click();
  await page.locator('#toast').filter({ hasText: 'Rule removed.' }).waitFor();
  await page.locator('#rule-form').getByRole('button', { name: 'Remove rule' }).waitFor({ state: 'detached' });
  assert.equal(await rf.getByLabel('Sell surplus at no less than (per kWh)').inputValue(), '');
  assert.equal(await page.evaluate(async () => (await fetch('/api/v1/meters/home-08/rule')).status), 404);
  await page.context().close();
});

/** Foundry's `cast` from contracts/node_modules (`npm ci` there installs it), which signs as a wallet would. */
function cast(...args) {
  const bin = join(web, '..', 'contracts', 'node_modules', '@foundry-rs', 'cast-linux-amd64', 'bin', 'cast');
  assert.ok(existsSync(bin), `${bin} is missing: run npm ci in contracts/`);
  return execFileSync(bin, args, { encoding: 'utf8' }).trim();
}

test('wallet: a household exports its custodial key (with its password), declines in its browser wallet (nothing changes), then links the wallet (EIP-1193, the engine\'s EIP-712 challenge) and settles to it from then on', async () => {
  const name = `owner-${process.pid}`;
  const page = await freshForAxe();
  // A browser wallet (EIP-1193) whose key lives in the test: it signs typed data with cast,
  // as a wallet extension signs eth_signTypedData_v4, and declines (code 4001) when told to.
  const key = `0x${randomBytes(32).toString('hex')}`;
  const wallet = cast('wallet', 'address', '--private-key', key);
  const signed = [];
  await page.exposeFunction('testWalletAddress', () => wallet);
  await page.exposeFunction('testWalletSign', (from, json) => {
    assert.equal(from.toLowerCase(), wallet.toLowerCase());
    signed.push(JSON.parse(json).primaryType);
    return cast('wallet', 'sign', '--private-key', key, '--data', json);
  });
  await page.addInitScript(() => {
    window.testWalletDeclines = false;
    window.ethereum = {
      async request({ method, params }) {
        if (method === 'eth_requestAccounts') return [await window.testWalletAddress()];
        if (method === 'eth_signTypedData_v4') {
          if (window.testWalletDeclines) throw Object.assign(new Error('User rejected the request.'), { code: 4001 });
          return window.testWalletSign(params[0], params[1]);
        }
        throw Object.assign(new Error(`unsupported method ${method}`), { code: 4200 });
      },
    };
  });
  await page.goto(`${demo.url}#/signup`);
  const signup = page.locator('#signup-form');
  await signup.getByLabel('Name').fill(name);
  await signup.getByLabel('Password').fill('a long enough passphrase');
  await signup.getByRole('button', { name: 'Create account' }).click();
  await page.locator('#link-meter').waitFor();
  await page.goto(`${demo.url}#/wallet`);
  const card = page.locator('#chain-address');
  await card.filter({ hasText: 'held by the engine' }).waitFor({ timeout: 30_000 });
  const custodial = (await page.evaluate(async () => (await fetch('/api/v1/me')).json())).chain.address;

  // The custodial key is shown only for the account's password, and it is the key of the
  // address the engine settles to.
  await card.locator('summary', { hasText: 'Export my key' }).click();
  const ef = page.locator('#export-key-form');
  await ef.getByLabel('Your password').fill('not the passphrase');
  await ef.getByRole('button', { name: 'Export my key' }).click();
  await errorOf(ef, 'password').filter({ hasText: /./ }).waitFor();
  assert.equal(await page.locator('#private-key').count(), 0);
  await ef.getByLabel('Your password').fill('a long enough passphrase');
  await ef.getByRole('button', { name: 'Export my key' }).click();
  const exported = (await page.locator('#private-key').innerText()).trim();
  assert.equal(cast('wallet', 'address', '--private-key', exported).toLowerCase(), custodial.toLowerCase());

  // Declined in the wallet: said so, and the account keeps its address.
  await page.evaluate(() => { window.testWalletDeclines = true; });
  await card.getByRole('button', { name: 'Link my browser wallet' }).click();
  await page.locator('#address-status', { hasText: 'You declined in your wallet: nothing was changed.' }).waitFor();
  let me = await page.evaluate(async () => (await fetch('/api/v1/me')).json());
  assert.deepEqual([me.chain.address, me.chain.custodial], [custodial, true]);

  // Signed: the wallet is the account's address from now on, and the engine holds no key.
  await page.evaluate(() => { window.testWalletDeclines = false; });
  await card.getByRole('button', { name: 'Link my browser wallet' }).click();
  await page.locator('#toast').filter({ hasText: `Your wallet ${wallet}` }).waitFor();
  await card.filter({ hasText: 'your own wallet' }).waitFor();
  assert.deepEqual(signed, ['LinkWallet', 'OpenAccount'], 'the link, then the Settlement account opened for the wallet');
  me = await page.evaluate(async () => (await fetch('/api/v1/me')).json());
  assert.equal(me.chain.address.toLowerCase(), wallet.toLowerCase());
  assert.equal(me.chain.custodial, false);
  assert.equal(await card.getByRole('button', { name: 'Link my browser wallet' }).count(), 0);
  // A withdrawal is the wallet's to make now, not the engine's.
  const refused = await page.evaluate(async () => (await fetch('/api/v1/withdrawals', { method: 'POST', headers: { 'content-type': 'application/json' }, body: '{"amount":1}' })).status);
  assert.equal(refused, 409);
  assert.ok(await page.locator('#withdraw-form').isHidden(), 'no withdrawal form for a wallet of its own');
  await page.locator('#withdraw-own', { hasText: 'from your wallet' }).waitFor();

  const violations = await checkA11y(page);
  assert.deepEqual(violations, [], JSON.stringify(violations, null, 1));
  await page.context().close();
});
