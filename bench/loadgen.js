// Load generator for the rpc benchmarks: N WebSocket connections, each keeping K
// requests in flight for D seconds. Written for Node so the client side costs far less
// CPU than the Python server under test.
//
// usage: node loadgen.js URL CONNECTIONS INFLIGHT SECONDS [PRIVATE_KEY_PEM]
// With a key, each connection logs in with rpc/auth_ssl first (raw PKCS#1 v1.5
// signature of the challenge, what crypto.privateEncrypt does).
// LOADGEN_REQUEST='{"namespace":…,"name":…,"args":…}' replaces the default rpc/query.
// Prints one JSON line (loadgen_common.js): {"requests","seconds","p50_ms","p90_ms","p99_ms","errors"}
"use strict";
const WebSocket = require("ws");
const crypto = require("crypto");
const fs = require("fs");
const {load} = require("./loadgen_common");

const [url, conns, inflight, seconds, keyFile] = process.argv.slice(2);
const N = parseInt(conns, 10), K = parseInt(inflight, 10), D = parseFloat(seconds);
const key = keyFile ? fs.readFileSync(keyFile) : null;
const shape = process.env.LOADGEN_REQUEST ? JSON.parse(process.env.LOADGEN_REQUEST) : undefined;

// A connection ready for requests (logged in first when there is a key).
function open() {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(url, {rejectUnauthorized: false, perMessageDeflate: false});
    const ready = () => {
      let replyHandler = null;
      ws.on("message", (data) => { if (replyHandler) replyHandler(JSON.parse(data.toString())); });
      resolve({ws, send: (o) => ws.send(JSON.stringify(o)), onReply: (fn) => { replyHandler = fn; }});
    };
    ws.on("error", reject);
    ws.on("open", () => {
      if (!key) return ready();
      ws.once("message", (data) => {
        const challenge = JSON.parse(data.toString()).args.test_string;
        const sig = crypto.privateEncrypt({key: key, padding: crypto.constants.RSA_PKCS1_PADDING}, Buffer.from(challenge, "latin1"));
        ws.once("message", (data2) => {
          const reply = JSON.parse(data2.toString());
          if (reply.name === "error") return reject(new Error("login refused: " + data2));
          ready();
        });
        ws.send(JSON.stringify({namespace: "rpc", name: "auth_ssl", id: "s2", args: {encrypted_string: sig.toString("base64")}}));
      });
      ws.send(JSON.stringify({namespace: "rpc", name: "auth_ssl", id: "s1", args: ""}));
    });
  });
}

(async () => {
  await load(open, N, K, D, undefined, shape);
  process.exit(0);
})().catch((e) => { console.error(String(e && e.stack || e)); process.exit(1); });
