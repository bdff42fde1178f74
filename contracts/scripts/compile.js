#!/usr/bin/env node
// Compiles contracts/src with the pinned solc-js (standard JSON, offline) and writes one
// artifact per deployable contract to contracts/artifacts/: ABI, creation and runtime bytecode,
// in a stable JSON layout that alloy's `sol!` reads. `--check` compiles the same way and fails
// if the committed artifacts differ, so CI catches sources changed without recompiling.
'use strict';

const fs = require('fs');
const path = require('path');
const solc = require('solc');

const ROOT = path.resolve(__dirname, '..');
const SRC = path.join(ROOT, 'src');
const OUT = path.join(ROOT, 'artifacts');
const NODE_MODULES = path.join(ROOT, 'node_modules');
// Contracts the Rust crate deploys; libraries and interfaces are compiled into them.
const DEPLOYABLE = ['GridToken', 'Settlement', 'MeterStaking'];
const EVM_VERSION = 'osaka';

function sources() {
  const out = {};
  for (const name of fs.readdirSync(SRC).sort()) {
    if (name.endsWith('.sol')) {
      // Relative source names keep the metadata hash (and so the bytecode) independent of
      // where the repository is checked out.
      out[`src/${name}`] = { content: fs.readFileSync(path.join(SRC, name), 'utf8') };
    }
  }
  return out;
}

function findImports(importPath) {
  const candidates = [path.join(ROOT, importPath), path.join(NODE_MODULES, importPath)];
  for (const file of candidates) {
    if (fs.existsSync(file)) return { contents: fs.readFileSync(file, 'utf8') };
  }
  return { error: `not found: ${importPath}` };
}

function compile() {
  const input = {
    language: 'Solidity',
    sources: sources(),
    settings: {
      evmVersion: EVM_VERSION,
      optimizer: { enabled: true, runs: 10000 },
      viaIR: false,
      outputSelection: { '*': { '*': ['abi', 'evm.bytecode.object', 'evm.deployedBytecode.object'] } },
    },
  };
  const output = JSON.parse(solc.compile(JSON.stringify(input), { import: findImports }));
  const errors = (output.errors || []).filter((e) => e.severity === 'error');
  for (const e of output.errors || []) {
    if (e.severity === 'error' || e.sourceLocation?.file?.startsWith('src/')) process.stderr.write(e.formattedMessage + '\n');
  }
  if (errors.length) process.exit(1);
  // Our own sources compile without warnings; OpenZeppelin's transient-storage notice is
  // about TransientSlot itself and is expected.
  const ours = (output.errors || []).filter((e) => !e.sourceLocation || e.sourceLocation.file.startsWith('src/'));
  if (ours.length) {
    process.stderr.write('compiler warnings in contracts/src are not allowed\n');
    process.exit(1);
  }
  const artifacts = {};
  for (const name of DEPLOYABLE) {
    const contract = output.contracts[`src/${name}.sol`][name];
    artifacts[`${name}.json`] =
      JSON.stringify(
        {
          contractName: name,
          compiler: `solc-js ${solc.version()}`,
          evmVersion: EVM_VERSION,
          abi: contract.abi,
          bytecode: `0x${contract.evm.bytecode.object}`,
          deployedBytecode: `0x${contract.evm.deployedBytecode.object}`,
        },
        null,
        2,
      ) + '\n';
  }
  return artifacts;
}

const check = process.argv.includes('--check');
const artifacts = compile();
if (check) {
  const stale = [];
  for (const [file, text] of Object.entries(artifacts)) {
    const target = path.join(OUT, file);
    if (!fs.existsSync(target) || fs.readFileSync(target, 'utf8') !== text) stale.push(file);
  }
  const extra = fs.existsSync(OUT) ? fs.readdirSync(OUT).filter((f) => !(f in artifacts)) : [];
  if (stale.length || extra.length) {
    process.stderr.write(
      `contracts/artifacts is out of date (${[...stale, ...extra].join(', ')}): run \`npm run build\` in contracts/ and commit\n`,
    );
    process.exit(1);
  }
  process.stdout.write(`artifacts up to date (${Object.keys(artifacts).length} contracts, ${solc.version()})\n`);
} else {
  fs.mkdirSync(OUT, { recursive: true });
  for (const [file, text] of Object.entries(artifacts)) fs.writeFileSync(path.join(OUT, file), text);
  process.stdout.write(`wrote ${Object.keys(artifacts).length} artifacts with ${solc.version()}\n`);
}
