// Dashboard: the host's identity from sysadm/systemmanager systeminfo, and live charts
// and the priority with its alerts from system-state events.

import { LineChart } from "./chart.js";
import { h, formatBytes, formatDuration } from "./dom.js";

function chartCard(title, unit, color, max) {
  const value = h("span", { class: "chart-value" }, "–");
  const canvas = h("canvas", { class: "chart", role: "img", "aria-label": `${title} chart` });
  const card = h("section", { class: "card chart-card", "aria-label": title },
    h("h2", {}, title, " ", value), canvas);
  return { card, value, chart: new LineChart(canvas, { max, color, unit }) };
}

function priorityClass(label) {
  const level = parseInt(label, 10) || 0;
  if (level >= 9) return "urgent";
  if (level >= 6) return "critical";
  if (level >= 3) return "warning";
  return "info";
}

export function dashboardPage(ctx) {
  const info = {};
  const rows = [["hostname", "Hostname"], ["os", "Operating system"], ["kernel", "Kernel"],
    ["cpu", "CPU"], ["memory", "Memory"], ["uptime", "Uptime"]];
  const list = h("dl", { class: "facts" }, rows.map(([key, label]) => {
    info[key] = h("dd", { id: `dash-${key}` }, "…");
    return [h("dt", {}, label), info[key]];
  }));
  const priority = h("p", { id: "dash-priority", class: "priority info" }, "Priority: waiting for the first reading…");
  const alerts = h("ul", { class: "alerts", "aria-label": "Alerts" });
  const cpu = chartCard("CPU", "%", "#2563eb", 100);
  const memory = chartCard("Memory", "%", "#16a34a", 100);
  const disk = chartCard("Disk", "%", "#ca8a04", 100);
  const network = chartCard("Network", "B/s", "#9333ea", 1024);
  const el = h("section", { class: "page" },
    h("h1", { tabIndex: -1 }, "Dashboard"),
    h("div", { class: "card" }, list, priority, alerts),
    h("div", { class: "charts" }, cpu.card, memory.card, disk.card, network.card));

  let uptime = null;
  let uptimeAt = 0;
  let lastNet = null;
  const showUptime = () => {
    if (uptime === null) return;
    info.uptime.textContent = formatDuration(uptime + (Date.now() - uptimeAt) / 1000);
  };
  const ticker = setInterval(showUptime, 1000);

  const onState = (state) => {
    if (state.hostname) { info.hostname.textContent = state.hostname; ctx.setHostname(state.hostname); }
    if (typeof state.uptime === "number") { uptime = state.uptime; uptimeAt = Date.now(); showUptime(); }
    if (state.priority) {
      priority.textContent = `Priority: ${state.priority}`;
      priority.className = `priority ${priorityClass(state.priority)}`;
    }
    alerts.replaceChildren(...(state.alerts || []).map((text) => h("li", {}, text)));
    if (state.cpu) { cpu.chart.push(state.cpu.percent); cpu.value.textContent = `${state.cpu.percent.toFixed(1)} %`; }
    else if (state.load && state.cpus) {
      const busy = Math.min(100, 100 * state.load["1min"] / state.cpus);
      cpu.chart.push(busy); cpu.value.textContent = `load ${state.load["1min"]}`;
    }
    if (state.memory) {
      memory.chart.push(state.memory.percent);
      memory.value.textContent = `${state.memory.percent.toFixed(1)} % of ${formatBytes(state.memory.total)}`;
    }
    const disks = Object.entries(state.disks || {});
    if (disks.length) {
      const [mount, figures] = disks.find(([m]) => m === "/") || disks[0];
      disk.chart.push(figures.percent);
      disk.value.textContent = `${mount} ${figures.percent.toFixed(1)} %`;
    }
    if (state.network) {
      const now = Date.now();
      const total = state.network.bytes_recv + state.network.bytes_sent;
      if (lastNet && now > lastNet.at && total >= lastNet.total) {
        const rate = (total - lastNet.total) * 1000 / (now - lastNet.at);
        network.chart.push(rate);
        network.value.textContent = `${formatBytes(rate)}/s`;
      }
      lastNet = { at: now, total };
    }
  };
  const stopListening = ctx.conn.on("system-state", onState);

  if (ctx.has("sysadm/systemmanager")) {
    ctx.call("sysadm", "systemmanager", { action: "systeminfo" }).then((reply) => {
      const s = reply.systeminfo || {};
      info.hostname.textContent = s.hostname || info.hostname.textContent;
      info.os.textContent = s.systemversion || "";
      info.kernel.textContent = `${s.kernelversion || ""} (${s.arch || ""})`;
      info.cpu.textContent = `${s.cputype || ""}, ${s.cpucores || "?"} cores`;
      info.memory.textContent = s.totalmem ? `${s.totalmem} MiB` : "";
      if (typeof s.uptime_seconds === "number" && uptime === null) {
        uptime = s.uptime_seconds; uptimeAt = Date.now(); showUptime();
      }
    }, (err) => ctx.report(err));
  } else {
    for (const key of ["os", "kernel", "cpu", "memory"]) info[key].textContent = "not available";
  }
  ctx.call("events", "subscribe", ["system-state"]).catch((err) => ctx.report(err));

  return {
    el,
    stop() { clearInterval(ticker); stopListening(); },
  };
}
