// Load generator for bench/e2e_bench.py: rpc/query round trips to a sysadmd behind
// sysadm-bridge, in upstream's base64 mode or in an end-to-end encrypted session
// (docs/protocol.md §8.6). Node, so the client costs far less CPU than the processes measured.
//
// usage: node loadgen_e2e.js base64|e2e BRIDGE_URL CONNECTIONS INFLIGHT SECONDS PRIVATE_KEY_PEM
//
// Both modes: identify and auth_ssl with the bridge, our key's md5 in list_ssl_checksums, the
// first server of available_connections, then:
//   base64: "S\n" + plain auth_ssl {"md5_key":M} → plain challenge → base64(stage 2, raw
//           signature) → base64([token, ttl]); requests and replies are base64(JSON).
//   e2e:    "S\n" + plain rpc/e2e hello → plain accept (X25519 key, server key, RSA PKCS#1 v1.5
//           SHA-256 signature over "server\n" + T, checked) → "!" finish (signature over
//           "client\n" + T) → "!" [token, ttl]; requests and replies are "!" frames:
//           ChaCha20-Poly1305, keys HKDF-SHA256(X25519 secret, salt sha256(T), "sysadm-e2e/1 keys"),
//           12-byte big-endian counter nonces per direction.
//
// Prints one JSON line: {"requests","seconds","p50_ms","p90_ms","p99_ms","errors","server_id","cipher"}.
"use strict";
const WebSocket = require("ws");
const crypto = require("crypto");
const fs = require("fs");

const AUTH_ID = "sysadm-client-auth-auto";
const IDENT_ID = "sysadm_bridge_request_ident";
const X25519_SPKI_PREFIX = Buffer.from("302a300506032b656e032100", "hex");
const [mode, url] = [process.argv[2], process.argv[3]];

const {now, load} = require("./loadgen_common");
const json = (o) => JSON.stringify(o);
const b64 = (text) => Buffer.from(text, "utf8").toString("base64");
const unb64 = (text) => Buffer.from(text, "base64").toString("utf8");
const rawSign = (key, text) =>
  crypto.privateEncrypt({key, padding: crypto.constants.RSA_PKCS1_PADDING}, Buffer.from(text, "latin1")).toString("base64");

function md5Of(key) {
  const pem = crypto.createPublicKey(key).export({type: "spki", format: "pem"});
  return crypto.createHash("md5").update(pem).digest("base64");
}

// The AEAD: libsodium's ChaCha20-Poly1305 (IETF) when bench/.node has libsodium-wrappers
// (bench/common.py installs it), else Node's own.  Node makes a native cipher object per
// message (its API has no nonce reset): about 4.1 us to seal a 757-byte reply here, against
// 2.4 us for libsodium's one call, and E2E's cost in this bench is mostly the load
// generator's.  Both give the same bytes (ciphertext then the 16-byte tag).
let sodium = null;
try { sodium = require("libsodium-wrappers"); } catch (e) { sodium = null; }
const CIPHER = sodium ? "libsodium" : "node";
const AEAD = "chacha20-poly1305";
const AEAD_OPTIONS = {authTagLength: 16};

class Frames {
  // The session's two directions: a key and a frame counter each.  The nonce is one
  // buffer rewritten in place (counters stay below 2^32 in a run).  The work around the
  // cipher mirrors base64 mode's: one UTF-8 encode and one base64 encode out, one base64
  // decode and one UTF-8 decode in.
  constructor(sendKey, receiveKey) {
    if (sodium) {
      this.sendKey = new Uint8Array(sendKey); this.receiveKey = new Uint8Array(receiveKey);
    } else {
      this.sendKey = crypto.createSecretKey(sendKey); this.receiveKey = crypto.createSecretKey(receiveKey);
    }
    this.sent = 0; this.received = 0;
    this.nonce = Buffer.alloc(12);
  }
  _nonce(counter) {
    if (counter > 0xffffffff) throw new Error("more than 2^32 frames in one direction");
    this.nonce.writeUInt32BE(counter, 8);
    return this.nonce;
  }
  seal(text) {
    const nonce = this._nonce(this.sent++);
    if (sodium) {
      const sealed = sodium.crypto_aead_chacha20poly1305_ietf_encrypt(Buffer.from(text, "utf8"), null, null, nonce, this.sendKey);
      return "!" + Buffer.from(sealed.buffer, sealed.byteOffset, sealed.length).toString("base64");
    }
    const c = crypto.createCipheriv(AEAD, this.sendKey, nonce, AEAD_OPTIONS);
    const body = c.update(text, "utf8");
    c.final();  // a stream cipher: nothing more comes out
    const tag = c.getAuthTag();
    return "!" + Buffer.concat([body, tag], body.length + 16).toString("base64");
  }
  open(frame) {
    if (frame[0] !== "!") throw new Error("a plain frame inside the encrypted session: " + frame.slice(0, 200));
    const data = Buffer.from(frame.slice(1), "base64");
    if (data.length < 16) throw new Error("an encrypted frame shorter than its tag");
    const nonce = this._nonce(this.received);
    let text;
    if (sodium) {
      // throws if the tag does not match
      const plain = sodium.crypto_aead_chacha20poly1305_ietf_decrypt(null, data, null, nonce, this.receiveKey);
      text = Buffer.from(plain.buffer, plain.byteOffset, plain.length).toString("utf8");
    } else {
      const d = crypto.createDecipheriv(AEAD, this.receiveKey, nonce, AEAD_OPTIONS);
      d.setAuthTag(data.subarray(data.length - 16));
      text = d.update(data.subarray(0, data.length - 16)).toString("utf8");
      d.final();  // throws if the tag does not match
    }
    this.received++;
    return text;
  }
}

class Handshake {
  constructor(key, md5) {
    this.key = key; this.md5 = md5;
    const pair = crypto.generateKeyPairSync("x25519");
    this.priv = pair.privateKey;
    this.eph = pair.publicKey.export({type: "spki", format: "der"}).subarray(12).toString("base64");
    this.nonce = crypto.randomBytes(16).toString("base64");
  }
  hello() {
    return {step: "hello", v: 1, key: this.md5, eph: this.eph, nonce: this.nonce};
  }
  accept(args) {
    if (!args || args.step !== "accept") throw new Error("expected the accept step: " + json(args));
    const der = Buffer.from(args.server_key, "base64");
    const serverId = crypto.createHash("sha256").update(der).digest("hex");
    const T = Buffer.from([ "sysadm-e2e/1", this.md5, this.eph, this.nonce, args.eph, args.nonce, serverId].join("\n"), "utf8");
    const serverKey = crypto.createPublicKey({key: der, format: "der", type: "spki"});
    const ok = crypto.verify("sha256", Buffer.concat([Buffer.from("server\n"), T]),
                             {key: serverKey, padding: crypto.constants.RSA_PKCS1_PADDING}, Buffer.from(args.sig, "base64"));
    if (!ok) throw new Error("the server's signature does not match its key");
    const peer = crypto.createPublicKey({key: Buffer.concat([X25519_SPKI_PREFIX, Buffer.from(args.eph, "base64")]),
                                         format: "der", type: "spki"});
    const shared = crypto.diffieHellman({privateKey: this.priv, publicKey: peer});
    const salt = crypto.createHash("sha256").update(T).digest();
    const okm = Buffer.from(crypto.hkdfSync("sha256", shared, salt, Buffer.from("sysadm-e2e/1 keys"), 64));
    const sig = crypto.sign("sha256", Buffer.concat([Buffer.from("client\n"), T]),
                            {key: this.key, padding: crypto.constants.RSA_PKCS1_PADDING}).toString("base64");
    return {frames: new Frames(okm.subarray(0, 32), okm.subarray(32)), serverId, finish: {step: "finish", sig}};
  }
}

function openBridged(key, md5, e2e) {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(url, {rejectUnauthorized: false, perMessageDeflate: false});
    let server = null, authorized = false, replyHandler = null, frames = null, handshake = null, serverId = null;
    ws.on("error", reject);
    ws.on("close", (code, reason) => { if (!authorized) reject(new Error(`bridge closed ${code} ${reason}`)); });
    const toServer = (o) => ws.send(server + "\n" + (frames ? frames.seal(json(o)) : e2e ? json(o) : b64(json(o))));
    ws.on("message", (data) => {
      const text = data.toString();
      if (text[0] === "{") {
        const msg = JSON.parse(text);
        if (msg.id === IDENT_ID && msg.name === "identify") {
          ws.send(json({args: {hostname: "loadgen", type: "client"}, id: IDENT_ID, name: "response", namespace: "rpc"}));
          ws.send(json({args: "", id: AUTH_ID, name: "auth_ssl", namespace: "rpc"}));
        } else if (msg.id === AUTH_ID) {
          if (msg.name !== "response") return reject(new Error("the bridge refused the key: " + text));
          if (Array.isArray(msg.args)) return;
          ws.send(json({args: {encrypted_string: rawSign(key, msg.args.test_string)}, id: AUTH_ID, name: "auth_ssl", namespace: "rpc"}));
        } else if (msg.name === "settings" && msg.args && msg.args.action === "list_ssl_checksums") {
          ws.send(json({args: {md5_keys: [md5]}, id: msg.id, name: "response", namespace: "rpc"}));
        } else if (msg.namespace === "events" && msg.name === "bridge") {
          const ids = msg.args.available_connections;
          if (server === null && ids.length) {
            server = ids[0];
            if (e2e) {
              handshake = new Handshake(key, md5);
              ws.send(server + "\n" + json({args: handshake.hello(), id: "h", name: "e2e", namespace: "rpc"}));
            } else {
              ws.send(server + "\n" + json({args: {md5_key: md5}, id: AUTH_ID, name: "auth_ssl", namespace: "rpc"}));
            }
          }
        }
        return;
      }
      const nl = text.indexOf("\n");
      if (nl < 0 || text.slice(0, nl) !== server) return;
      const body = text.slice(nl + 1);
      let msg;
      if (frames) {
        msg = JSON.parse(frames.open(body));
      } else if (body[0] === "{") {
        msg = JSON.parse(body);
        if (msg.name !== "response") return reject(new Error("the server refused: " + body));
        if (e2e && msg.id === "h") {
          const accepted = handshake.accept(msg.args);
          frames = accepted.frames;
          serverId = accepted.serverId;
          toServer({args: accepted.finish, id: AUTH_ID, name: "e2e", namespace: "rpc"});
        } else if (msg.id === AUTH_ID) {
          const challenge = Buffer.from(msg.args.test_string, "base64").toString("latin1");
          toServer({args: {encrypted_string: rawSign(key, challenge)}, id: AUTH_ID, name: "auth_ssl", namespace: "rpc"});
        }
        return;
      } else {
        msg = JSON.parse(unb64(body));
      }
      if (!authorized && msg.id === AUTH_ID) {
        if (msg.name !== "response") return reject(new Error("the server refused the login: " + json(msg)));
        authorized = true;
        resolve({ws, serverId, send: toServer, onReply: (fn) => { replyHandler = fn; }});
      } else if (replyHandler) {
        replyHandler(msg);
      }
    });
  });
}


(async () => {
  if (mode !== "base64" && mode !== "e2e") throw new Error("usage: loadgen_e2e.js base64|e2e URL CONNS INFLIGHT SECONDS KEY");
  const [N, K, D] = [parseInt(process.argv[4], 10), parseInt(process.argv[5], 10), parseFloat(process.argv[6])];
  if (sodium) await sodium.ready;
  const key = crypto.createPrivateKey(fs.readFileSync(process.argv[7]));
  const md5 = md5Of(key);
  await load(() => openBridged(key, md5, mode === "e2e"), N, K, D,
             (conns) => ({server_id: conns[0].serverId, cipher: CIPHER}));
  process.exit(0);
})().catch((e) => { console.error(String(e && e.stack || e)); process.exit(1); });
