// Checks in the browser that my trades are in a settled slot's batch: Keccak-256 (the
// original Keccak padding, as Ethereum uses it), the leaf encoding of the settlement contract
// (`keccak256(keccak256(abi.encode(1, batchId, buyer, seller, energyWh, amount)))`) and
// OpenZeppelin's MerkleProof rule (each pair hashed in sorted order).
const MASK = (1n << 64n) - 1n;
const RC = [
  0x0000000000000001n, 0x0000000000008082n, 0x800000000000808an, 0x8000000080008000n,
  0x000000000000808bn, 0x0000000080000001n, 0x8000000080008081n, 0x8000000000008009n,
  0x000000000000008an, 0x0000000000000088n, 0x0000000080008009n, 0x000000008000000an,
  0x000000008000808bn, 0x800000000000008bn, 0x8000000000008089n, 0x8000000000008003n,
  0x8000000000008002n, 0x8000000000000080n, 0x000000000000800an, 0x800000008000000an,
  0x8000000080008081n, 0x8000000000008080n, 0x0000000080000001n, 0x8000000080008008n,
];
// Rotation offsets of lane (x, y) at index x + 5y.
const ROT = [0, 1, 62, 28, 27, 36, 44, 6, 55, 20, 3, 10, 43, 25, 39, 41, 45, 15, 21, 8, 18, 2, 61, 56, 14];
const rotl = (v, n) => (n === 0 ? v : ((v << BigInt(n)) | (v >> BigInt(64 - n))) & MASK);

function permute(a) {
  const c = new Array(5);
  const b = new Array(25);
  for (let round = 0; round < 24; round += 1) {
    for (let x = 0; x < 5; x += 1) c[x] = a[x] ^ a[x + 5] ^ a[x + 10] ^ a[x + 15] ^ a[x + 20];
    for (let x = 0; x < 5; x += 1) {
      const d = c[(x + 4) % 5] ^ rotl(c[(x + 1) % 5], 1);
      for (let y = 0; y < 25; y += 5) a[x + y] ^= d;
    }
    for (let x = 0; x < 5; x += 1) {
      for (let y = 0; y < 5; y += 1) b[y + 5 * ((2 * x + 3 * y) % 5)] = rotl(a[x + 5 * y], ROT[x + 5 * y]);
    }
    for (let x = 0; x < 5; x += 1) {
      for (let y = 0; y < 25; y += 5) a[x + y] = b[x + y] ^ (~b[((x + 1) % 5) + y] & MASK & b[((x + 2) % 5) + y]);
    }
    a[0] ^= RC[round];
  }
}

/** Keccak-256 of `bytes` (a Uint8Array): 32 bytes. */
export function keccak256(bytes) {
  const rate = 136;
  const padded = new Uint8Array(Math.ceil((bytes.length + 1) / rate) * rate);
  padded.set(bytes);
  padded[bytes.length] ^= 0x01;
  padded[padded.length - 1] ^= 0x80;
  const a = new Array(25).fill(0n);
  for (let off = 0; off < padded.length; off += rate) {
    for (let i = 0; i < rate / 8; i += 1) {
      let lane = 0n;
      for (let k = 7; k >= 0; k -= 1) lane = (lane << 8n) | BigInt(padded[off + 8 * i + k]);
      a[i] ^= lane;
    }
    permute(a);
  }
  const out = new Uint8Array(32);
  for (let i = 0; i < 4; i += 1) {
    let lane = a[i];
    for (let k = 0; k < 8; k += 1) { out[8 * i + k] = Number(lane & 0xffn); lane >>= 8n; }
  }
  return out;
}

export const toHex = (bytes) => `0x${[...bytes].map((b) => b.toString(16).padStart(2, '0')).join('')}`;
export function fromHex(hex) {
  const h = hex.replace(/^0x/i, '');
  if (!/^[0-9a-fA-F]*$/.test(h) || h.length % 2) throw new Error(`not hex: ${hex}`);
  return Uint8Array.from(h.match(/../g) || [], (x) => parseInt(x, 16));
}

/** One ABI word (32 bytes, big-endian) of an unsigned integer or an address. */
function word(value) {
  const out = new Uint8Array(32);
  if (typeof value === 'string' && /^0x[0-9a-fA-F]{40}$/.test(value)) {
    out.set(fromHex(value), 12);
    return out;
  }
  let v = BigInt(value);
  for (let i = 31; i >= 0 && v > 0n; i -= 1) { out[i] = Number(v & 0xffn); v >>= 8n; }
  return out;
}

/** The leaf hash of a trade in batch `batchId`. */
export function tradeLeaf(batchId, trade) {
  const words = [1, batchId, trade.buyer, trade.seller, trade.energy_wh, trade.amount].map(word);
  const encoded = new Uint8Array(32 * words.length);
  words.forEach((w, i) => encoded.set(w, 32 * i));
  return keccak256(keccak256(encoded));
}

function compare(a, b) {
  for (let i = 0; i < 32; i += 1) if (a[i] !== b[i]) return a[i] - b[i];
  return 0;
}

/** Folds a proof onto a leaf the way OpenZeppelin's MerkleProof.verify does. */
export function rootOf(leaf, proof) {
  return proof.map(fromHex).reduce((node, sibling) => {
    const [lo, hi] = compare(node, sibling) <= 0 ? [node, sibling] : [sibling, node];
    const buf = new Uint8Array(64);
    buf.set(lo);
    buf.set(hi, 32);
    return keccak256(buf);
  }, leaf);
}

/**
 * Checks every trade of a proof answer (GET /api/v1/my/settlements/{slot}/proof): the leaf is
 * recomputed from the trade's fields, then folded with its proof onto `root` — by default the
 * root the settlement contract holds for the batch (`chain_root`, read from the chain).
 */
export function checkInclusion(answer, root = answer.chain_root) {
  if (!root) throw new Error('no root to check against');
  return answer.trades.map((trade) => {
    const leaf = tradeLeaf(answer.batch_id, trade);
    const folded = toHex(rootOf(leaf, trade.proof));
    return { trade, leafMatches: toHex(leaf) === trade.leaf.toLowerCase(), included: folded === root.toLowerCase() };
  });
}
