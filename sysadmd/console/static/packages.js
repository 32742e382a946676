// Packages (sysadm/pkg): search, a result table with each package's version and state,
// and for full-access users install / remove / hold / unhold.  A change is a job of the
// job table: its progress bar follows `jobs` events (core/get_jobs for the state it has
// when the panel opens) and its output is read with core/job_log.

import { h, field } from "./dom.js";
import { followLog } from "./joblog.js";

const LIVE = new Set(["WAITING", "RUNNING"]);
const MAX_SHOWN = 200;
const VERBS = {
  pkg_install: "Install", pkg_remove: "Remove", pkg_lock: "Hold", pkg_unlock: "Unhold",
};

function table(label, columns, rows) {
  return h("div", { class: "table-wrap" }, h("table", { "aria-label": label },
    h("thead", {}, h("tr", {}, columns.map((c) => h("th", { scope: "col" }, c)))),
    h("tbody", {}, rows)));
}

// One change's panel: the progress bar, the job's state and its output.
function jobPanel(ctx, action, name, jobId, done) {
  const verb = VERBS[action];
  const bar = h("progress", { max: 100, "aria-label": `Progress of ${verb.toLowerCase()} ${name}` });
  bar.removeAttribute("value");
  const stateText = h("span", { class: "pkg-job-state", role: "status" }, "waiting");
  const output = h("pre", { class: "output pkg-output", tabIndex: 0, "aria-label": `Output of ${verb.toLowerCase()} ${name}` });
  const el = h("section", { class: "card pkg-job", "aria-label": `${verb} ${name}`, dataset: { jobId: String(jobId) } },
    h("h2", {}, `${verb} ${name} `, h("a", { href: `#/jobs/${jobId}` }, `(job ${jobId})`)),
    h("div", { class: "job-progress" }, bar, " ", stateText), output);
  let finished = false;
  let peak = 0;
  const figures = new Set();
  const show = (job) => {
    if (!job || finished) return;
    const percent = job.progress && typeof job.progress.percent === "number" ? job.progress.percent : null;
    if (job.state === "SUCCESS") bar.value = 100;  // the work is done, whatever apt's last figure was
    else if (percent !== null) bar.value = percent;
    if (bar.hasAttribute("value")) {
      peak = Math.max(peak, bar.value);
      figures.add(Math.round(bar.value));
      bar.dataset.peak = String(peak);
      bar.dataset.figures = String(figures.size);  // how many distinct values it showed
    }
    const description = job.progress && job.progress.description ? `: ${job.progress.description}` : "";
    stateText.textContent = LIVE.has(job.state) ? `${String(job.state).toLowerCase()}${description}` :
      job.state === "SUCCESS" ? "done" : `${String(job.state).toLowerCase()}${job.error ? `: ${job.error}` : ""}`;
    el.dataset.state = job.state || "";
    if (!LIVE.has(job.state)) {
      finished = true;
      if (job.state !== "SUCCESS") el.classList.add("failed");
      done(job);
    }
  };
  const stopListening = ctx.conn.on("jobs", (event) => {
    if (event && event.job && event.job.id === jobId) show(event.job);
  });
  ctx.call("core", "get_jobs", [[["id", "=", jobId]], { get: true }]).then(show, (err) => {
    stateText.textContent = `Could not read job ${jobId}: ${err.message}`;
  });
  const log = followLog(ctx, jobId, (text) => {
    const atBottom = output.scrollHeight - output.scrollTop - output.clientHeight < 40;
    output.append(document.createTextNode(text));
    if (atBottom) output.scrollTop = output.scrollHeight;
  }, (err) => {
    output.append(document.createTextNode(`\n[the output cannot be read: ${err.message}]\n`));
  });
  return { el, stop() { stopListening(); log.stop(); } };
}

export function packagesPage(ctx) {
  const canChange = ctx.full && ctx.rights("sysadm/pkg") === "read/write";
  const [label, input] = field("Search packages", { type: "search", name: "search", required: true, maxLength: 256,
    autocomplete: "off", spellcheck: false });
  const searchButton = h("button", { type: "submit" }, "Search");
  const form = h("form", { class: "inline-form", role: "search", "aria-label": "Search packages" },
    label, input, searchButton);
  const status = h("p", { class: "muted", role: "status" }, "Type part of a package's name or description.");
  const error = h("p", { class: "error-message", role: "alert" });
  const holder = h("div");
  const jobs = h("div", { class: "pkg-jobs" });
  const el = h("section", { class: "page" }, h("h1", { tabIndex: -1 }, "Packages"), form, error, status, jobs, holder);
  const panels = [];
  let lastTerm = "";
  let generation = 0;

  const fail = (text) => { error.textContent = text; };

  // refresh: a new listing after a change, which keeps that change's error in view
  const search = async (term, refresh = false) => {
    const mine = ++generation;
    lastTerm = term;
    searchButton.disabled = true;
    status.textContent = `Searching for “${term}”…`;
    try {
      const found = (await ctx.call("sysadm", "pkg", { action: "pkg_search", search_term: term })).pkg_search;
      if (mine !== generation) return;
      const names = found && Array.isArray(found.results_order) ? found.results_order : [];
      const shown = names.slice(0, MAX_SHOWN);
      let info = {};
      if (shown.length) {
        info = (await ctx.call("sysadm", "pkg", { action: "pkg_info", pkg_origins: shown, result: "simple" })).pkg_info || {};
        if (mine !== generation) return;
      }
      const rows = shown.map((name) => {
        const p = info[name] || found[name] || { name };
        const isInstalled = p.installed === "true";
        const held = p.locked === "true";
        const version = isInstalled && p.installed_version && p.installed_version !== p.version
          ? `${p.installed_version} (candidate ${p.version || "none"})` : (p.version || "");
        const buttons = [];
        if (canChange) {
          const act = (action) => h("button", { type: "button", class: action === "pkg_remove" ? "danger" : "",
            "aria-label": `${VERBS[action]} ${name}`, onclick: () => change(action, name) }, VERBS[action]);
          if (!isInstalled) buttons.push(act("pkg_install"));
          else {
            buttons.push(act("pkg_remove"));
            buttons.push(act(held ? "pkg_unlock" : "pkg_lock"));
          }
        }
        return h("tr", { dataset: { pkg: name } },
          h("th", { scope: "row" }, name), h("td", {}, version),
          h("td", {}, isInstalled ? (held ? "yes (held)" : "yes") : "no"),
          h("td", {}, p.comment || ""),
          canChange ? h("td", { class: "actions" }, buttons) : null);
      });
      holder.replaceChildren(rows.length ? table(`Packages matching ${term}`,
        ["Name", "Version", "Installed", "Description", canChange ? "Actions" : null].filter(Boolean), rows) : "");
      status.textContent = names.length > shown.length
        ? `${names.length} packages match “${term}”; the first ${shown.length} are shown.`
        : `${names.length} package${names.length === 1 ? " matches" : "s match"} “${term}”.`;
      if (!refresh) error.textContent = "";
    } catch (err) {
      if (mine === generation) {
        status.textContent = "";
        fail(`Could not search for “${term}”: ${err.message}`);
      }
    } finally {
      if (mine === generation) searchButton.disabled = false;
    }
  };

  const change = async (action, name) => {
    if (action === "pkg_remove" && !window.confirm(`Remove the package ${name} (and the packages that need it)?`)) return;
    error.textContent = "";
    try {
      const reply = (await ctx.call("sysadm", "pkg", { action, pkg_origins: [name] }))[action];
      if (!reply || typeof reply.id !== "number") throw new Error("the server did not say which job it queued");
      const panel = jobPanel(ctx, action, name, reply.id, (job) => {
        if (job.state !== "SUCCESS") fail(`${VERBS[action]} ${name} failed (job ${reply.id}): ${job.error || job.state}; its output is below.`);
        if (lastTerm) search(lastTerm, true);
      });
      panels.push(panel);
      jobs.prepend(panel.el);
    } catch (err) {
      fail(`${VERBS[action]} ${name}: ${err.message}`);
    }
  };

  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const term = input.value.trim();
    if (!term) { fail("Search packages: type at least one character."); return; }
    search(term);
  });
  return { el, stop() { generation += 1; for (const panel of panels) panel.stop(); } };
}
