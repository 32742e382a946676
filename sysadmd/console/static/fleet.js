// Fleet: the agents of a bridge, seen and commanded from the browser with the user's own key
// (docs/protocol.md §8.1, §8.5, §8.6).  The key is imported into WebCrypto as non-extractable
// keys; it is kept in IndexedDB only when "Remember on this browser" is ticked, otherwise in
// this page's memory only; the key file's text is dropped once imported and never sent.
// Commands are sealed to each agent's key (checked against the agent's id) under a random
// content key kept in this page's memory until the result came (never stored, never sent
// but sealed), and signed; each result comes back encrypted under a key derived from that
// content key and is opened here.  The bridge sees ids, states and sealed text only.

import { ApiError, Connection, ConnectionClosed } from "./api.js";
import { dashboardPage } from "./dashboard.js";
import { h, field, formatTime, uid } from "./dom.js";
import { Relay, openAgentSession } from "./fleetsession.js";
import { agentKey, bridgeLoginSignature, fleetContext, importUserKey, isKeyed, newContentKey, openResult, seal,
  signCommand } from "./fleetcrypto.js";

const DB_NAME = "sysadmd-fleet";
const STORE = "keys";
const FINAL = new Set(["COMPLETE", "EXPIRED", "CANCELLED"]);
const WAIT_SECONDS = 30;
const MAX_OUTPUT_CHARS = 64 * 1024;
const URL_KEY = "sysadmd.fleet.bridge";

// The imported key of this page (memory), shared by the pages of one console tab.
let memoryKey = null;
// command id -> its content key (32 bytes), for the commands this page sent and has not yet
// read the result of: only this page and the agent can open (and make) a command's result.
const contentKeys = new Map();

function idb(mode, work) {
  return new Promise((resolve, reject) => {
    const opening = indexedDB.open(DB_NAME, 1);
    opening.onupgradeneeded = () => opening.result.createObjectStore(STORE);
    opening.onerror = () => reject(opening.error);
    opening.onsuccess = () => {
      const db = opening.result;
      const tx = db.transaction(STORE, mode);
      const request = work(tx.objectStore(STORE));
      tx.oncomplete = () => { db.close(); resolve(request ? request.result : undefined); };
      tx.onerror = () => { db.close(); reject(tx.error); };
    };
  });
}

const rememberedKey = () => idb("readonly", (store) => store.get("user")).catch(() => null);
const rememberKey = (key) => idb("readwrite", (store) => store.put(key, "user"));
const forgetKey = () => idb("readwrite", (store) => store.delete("user")).catch(() => {});

export function bridgeUrl(text) {
  let value = text.trim();
  if (!value) throw new Error("Bridge URL: enter the bridge's address, such as wss://HOST:12149");
  const scheme = /^([A-Za-z][A-Za-z0-9+.-]*):/.exec(value);
  if (scheme && scheme[1].toLowerCase() !== "wss" && value.startsWith(`${scheme[1]}:/`)) {
    throw new Error("Bridge URL: only wss:// addresses (a bridge speaks TLS WebSockets)");
  }
  if (!scheme || !value.startsWith(`${scheme[1]}:/`)) value = `wss://${value}`;
  let url;
  try { url = new URL(value); } catch (err) { throw new Error(`Bridge URL: ${value} is not an address`); }
  if (url.protocol !== "wss:" || !url.hostname) throw new Error(`Bridge URL: ${value} is not a wss:// address`);
  if (!url.port) url.port = "12149";
  return url.href;
}

// One authenticated client connection to a bridge.
export async function connectBridge(url, key) {
  const conn = new Connection(url);
  conn.requestHandler = (message) => {
    if (message.namespace === "rpc" && message.name === "identify") {
      conn.send({ args: { hostname: "sysadmd-console", type: "client" }, id: message.id, name: "response", namespace: "rpc" });
    } else if (message.namespace === "rpc" && message.name === "settings" && message.args && message.args.action === "list_ssl_checksums") {
      conn.send({ args: { md5_keys: [key.checksum] }, id: message.id, name: "response", namespace: "rpc" });
    }
  };
  conn.relay = new Relay(conn);  // before the login: the bridge lists our servers right after it
  await conn.open();
  try {
    const challenge = await conn.call("rpc", "auth_ssl", "");
    if (!challenge || typeof challenge.test_string !== "string") throw new Error("the bridge sent no test_string");
    const signature = await bridgeLoginSignature(key.sign, challenge.test_string);
    await conn.call("rpc", "auth_ssl", { encrypted_string: signature, scheme: "pkcs1-sha256" });
  } catch (err) {
    conn.close();
    throw err;
  }
  return conn;
}

function outputOf(result) {
  const reply = result && result.reply;
  if (reply && typeof reply === "object" && Array.isArray(reply.cmd_list)) {
    return reply.cmd_list.map((cmd) => String(reply[cmd] ?? "")).join("");
  }
  if (reply === undefined || reply === null) return "";
  return JSON.stringify(reply, null, 2);
}

// Run *command* on *agents* ({id, name, key}); calls show(agent, outcome) as each finishes.
export async function runOnAgents(conn, key, agents, command, show, ttl = 3600) {
  const payload = JSON.stringify({ commands: [command], kind: "job", timeout: 3600 });
  const commands = [];
  const byId = new Map();
  for (const agent of agents) {
    const keys = await agentKey(agent.key, agent.id);  // checked against the id before anything is sealed
    const id = crypto.randomUUID().replace(/-/g, "");
    const contentKey = newContentKey();
    const sealed = await seal(keys.encrypt, payload, fleetContext("command", id, agent.id), contentKey);
    commands.push({ id, agent: agent.id, payload: sealed, key: key.checksum,
      signature: await signCommand(key.sign, id, agent.id, sealed) });
    byId.set(id, agent);
    contentKeys.set(id, contentKey);
  }
  try {
    await conn.call("fleet", "execute", { commands, ttl });
  } catch (err) {
    for (const { id } of commands) forgetContentKey(id);
    throw err;
  }
  const outcomes = await Promise.all(commands.map(async ({ id }) => {
    const agent = byId.get(id);
    let outcome;
    try {
      let reply;
      do { reply = await conn.call("fleet", "wait", { id, timeout: WAIT_SECONDS }); } while (!FINAL.has(reply.status));
      outcome = await readResult(contentKeys.get(id), agent, reply);
      forgetContentKey(id);
    } catch (err) {
      outcome = { status: "UNKNOWN", outcome: "unknown", ok: false, error: err.message, output: "" };
    }
    show(agent, outcome);
    return outcome;
  }));
  return outcomes;
}

function forgetContentKey(id) {
  const contentKey = contentKeys.get(id);
  if (contentKey) contentKey.fill(0);
  contentKeys.delete(id);
}

async function readResult(contentKey, agent, reply) {
  const base = { status: reply.status, outcome: reply.status.toLowerCase(), ok: false, error: null, output: "", sealed: false };
  if (typeof reply.result !== "string") return base;
  let text = reply.result;
  if (isKeyed(text)) {
    if (!contentKey) return { ...base, outcome: "unverified", error: "this page no longer holds the command's key" };
    try {
      text = await openResult(contentKey, reply.id, agent.id, text);
    } catch (err) {
      return { ...base, outcome: "unverified", error: err.message };
    }
    base.sealed = true;
  } else if (text) {
    // Only an agent's refusal before it opened the payload comes in plaintext: shown, never counted as success.
    base.unverified = true;
  }
  let result;
  try { result = JSON.parse(text); } catch (err) { return { ...base, error: "the agent's result is not JSON" }; }
  if (!result || typeof result !== "object") return { ...base, error: "the agent's result is not an object" };
  const claimed = String(result.outcome || base.outcome);
  return { ...base, outcome: base.unverified && (result.ok === true || claimed === "succeeded") ? "unverified" : claimed,
    ok: reply.status === "COMPLETE" && result.ok === true && base.sealed,
    error: result.error || null, output: outputOf(result).slice(0, MAX_OUTPUT_CHARS), host: result.host };
}

export function fleetPage(ctx) {
  let conn = null;
  let key = memoryKey;
  let agents = new Map();  // id -> agent row from fleet/agents
  let refreshTimer = null;
  let stopped = false;
  let agentSession = null;  // { conn, page } of the agent dashboard open through the bridge
  const agentView = h("div", { id: "fleet-agent-view" });

  const status = h("p", { id: "fleet-status", class: "muted", role: "status" }, "");
  const say = (text, kind = "") => { status.textContent = text; status.className = kind === "error" ? "error-message" : "muted"; };

  const [urlLabel, urlInput] = field("Bridge URL", { type: "text", name: "bridge", autocomplete: "url", spellcheck: false,
    maxLength: 512, placeholder: "wss://HOST:12149", value: sessionStorage.getItem(URL_KEY) || "" });
  const [fileLabel, fileInput] = field("Key file", { type: "file", accept: ".pem,.key,text/plain" });
  const rememberId = uid("f");
  const remember = h("input", { type: "checkbox", id: rememberId });
  const keyNote = h("p", { id: "fleet-key", class: "muted" }, "No key imported.");
  const forget = h("button", { type: "button", disabled: true, onclick: async () => {
    memoryKey = key = null;
    await forgetKey();
    keyNote.textContent = "Key forgotten.";
    forget.disabled = true;
  } }, "Forget key");
  const connect = h("button", { type: "submit" }, "Connect");

  const showKey = (from) => {
    keyNote.textContent = key ? `Key ${key.checksum} (${from}).` : "No key imported.";
    forget.disabled = !key;
  };

  fileInput.addEventListener("change", async () => {
    const file = fileInput.files && fileInput.files[0];
    if (!file) return;
    try {
      if (file.size > 64 * 1024) throw new Error("the key file is over 64 KiB: not a key");
      const imported = await importUserKey(await file.text());
      memoryKey = key = imported;
      if (remember.checked) { await rememberKey(imported); showKey("remembered on this browser"); }
      else { await forgetKey(); showKey("this page only"); }
      say("");
    } catch (err) {
      say(`Key file: ${err.message}`, "error");
    } finally {
      fileInput.value = "";  // the file's text is not kept
    }
  });

  const tbody = h("tbody", {});
  const table = h("table", { class: "table", id: "fleet-agents", "aria-label": "Agents" },
    h("thead", {}, h("tr", {}, ["Select", "Name", "ID", "Online", "Last seen", "Pending", "Session"].map((t) => h("th", { scope: "col" }, t)))),
    tbody);
  const selected = new Set();
  const checkboxes = new Map();

  function renderAgents() {
    // Rows are rebuilt at each change: keep the keyboard focus on the same control.
    const focused = tbody.contains(document.activeElement) ? document.activeElement.getAttribute("aria-label") : null;
    checkboxes.clear();
    const rows = [...agents.values()].sort((a, b) => (a.name || "").localeCompare(b.name || "") || a.id.localeCompare(b.id));
    tbody.replaceChildren(...rows.map((agent) => {
      const box = h("input", { type: "checkbox", checked: selected.has(agent.id), "aria-label": `Select ${agent.name}`,
        onchange: () => { if (box.checked) selected.add(agent.id); else selected.delete(agent.id); } });
      checkboxes.set(agent.id, box);
      const open = agent.online
        ? h("button", { type: "button", "aria-label": `Open dashboard of ${agent.name}`, onclick: () => openDashboard(agent) },
          "Open dashboard")
        : null;
      return h("tr", { dataset: { agent: agent.id, online: agent.online ? "yes" : "no" } },
        h("td", {}, box), h("td", {}, agent.name || "?"), h("td", { class: "mono", title: agent.id }, agent.id.slice(0, 12)),
        h("td", { class: agent.online ? "ok" : "muted" }, agent.online ? "online" : "offline"),
        h("td", {}, formatTime(agent.last_seen)), h("td", {}, String(agent.pending ?? 0)), h("td", {}, open));
    }));
    if (!rows.length) tbody.append(h("tr", {}, h("td", { colSpan: 7, class: "muted" }, conn ? "No agents paired with this key." : "Connect to a bridge to see its agents.")));
    if (focused) {
      const again = [...tbody.querySelectorAll("[aria-label]")].find((el) => el.getAttribute("aria-label") === focused);
      if (again) again.focus();
    }
  }

  async function refresh() {
    if (!conn || stopped) return;
    try {
      const reply = await conn.call("fleet", "agents", {});
      agents = new Map((reply.agents || []).map((a) => [a.id, a]));
      for (const id of [...selected]) if (!agents.has(id)) selected.delete(id);
      renderAgents();
      if (reply.store_ok === false) say("The bridge cannot write its store: new commands are refused.", "error");
    } catch (err) {
      if (!(err instanceof ConnectionClosed)) say(`fleet/agents: ${err.message}`, "error");
    }
  }

  function closeDashboard() {
    if (!agentSession) return;
    const { conn: session, page } = agentSession;
    agentSession = null;
    if (page) page.stop();
    session.close();
    agentView.replaceChildren();
  }

  // The console's own dashboard, over an end-to-end session with *agent* through the bridge.
  async function openDashboard(agent) {
    if (!conn || !key) return;
    closeDashboard();
    say(`Opening an end-to-end session with ${agent.name} through the bridge…`);
    let session;
    try {
      session = await openAgentSession(conn.relay, key, agents.get(agent.id) || agent);  // its current connection
      const [query, identity] = await Promise.all([session.call("rpc", "query", {}), session.call("rpc", "identify", {})]);
      if (stopped) { session.close(); return; }
      const rights = query || {};
      const agentCtx = {
        conn: session,
        full: rights["rpc/dispatcher"] === "read/write",
        has: (name) => Object.prototype.hasOwnProperty.call(rights, name),
        rights: (name) => rights[name],
        token: () => null,
        call: (namespace, name, args) => session.call(namespace, name, args),
        navigate() {},
        replaceHash() {},
        setHostname() {},
        report(err) { if (!(err instanceof ConnectionClosed)) console.warn("sysadmd console (agent):", err.message); },
      };
      const page = dashboardPage(agentCtx);
      agentSession = { conn: session, page };
      session.onClose((closed) => {
        if (agentSession && agentSession.conn === session) {
          agentSession.page.stop();
          agentSession = null;
          agentView.replaceChildren(h("p", { class: "error-message" }, `The session with ${agent.name} ended: ${closed.message}`));
        }
      });
      agentView.replaceChildren(h("section", { class: "card agent-view", "aria-label": `Agent ${agent.name}`,
        dataset: { agent: agent.id } },
        h("div", { class: "actions" }, h("h2", {}, `${agent.name} (${(identity && identity.hostname) || "?"}), ` +
          "through the bridge, end-to-end encrypted"), h("button", { type: "button", onclick: closeDashboard }, "Close dashboard")),
        page.el));
      say(`Session with ${agent.name}: server key checked against its id ${agent.id.slice(0, 12)}` +
        `${session.serverConnectionId ? ", bound to its bridge connection" : ""}.`);
      agentView.scrollIntoView({ block: "start" });
    } catch (err) {
      if (session) session.close();
      say(`Cannot open ${agent.name}'s dashboard: ${err.message}`, "error");
    }
  }

  function refreshSoon() {
    if (refreshTimer) return;
    refreshTimer = setTimeout(() => { refreshTimer = null; refresh(); }, 200);
  }

  function fleetEvent(args) {
    if (!args || typeof args !== "object") return;
    if (args.kind === "agent" && agents.has(args.agent)) {
      const agent = agents.get(args.agent);
      agent.online = !!args.online;
      if (typeof args.ts === "number") agent.last_seen = args.ts;
      renderAgents();
    }
    if (args.kind === "store") say(args.ok ? "" : `The bridge's store failed: ${args.error || "unknown error"}`, args.ok ? "" : "error");
    refreshSoon();
  }

  const form = h("form", { class: "card inline-form", "aria-label": "Bridge" },
    urlLabel, urlInput, fileLabel, fileInput,
    h("div", { class: "check" }, remember, h("label", { for: rememberId }, "Remember on this browser")),
    keyNote, h("div", { class: "actions" }, connect, forget));
  keyNote.classList.add("form-message");
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    let url;
    try { url = bridgeUrl(urlInput.value); } catch (err) { say(err.message, "error"); return; }
    if (!key) { say("Key file: import your key first (the file `sysadm key generate` wrote).", "error"); return; }
    connect.disabled = true;
    say(`Connecting to ${url}…`);
    try {
      closeDashboard();
      if (conn) conn.close();
      conn = await connectBridge(url, key);
      sessionStorage.setItem(URL_KEY, urlInput.value.trim());
      conn.on("fleet", fleetEvent);
      conn.onClose((closed) => { if (!stopped) say(`The bridge closed the connection: ${closed.message}`, "error"); conn = null; });
      say(`Connected to ${url}.`, "ok");
      await refresh();
    } catch (err) {
      conn = null;
      if (err instanceof ApiError) say("The bridge refused the key (is it registered there as a client key?).", "error");
      else say(`Cannot connect to ${url}: ${err.message}`, "error");
    } finally {
      connect.disabled = false;
    }
  });

  const [commandLabel, commandInput] = field("Command", { type: "text", name: "command", maxLength: 4096, spellcheck: false,
    placeholder: "uptime" });
  const results = h("ul", { class: "fleet-results", id: "fleet-results", "aria-label": "Results" });
  const summary = h("p", { id: "fleet-summary", role: "status" }, "");
  const allOnline = h("button", { type: "button", onclick: () => {
    selected.clear();
    for (const agent of agents.values()) if (agent.online) selected.add(agent.id);
    for (const [id, box] of checkboxes) box.checked = selected.has(id);
  } }, "All online");
  const run = h("button", { type: "submit" }, "Run on selected");
  const runForm = h("form", { class: "card run-form", "aria-label": "Run a command" }, commandLabel, commandInput,
    h("div", { class: "actions" }, allOnline, run));
  runForm.addEventListener("submit", async (event) => {
    event.preventDefault();
    const command = commandInput.value.trim();
    const targets = [...selected].map((id) => agents.get(id)).filter(Boolean);
    if (!conn) { say("Connect to a bridge first.", "error"); return; }
    if (!command) { say("Command: enter a command line to run.", "error"); return; }
    if (!targets.length) { say("Select one agent or more (or All online).", "error"); return; }
    run.disabled = true;
    results.replaceChildren();
    summary.textContent = `Running on ${targets.length} agent${targets.length > 1 ? "s" : ""}…`;
    const show = (agent, outcome) => {
      results.append(h("li", { class: `card result ${outcome.ok ? "ok" : "failed"}`, dataset: { agent: agent.id } },
        h("h3", {}, `${agent.name}: ${outcome.status} ${outcome.outcome}${outcome.unverified ? " (unsealed, not verified)" : ""}`),
        outcome.error ? h("p", { class: "error-message" }, outcome.error) : null,
        h("pre", { class: "output", tabIndex: 0, "aria-label": `Output of ${agent.name}` }, outcome.output)));
    };
    try {
      const outcomes = await runOnAgents(conn, key, targets, command, show);
      const good = outcomes.filter((o) => o.ok).length;
      summary.textContent = `${good} of ${outcomes.length} succeeded` +
        (good < outcomes.length ? `, ${outcomes.length - good} failed` : "") + ".";
    } catch (err) {
      summary.textContent = `Not run: ${err.message}`;
    } finally {
      run.disabled = false;
      refreshSoon();
    }
  });

  const el = h("section", { class: "page" },
    h("h1", { tabIndex: -1 }, "Fleet"),
    h("p", { class: "muted" }, "Your key stays in this browser: it signs the bridge login and your commands, " +
      "which are sealed to each agent; the bridge sees only ids and sealed text."),
    form, status,
    h("section", { "aria-label": "Agents" }, h("h2", {}, "Agents"), h("div", { class: "table-wrap" }, table)),
    agentView, runForm, summary, results);

  if (key) showKey("this page only");
  else {
    rememberedKey().then((saved) => {
      if (stopped || key || !saved || !saved.sign) return;
      memoryKey = key = saved;
      remember.checked = true;
      showKey("remembered on this browser");
    });
  }
  renderAgents();
  return {
    el,
    stop() {
      stopped = true;
      closeDashboard();
      if (refreshTimer) clearTimeout(refreshTimer);
      if (conn) conn.close();
      conn = null;
    },
  };
}
