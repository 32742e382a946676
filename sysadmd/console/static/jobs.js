// Jobs: a virtualised table of every job (core/get_jobs, kept current by jobs events), a
// job's page with its output followed live (core/job_log follow, every byte), kill, and
// the Command field that starts a job (rpc/dispatcher run).

import { h, field, formatDuration, formatTime } from "./dom.js";
import { followLog } from "./joblog.js";

const ROW_HEIGHT = 36;
const PAGE = 1000;
const MAX_JOBS = 100000;
const SELECT = ["id", "state", "progress.percent", "owner.user", "time_created", "time_started",
  "time_finished", "commands", "method", "outcome"];
const LIVE = new Set(["WAITING", "RUNNING"]);

function commandText(job) {
  return job.commands && job.commands.length ? job.commands.join(" ; ") : (job.method || "");
}

function duration(job) {
  if (!job.time_started) return "";
  const end = job.time_finished || Date.now() / 1000;
  return formatDuration(end - job.time_started);
}

function progressBar(job, label) {
  const percent = job.progress && typeof job.progress.percent === "number" ? job.progress.percent : null;
  const bar = h("progress", { max: 100, "aria-label": label });
  if (percent !== null) bar.value = percent;
  else if (!LIVE.has(job.state)) bar.value = 100;
  else bar.removeAttribute("value");  // indeterminate while running without a figure
  return bar;
}

function runForm(ctx) {
  const [label, input] = field("Command", { type: "text", name: "command", autocomplete: "off",
    placeholder: "echo hello", required: true, maxLength: 4096 });
  const message = h("p", { class: "form-message", role: "status" });
  const button = h("button", { type: "submit" }, "Run");
  const form = h("form", { class: "run-form", "aria-label": "Run a command" }, label, input, button, message);
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const command = input.value.trim();
    if (!command) { message.textContent = "Type a command first."; return; }
    const jobId = `console-${Date.now().toString(36)}-${Math.random().toString(36).slice(2, 8)}`;
    button.disabled = true;
    message.textContent = "Starting…";
    try {
      await ctx.call("rpc", "dispatcher", { action: "run", [jobId]: command });
      let job = null;
      for (let attempt = 0; attempt < 20 && !job; attempt++) {
        const found = await ctx.call("core", "get_jobs", [[["dispatcher_id", "=", jobId]], { limit: 1, select: ["id"] }]);
        if (found.length) job = found[0];
        else await new Promise((resolve) => setTimeout(resolve, 100));
      }
      if (!job) throw new Error("the job started but does not show in the job table yet; look in the list");
      message.textContent = "";
      ctx.navigate(`#/jobs/${job.id}`);
    } catch (err) {
      message.textContent = `Could not run it: ${err.message}`;
    } finally {
      button.disabled = false;
    }
  });
  return form;
}

export function jobsPage(ctx) {
  const jobs = new Map();
  let order = [];  // ids, newest first
  const status = h("p", { class: "muted", role: "status" }, "Loading jobs…");
  const columns = ["ID", "State", "Progress", "Owner", "Command", "Started", "Duration"];
  const header = h("div", { class: "vrow vhead", role: "row" },
    columns.map((name) => h("div", { class: "vcell", role: "columnheader" }, name)));
  const spacer = h("div", { class: "vspacer", role: "rowgroup" });
  const body = h("div", { class: "vbody", tabIndex: 0, "aria-label": "Job rows" }, spacer);
  const table = h("div", { class: "vtable", role: "table", "aria-label": "Jobs" },
    h("div", { role: "rowgroup" }, header), body);
  const el = h("section", { class: "page" }, h("h1", { tabIndex: -1 }, "Jobs"),
    ctx.full ? runForm(ctx) : null, status, table);

  let scheduled = false;
  const render = () => {
    scheduled = false;
    spacer.style.height = `${order.length * ROW_HEIGHT}px`;
    table.setAttribute("aria-rowcount", String(order.length + 1));
    const first = Math.max(0, Math.floor(body.scrollTop / ROW_HEIGHT) - 5);
    const last = Math.min(order.length, first + Math.ceil((body.clientHeight || 600) / ROW_HEIGHT) + 10);
    const rows = [];
    for (let i = first; i < last; i++) {
      const job = jobs.get(order[i]);
      const row = h("div", { class: `vrow state-${String(job.state).toLowerCase()}`, role: "row",
        dataset: { jobId: String(job.id) } },
        h("div", { class: "vcell", role: "cell" }, h("a", { href: `#/jobs/${job.id}` }, String(job.id))),
        h("div", { class: "vcell", role: "cell" }, job.state),
        h("div", { class: "vcell", role: "cell" }, progressBar(job, `Progress of job ${job.id}`)),
        h("div", { class: "vcell", role: "cell" }, (job.owner && job.owner.user) || ""),
        h("div", { class: "vcell cmd", role: "cell", title: commandText(job) }, commandText(job)),
        h("div", { class: "vcell", role: "cell" }, formatTime(job.time_started || job.time_created)),
        h("div", { class: "vcell", role: "cell" }, duration(job)));
      row.setAttribute("aria-rowindex", String(i + 2));
      row.style.top = `${i * ROW_HEIGHT}px`;
      rows.push(row);
    }
    spacer.replaceChildren(...rows);
  };
  const schedule = () => { if (!scheduled) { scheduled = true; requestAnimationFrame(render); } };
  body.addEventListener("scroll", schedule, { passive: true });
  window.addEventListener("resize", schedule);
  const ticker = setInterval(() => {
    if (order.some((id, i) => i < 200 && LIVE.has(jobs.get(id).state))) schedule();
  }, 1000);

  const put = (job) => {
    const known = jobs.has(job.id);
    jobs.set(job.id, { ...(jobs.get(job.id) || {}), ...job });
    if (!known) {
      if (!order.length || job.id > order[0]) order.unshift(job.id);
      else {
        let lo = 0, hi = order.length;
        while (lo < hi) { const mid = (lo + hi) >> 1; if (order[mid] > job.id) lo = mid + 1; else hi = mid; }
        order.splice(lo, 0, job.id);
      }
    }
  };
  const stopListening = ctx.conn.on("jobs", (event) => {
    if (event && event.job) { put(event.job); status.textContent = `${order.length} jobs`; schedule(); }
  });

  let stopped = false;
  (async () => {
    try {
      for (let offset = 0; offset < MAX_JOBS && !stopped; offset += PAGE) {
        const page = await ctx.call("core", "get_jobs", [[], { order_by: ["-id"], limit: PAGE, offset, select: SELECT }]);
        for (const job of page) put(job);
        status.textContent = `${order.length} jobs`;
        schedule();
        if (page.length < PAGE) break;
      }
      table.dataset.loaded = "true";
    } catch (err) {
      status.textContent = `Could not list the jobs: ${err.message}`;
    }
  })();
  schedule();

  return {
    el,
    stop() {
      stopped = true; clearInterval(ticker); stopListening();
      window.removeEventListener("resize", schedule);
    },
  };
}

export function jobPage(ctx, id) {
  const facts = {};
  const names = [["state", "State"], ["outcome", "Outcome"], ["owner", "Owner"], ["command", "Command"],
    ["started", "Started"], ["duration", "Duration"], ["error", "Error"]];
  const list = h("dl", { class: "facts" }, names.map(([key, label]) => {
    facts[key] = h("dd", { id: `job-${key}` });
    return [h("dt", {}, label), facts[key]];
  }));
  const barHolder = h("div", { class: "job-progress" });
  const kill = h("button", { type: "button", class: "danger", disabled: true }, "Kill");
  const killMessage = h("p", { class: "form-message", role: "status" });
  const output = h("pre", { class: "output", id: "job-output", tabIndex: 0, "aria-label": "Output" });
  const outputState = h("p", { class: "muted", id: "job-output-state", role: "status" }, "Reading the output…");
  const el = h("section", { class: "page" },
    h("p", {}, h("a", { href: "#/jobs" }, "← All jobs")),
    h("h1", { tabIndex: -1 }, `Job ${id}`),
    h("div", { class: "card" }, list, barHolder, ctx.full ? h("div", { class: "actions" }, kill, killMessage) : null),
    h("h2", {}, "Output"), output, outputState);

  let job = null;
  const show = (update) => {
    job = { ...(job || {}), ...update };
    facts.state.textContent = job.state || "";
    facts.outcome.textContent = job.outcome || (LIVE.has(job.state) ? "(running)" : "");
    facts.owner.textContent = job.owner ? `${job.owner.user || ""}${job.owner.from ? ` from ${job.owner.from}` : ""}` : "";
    facts.command.textContent = commandText(job);
    facts.started.textContent = formatTime(job.time_started || job.time_created);
    facts.duration.textContent = duration(job);
    facts.error.textContent = job.error || "";
    const description = job.progress && job.progress.description ? h("span", {}, ` ${job.progress.description}`) : "";
    barHolder.replaceChildren(progressBar(job, "Progress"), description);
    kill.disabled = !LIVE.has(job.state);
    el.dataset.state = job.state || "";
  };
  const ticker = setInterval(() => { if (job && LIVE.has(job.state)) facts.duration.textContent = duration(job); }, 1000);
  const stopListening = ctx.conn.on("jobs", (event) => { if (event && event.job && event.job.id === id) show(event.job); });

  kill.addEventListener("click", async () => {
    kill.disabled = true;
    killMessage.textContent = "Killing…";
    try {
      const reply = await ctx.call("core", "job_abort", { id });
      killMessage.textContent = `Job ${reply.id}: ${reply.aborted}.`;
    } catch (err) {
      killMessage.textContent = `Could not kill it: ${err.message}`;
      kill.disabled = !(job && LIVE.has(job.state));
    }
  });

  let log = null;
  let stopped = false;
  const append = (text) => {
    if (!text) return;
    const atBottom = output.scrollHeight - output.scrollTop - output.clientHeight < 40;
    output.append(document.createTextNode(text));
    if (atBottom) output.scrollTop = output.scrollHeight;
  };
  (async () => {
    try {
      show(await ctx.call("core", "get_jobs", [[["id", "=", id]], { get: true }]));
    } catch (err) {
      facts.state.textContent = `Could not read job ${id}: ${err.message}`;
      outputState.textContent = "";
      return;
    }
    if (stopped) return;
    log = followLog(ctx, id, append,
      (err) => { outputState.textContent = `The output cannot be read: ${err.message}`; },
      (chunk) => {
        outputState.textContent = `End of output (${chunk.size} bytes${chunk.cut ? `, ${chunk.cut} not kept` : ""}).`;
        output.dataset.eof = "true";
      },
      (chunk) => { if (!chunk.eof) outputState.textContent = chunk.finished ? "" : "Following the output…"; });
  })();

  return { el, stop() { stopped = true; if (log) log.stop(); clearInterval(ticker); stopListening(); } };
}
