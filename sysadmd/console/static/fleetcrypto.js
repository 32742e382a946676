// The fleet view's cryptography, with WebCrypto and two vendored libraries (vendor/VENDORED.md):
// the user's RSA key (PEM, PKCS#8 or PKCS#1) imported as NON-extractable CryptoKeys, the
// bridge login signature (docs/protocol.md §8.1), the fleet command signature (§8.5),
// sealed text (§8.6: RSA-OAEP SHA-256 wraps a ChaCha20-Poly1305 content key) and keyed
// results (under HKDF of the command's content key).  Nothing here
// sends anything anywhere; the PEM text is read once and not kept.

import { chacha20poly1305 } from "./vendor/noble-ciphers/chacha.js";
import { md5 } from "./vendor/noble-hashes/legacy.js";

const subtle = () => {
  if (!globalThis.crypto || !crypto.subtle) throw new Error("this page has no WebCrypto (it needs HTTPS)");
  return crypto.subtle;
};

export const SEALED_PREFIX = "sealed1:";
export const MAX_PEM_CHARS = 64 * 1024;
const MAX_SEALED_CHARS = 23 * 1024 * 1024;
const RSA_OID = [0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01];  // 1.2.840.113549.1.1.1
const SIGN = { name: "RSASSA-PKCS1-v1_5", hash: "SHA-256" };
const OAEP = { name: "RSA-OAEP", hash: "SHA-256" };
const utf8 = new TextEncoder();
const fromUtf8 = new TextDecoder("utf-8", { fatal: true });

export class KeyFileError extends Error {}
export class SealError extends Error {}

// --- base64 and hex ------------------------------------------------------------------------
export function toBase64(bytes) {
  let text = "";
  for (let i = 0; i < bytes.length; i += 0x8000) text += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
  return btoa(text);
}

export function fromBase64(text) {
  if (typeof text !== "string" || !/^[A-Za-z0-9+/]*={0,2}$/.test(text) || text.length % 4) {
    throw new SealError("not base64");
  }
  const raw = atob(text);
  const out = new Uint8Array(raw.length);
  for (let i = 0; i < raw.length; i++) out[i] = raw.charCodeAt(i);
  return out;
}

export function toHex(bytes) {
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

export async function sha256Hex(bytes) {
  return toHex(new Uint8Array(await subtle().digest("SHA-256", bytes)));
}

// --- DER: just enough to read an RSA private key and write its public key -------------------
function readTlv(der, at) {
  if (at + 2 > der.length) throw new KeyFileError("the key's DER ends too early");
  const tag = der[at];
  let len = der[at + 1];
  let start = at + 2;
  if (len & 0x80) {
    const count = len & 0x7f;
    if (count < 1 || count > 3 || start + count > der.length) throw new KeyFileError("the key's DER has a bad length");
    len = 0;
    for (let i = 0; i < count; i++) len = len * 256 + der[start + i];
    start += count;
  }
  if (start + len > der.length) throw new KeyFileError("the key's DER ends too early");
  return { tag, start, end: start + len };
}

function children(der, tlv) {
  const out = [];
  for (let at = tlv.start; at < tlv.end;) {
    const child = readTlv(der, at);
    out.push(child);
    at = child.end;
  }
  return out;
}

function encodeLength(n) {
  if (n < 0x80) return [n];
  const bytes = [];
  for (let v = n; v > 0; v = Math.floor(v / 256)) bytes.unshift(v & 0xff);
  return [0x80 | bytes.length, ...bytes];
}

function tlv(tag, content) {
  const head = [tag, ...encodeLength(content.length)];
  const out = new Uint8Array(head.length + content.length);
  out.set(head, 0);
  out.set(content, head.length);
  return out;
}

function concat(...parts) {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const part of parts) { out.set(part, at); at += part.length; }
  return out;
}

function derInteger(magnitude) {
  let i = 0;
  while (i < magnitude.length - 1 && magnitude[i] === 0) i++;
  let body = magnitude.subarray(i);
  if (body[0] & 0x80) body = concat(new Uint8Array([0]), body);
  return tlv(0x02, body);
}

const ALGORITHM = tlv(0x30, concat(tlv(0x06, new Uint8Array(RSA_OID)), new Uint8Array([0x05, 0x00])));

// PKCS#1 RSAPrivateKey DER → its PKCS#8 PrivateKeyInfo (what WebCrypto imports).
export function pkcs1ToPkcs8(pkcs1) {
  return tlv(0x30, concat(new Uint8Array([0x02, 0x01, 0x00]), ALGORITHM, tlv(0x04, pkcs1)));
}

// The modulus and exponent of a PKCS#1 RSAPrivateKey.
function rsaNumbers(pkcs1) {
  const top = readTlv(pkcs1, 0);
  const items = top.tag === 0x30 ? children(pkcs1, top) : [];
  if (items.length < 9 || items.slice(0, 3).some((t) => t.tag !== 0x02)) {
    throw new KeyFileError("the key is not an RSA private key");
  }
  return { n: pkcs1.subarray(items[1].start, items[1].end), e: pkcs1.subarray(items[2].start, items[2].end) };
}

// The PKCS#1 key inside a PKCS#8 PrivateKeyInfo (RSA only).
function pkcs8Inner(pkcs8) {
  const top = readTlv(pkcs8, 0);
  const items = top.tag === 0x30 ? children(pkcs8, top) : [];
  if (items.length < 3 || items[1].tag !== 0x30 || items[2].tag !== 0x04) throw new KeyFileError("the key is not PKCS#8");
  const algorithm = children(pkcs8, items[1]);
  const oid = algorithm.length ? pkcs8.subarray(algorithm[0].start, algorithm[0].end) : new Uint8Array();
  if (oid.length !== RSA_OID.length || oid.some((b, i) => b !== RSA_OID[i])) {
    throw new KeyFileError("the key is not an RSA key (only RSA keys log in)");
  }
  return pkcs8.subarray(items[2].start, items[2].end);
}

// SubjectPublicKeyInfo DER of an RSA public key (what Python's cryptography writes).
export function spkiDer(n, e) {
  const rsaPublic = tlv(0x30, concat(derInteger(n), derInteger(e)));
  return tlv(0x30, concat(ALGORITHM, tlv(0x03, concat(new Uint8Array([0]), rsaPublic))));
}

export function pemOf(label, der) {
  const lines = toBase64(der).match(/.{1,64}/g) || [];
  return `-----BEGIN ${label}-----\n${lines.join("\n")}\n-----END ${label}-----\n`;
}

function pemBody(text, label) {
  const match = new RegExp(`-----BEGIN ${label}-----([A-Za-z0-9+/=\\s]+)-----END ${label}-----`).exec(text);
  if (!match) return null;
  try {
    return fromBase64(match[1].replace(/\s+/g, ""));
  } catch (err) {
    throw new KeyFileError(`the ${label} block is not base64`);
  }
}

// The key checksum the bridge and agents know a key by: base64(MD5(SPKI PEM text)).
export function keyChecksum(publicPem) {
  return toBase64(md5(utf8.encode(publicPem)));
}

// A private key file's text → { sign (a non-extractable CryptoKey), publicPem, checksum, spki }.
// Only a signing key: nothing the page receives is encrypted to the user's RSA key.
export async function importUserKey(text) {
  if (typeof text !== "string" || !text.trim()) throw new KeyFileError("the key file is empty");
  if (text.length > MAX_PEM_CHARS) throw new KeyFileError(`the key file is over ${MAX_PEM_CHARS} characters: not a key`);
  if (/-----BEGIN ENCRYPTED PRIVATE KEY-----|Proc-Type: 4,ENCRYPTED/.test(text)) {
    throw new KeyFileError("the key file is protected by a passphrase; the console reads unencrypted keys " +
                           "(as `sysadm key generate` writes them)");
  }
  let pkcs8 = pemBody(text, "PRIVATE KEY");
  let pkcs1;
  if (pkcs8) {
    pkcs1 = pkcs8Inner(pkcs8);
  } else {
    pkcs1 = pemBody(text, "RSA PRIVATE KEY");
    if (!pkcs1) {
      throw new KeyFileError('no "BEGIN PRIVATE KEY" or "BEGIN RSA PRIVATE KEY" block in the file ' +
                             "(a public key or an OpenSSH key cannot sign)");
    }
    pkcs8 = pkcs1ToPkcs8(pkcs1);
  }
  const { n, e } = rsaNumbers(pkcs1);
  const spki = spkiDer(n, e);
  const publicPem = pemOf("PUBLIC KEY", spki);
  let sign;
  try {
    sign = await subtle().importKey("pkcs8", pkcs8, SIGN, false, ["sign"]);
  } catch (err) {
    throw new KeyFileError(`the browser refused the key: ${err.message || err.name}`);
  } finally {
    pkcs8.fill(0);
    if (pkcs1.buffer !== pkcs8.buffer) pkcs1.fill(0);
  }
  return { sign, publicPem, checksum: keyChecksum(publicPem), spki };
}

// An agent's public key as fleet/agents lists it (standard base64 of its SPKI DER), checked
// against the agent's id (sha256 of that DER): { encrypt (RSA-OAEP) }.
export async function agentKey(spkiB64, agentId) {
  const short = String(agentId).slice(0, 12);
  if (typeof spkiB64 !== "string" || !spkiB64 || spkiB64.length > 8192) {
    throw new SealError(`agent ${short}: the bridge lists no key for it`);
  }
  let der;
  try { der = fromBase64(spkiB64); } catch (err) { throw new SealError(`agent ${short}: its listed key is not base64`); }
  const digest = await sha256Hex(der);
  if (digest !== agentId) {
    throw new SealError(`agent ${short}: the key the bridge lists for it is not the key its id names ` +
                        "(sha256 of the key differs); nothing is sealed to it");
  }
  try {
    return {
      encrypt: await subtle().importKey("spki", der, OAEP, false, ["encrypt"]),
    };
  } catch (err) {
    throw new SealError(`agent ${short}: its key is not an RSA public key`);
  }
}

async function rsaSign(key, text) {
  return toBase64(new Uint8Array(await subtle().sign(SIGN, key, utf8.encode(text))));
}

// The digest answer to the bridge's challenge (scheme pkcs1-sha256, §8.1).
export function bridgeLoginSignature(signKey, testString) {
  return rsaSign(signKey, `sysadm-bridge-login/1\n${testString}`);
}

// The signature of a fleet command (sysadmd/wire/fleetsig.py).
export async function signCommand(signKey, commandId, agentId, payload) {
  const digest = await sha256Hex(utf8.encode(payload));
  return rsaSign(signKey, `sysadm-fleet-command/1\n${commandId}\n${agentId}\n${digest}`);
}

// A command's result (sysadmd/wire/seal.py open_keyed): "keyed1:" + b64(nonce || ChaCha20-Poly1305
// ciphertext) under resultKey(the command's content key), associated data the result context.
// Only this page (which chose the content key) and the agent (which opened the payload) know
// that key, so a result that opens is the agent's; SealError otherwise.
export const KEYED_PREFIX = "keyed1:";

export function isKeyed(text) {
  return typeof text === "string" && text.startsWith(KEYED_PREFIX);
}

// HKDF-SHA256(ikm = content key, no salt, info "sysadm-fleet/1 result key") → 32 bytes.
export async function resultKey(contentKey) {
  const ikm = await subtle().importKey("raw", contentKey, "HKDF", false, ["deriveBits"]);
  return new Uint8Array(await subtle().deriveBits(
    { name: "HKDF", hash: "SHA-256", salt: new Uint8Array(0), info: utf8.encode("sysadm-fleet/1 result key") }, ikm, 256));
}

export async function openResult(contentKey, commandId, agentId, text) {
  if (!isKeyed(text)) throw new SealError("not a keyed result (it must start with 'keyed1:')");
  if (text.length > MAX_SEALED_CHARS) throw new SealError("keyed result too long");
  const body = fromBase64(text.slice(KEYED_PREFIX.length));
  if (body.length < 12 + 16) throw new SealError("keyed result too short");
  const key = await resultKey(contentKey);
  try {
    return fromUtf8.decode(chacha20poly1305(key, body.subarray(0, 12), fleetContext("result", commandId, agentId))
      .decrypt(body.subarray(12)));
  } catch (err) {
    throw new SealError("the result does not open with this command's key (altered, another command's, or not " +
                        "made by the agent)");
  } finally {
    key.fill(0);
  }
}

export function fleetContext(kind, itemId, agentId) {
  return utf8.encode(`sysadm-fleet/1\n${kind}\n${itemId}\n${agentId}`);
}

// A fresh content key for one command (kept by the caller, to open the command's result).
export function newContentKey() {
  return crypto.getRandomValues(new Uint8Array(32));
}

// Sealed text (sysadmd/wire/seal.py seal_with_key): *plaintext* (string or bytes) for
// *publicKey* (RSA-OAEP CryptoKey) under *contentKey* (32 bytes; a fresh one if omitted).
export async function seal(publicKey, plaintext, context, contentKey = null) {
  const own = !contentKey;
  const key = contentKey || newContentKey();
  if (key.length !== 32) throw new SealError("a content key is 32 bytes");
  const nonce = crypto.getRandomValues(new Uint8Array(12));
  const data = typeof plaintext === "string" ? utf8.encode(plaintext) : plaintext;
  const body = concat(nonce, chacha20poly1305(key, nonce, context).encrypt(data));
  const wrapped = new Uint8Array(await subtle().encrypt(OAEP, publicKey, key));
  if (own) key.fill(0);
  return `${SEALED_PREFIX}${toBase64(wrapped)}.${toBase64(body)}`;
}

export function isSealed(text) {
  return typeof text === "string" && text.startsWith(SEALED_PREFIX);
}
