// Load generator for bench/bridge_bench.py: rpc/query round trips to a sysadmd, either
// directly or as a client behind sysadm-bridge. Written for Node so the client side costs
// far less CPU than the Python processes under test.
//
// usage: node loadgen_bridge.js direct   URL CONNECTIONS INFLIGHT SECONDS PRIVATE_KEY_PEM
//        node loadgen_bridge.js bridge   URL CONNECTIONS INFLIGHT SECONDS PRIVATE_KEY_PEM
//        node loadgen_bridge.js authtime URL TRIES PRIVATE_KEY_PEM
//
// direct: rpc/auth_ssl with the key straight to the server, then plain JSON requests.
// bridge: the upstream client's side of the bridge protocol (docs/protocol.md
//   §8.1, §8.3), one key for both the bridge and the server:
//     bridge → us  rpc/identify (id sysadm_bridge_request_ident) → we answer type "client"
//     us → bridge  rpc/auth_ssl "" → {"test_string":T} → {"encrypted_string":sig(T)} → [token, 0]
//     bridge → us  rpc/settings list_ssl_checksums → we answer {"md5_keys":[md5(our PEM)]}
//     bridge → us  events/bridge {"available_connections":[S]}
//     us → S       "S\n" + plain identify, "S\n" + plain auth_ssl {"md5_key":M}
//     S → us       "S\n" + plain {"new_ssl_key":b64,"test_string":b64(T)}
//     us → S       "S\n" + base64(auth_ssl {"encrypted_string":sig(T)}) → base64([token, ttl])
//   then every request and reply is "S\n" + base64(JSON).
//   sig(T) is a raw PKCS#1 v1.5 signature (no digest): crypto.privateEncrypt.
// authtime: TRIES bridged logins one after another; for each, the wall time from
//   opening the TCP connection to the server's token reply, and its phases.
//
// Prints one JSON line. Load modes: {"requests","seconds","p50_ms","p90_ms","p99_ms","errors"};
// authtime: {"total_ms":[…],"open_ms":[…],"bridge_auth_ms":[…],"paired_ms":[…],"server_identify_ms":[…],
//   "server_challenge_ms":[…]},
//   each phase measured from the start of the TCP connect.
"use strict";
const WebSocket = require("ws");
const crypto = require("crypto");
const fs = require("fs");

const AUTH_ID = "sysadm-client-auth-auto";
const IDENT_ID = "sysadm_bridge_request_ident";
const mode = process.argv[2];
const url = process.argv[3];

const {now, load} = require("./loadgen_common");
const sign = (key, text) =>
  crypto.privateEncrypt({key: key, padding: crypto.constants.RSA_PKCS1_PADDING}, Buffer.from(text, "latin1")).toString("base64");
const json = (o) => JSON.stringify(o);
const b64 = (text) => Buffer.from(text, "utf8").toString("base64");
const unb64 = (text) => Buffer.from(text, "base64").toString("utf8");

function md5Of(key) {
  // base64(MD5(SPKI PEM)): the same bytes Python's public_bytes(PEM, SubjectPublicKeyInfo) gives.
  const pem = crypto.createPublicKey(key).export({type: "spki", format: "pem"});
  return crypto.createHash("md5").update(pem).digest("base64");
}

// A connection ready for requests: send(obj) and onReply(fn(obj)).
function openDirect(key) {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(url, {rejectUnauthorized: false, perMessageDeflate: false});
    ws.on("error", reject);
    ws.on("open", () => {
      ws.send(json({namespace: "rpc", name: "auth_ssl", id: "s1", args: ""}));
    });
    let replyHandler = null;
    ws.on("message", (data) => {
      const msg = JSON.parse(data.toString());
      if (msg.id === "s1") {
        ws.send(json({namespace: "rpc", name: "auth_ssl", id: "s2", args: {encrypted_string: sign(key, msg.args.test_string)}}));
      } else if (msg.id === "s2") {
        if (msg.name === "error") return reject(new Error("login refused: " + data));
        resolve({ws, send: (o) => ws.send(json(o)), onReply: (fn) => { replyHandler = fn; }});
      } else if (replyHandler) {
        replyHandler(msg);
      }
    });
  });
}

function openBridged(key, md5, marks) {
  return new Promise((resolve, reject) => {
    const t = marks || {};
    t.start = now();
    const ws = new WebSocket(url, {rejectUnauthorized: false, perMessageDeflate: false});
    let server = null, authorized = false, replyHandler = null;
    ws.on("error", reject);
    ws.on("close", (code, reason) => { if (!authorized) reject(new Error(`bridge closed ${code} ${reason}`)); });
    ws.on("open", () => { t.open = now(); });
    ws.on("message", (data) => {
      const text = data.toString();
      if (text[0] === "{") {
        const msg = JSON.parse(text);
        if (msg.id === IDENT_ID && msg.name === "identify") {
          ws.send(json({args: {hostname: "loadgen", type: "client"}, id: IDENT_ID, name: "response", namespace: "rpc"}));
          ws.send(json({args: "", id: AUTH_ID, name: "auth_ssl", namespace: "rpc"}));
        } else if (msg.id === AUTH_ID) {
          if (msg.name !== "response") return reject(new Error("the bridge refused the key: " + text));
          if (Array.isArray(msg.args)) { t.bridgeAuth = now(); return; }
          ws.send(json({args: {encrypted_string: sign(key, msg.args.test_string)}, id: AUTH_ID, name: "auth_ssl", namespace: "rpc"}));
        } else if (msg.name === "settings" && msg.args && msg.args.action === "list_ssl_checksums") {
          ws.send(json({args: {md5_keys: [md5]}, id: msg.id, name: "response", namespace: "rpc"}));
        } else if (msg.namespace === "events" && msg.name === "bridge") {
          const ids = msg.args.available_connections;
          if (server === null && ids.length) {
            server = ids[0];
            t.paired = now();
            ws.send(server + "\n" + json({args: "", id: "sysadm_client_identify", name: "identify", namespace: "rpc"}));
            ws.send(server + "\n" + json({args: {md5_key: md5}, id: AUTH_ID, name: "auth_ssl", namespace: "rpc"}));
          }
        }
        return;
      }
      const nl = text.indexOf("\n");
      if (nl < 0 || text.slice(0, nl) !== server) return;
      const body = text.slice(nl + 1);
      if (body[0] === "{") {  // plain: identify reply, or the md5_key stage-1 reply
        const msg = JSON.parse(body);
        if (msg.id === "sysadm_client_identify") t.serverIdent = now();
        if (msg.id === AUTH_ID) {
          if (msg.name !== "response") return reject(new Error("the server refused the key: " + body));
          t.serverChallenge = now();
          const challenge = Buffer.from(msg.args.test_string, "base64").toString("latin1");
          const stage2 = json({args: {encrypted_string: sign(key, challenge)}, id: AUTH_ID, name: "auth_ssl", namespace: "rpc"});
          ws.send(server + "\n" + b64(stage2));
        }
        return;
      }
      const msg = JSON.parse(unb64(body));
      if (!authorized && msg.id === AUTH_ID) {
        if (msg.name !== "response") return reject(new Error("the server refused the login: " + unb64(body)));
        authorized = true;
        t.authorized = now();
        const prefix = server + "\n";
        resolve({ws, send: (o) => ws.send(prefix + b64(json(o))), onReply: (fn) => { replyHandler = fn; }});
      } else if (replyHandler) {
        replyHandler(msg);
      }
    });
  });
}


async function authtime(tries, key, md5) {
  const out = {total_ms: [], open_ms: [], bridge_auth_ms: [], paired_ms: [], server_identify_ms: [], server_challenge_ms: []};
  for (let i = 0; i < tries; i++) {
    const t = {};
    const conn = await Promise.race([
      openBridged(key, md5, t),
      new Promise((_, reject) => setTimeout(() => reject(new Error("login took over 10 s")), 10000)),
    ]);
    out.total_ms.push(t.authorized - t.start);
    out.open_ms.push(t.open - t.start);
    out.bridge_auth_ms.push(t.bridgeAuth - t.start);
    out.paired_ms.push(t.paired - t.start);
    out.server_identify_ms.push(t.serverIdent - t.start);
    out.server_challenge_ms.push(t.serverChallenge - t.start);
    conn.ws.terminate();
    await new Promise((r) => setTimeout(r, 100));  // let both ends forget this client
  }
  console.log(json(out));
}

(async () => {
  if (mode === "authtime") {
    const key = fs.readFileSync(process.argv[5]);
    await authtime(parseInt(process.argv[4], 10), key, md5Of(key));
  } else if (mode === "direct" || mode === "bridge") {
    const [N, K, D] = [parseInt(process.argv[4], 10), parseInt(process.argv[5], 10), parseFloat(process.argv[6])];
    const key = fs.readFileSync(process.argv[7]);
    const md5 = md5Of(key);
    const open = mode === "direct" ? () => openDirect(key) : () => openBridged(key, md5);
    await load(open, N, K, D);
  } else {
    throw new Error("usage: loadgen_bridge.js direct|bridge URL CONNS INFLIGHT SECONDS KEY | authtime URL TRIES KEY");
  }
  process.exit(0);
})().catch((e) => { console.error(String(e && e.stack || e)); process.exit(1); });
