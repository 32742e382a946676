// The measuring loop shared by the Node load generators (loadgen.js, loadgen_bridge.js,
// loadgen_e2e.js): N connections, each keeping K requests (rpc/query unless *shape* says
// otherwise) in flight for D seconds after one warm-up second that is not counted.
//
// A connection is {ws, send(obj), onReply(fn)}: send writes one request, onReply registers
// the handler for every decoded reply.  load() prints one JSON line,
// {"requests","seconds","p50_ms","p90_ms","p99_ms","errors", ...extra(conns)}, then closes
// the connections.
"use strict";

const now = () => Number(process.hrtime.bigint()) / 1e6;  // ms

function pct(sorted, p) {
  return sorted.length ? sorted[Math.min(sorted.length - 1, Math.floor(sorted.length * p))] : null;
}

const RPC_QUERY = {namespace: "rpc", name: "query", args: {}};

async function load(open, N, K, D, extra = () => ({}), shape = RPC_QUERY) {
  const conns = [];
  for (let i = 0; i < N; i++) conns.push(await open());
  let done = 0, errors = 0, measuring = false;
  const latencies = [];
  const stopAt = Date.now() + (D + 1) * 1000;
  conns.forEach((conn, c) => {
    const sent = new Map();
    let seq = 0;
    const fire = () => {
      const id = `${c}-${seq++}`;
      sent.set(id, now());
      conn.send(Object.assign({}, shape, {id: id}));
    };
    conn.onReply((reply) => {
      const t0 = sent.get(reply.id);
      if (t0 === undefined) return;
      sent.delete(reply.id);
      if (reply.name === "error") errors++;
      if (measuring) { done++; latencies.push(now() - t0); }
      if (Date.now() < stopAt) fire();
    });
    for (let k = 0; k < K; k++) fire();
  });
  await new Promise((r) => setTimeout(r, 1000));  // warm-up second, not counted
  measuring = true;
  const t0 = Date.now();
  await new Promise((r) => setTimeout(r, D * 1000));
  measuring = false;
  const seconds = (Date.now() - t0) / 1000;
  latencies.sort((a, b) => a - b);
  console.log(JSON.stringify(Object.assign({requests: done, seconds, p50_ms: pct(latencies, 0.5),
                                            p90_ms: pct(latencies, 0.9), p99_ms: pct(latencies, 0.99), errors},
                                           extra(conns))));
  await new Promise((r) => setTimeout(r, 300));
  conns.forEach((conn) => conn.ws.terminate());
}

module.exports = {now, pct, load};
