// Load generator for the rpc benchmarks: N WebSocket connections, each keeping K
// requests in flight for D seconds. Written for Node so the client side costs far less
// CPU than the Python server under test.
//
// usage: node loadgen.js URL CONNECTIONS INFLIGHT SECONDS [PRIVATE_KEY_PEM]
// With a key, each connection logs in with rpc/auth_ssl first (raw PKCS#1 v1.5
// signature of the challenge, what crypto.privateEncrypt does).
// Prints one JSON line: {"requests":…, "seconds":…, "p50_ms":…, "p99_ms":…, "errors":…}
"use strict";
const WebSocket = require("ws");
const crypto = require("crypto");
const fs = require("fs");

const [url, conns, inflight, seconds, keyFile] = process.argv.slice(2);
const N = parseInt(conns, 10), K = parseInt(inflight, 10), D = parseFloat(seconds);
const key = keyFile ? fs.readFileSync(keyFile) : null;
// LOADGEN_REQUEST='{"namespace":…,"name":…,"args":…}' replaces the default rpc/query.
const shape = process.env.LOADGEN_REQUEST ? JSON.parse(process.env.LOADGEN_REQUEST) : {namespace: "rpc", name: "query", args: {}};
const request = (id) => JSON.stringify(Object.assign({}, shape, {id: id}));

let done = 0, errors = 0, measuring = false, stopAt = 0;
const latencies = [];

function open(i) {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(url, {rejectUnauthorized: false, perMessageDeflate: false});
    ws.on("error", reject);
    ws.on("open", () => {
      if (!key) return resolve(ws);
      ws.once("message", (data) => {
        const challenge = JSON.parse(data.toString()).args.test_string;
        const sig = crypto.privateEncrypt({key: key, padding: crypto.constants.RSA_PKCS1_PADDING}, Buffer.from(challenge, "latin1"));
        ws.once("message", (data2) => {
          const reply = JSON.parse(data2.toString());
          if (reply.name === "error") return reject(new Error("login refused: " + data2));
          resolve(ws);
        });
        ws.send(JSON.stringify({namespace: "rpc", name: "auth_ssl", id: "s2", args: {encrypted_string: sig.toString("base64")}}));
      });
      ws.send(JSON.stringify({namespace: "rpc", name: "auth_ssl", id: "s1", args: ""}));
    });
  });
}

function drive(ws, c) {
  const sent = new Map();
  let seq = 0;
  const fire = () => {
    const id = `${c}-${seq++}`;
    sent.set(id, process.hrtime.bigint());
    ws.send(request(id));
  };
  ws.on("message", (data) => {
    const reply = JSON.parse(data.toString());
    const t0 = sent.get(reply.id);
    if (t0 === undefined) return;
    sent.delete(reply.id);
    if (reply.name === "error") errors++;
    if (measuring) {
      done++;
      latencies.push(Number(process.hrtime.bigint() - t0) / 1e6);
    }
    if (Date.now() < stopAt) fire();
  });
  for (let k = 0; k < K; k++) fire();
}

(async () => {
  const sockets = [];
  for (let i = 0; i < N; i++) sockets.push(await open(i));
  stopAt = Date.now() + (D + 1) * 1000;
  sockets.forEach((ws, c) => drive(ws, c));
  await new Promise((r) => setTimeout(r, 1000));  // warm-up second, not counted
  measuring = true;
  const t0 = Date.now();
  await new Promise((r) => setTimeout(r, D * 1000));
  measuring = false;
  const elapsed = (Date.now() - t0) / 1000;
  latencies.sort((a, b) => a - b);
  const pct = (p) => latencies.length ? latencies[Math.min(latencies.length - 1, Math.floor(latencies.length * p))] : null;
  console.log(JSON.stringify({requests: done, seconds: elapsed, p50_ms: pct(0.5), p99_ms: pct(0.99), errors: errors}));
  await new Promise((r) => setTimeout(r, 300));
  sockets.forEach((ws) => ws.terminate());
  process.exit(0);
})().catch((e) => { console.error(String(e)); process.exit(1); });
