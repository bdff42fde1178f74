// The web app's figures, measured in Debian's Chromium against the real `market-engine demo`
// (a benchmark, not a test: it prints, it does not judge):
//   1. everything the browser downloads for the first page (Home, signed in): the app's files
//      as sent (gzip) and, apart, the API's JSON;
//   2. from navigation to the Home page showing live data (the meter's power from the engine),
//      on loopback, median of N page loads;
//   3. a year of one household's slots (35 040 points, four series) drawn in one uPlot chart,
//      median of N draws.
// Usage: node bench/figures.mjs [runs]   (engine: $GRIDSHARE_ENGINE_BIN or the debug build)
import { statSync } from 'node:fs';
import { join } from 'node:path';
import { startDemo, launch, web } from '../test/harness.js';

const runs = Number(process.argv[2] || 9);
const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];

const demo = await startDemo();
const browser = await launch();
try {
  const context = await browser.newContext({ viewport: { width: 1280, height: 900 } });
  const page = await context.newPage();
  await page.goto(`${demo.url}#/signin`);
  await page.locator('#signin-form').getByLabel('Name').fill('home-02');
  await page.locator('#signin-form').getByLabel('Password').fill('demo-password');
  await page.locator('#signin-form').getByRole('button', { name: 'Sign in' }).click();
  await page.locator('#live-count').waitFor();
  // Readings must have reached the engine for "live data" to mean something.
  await page.waitForFunction(() => document.querySelector('#v-grid').textContent !== '–', null, { timeout: 30_000 });

  // 1. A cold first page: a new context with the session cookie, nothing cached.
  const cookies = await context.cookies();
  const cold = await browser.newContext({ viewport: { width: 1280, height: 900 } });
  await cold.addCookies(cookies);
  const first = await cold.newPage();
  const sizes = { app: 0, api: 0, files: 0, uncompressed: 0 };
  const pending = [];
  first.on('requestfinished', (request) => {
    pending.push((async () => {
      const url = new URL(request.url());
      if (url.pathname === '/api/v1/stream') return;
      const s = await request.sizes();
      const body = s.responseBodySize + s.responseHeadersSize;
      if (url.pathname.startsWith('/api/')) sizes.api += body;
      else {
        sizes.app += body;
        sizes.files += 1;
        // The file itself, as a client without gzip would get it.
        sizes.uncompressed += statSync(join(web, url.pathname === '/' ? 'index.html' : url.pathname.slice(1))).size;
      }
    })());
  });
  await first.goto(demo.url);
  await first.waitForFunction(() => document.querySelector('#v-grid') && document.querySelector('#v-grid').textContent !== '–' && document.querySelector('#energy-chart canvas'));
  await first.waitForLoadState('networkidle').catch(() => {});
  await Promise.all(pending);
  console.log(`first page (Home, signed in): ${sizes.files} files, ${(sizes.app / 1024).toFixed(1)} KiB as sent (gzip; ${(sizes.uncompressed / 1024).toFixed(1)} KiB uncompressed) + ${(sizes.api / 1024).toFixed(1)} KiB of API JSON`);
  await cold.close();

  // 2. Navigation to live data: a full page load each time (cache on, as a returning user).
  const times = [];
  for (let i = 0; i < runs; i += 1) {
    await page.goto('about:blank');
    await page.goto(demo.url);
    const t = await page.waitForFunction(() => {
      const v = document.querySelector('#v-grid');
      return v && v.textContent !== '–' ? performance.now() : null;
    }, null, { polling: 'raf' });
    times.push(await t.jsonValue());
  }
  console.log(`navigation to Home showing live power: median ${median(times).toFixed(0)} ms (min ${Math.min(...times).toFixed(0)}, max ${Math.max(...times).toFixed(0)}, ${runs} loads)`);

  // 3. A year of slots in one chart.
  const draws = await page.evaluate(async (n) => {
    const uPlot = await new Promise((resolve) => {
      if (window.uPlot) { resolve(window.uPlot); return; }
      const s = document.createElement('script');
      s.src = '/vendor/uPlot.iife.min.js';
      s.onload = () => resolve(window.uPlot);
      document.head.append(s);
    });
    const points = 35_040;
    const start = Date.UTC(2025, 0, 1) / 1000;
    const xs = new Float64Array(points);
    const imp = []; const exp = []; const bought = []; const sold = [];
    for (let i = 0; i < points; i += 1) {
      xs[i] = start + i * 900;
      const hour = (i % 96) / 4;
      const sun = Math.max(0, Math.sin(((hour - 6) / 12) * Math.PI));
      imp.push(Math.round(150 + 100 * Math.cos(i / 7)));
      exp.push(-Math.round(800 * sun));
      bought.push(Math.round(60 * (1 - sun)));
      sold.push(-Math.round(300 * sun));
    }
    const box = document.createElement('div');
    document.body.append(box);
    const out = [];
    for (let r = 0; r < n; r += 1) {
      // From construction to the end of the first draw (uPlot may finish it in a microtask).
      let plot;
      const t0 = performance.now();
      const drawn = new Promise((resolve) => {
        plot = new uPlot({
          width: 1200, height: 300, scales: { x: { time: true } },
          series: [{}, { stroke: '#b45309' }, { stroke: '#15803d' }, { stroke: '#1e40af' }, { stroke: '#7c3aed' }],
          hooks: { draw: [() => resolve(performance.now())] },
        }, [xs, imp, exp, bought, sold], box);
      });
      out.push((await drawn) - t0);
      plot.destroy();
    }
    box.remove();
    return out;
  }, runs);
  console.log(`35 040 points (a year of 15-minute slots, 4 series) drawn in one uPlot chart: median ${median(draws).toFixed(1)} ms (min ${Math.min(...draws).toFixed(1)}, max ${Math.max(...draws).toFixed(1)}, ${runs} draws)`);
} finally {
  await browser.close();
  await demo.stop();
}
