// The console's entry point: sign-in, the page frame, the router.  The login token is kept
// in sessionStorage (this tab only, gone when it closes), never in a cookie: the WebSocket
// accepts any Origin, so nothing may ride on ambient browser credentials.

import { ApiError, Connection, ConnectionClosed, socketUrl } from "./api.js";
import { dashboardPage } from "./dashboard.js";
import { fleetPage } from "./fleet.js";
import { h, field } from "./dom.js";
import { jobPage, jobsPage } from "./jobs.js";
import { packagesPage } from "./packages.js";
import { filesPage, servicesPage, usersPage } from "./pages.js";
import { supervisorPage } from "./supervisor.js";

const TOKEN_KEY = "sysadmd.token";
const root = document.getElementById("app");
const session = { conn: null, query: {}, full: false, page: null, hostname: "", hostLabel: null, main: null };

const EXPIRED = "Your session has expired. Sign in again.";

function loginMessage(err, resuming) {
  if (err instanceof ConnectionClosed) {
    if (err.blocked) return `This address is blocked: ${err.reason}.`;
    if (err.code === 1006) return "Cannot reach the server (the connection failed).";
    return `The server closed the connection (${err.code}${err.reason ? `: ${err.reason}` : ""}).`;
  }
  if (err instanceof ApiError) {
    if (/blocked/i.test(err.detail)) return `This address is blocked: ${err.detail}.`;
    if (err.code === "401") return resuming ? EXPIRED : "Wrong user name or password.";
    if (err.code === "429") return "Too many sign-in attempts from this address at once; wait a moment and try again.";
    return `Sign-in failed: ${err.message}`;
  }
  return `Sign-in failed: ${err.message || err}`;
}

function showLogin(message = "", kind = "error") {
  leavePage();
  if (session.conn) { session.conn.close(); session.conn = null; }
  document.title = "Sign in · sysadmd";
  const [userLabel, user] = field("User", { type: "text", name: "username", autocomplete: "username",
    required: true, maxLength: 256, autocapitalize: "off", spellcheck: false });
  const [passLabel, password] = field("Password", { type: "password", name: "password",
    autocomplete: "current-password", required: true, maxLength: 1024 });
  const button = h("button", { type: "submit" }, "Sign in");
  const note = h("p", { id: "login-message", class: `login-message ${message ? kind : ""}`, role: "alert" }, message);
  const form = h("form", { class: "login card", "aria-label": "Sign in" },
    h("h1", {}, "sysadmd"), h("p", { class: "muted" }, `Sign in to ${window.location.hostname}`),
    userLabel, user, passLabel, password, button, note);
  let conn = null;
  const say = (text) => { note.textContent = text; note.className = `login-message ${text ? "error" : ""}`; };
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    button.disabled = true;
    say("");
    try {
      if (!conn || conn.closed) {
        conn = new Connection(socketUrl());
        conn.onClose((closed) => { if (closed.blocked) say(loginMessage(closed)); });
        await conn.open();
      }
      const [token] = await conn.call("rpc", "auth", { username: user.value, password: password.value });
      password.value = "";
      const ready = conn;
      conn = null;
      await enter(ready, token);
    } catch (err) {
      say(loginMessage(err, false));
      password.select();
    } finally {
      button.disabled = false;
    }
  });
  root.replaceChildren(h("main", { class: "login-page" }, form));
  user.focus();
  performance.mark("sysadmd-login-rendered");
}

async function resume(token) {
  const conn = new Connection(socketUrl());
  await conn.open();
  try {
    const [fresh] = await conn.call("rpc", "auth_token", { token });
    await enter(conn, fresh);
  } catch (err) {
    conn.close();
    throw err;
  }
}

function expired() {
  sessionStorage.removeItem(TOKEN_KEY);
  showLogin(EXPIRED);
}

function lost(closed) {
  session.conn = null;
  if (closed.blocked) { sessionStorage.removeItem(TOKEN_KEY); showLogin(loginMessage(closed)); return; }
  const token = sessionStorage.getItem(TOKEN_KEY);
  if (!token) { showLogin(loginMessage(closed)); return; }
  setTimeout(() => {
    resume(token).catch((err) => {
      if (err instanceof ApiError && err.code === "401") expired();
      else showLogin(`The connection to the server was lost: ${err.message}`);
    });
  }, 1000);
}

async function enter(conn, token) {
  sessionStorage.setItem(TOKEN_KEY, token);
  session.conn = conn;
  conn.onClose(lost);
  const [query, identity] = await Promise.all([conn.call("rpc", "query", {}), conn.call("rpc", "identify", {})]);
  session.query = query || {};
  session.full = session.query["rpc/dispatcher"] === "read/write";
  session.hostname = identity.hostname || window.location.hostname;
  conn.call("events", "subscribe", ["jobs"]).catch(() => {});
  frame();
  route();
}

function signOut() {
  const conn = session.conn;
  sessionStorage.removeItem(TOKEN_KEY);
  if (conn && conn.ws.readyState === WebSocket.OPEN) {
    conn.ws.send(JSON.stringify({ namespace: "rpc", name: "auth_clear", id: "bye", args: {} }));
  }
  showLogin("You are signed out.", "info");
}

function has(name) { return Object.prototype.hasOwnProperty.call(session.query, name); }

function pages() {
  const list = [["#/", "Dashboard"], ["#/jobs", "Jobs"]];
  if (has("sysadm/services")) list.push(["#/services", "Services"]);
  if (has("sysadm/supervisor")) list.push(["#/supervisor", "Supervisor"]);
  if (has("sysadm/users")) list.push(["#/users", "Users"]);
  if (has("sysadm/pkg")) list.push(["#/packages", "Packages"]);
  if (has("sysadm/fs")) list.push(["#/files", "Files"]);
  if (session.full) list.push(["#/fleet", "Fleet"]);
  return list;
}

function frame() {
  session.hostLabel = h("span", { class: "host", id: "host-name" }, session.hostname);
  const nav = h("nav", { "aria-label": "Pages" }, h("ul", {}, pages().map(([href, label]) =>
    h("li", {}, h("a", { href, dataset: { page: href } }, label)))));
  session.main = h("main", { id: "main", tabIndex: -1 });
  root.replaceChildren(
    h("a", { class: "skip", href: "#main", onclick: (e) => { e.preventDefault(); session.main.focus(); } }, "Skip to content"),
    h("header", { class: "top" }, h("span", { class: "brand" }, "sysadmd"), session.hostLabel, nav,
      h("button", { type: "button", class: "signout", onclick: signOut }, "Sign out")),
    session.main);
}

function leavePage() {
  if (session.page) { session.page.stop(); session.page = null; }
}

function context() {
  return {
    conn: session.conn,
    full: session.full,
    has,
    rights: (name) => session.query[name],
    token: () => sessionStorage.getItem(TOKEN_KEY),
    call(namespace, name, args) {
      const conn = session.conn;
      if (!conn) return Promise.reject(new Error("not connected"));
      return conn.call(namespace, name, args).catch((err) => {
        if (err instanceof ApiError && err.code === "401" && session.conn === conn) expired();
        throw err;
      });
    },
    navigate(hash) { window.location.hash = hash; },
    replaceHash(hash) { if (window.location.hash !== hash) history.replaceState(null, "", hash); },
    setHostname(name) {
      session.hostname = name;
      if (session.hostLabel) session.hostLabel.textContent = name;
    },
    report(err) { if (!(err instanceof ConnectionClosed)) console.warn("sysadmd console:", err.message); },
  };
}

function route() {
  if (!session.conn || !session.main) return;
  leavePage();
  const hash = window.location.hash || "#/";
  const ctx = context();
  let page;
  let match;
  let current = "#/";
  if ((match = /^#\/jobs\/(\d{1,15})$/.exec(hash))) { page = jobPage(ctx, Number(match[1])); current = "#/jobs"; }
  else if (hash === "#/jobs") { page = jobsPage(ctx); current = "#/jobs"; }
  else if (hash === "#/services" && has("sysadm/services")) { page = servicesPage(ctx); current = hash; }
  else if (hash === "#/supervisor" && has("sysadm/supervisor")) { page = supervisorPage(ctx); current = hash; }
  else if (hash === "#/users" && has("sysadm/users")) { page = usersPage(ctx); current = hash; }
  else if (hash === "#/packages" && has("sysadm/pkg")) { page = packagesPage(ctx); current = hash; }
  else if (hash === "#/fleet" && session.full) { page = fleetPage(ctx); current = hash; }
  else if (hash.startsWith("#/files") && has("sysadm/fs")) {
    const dir = new URLSearchParams(hash.split("?")[1] || "").get("dir");
    page = filesPage(ctx, dir || "/");
    current = "#/files";
  } else page = dashboardPage(ctx);
  session.page = page;
  session.main.replaceChildren(page.el);
  for (const link of document.querySelectorAll("nav a")) {
    if (link.dataset.page === current) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  const title = page.el.querySelector("h1");
  document.title = `${title ? title.textContent : "Console"} · ${session.hostname} · sysadmd`;
  if (title && document.activeElement && document.activeElement.closest && !document.activeElement.closest("form")) {
    title.focus({ preventScroll: true });
  }
}

window.addEventListener("hashchange", route);

const saved = sessionStorage.getItem(TOKEN_KEY);
if (saved) {
  resume(saved).catch((err) => {
    sessionStorage.removeItem(TOKEN_KEY);
    showLogin(loginMessage(err, true));
  });
} else {
  showLogin();
}
