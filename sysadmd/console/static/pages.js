// Services (sysadm/services, with each service's log through logs.js), users
// (sysadm/users) and files (sysadm/fs dirlist, with download and upload through transfers.js).

import { h, field, formatBytes } from "./dom.js";
import { logView } from "./logs.js";
import { downloadFile, uploadForm } from "./transfers.js";

function table(label, columns, rows) {
  return h("div", { class: "table-wrap" }, h("table", { "aria-label": label },
    h("thead", {}, h("tr", {}, columns.map((c) => h("th", { scope: "col" }, c)))),
    h("tbody", {}, rows)));
}

export function servicesPage(ctx) {
  const status = h("p", { class: "muted", role: "status" }, "Loading services…");
  const holder = h("div");
  const logHolder = h("div");
  const el = h("section", { class: "page" }, h("h1", { tabIndex: -1 }, "Services"), status, logHolder, holder);
  const writable = ctx.rights("sysadm/services") === "read/write" && ctx.full;
  const verbs = [["start", "Start"], ["stop", "Stop"], ["restart", "Restart"], ["enable", "Enable"], ["disable", "Disable"]];
  let shownLog = null;  // logs need full access, as the changes do
  const closeLog = () => { if (shownLog) { shownLog.stop(); shownLog = null; } logHolder.replaceChildren(); };
  const openLog = (name) => {
    closeLog();
    shownLog = logView(ctx, name, closeLog);
    logHolder.replaceChildren(shownLog.el);
    shownLog.el.querySelector("pre").focus({ preventScroll: true });
    shownLog.el.scrollIntoView({ block: "nearest" });
  };

  const load = async () => {
    try {
      const reply = await ctx.call("sysadm", "services", { action: "list_services" });
      const services = Object.values(reply.services || {}).sort((a, b) => a.name.localeCompare(b.name));
      const rows = services.map((s) => h("tr", {},
        h("th", { scope: "row" }, s.name),
        h("td", {}, s.description || ""),
        h("td", {}, s.is_running === "true" ? "running" : "stopped"),
        h("td", {}, s.is_enabled === "true" ? "enabled" : "disabled"),
        writable ? h("td", { class: "actions" }, verbs.map(([verb, label]) =>
          h("button", { type: "button", "aria-label": `${label} ${s.name}`, onclick: () => act(verb, s.name) }, label)),
          h("button", { type: "button", "aria-label": `Logs of ${s.name}`, onclick: () => openLog(s.name) }, "Logs")) : null));
      holder.replaceChildren(table("Services", ["Name", "Description", "State", "At boot", writable ? "Actions" : null]
        .filter(Boolean), rows));
      status.textContent = `${services.length} service${services.length === 1 ? "" : "s"}`;
    } catch (err) {
      status.textContent = `Could not list the services: ${err.message}`;
    }
  };
  const act = async (verb, name) => {
    status.textContent = `${verb} ${name}…`;
    try {
      await ctx.call("sysadm", "services", { action: verb, services: [name] });
      status.textContent = `${name}: ${verb} done.`;
    } catch (err) {
      status.textContent = `${name}: ${verb} failed: ${err.message}`;
    }
    load();
  };
  load();
  return { el, stop() { closeLog(); } };
}

export function usersPage(ctx) {
  const status = h("p", { class: "muted", role: "status" }, "Loading users…");
  const holder = h("div");
  const canChange = ctx.full && ctx.rights("sysadm/users") === "read/write";
  let form = null;
  if (canChange) {
    const [nameLabel, name] = field("New user name", { type: "text", required: true, maxLength: 32, autocomplete: "off" });
    const [passLabel, password] = field("New user's password", { type: "password", required: true, maxLength: 512,
      autocomplete: "new-password" });
    const [commentLabel, comment] = field("Full name", { type: "text", maxLength: 256 });
    form = h("form", { class: "inline-form", "aria-label": "Add a user" }, nameLabel, name, passLabel, password,
      commentLabel, comment, h("button", { type: "submit" }, "Add user"));
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      status.textContent = `Adding ${name.value}…`;
      const args = { action: "useradd", name: name.value.trim(), password: password.value };
      if (comment.value.trim()) args.comment = comment.value.trim();
      try {
        await ctx.call("sysadm", "users", args);
        status.textContent = `${args.name} added.`;
        form.reset();
        load();
      } catch (err) {
        status.textContent = `Could not add ${args.name}: ${err.message}`;
      }
    });
  }
  const el = h("section", { class: "page" }, h("h1", { tabIndex: -1 }, "Users"), form, status, holder);
  const remove = async (name) => {
    if (!window.confirm(`Delete the account ${name} and its home directory?`)) return;
    status.textContent = `Deleting ${name}…`;
    try {
      await ctx.call("sysadm", "users", { action: "userdelete", name });
      status.textContent = `${name} deleted.`;
    } catch (err) {
      status.textContent = `Could not delete ${name}: ${err.message}`;
    }
    load();
  };
  const load = async () => {
    try {
      const users = Object.values(await ctx.call("sysadm", "users", { action: "usershow" }))
        .sort((a, b) => Number(a.uid) - Number(b.uid));
      const rows = users.map((u) => h("tr", {},
        h("th", { scope: "row" }, u.name), h("td", {}, u.uid), h("td", {}, u.comment || ""),
        h("td", {}, u.home_dir || ""), h("td", {}, u.shell || ""),
        canChange ? h("td", {}, u.canremove === "false" || u.uid === "0" ? "" :
          h("button", { type: "button", class: "danger", "aria-label": `Delete ${u.name}`, onclick: () => remove(u.name) },
            "Delete")) : null));
      holder.replaceChildren(table("Users", ["Name", "UID", "Full name", "Home", "Shell", canChange ? "Actions" : null]
        .filter(Boolean), rows));
      status.textContent = `${users.length} accounts`;
    } catch (err) {
      status.textContent = `Could not list the users: ${err.message}`;
    }
  };
  load();
  return { el, stop() {} };
}

function joinPath(dir, name) {
  return dir.endsWith("/") ? dir + name : `${dir}/${name}`;
}

function parentOf(dir) {
  const trimmed = dir.replace(/\/+$/, "");
  const cut = trimmed.lastIndexOf("/");
  return cut <= 0 ? "/" : trimmed.slice(0, cut);
}

export function filesPage(ctx, startDir) {
  const [label, input] = field("Directory", { type: "text", value: startDir || "/", required: true, maxLength: 4096,
    autocomplete: "off" });
  const form = h("form", { class: "inline-form", "aria-label": "Open a directory" }, label, input,
    h("button", { type: "submit" }, "Open"));
  const status = h("p", { class: "muted", role: "status" });
  const holder = h("div");
  // Transfers need full access (filesystem.get / filesystem.put) and the transfer API.
  const transfers = ctx.full && ctx.has("core/download");
  let shown = "/";
  let names = new Set();
  const upload = transfers ? uploadForm(ctx, () => shown, (name) => names.has(name), () => open(shown)) : null;
  const transferStatus = h("p", { class: "form-message", id: "transfer-status", role: "status" });
  const el = h("section", { class: "page" }, h("h1", { tabIndex: -1 }, "Files"), form, upload,
    transfers ? transferStatus : null, status, holder);
  const download = async (path, name) => {
    try {
      await downloadFile(ctx, path, name, (text) => { transferStatus.textContent = text; });
    } catch (err) {
      transferStatus.textContent = `Could not download ${name}: ${err.message}`;
    }
  };

  const open = async (dir) => {
    if (!dir.startsWith("/")) { status.textContent = "Directory: give an absolute path (starting with /)."; return; }
    input.value = dir;
    status.textContent = `Reading ${dir}…`;
    try {
      const reply = await ctx.call("sysadm", "fs", { action: "dirlist", dir });
      const entries = Object.entries(reply.dirlist || {}).sort(([a, x], [b, y]) =>
        (y.dir ? 1 : 0) - (x.dir ? 1 : 0) || a.localeCompare(b));
      const rows = [];
      if (dir !== "/") {
        rows.push(h("tr", {}, h("th", { scope: "row" },
          h("button", { type: "button", class: "link", "aria-label": "Parent directory", onclick: () => open(parentOf(dir)) }, "..")),
          h("td", {}, "directory"), h("td"), h("td"), h("td"), transfers ? h("td") : null));
      }
      for (const [name, info] of entries) {
        const path = joinPath(dir, name);
        rows.push(h("tr", {},
          h("th", { scope: "row" }, info.dir
            ? h("button", { type: "button", class: "link", "aria-label": `Open ${name}`, onclick: () => open(path) }, `${name}/`)
            : name),
          h("td", {}, info.dir ? "directory" : info.symlink ? `link → ${info.target || ""}` : "file"),
          h("td", {}, info.size !== undefined ? formatBytes(Number(info.size)) : ""),
          h("td", {}, info.owner || ""), h("td", {}, info.group || ""),
          transfers ? h("td", {}, info.dir || info.symlink ? "" : h("button", { type: "button",
            "aria-label": `Download ${name}`, onclick: () => download(path, name) }, "Download")) : null));
      }
      holder.replaceChildren(table(`Contents of ${dir}`, ["Name", "Type", "Size", "Owner", "Group",
        transfers ? "Actions" : null].filter(Boolean), rows));
      shown = dir;
      names = new Set(entries.map(([name]) => name));
      const cut = reply.truncated ? ` (the first ${reply.truncated.returned} of ${reply.truncated.total})` : "";
      status.textContent = `${dir}: ${entries.length} entries${cut}`;
      el.dataset.dir = dir;
      ctx.replaceHash(`#/files?dir=${encodeURIComponent(dir)}`);
    } catch (err) {
      status.textContent = `Could not read ${dir}: ${err.message}`;
    }
  };
  form.addEventListener("submit", (event) => { event.preventDefault(); open(input.value.trim()); });
  open(startDir || "/");
  return { el, stop() {} };
}
