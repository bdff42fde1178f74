// Builds what the engine compiles into its binary beside the app's own files:
//   vendor/  uPlot, copied from the npm registry's package (node_modules/uplot/dist);
//   gz/      every served file gzip-compressed (the engine sends these to browsers that accept
//            gzip).
// The list of served files is read from market-engine/src/web.rs, the one place that names them.
// `--check` changes nothing and fails when a vendored file differs from the package or a .gz
// file does not decompress to its file (byte-exact gzip output may differ between zlib builds,
// so the check compares content, not compressed bytes).
import { readFileSync, writeFileSync, mkdirSync, existsSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { gzipSync, gunzipSync, constants } from 'node:zlib';

const web = join(dirname(fileURLToPath(import.meta.url)), '..');
const check = process.argv.includes('--check');
const problems = [];

const vendored = {
  'vendor/uPlot.iife.min.js': 'node_modules/uplot/dist/uPlot.iife.min.js',
  'vendor/uPlot.min.css': 'node_modules/uplot/dist/uPlot.min.css',
};
for (const [to, from] of Object.entries(vendored)) {
  const source = readFileSync(join(web, from));
  const target = join(web, to);
  if (check) {
    if (!existsSync(target) || !readFileSync(target).equals(source)) {
      problems.push(`${to} differs from ${from} (run: cd web && npm ci && npm run build)`);
    }
  } else {
    mkdirSync(dirname(target), { recursive: true });
    writeFileSync(target, source);
  }
}

const rust = readFileSync(join(web, '../market-engine/src/web.rs'), 'utf8');
const files = [...rust.matchAll(/asset!\(\s*"[^"]*",\s*"([^"]+)"/g)].map((m) => m[1]);
if (files.length === 0) problems.push('no asset!(...) entries found in market-engine/src/web.rs');
for (const file of files) {
  const path = join(web, file);
  const gz = join(web, 'gz', `${file}.gz`);
  if (!existsSync(path)) {
    problems.push(`${file} is served (market-engine/src/web.rs) but does not exist`);
    continue;
  }
  const body = readFileSync(path);
  if (check) {
    if (!existsSync(gz) || !gunzipSync(readFileSync(gz)).equals(body)) {
      problems.push(`gz/${file}.gz is not ${file} compressed (run: cd web && npm run build)`);
    }
  } else {
    mkdirSync(dirname(gz), { recursive: true });
    writeFileSync(gz, gzipSync(body, { level: constants.Z_BEST_COMPRESSION }));
  }
}

if (problems.length) {
  for (const p of problems) console.error(p);
  process.exit(1);
}
console.log(check ? `web: ${files.length} served files and their gzip forms are up to date` : `web: built ${files.length} gzip files`);
