// ChaCha20-Poly1305 (RFC 8439) in plain JavaScript, for the load generator's "!" frames
// (bench/loadgen_e2e.js; docs/protocol.md §8.6).  Node's crypto.createCipheriv needs a new
// native cipher object per message (~4-5 us each way for a short frame, plus the garbage
// they leave); this keeps one key schedule per direction and no per-message objects but
// the output buffer, about half the cost for the short frames of an rpc/query round trip.
// The nonce is the session's: 32 zero bits then a 64-bit big-endian frame counter.
// selfCheck() compares it with Node's own implementation before any use.
"use strict";
const crypto = require("crypto");
const os = require("os");

const SIGMA = [0x61707865, 0x3320646e, 0x79622d32, 0x6b206574];
const MAX_COUNTER = Number.MAX_SAFE_INTEGER;

class ChaCha20Poly1305 {
  constructor(key) {
    if (!Buffer.isBuffer(key) || key.length !== 32) throw new Error("ChaCha20-Poly1305: a 32-byte key expected");
    if (os.endianness() !== "LE") throw new Error("ChaCha20-Poly1305 (bench): a little-endian machine expected");
    this.key = new Uint32Array(8);
    for (let i = 0; i < 8; i++) this.key[i] = key.readUInt32LE(4 * i);
    this.block = new Uint32Array(16);  // one keystream block, read as bytes through blockBytes
    this.blockBytes = Buffer.from(this.block.buffer);
    // Poly1305 state: 130-bit numbers as ten 13-bit limbs in doubles (products stay exact)
    this.r = new Float64Array(10); this.r5 = new Float64Array(10); this.h = new Float64Array(10); this.x = new Float64Array(10);
    this.pad = Buffer.alloc(16);
    this.nonce = Buffer.alloc(12);
  }
  // keystream block for (counter, nonce) into this.block / this.blockBytes (little-endian words)
  _block(counter, n0, n1, n2) {
    const k = this.key;
    let x0 = SIGMA[0], x1 = SIGMA[1], x2 = SIGMA[2], x3 = SIGMA[3];
    let x4 = k[0], x5 = k[1], x6 = k[2], x7 = k[3], x8 = k[4], x9 = k[5], x10 = k[6], x11 = k[7];
    let x12 = counter, x13 = n0, x14 = n1, x15 = n2;
    for (let i = 0; i < 10; i++) {
      x0 = (x0 + x4) | 0; x12 ^= x0; x12 = (x12 << 16) | (x12 >>> 16);
      x8 = (x8 + x12) | 0; x4 ^= x8; x4 = (x4 << 12) | (x4 >>> 20);
      x0 = (x0 + x4) | 0; x12 ^= x0; x12 = (x12 << 8) | (x12 >>> 24);
      x8 = (x8 + x12) | 0; x4 ^= x8; x4 = (x4 << 7) | (x4 >>> 25);
      x1 = (x1 + x5) | 0; x13 ^= x1; x13 = (x13 << 16) | (x13 >>> 16);
      x9 = (x9 + x13) | 0; x5 ^= x9; x5 = (x5 << 12) | (x5 >>> 20);
      x1 = (x1 + x5) | 0; x13 ^= x1; x13 = (x13 << 8) | (x13 >>> 24);
      x9 = (x9 + x13) | 0; x5 ^= x9; x5 = (x5 << 7) | (x5 >>> 25);
      x2 = (x2 + x6) | 0; x14 ^= x2; x14 = (x14 << 16) | (x14 >>> 16);
      x10 = (x10 + x14) | 0; x6 ^= x10; x6 = (x6 << 12) | (x6 >>> 20);
      x2 = (x2 + x6) | 0; x14 ^= x2; x14 = (x14 << 8) | (x14 >>> 24);
      x10 = (x10 + x14) | 0; x6 ^= x10; x6 = (x6 << 7) | (x6 >>> 25);
      x3 = (x3 + x7) | 0; x15 ^= x3; x15 = (x15 << 16) | (x15 >>> 16);
      x11 = (x11 + x15) | 0; x7 ^= x11; x7 = (x7 << 12) | (x7 >>> 20);
      x3 = (x3 + x7) | 0; x15 ^= x3; x15 = (x15 << 8) | (x15 >>> 24);
      x11 = (x11 + x15) | 0; x7 ^= x11; x7 = (x7 << 7) | (x7 >>> 25);
      x0 = (x0 + x5) | 0; x15 ^= x0; x15 = (x15 << 16) | (x15 >>> 16);
      x10 = (x10 + x15) | 0; x5 ^= x10; x5 = (x5 << 12) | (x5 >>> 20);
      x0 = (x0 + x5) | 0; x15 ^= x0; x15 = (x15 << 8) | (x15 >>> 24);
      x10 = (x10 + x15) | 0; x5 ^= x10; x5 = (x5 << 7) | (x5 >>> 25);
      x1 = (x1 + x6) | 0; x12 ^= x1; x12 = (x12 << 16) | (x12 >>> 16);
      x11 = (x11 + x12) | 0; x6 ^= x11; x6 = (x6 << 12) | (x6 >>> 20);
      x1 = (x1 + x6) | 0; x12 ^= x1; x12 = (x12 << 8) | (x12 >>> 24);
      x11 = (x11 + x12) | 0; x6 ^= x11; x6 = (x6 << 7) | (x6 >>> 25);
      x2 = (x2 + x7) | 0; x13 ^= x2; x13 = (x13 << 16) | (x13 >>> 16);
      x8 = (x8 + x13) | 0; x7 ^= x8; x7 = (x7 << 12) | (x7 >>> 20);
      x2 = (x2 + x7) | 0; x13 ^= x2; x13 = (x13 << 8) | (x13 >>> 24);
      x8 = (x8 + x13) | 0; x7 ^= x8; x7 = (x7 << 7) | (x7 >>> 25);
      x3 = (x3 + x4) | 0; x14 ^= x3; x14 = (x14 << 16) | (x14 >>> 16);
      x9 = (x9 + x14) | 0; x4 ^= x9; x4 = (x4 << 12) | (x4 >>> 20);
      x3 = (x3 + x4) | 0; x14 ^= x3; x14 = (x14 << 8) | (x14 >>> 24);
      x9 = (x9 + x14) | 0; x4 ^= x9; x4 = (x4 << 7) | (x4 >>> 25);
    }
    const b = this.block;
    b[0] = x0 + SIGMA[0]; b[1] = x1 + SIGMA[1]; b[2] = x2 + SIGMA[2]; b[3] = x3 + SIGMA[3];
    b[4] = x4 + k[0]; b[5] = x5 + k[1]; b[6] = x6 + k[2]; b[7] = x7 + k[3];
    b[8] = x8 + k[4]; b[9] = x9 + k[5]; b[10] = x10 + k[6]; b[11] = x11 + k[7];
    b[12] = x12 + counter; b[13] = x13 + n0; b[14] = x14 + n1; b[15] = x15 + n2;
  }
  // XOR src[0..len) with the keystream from block 1 into dst (may be the same buffer)
  _xor(n0, n1, n2, src, dst, len) {
    const kb = this.blockBytes;
    for (let off = 0, counter = 1; off < len; off += 64, counter++) {
      this._block(counter, n0, n1, n2);
      const end = Math.min(64, len - off);
      for (let i = 0; i < end; i++) dst[off + i] = src[off + i] ^ kb[i];
    }
  }
  // Poly1305 tag of ciphertext ct[0..len) (no AAD), one-time key from block 0, into out[at..at+16)
  _tag(n0, n1, n2, ct, len, out, at) {
    this._block(0, n0, n1, n2);
    const kb = this.blockBytes, r = this.r, h = this.h;
    // r: bytes 0..15 clamped, as ten 13-bit limbs; s: bytes 16..31
    const t0 = kb[0] | kb[1] << 8, t1 = kb[2] | kb[3] << 8, t2 = kb[4] | kb[5] << 8, t3 = kb[6] | kb[7] << 8;
    const t4 = kb[8] | kb[9] << 8, t5 = kb[10] | kb[11] << 8, t6 = kb[12] | kb[13] << 8, t7 = kb[14] | kb[15] << 8;
    r[0] = t0 & 0x1fff;
    r[1] = ((t0 >>> 13) | (t1 << 3)) & 0x1fff;
    r[2] = ((t1 >>> 10) | (t2 << 6)) & 0x1f03;
    r[3] = ((t2 >>> 7) | (t3 << 9)) & 0x1fff;
    r[4] = ((t3 >>> 4) | (t4 << 12)) & 0x00ff;
    r[5] = (t4 >>> 1) & 0x1ffe;
    r[6] = ((t4 >>> 14) | (t5 << 2)) & 0x1fff;
    r[7] = ((t5 >>> 11) | (t6 << 5)) & 0x1f81;
    r[8] = ((t6 >>> 8) | (t7 << 8)) & 0x1fff;
    r[9] = (t7 >>> 5) & 0x007f;
    for (let i = 0; i < 10; i++) this.r5[i] = 5 * r[i];
    h.fill(0);
    const padded = (len + 15) & ~15;
    const total = padded + 16;
    const blk = this.pad;
    for (let off = 0; off < total; off += 16) {
      if (off + 16 <= len) this._block16(ct, off);
      else if (off < padded) { blk.fill(0); ct.copy(blk, 0, off, len); this._block16(blk, 0); }
      else { blk.fill(0); blk.writeUInt32LE(len >>> 0, 8); blk.writeUInt32LE(Math.floor(len / 4294967296), 12); this._block16(blk, 0); }
    }
    // final: h fully carried and reduced mod 2^130 - 5, plus s, mod 2^128, little-endian
    for (let pass = 0; pass < 2; pass++) {
      let c = 0;
      for (let i = 0; i < 10; i++) { const d = h[i] + c; c = Math.floor(d / 8192); h[i] = d - c * 8192; }
      h[0] += 5 * c;
    }
    const g = this.x;
    let c = 5;
    for (let i = 0; i < 10; i++) { const d = h[i] + c; c = Math.floor(d / 8192); g[i] = d - c * 8192; }
    const v = c ? g : h;  // h + 5 reached 2^130: h >= p, so h - p = (h + 5) - 2^130
    let acc = 0, bits = 0, w = 0, carry = 0;
    for (let i = 0; i < 10 && w < 8; i++) {
      acc += v[i] * 2 ** bits; bits += 13;
      while (bits >= 16 && w < 8) {
        const word = acc % 65536 + kb[16 + 2 * w] + kb[17 + 2 * w] * 256 + carry;
        acc = Math.floor(acc / 65536); bits -= 16;
        carry = word >= 65536 ? 1 : 0;
        out[at + 2 * w] = word & 0xff; out[at + 2 * w + 1] = (word >>> 8) & 0xff;
        w++;
      }
    }
  }
  _block16(m, o) {
    const r = this.r, h = this.h;
    const t0 = m[o] | m[o + 1] << 8, t1 = m[o + 2] | m[o + 3] << 8, t2 = m[o + 4] | m[o + 5] << 8;
    const t3 = m[o + 6] | m[o + 7] << 8, t4 = m[o + 8] | m[o + 9] << 8, t5 = m[o + 10] | m[o + 11] << 8;
    const t6 = m[o + 12] | m[o + 13] << 8, t7 = m[o + 14] | m[o + 15] << 8;
    const h0 = h[0] + (t0 & 0x1fff);
    const h1 = h[1] + (((t0 >>> 13) | (t1 << 3)) & 0x1fff);
    const h2 = h[2] + (((t1 >>> 10) | (t2 << 6)) & 0x1fff);
    const h3 = h[3] + (((t2 >>> 7) | (t3 << 9)) & 0x1fff);
    const h4 = h[4] + (((t3 >>> 4) | (t4 << 12)) & 0x1fff);
    const h5 = h[5] + ((t4 >>> 1) & 0x1fff);
    const h6 = h[6] + (((t4 >>> 14) | (t5 << 2)) & 0x1fff);
    const h7 = h[7] + (((t5 >>> 11) | (t6 << 5)) & 0x1fff);
    const h8 = h[8] + (((t6 >>> 8) | (t7 << 8)) & 0x1fff);
    const h9 = h[9] + ((t7 >>> 5) | 0x0800);  // 2^128: bit 11 of limb 9
    const r5 = this.r5, x = this.x;
    x[0] = h0; x[1] = h1; x[2] = h2; x[3] = h3; x[4] = h4; x[5] = h5; x[6] = h6; x[7] = h7; x[8] = h8; x[9] = h9;
    let c = 0;
    for (let i = 0; i < 10; i++) {
      let d = c;
      for (let k = 0; k <= i; k++) d += x[k] * r[i - k];
      for (let k = i + 1; k < 10; k++) d += x[k] * r5[i + 10 - k];
      c = Math.floor(d / 8192);
      h[i] = d - c * 8192;
    }
    // carry out of limb 9 is worth 2^130 ≡ 5
    c = c * 5 + h[0];
    h[0] = c % 8192; c = Math.floor(c / 8192);
    h[1] += c;
  }
  // the nonce's three little-endian words for frame counter *counter*
  _nonce(counter) {
    if (!Number.isSafeInteger(counter) || counter < 0 || counter > MAX_COUNTER) throw new Error("frame counter out of range");
    const n = this.nonce;
    n.writeUInt32BE(Math.floor(counter / 4294967296), 4);
    n.writeUInt32BE(counter >>> 0, 8);
    return [n.readUInt32LE(0), n.readUInt32LE(4), n.readUInt32LE(8)];
  }
  /** ciphertext || 16-byte tag of *plaintext* (a Buffer) as frame *counter*. */
  seal(counter, plaintext) {
    const [n0, n1, n2] = this._nonce(counter);
    const len = plaintext.length;
    const out = Buffer.allocUnsafe(len + 16);
    this._xor(n0, n1, n2, plaintext, out, len);
    this._tag(n0, n1, n2, out, len, out, len);
    return out;
  }
  /** The plaintext of *data* (ciphertext || tag) as frame *counter*; throws if the tag does not match. */
  open(counter, data) {
    if (data.length < 16) throw new Error("an encrypted frame shorter than its 16-byte tag");
    const [n0, n1, n2] = this._nonce(counter);
    const len = data.length - 16;
    const tag = Buffer.allocUnsafe(16);
    this._tag(n0, n1, n2, data, len, tag, 0);
    if (!crypto.timingSafeEqual(tag, data.subarray(len))) {
      throw new Error("an encrypted frame that does not open (altered, replayed or out of order)");
    }
    const out = Buffer.allocUnsafe(len);
    this._xor(n0, n1, n2, data, out, len);
    return out;
  }
}

function nodeSeal(key, counter, plaintext) {
  const nonce = Buffer.alloc(12);
  nonce.writeUInt32BE(Math.floor(counter / 4294967296), 4);
  nonce.writeUInt32BE(counter >>> 0, 8);
  const c = crypto.createCipheriv("chacha20-poly1305", key, nonce, {authTagLength: 16});
  return Buffer.concat([c.update(plaintext), c.final(), c.getAuthTag()]);
}

/** Compare with Node's ChaCha20-Poly1305 at every length up to *maxLength* (random keys,
 *  counters across the 32-bit boundary); throws on the first difference. */
function selfCheck(maxLength = 200) {
  for (let len = 0; len <= maxLength; len++) {
    const key = crypto.randomBytes(32);
    const counter = [0, 1, 4294967295, 4294967296 + len, 2 ** 40 + 7 * len][len % 5];
    const plaintext = crypto.randomBytes(len);
    const ours = new ChaCha20Poly1305(key);
    const sealed = ours.seal(counter, plaintext);
    if (!sealed.equals(nodeSeal(key, counter, plaintext))) {
      throw new Error(`ChaCha20-Poly1305 self-check: the frame of ${len} bytes differs from Node's`);
    }
    if (!ours.open(counter, sealed).equals(plaintext)) throw new Error(`ChaCha20-Poly1305 self-check: ${len} bytes did not round-trip`);
    sealed[len % sealed.length] ^= 1;
    let refused = false;
    try { ours.open(counter, sealed); } catch (e) { refused = true; }
    if (!refused) throw new Error(`ChaCha20-Poly1305 self-check: an altered frame of ${len} bytes opened`);
  }
}

module.exports = {ChaCha20Poly1305, selfCheck};
