// A live session from this page to one agent through a bridge, end to end encrypted
// (docs/protocol.md §8.6, sysadmd/wire/e2e.py): X25519 and HKDF-SHA256 from WebCrypto,
// ChaCha20-Poly1305 from the vendored @noble/ciphers, the transcript signed by the agent's
// bridge key (checked against the agent id we chose) and by the user's key (the finish,
// which logs the session in).  RelayChannel looks like a WebSocket to api.js's Connection,
// so the console's ordinary pages run over it unchanged.

import { Connection } from "./api.js";
import { chacha20poly1305 } from "./vendor/noble-ciphers/chacha.js";
import { fromBase64, sha256Hex, toBase64 } from "./fleetcrypto.js";

const LABEL = "sysadm-e2e/1";
const SIGN = { name: "RSASSA-PKCS1-v1_5", hash: "SHA-256" };
const HELLO_TIMEOUT_MS = 15000;
const MAX_FRAME_CHARS = 90 * 1024 * 1024;
const utf8 = new TextEncoder();
const fromUtf8 = new TextDecoder("utf-8", { fatal: true });

export class E2EError extends Error {}

function b64bytes(text, what, size) {
  let bytes;
  try { bytes = fromBase64(text); } catch (err) { throw new E2EError(`${what}: not base64`); }
  if (size !== undefined && bytes.length !== size) throw new E2EError(`${what}: expected ${size} bytes, got ${bytes.length}`);
  return bytes;
}

// The client's side of the handshake (one per server probed).
export class ClientHandshake {
  static async create(userKey) {
    const hs = new ClientHandshake();
    hs.userKey = userKey;
    hs.own = await crypto.subtle.generateKey({ name: "X25519" }, false, ["deriveBits"]);
    hs.eph = toBase64(new Uint8Array(await crypto.subtle.exportKey("raw", hs.own.publicKey)));
    hs.nonce = toBase64(crypto.getRandomValues(new Uint8Array(16)));
    return hs;
  }

  hello() {
    return { step: "hello", v: 1, key: this.userKey.checksum, eph: this.eph, nonce: this.nonce };
  }

  // The server's accept → { cipher, serverId, finish }; the caller checks serverId.
  async accept(reply) {
    if (!reply || reply.step !== "accept") throw new E2EError("expected the server's accept step");
    const ephS = b64bytes(reply.eph, "eph", 32);
    b64bytes(reply.nonce, "nonce", 16);
    if (typeof reply.server_key !== "string" || reply.server_key.length > 4096) throw new E2EError("server_key: expected base64 text");
    const der = b64bytes(reply.server_key, "server_key");
    const serverId = await sha256Hex(der);
    let serverKey;
    try {
      serverKey = await crypto.subtle.importKey("spki", der, SIGN, false, ["verify"]);
    } catch (err) {
      throw new E2EError("server_key: not an RSA public key");
    }
    const text = [LABEL, this.userKey.checksum, this.eph, this.nonce, reply.eph, reply.nonce, serverId].join("\n");
    let sig;
    try { sig = fromBase64(reply.sig); } catch (err) { throw new E2EError("sig: not base64"); }
    if (!(await crypto.subtle.verify(SIGN, serverKey, sig, utf8.encode(`server\n${text}`)))) {
      throw new E2EError("the server's signature does not match its key");
    }
    let shared;
    try {
      const peer = await crypto.subtle.importKey("raw", ephS, { name: "X25519" }, false, []);
      shared = await crypto.subtle.deriveBits({ name: "X25519", public: peer }, this.own.privateKey, 256);
    } catch (err) {
      throw new E2EError("eph: not a usable X25519 public key");
    }
    this.own = null;  // forward secrecy: nothing left here to recompute the keys from
    const hkdf = await crypto.subtle.importKey("raw", shared, "HKDF", false, ["deriveBits"]);
    const salt = new Uint8Array(await crypto.subtle.digest("SHA-256", utf8.encode(text)));
    const okm = new Uint8Array(await crypto.subtle.deriveBits(
      { name: "HKDF", hash: "SHA-256", salt, info: utf8.encode(`${LABEL} keys`) }, hkdf, 512));
    const signature = await crypto.subtle.sign(SIGN, this.userKey.sign, utf8.encode(`client\n${text}`));
    return {
      cipher: new FrameCipher(okm.slice(0, 32), okm.slice(32, 64)),
      serverId,
      finish: { step: "finish", sig: toBase64(new Uint8Array(signature)) },
    };
  }
}

// "!" frames: ChaCha20-Poly1305 with a 96-bit big-endian counter per direction as the nonce.
export class FrameCipher {
  constructor(sendKey, receiveKey) {
    this.sendKey = sendKey;
    this.receiveKey = receiveKey;
    this.sent = 0;
    this.received = 0;
  }

  static nonce(counter) {
    const nonce = new Uint8Array(12);
    new DataView(nonce.buffer).setBigUint64(4, BigInt(counter));
    return nonce;
  }

  seal(text) {
    const nonce = FrameCipher.nonce(this.sent++);
    return `!${toBase64(chacha20poly1305(this.sendKey, nonce).encrypt(utf8.encode(text)))}`;
  }

  open(frame) {
    if (typeof frame !== "string" || !frame.startsWith("!")) throw new E2EError("a plain frame inside an encrypted session");
    if (frame.length > MAX_FRAME_CHARS) throw new E2EError("an encrypted frame too long");
    let plain;
    try {
      plain = chacha20poly1305(this.receiveKey, FrameCipher.nonce(this.received)).decrypt(fromBase64(frame.slice(1)));
    } catch (err) {
      throw new E2EError("an encrypted frame that does not open (altered, replayed or out of order)");
    }
    this.received += 1;
    return fromUtf8.decode(plain);
  }
}

// One peer of the bridge as a WebSocket for api.js's Connection: text in and out, sealed.
export class RelayChannel {
  constructor(relay, peerId, cipher) {
    this.relay = relay;
    this.peerId = peerId;
    this.cipher = cipher;
    this.readyState = 0;
    this.onopen = this.onmessage = this.onclose = null;
    relay.peers.set(peerId, (payload) => this.deliver(payload));
    relay.bridge.onClose(() => this.ended(1001, "the bridge connection closed"));
    queueMicrotask(() => { if (this.readyState === 0) { this.readyState = 1; if (this.onopen) this.onopen(); } });
  }

  send(text) {
    if (this.readyState !== 1) return;
    this.relay.send(this.peerId, this.cipher.seal(text));
  }

  deliver(payload) {
    if (this.readyState !== 1) return;
    let text;
    try {
      text = this.cipher.open(payload);
    } catch (err) {
      this.ended(1008, `the encrypted session ended: ${err.message}`);
      return;
    }
    if (this.onmessage) this.onmessage({ data: text });
  }

  close(code = 1000, reason = "") { this.ended(code, reason); }

  ended(code, reason) {
    if (this.readyState === 3) return;
    this.readyState = 3;
    this.relay.peers.delete(this.peerId);
    if (this.onclose) this.onclose({ code, reason });
  }
}

// The relay side of a bridge connection: frames "<peer id>\n<payload>" to and from peers,
// and the servers the bridge says we may reach (events/bridge available_connections).
export class Relay {
  constructor(bridge) {
    this.bridge = bridge;
    this.peers = new Map();  // peer id -> (payload) => …
    this.servers = [];
    this.serversKnown = new Promise((resolve) => { this.gotServers = resolve; });
    bridge.textFilter = (text) => {
      if (text.startsWith("{")) return false;
      const cut = text.indexOf("\n");
      if (cut > 0) {
        const deliver = this.peers.get(text.slice(0, cut));
        if (deliver) deliver(text.slice(cut + 1));
      }
      return true;
    };
    bridge.on("bridge", (args) => {
      if (args && Array.isArray(args.available_connections)) {
        this.servers = args.available_connections.filter((id) => typeof id === "string");
        this.gotServers();
      }
    });
  }

  send(peerId, payload) { this.bridge.sendText(`${peerId}\n${payload}`); }

  // Say hello to one server; its accept, or null (no accept in time, an error, a bad one).
  probe(peerId, handshake) {
    return new Promise((resolve) => {
      const timer = setTimeout(() => { this.peers.delete(peerId); resolve(null); }, HELLO_TIMEOUT_MS);
      this.peers.set(peerId, (payload) => {
        clearTimeout(timer);
        this.peers.delete(peerId);
        let message;
        try { message = JSON.parse(payload); } catch (err) { resolve(null); return; }
        if (!message || message.name !== "response" || message.id !== "e2e-hello") { resolve(null); return; }
        handshake.accept(message.args).then(resolve, () => resolve(null));
      });
      this.send(peerId, JSON.stringify({ args: handshake.hello(), id: "e2e-hello", name: "e2e", namespace: "rpc" }));
    });
  }
}

// A logged-in api.js Connection to agent *agentId* through *relay*, end to end encrypted.
export async function openAgentSession(relay, userKey, agentId) {
  await Promise.race([relay.serversKnown, new Promise((resolve) => setTimeout(resolve, 5000))]);
  if (!relay.servers.length) throw new Error("the bridge lists no server this key may reach");
  const accepted = await Promise.all(relay.servers.map(async (peerId) => {
    const handshake = await ClientHandshake.create(userKey);
    return { peerId, accepted: await relay.probe(peerId, handshake) };
  }));
  const found = accepted.find(({ accepted: a }) => a && a.serverId === agentId);
  if (!found) {
    throw new Error(`agent ${agentId.slice(0, 12)} did not answer an end-to-end hello with its key ` +
                    "(offline, or not one of the servers this key is paired with)");
  }
  const { cipher, finish } = found.accepted;
  const conn = new Connection(`bridge:${found.peerId}`, { socket: () => new RelayChannel(relay, found.peerId, cipher) });
  await conn.open();
  try {
    await conn.call("rpc", "e2e", finish);  // the finish is the login: [token, ttl]
  } catch (err) {
    conn.close();
    throw err;
  }
  conn.serverId = agentId;
  return conn;
}
