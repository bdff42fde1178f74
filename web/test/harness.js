// What the browser tests share: the real engine in demo mode on free ports in a temporary
// directory (with a community operator account), Debian's Chromium through playwright-core,
// axe-core, screenshots.
import { spawn, execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, existsSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { createRequire } from 'node:module';
import { chromium } from 'playwright-core';

export const web = join(dirname(fileURLToPath(import.meta.url)), '..');
const require = createRequire(import.meta.url);
const axeSource = readFileSync(require.resolve('axe-core/axe.min.js'), 'utf8');

export function engineBinary() {
  if (process.env.GRIDSHARE_ENGINE_BIN) return process.env.GRIDSHARE_ENGINE_BIN;
  const target = process.env.CARGO_TARGET_DIR || join(web, '..', 'target');
  const bin = join(target, 'debug', 'market-engine');
  if (!existsSync(bin)) throw new Error(`${bin} does not exist: run cargo build --workspace (or set GRIDSHARE_ENGINE_BIN)`);
  return bin;
}

/** A TCP port nobody listens on right now. */
export function freePort() {
  return new Promise((resolve, reject) => {
    const srv = createServer();
    srv.unref();
    srv.on('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
}

/**
 * Starts `market-engine demo` in a new directory and, once the web app's address is printed,
 * creates the community operator's account in its database (`market-engine operator`).
 * `stop()` sends SIGTERM and waits.
 */
export async function startDemo({ homes = 12 } = {}) {
  const bin = engineBinary();
  const dir = mkdtempSync(join(tmpdir(), 'gridshare-web-e2e-'));
  const operatorPassword = 'operator passphrase for the test';
  const mqtt = await freePort();
  const child = spawn(bin, ['demo', '--homes', String(homes), '--listen', '127.0.0.1:0', '--mqtt-port', String(mqtt), '--dir', dir], {
    stdio: ['ignore', 'pipe', 'pipe'],
    env: { ...process.env, RUST_LOG: process.env.RUST_LOG || 'warn' },
  });
  let log = '';
  child.stderr.on('data', (d) => { log += d; });
  const url = await new Promise((resolve, reject) => {
    let out = '';
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error(`the demo printed no web address in 60 s:\n${out}\n${log}`));
    }, 60_000);
    child.stdout.on('data', (d) => {
      out += d;
      const m = /web app\s+(http:\/\/\S+)/.exec(out);
      if (m) { clearTimeout(timer); resolve(m[1]); }
    });
    child.on('exit', (code) => { clearTimeout(timer); reject(new Error(`the demo exited (${code}):\n${out}\n${log}`)); });
  });
  child.stdout.resume();
  // The community operator, in the database the running demo created (`market-engine
  // operator` opens only an existing one).
  execFileSync(bin, ['operator', '--name', 'operator', '--database-url', `sqlite://${join(dir, 'engine.sqlite')}`], {
    env: { ...process.env, GRIDSHARE_OPERATOR_PASSWORD: operatorPassword },
    stdio: ['ignore', 'ignore', 'inherit'],
  });
  return {
    url,
    dir,
    operatorPassword,
    log: () => log,
    async stop() {
      const exited = new Promise((resolve) => child.once('exit', resolve));
      child.kill('SIGTERM');
      const timer = setTimeout(() => child.kill('SIGKILL'), 15_000);
      await exited;
      clearTimeout(timer);
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

export function launch() {
  return chromium.launch({
    executablePath: process.env.CHROMIUM_BIN || '/usr/bin/chromium',
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking'],
  });
}

/** axe-core's violations on the page as it is (WCAG 2.x A and AA, and best practices). */
export async function checkA11y(page) {
  if (!(await page.evaluate(() => typeof window.axe !== 'undefined'))) await page.addScriptTag({ content: axeSource });
  return page.evaluate(async () => {
    const result = await window.axe.run(document, { resultTypes: ['violations'] });
    return result.violations.map((v) => ({ id: v.id, help: v.help, nodes: v.nodes.map((n) => ({ target: n.target })) }));
  });
}

export function shoot(page, path) {
  return page.screenshot({ path, fullPage: true });
}
