// A live session from this page to one agent through a bridge, end to end encrypted
// (docs/protocol.md §8.6, sysadmd/wire/e2e.py): X25519 and HKDF-SHA256 from WebCrypto,
// ChaCha20-Poly1305 from the vendored @noble/ciphers, the transcript signed by the agent's
// bridge key (checked against the agent id we chose) and by the user's key (the finish,
// which logs the session in).  The hello goes only to the relay connection the bridge lists
// for that agent (fleet/agents "connection"), and the accept must bind that connection ID
// (server_connection_id + connection_tag).  RelayChannel looks like a WebSocket to api.js's Connection,
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

const CONNECTION_LABEL = "sysadm-e2e-connection/1";

function sameBytes(a, b) {
  if (a.length !== b.length) return false;
  let diff = 0;
  for (let i = 0; i < a.length; i++) diff |= a[i] ^ b[i];
  return diff === 0;
}

// The client's side of the handshake (one per session).
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

  // The server's accept → { cipher, serverId, serverConnectionId, finish }.  With *expect*
  // ({ serverId, connectionId }) the server's key must be the agent's and a bound connection
  // ID the one the hello went to, checked before the finish is signed; without it the caller
  // checks them.
  async accept(reply, expect = null) {
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
    // The connection binding: which bridge connection the server says it is, under a tag only
    // the holder of the signed ephemeral key can make.
    let serverConnectionId = null;
    if ("server_connection_id" in reply) {
      const claimed = reply.server_connection_id;
      if (typeof claimed !== "string" || claimed.length > 200) {
        throw new E2EError("server_connection_id: expected the server's connection ID (text)");
      }
      const bindingBits = await crypto.subtle.deriveBits(
        { name: "HKDF", hash: "SHA-256", salt, info: utf8.encode(`${LABEL} connection`) }, hkdf, 256);
      const binding = await crypto.subtle.importKey("raw", bindingBits, { name: "HMAC", hash: "SHA-256" }, false, ["sign"]);
      const expected = new Uint8Array(await crypto.subtle.sign("HMAC", binding, utf8.encode(`${CONNECTION_LABEL}\n${claimed}`)));
      let tag = null;
      try { tag = fromBase64(reply.connection_tag); } catch (err) { tag = null; }
      if (!tag || !sameBytes(tag, expected)) throw new E2EError("connection_tag: does not match the handshake (altered on the way)");
      serverConnectionId = claimed;
    }
    if (expect && expect.serverId && serverId !== expect.serverId) {
      throw new E2EError(`the server answered with key ${serverId.slice(0, 12)}, not the agent's ` +
                         `${expect.serverId.slice(0, 12)}: nothing signed for it`);
    }
    if (expect && expect.connectionId && serverConnectionId && serverConnectionId !== expect.connectionId) {
      throw new E2EError(`the accept comes from bridge connection ${serverConnectionId.slice(0, 80)}, not ` +
                         `${expect.connectionId}: that peer relays another connection's answers`);
    }
    const signature = await crypto.subtle.sign(SIGN, this.userKey.sign, utf8.encode(`client\n${text}`));
    return {
      cipher: new FrameCipher(okm.slice(0, 32), okm.slice(32, 64)),
      serverId,
      serverConnectionId,
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

// The reason in a plain error frame ({"name":"error","args":{"message","detail"}}), or null.
function plainError(payload) {
  if (typeof payload !== "string" || !payload.startsWith("{") || payload.length > 65536) return null;
  try {
    const message = JSON.parse(payload);
    const args = message && message.name === "error" && message.args;
    if (!args || typeof args !== "object") return null;
    return String(args.detail || args.message || "an error").slice(0, 300);
  } catch (err) {
    return null;
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
    relay.gone.set(peerId, () => this.ended(1001, "the agent left the bridge"));
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
      // A plain frame ends the session; the server's own "e2e":1 error says why.
      const said = plainError(payload);
      this.ended(1008, `the encrypted session ended: ${said || err.message}`);
      return;
    }
    if (this.onmessage) this.onmessage({ data: text });
  }

  close(code = 1000, reason = "") { this.ended(code, reason); }

  ended(code, reason) {
    if (this.readyState === 3) return;
    this.readyState = 3;
    this.relay.peers.delete(this.peerId);
    this.relay.gone.delete(this.peerId);
    if (this.onclose) this.onclose({ code, reason });
  }
}

// The relay side of a bridge connection: frames "<peer id>\n<payload>" to and from peers; a
// peer the bridge no longer lists (events/bridge available_connections) has left.
export class Relay {
  constructor(bridge) {
    this.bridge = bridge;
    this.peers = new Map();  // peer id -> (payload) => …
    this.gone = new Map();  // peer id -> () => … when it leaves the bridge
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
      if (!args || !Array.isArray(args.available_connections)) return;
      const listed = new Set(args.available_connections);
      for (const [peerId, left] of [...this.gone]) if (!listed.has(peerId)) left();
    });
  }

  send(peerId, payload) { this.bridge.sendText(`${peerId}\n${payload}`); }

  // Say hello to one relay connection; its accept (checked against *expect*), or an error
  // saying why not (no answer in time, a refusal, an accept that does not check).
  hello(peerId, handshake, expect) {
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.peers.delete(peerId);
        reject(new E2EError(`no answer to the end-to-end hello within ${HELLO_TIMEOUT_MS / 1000} s`));
      }, HELLO_TIMEOUT_MS);
      this.peers.set(peerId, (payload) => {
        clearTimeout(timer);
        this.peers.delete(peerId);
        let message;
        try { message = JSON.parse(payload); } catch (err) { reject(new E2EError("the answer to the hello is not JSON")); return; }
        if (message && message.name === "error") {
          reject(new E2EError(`the agent refused the session: ${plainError(payload)}`));
          return;
        }
        if (!message || message.name !== "response" || message.id !== "e2e-hello") {
          reject(new E2EError("the answer to the hello is not its accept"));
          return;
        }
        handshake.accept(message.args, expect).then(resolve, reject);
      });
      this.send(peerId, JSON.stringify({ args: handshake.hello(), id: "e2e-hello", name: "e2e", namespace: "rpc" }));
    });
  }
}

// A logged-in api.js Connection to *agent* (a fleet/agents row) through *relay*, end to end
// encrypted.  The hello goes only to the agent's relay connection as the bridge lists it; the
// accept must carry the agent's key (its sha256 is the agent id) and bind that connection.
export async function openAgentSession(relay, userKey, agent) {
  const agentId = agent.id;
  const peerId = agent.connection;
  if (!agent.online) throw new Error(`agent ${agentId.slice(0, 12)} is offline`);
  if (typeof peerId !== "string" || !peerId || peerId.length > 200 || peerId.includes("\n")) {
    throw new Error("the bridge does not list the agent's relay connection (a bridge older than this console?)");
  }
  const handshake = await ClientHandshake.create(userKey);
  const accepted = await relay.hello(peerId, handshake, { serverId: agentId, connectionId: peerId });
  const { cipher, finish } = accepted;
  const conn = new Connection(`bridge:${peerId}`, { socket: () => new RelayChannel(relay, peerId, cipher) });
  await conn.open();
  try {
    await conn.call("rpc", "e2e", finish);  // the finish is the login: [token, ttl]
  } catch (err) {
    conn.close();
    throw err;
  }
  conn.serverId = agentId;
  conn.serverConnectionId = accepted.serverConnectionId;
  return conn;
}
