// Supervised programs (sysadm/supervisor): a table of every program (state, pid, uptime,
// restarts) kept current by supervisor events; Start/Stop/Restart/Repair (full access);
// a program's output, its current run's job log followed live with joblog.js (a new run
// is followed as it starts); "Add program" pushes a JSON definition and shows the
// server's message, which names the field that is wrong.

import { h, uid, formatDuration } from "./dom.js";
import { followLog } from "./joblog.js";

const LIVE = new Set(["STARTING", "RUNNING", "STOPPING"]);
const UPTIME_STATES = new Set(["RUNNING", "STOPPING"]);
const MAX_OUTPUT_CHARS = 2000000;  // the view drops its oldest text beyond this
const TEMPLATE = '{\n  "command": ["/bin/sh", "-c", "echo hello; sleep 3600"],\n  "user": "root",\n  "autostart": false\n}';

function uptimeOf(p) {
  if (!UPTIME_STATES.has(p.state) || typeof p.uptime !== "number") return "";
  return formatDuration(p.uptime + (Date.now() - p.fetched) / 1000);
}

function outputView(ctx, name) {
  const state = h("p", { class: "muted", role: "status", id: "program-output-state" }, "Looking for its run…");
  const jobLink = h("p", {});
  const output = h("pre", { class: "output", id: "program-output", tabIndex: 0, "aria-label": `Output of ${name}` });
  const close = h("button", { type: "button" }, "Close output");
  const el = h("section", { class: "card program-output", "aria-label": `Output of ${name}`, dataset: { program: name } },
    h("h2", {}, `Output of ${name}`), jobLink, output, state, h("div", { class: "actions" }, close));
  let follower = null;
  let job = null;
  let chars = 0;
  const append = (text) => {
    if (!text) return;
    const atBottom = output.scrollHeight - output.scrollTop - output.clientHeight < 40;
    output.append(document.createTextNode(text));
    chars += text.length;
    while (chars > MAX_OUTPUT_CHARS && output.firstChild) {
      chars -= output.firstChild.textContent.length;
      output.firstChild.remove();
    }
    if (atBottom) output.scrollTop = output.scrollHeight;
  };
  const stopFollowing = () => { if (follower) { follower.stop(); follower = null; } };
  // Follow the output of run *id* (the program's current or last job); a new id starts over.
  const follow = (id) => {
    if (typeof id !== "number" || id === job) return;
    stopFollowing();
    if (job !== null) append(`\n--- a new run: job ${id} ---\n`);
    job = id;
    el.dataset.job = String(id);
    jobLink.replaceChildren(h("a", { href: `#/jobs/${id}` }, `Job ${id}`), " (this run's job page)");
    state.textContent = "Following the output…";
    delete output.dataset.eof;
    follower = followLog(ctx, id, append,
      (err) => { state.textContent = `The output cannot be read: ${err.message}`; },
      (chunk) => {
        state.textContent = `This run has ended (${chunk.size} bytes of output).`;
        output.dataset.eof = "true";
      },
      (chunk) => { if (!chunk.eof) state.textContent = chunk.finished ? "" : "Following the output…"; });
  };
  const noRun = () => { if (job === null) state.textContent = `${name} has not run yet.`; };
  return { el, close, follow, noRun, stop: stopFollowing };
}

function addForm(ctx, done) {
  const nameId = uid("f");
  const defId = uid("f");
  const name = h("input", { id: nameId, type: "text", required: true, maxLength: 64, autocomplete: "off",
    spellcheck: false });
  const text = h("textarea", { id: defId, rows: 7, required: true, spellcheck: false, class: "definition",
    value: TEMPLATE });
  const message = h("p", { class: "form-message", id: "add-program-message", role: "alert" });
  const submit = h("button", { type: "submit" }, "Add program");
  const form = h("form", { class: "card add-program", "aria-label": "Add a program" },
    h("h2", {}, "Add program"),
    h("div", { class: "stack" }, h("label", { for: nameId }, "Program name"), name,
      h("label", { for: defId }, "Definition (JSON)"), text),
    h("div", { class: "actions" }, submit), message);
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    message.className = "form-message error-text";
    let data;
    try {
      data = JSON.parse(text.value);
    } catch (err) {
      message.textContent = `Definition (JSON): not JSON: ${err.message}`;
      return;
    }
    if (!data || typeof data !== "object" || Array.isArray(data)) {
      message.textContent = "Definition (JSON): must be a JSON object such as the example.";
      return;
    }
    const job = name.value.trim() || (typeof data.name === "string" ? data.name : "");
    if (!job) { message.textContent = "Program name: give the program a name."; return; }
    submit.disabled = true;
    message.textContent = `Storing ${job}…`;
    try {
      const reply = await ctx.call("sysadm", "supervisor", { action: "push", job, data });
      message.className = "form-message";
      message.textContent = reply.result === "redundant" ? `${job}: identical to the stored definition.`
        : `${job} stored. A running program keeps its old definition until it is restarted.`;
      done(job);
    } catch (err) {
      message.textContent = `Could not add ${job}: ${err.message}`;
    } finally {
      submit.disabled = false;
    }
  });
  return form;
}

export function supervisorPage(ctx) {
  const writable = ctx.full && ctx.rights("sysadm/supervisor") === "read/write";
  const status = h("p", { class: "muted", role: "status", id: "supervisor-status" }, "Loading programs…");
  const tbody = h("tbody");
  const tableEl = h("div", { class: "table-wrap" }, h("table", { "aria-label": "Programs" },
    h("thead", {}, h("tr", {}, ["Name", "State", "PID", "Uptime", "Restarts", "Actions"].map((c) =>
      h("th", { scope: "col" }, c)))), tbody));
  const outputHolder = h("div");
  const el = h("section", { class: "page" }, h("h1", { tabIndex: -1 }, "Supervisor"), status, tableEl,
    outputHolder, writable ? addForm(ctx, (job) => { load(); showOutput(job, false); }) : null);

  const programs = new Map();  // name -> {status…, fetched, row, cells, buttons}
  let shown = null;  // the output view
  let stopped = false;

  const showOutput = (name, focus = true) => {
    if (shown && shown.el.dataset.program === name) return;
    if (shown) shown.stop();
    shown = outputView(ctx, name);
    shown.close.addEventListener("click", () => { shown.stop(); shown = null; outputHolder.replaceChildren(); });
    outputHolder.replaceChildren(shown.el);
    const p = programs.get(name);
    if (p && typeof p.job === "number") shown.follow(p.job);
    else shown.noRun();
    if (focus) shown.el.scrollIntoView({ block: "nearest" });
  };

  const act = async (verb, name) => {
    status.textContent = `${verb} ${name}…`;
    try {
      let reply;
      if (verb === "restart") {
        await ctx.call("sysadm", "supervisor", { action: "stop", job: name });
        reply = await ctx.call("sysadm", "supervisor", { action: "start", job: name });
      } else {
        reply = await ctx.call("sysadm", "supervisor", { action: verb, job: name });
      }
      status.textContent = reply.result === "redundant" ? `${name}: nothing to ${verb} (already so).` : `${name}: ${verb} done.`;
    } catch (err) {
      status.textContent = `${name}: ${verb} failed: ${err.message}`;
    }
    refresh(name);
  };

  const newRow = (name) => {
    const cells = { state: h("td"), pid: h("td"), uptime: h("td"), restarts: h("td") };
    const buttons = {};
    const actions = h("td", { class: "actions" });
    if (writable) {
      for (const [verb, label] of [["start", "Start"], ["stop", "Stop"], ["restart", "Restart"], ["repair", "Repair"]]) {
        buttons[verb] = h("button", { type: "button", "aria-label": `${label} ${name}`, onclick: () => act(verb, name) }, label);
        actions.append(buttons[verb]);
      }
    }
    actions.append(h("button", { type: "button", "aria-label": `Output of ${name}`, onclick: () => showOutput(name) }, "Output"));
    const row = h("tr", { dataset: { program: name } }, h("th", { scope: "row" }, name),
      cells.state, cells.pid, cells.uptime, cells.restarts, actions);
    return { row, cells, buttons };
  };

  const paint = (p) => {
    p.cells.state.textContent = p.state + (p.error && !LIVE.has(p.state) ? ` (${p.error})` : "");
    p.cells.pid.textContent = p.pid ? String(p.pid) : "";
    p.cells.uptime.textContent = uptimeOf(p);
    p.cells.restarts.textContent = String(p.restarts ?? 0);
    p.row.dataset.state = p.state;
    if (p.buttons.start) {
      p.buttons.start.disabled = LIVE.has(p.state);
      p.buttons.stop.disabled = !LIVE.has(p.state) && p.state !== "BACKOFF";
      p.buttons.repair.disabled = p.state !== "FATAL" && p.state !== "BACKOFF";
    }
    if (shown && shown.el.dataset.program === p.name && typeof p.job === "number") shown.follow(p.job);
  };

  const put = (data) => {
    let p = programs.get(data.name);
    if (!p) {
      p = { name: data.name, ...newRow(data.name) };
      programs.set(data.name, p);
      const names = [...programs.keys()].sort();
      const next = names[names.indexOf(data.name) + 1];
      tbody.insertBefore(p.row, next ? programs.get(next).row : null);
    }
    Object.assign(p, data);
    if ("uptime" in data) p.fetched = Date.now();  // an event carries none: the last status' figure stands
    paint(p);
  };

  const load = async () => {
    try {
      const reply = await ctx.call("sysadm", "supervisor", { action: "list" });
      if (stopped) return;
      const listed = reply.programs || [];
      const names = new Set(listed.map((p) => p.name));
      for (const [name, p] of programs) {
        if (!names.has(name)) { p.row.remove(); programs.delete(name); }
      }
      for (const p of listed) put(p);
      status.textContent = listed.length ? `${listed.length} program${listed.length === 1 ? "" : "s"}` : "No programs yet." + (writable ? " Add one below." : "");
      tableEl.dataset.loaded = "true";
    } catch (err) {
      status.textContent = `Could not list the programs: ${err.message}`;
    }
  };

  const refresh = async (name) => {
    try {
      const reply = await ctx.call("sysadm", "supervisor", { action: "status", job: name });
      if (!stopped && reply.data) put(reply.data);
    } catch (err) {
      if (err.code === "404") load();  // deleted meanwhile
      else ctx.report(err);
    }
  };

  const stopListening = ctx.conn.on("supervisor", (event) => {
    if (!event || typeof event.program !== "string") return;
    const p = programs.get(event.program);
    if (!p) { load(); return; }
    put({ name: event.program, state: event.state, pid: event.pid, error: event.error || p.error });
    refresh(event.program);  // restarts, uptime and the run's job come with its status
  });
  ctx.call("events", "subscribe", ["supervisor"]).catch((err) => ctx.report(err));
  const ticker = setInterval(() => {
    for (const p of programs.values()) if (UPTIME_STATES.has(p.state)) p.cells.uptime.textContent = uptimeOf(p);
  }, 1000);
  load();

  return {
    el,
    stop() { stopped = true; stopListening(); clearInterval(ticker); if (shown) shown.stop(); },
  };
}
