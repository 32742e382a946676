// A service's log (sysadm/services logs, full access): the last lines in a scrollable
// monospace view, where they came from, "Refresh" to read them again and "Close".

import { h, field } from "./dom.js";

const DEFAULT_LINES = 200;
const MAX_LINES = 5000;

export function logView(ctx, service, onClose) {
  const [linesLabel, lines] = field("Lines", { type: "number", min: 1, max: MAX_LINES, value: DEFAULT_LINES,
    required: true, class: "lines-input" });
  const refresh = h("button", { type: "submit" }, "Refresh");
  const close = h("button", { type: "button", onclick: () => onClose() }, "Close");
  const form = h("form", { class: "inline-form", "aria-label": `Log options of ${service}` },
    linesLabel, lines, refresh, close);
  const source = h("p", { class: "muted", role: "status" }, "Reading the log…");
  const output = h("pre", { class: "output log-output", tabIndex: 0, "aria-label": `Log of ${service}` });
  const el = h("section", { class: "card log-view", "aria-label": `Log of ${service}`, dataset: { service } },
    h("h2", {}, `Log of ${service}`), form, source, output);

  let generation = 0;
  const load = async () => {
    const count = Number(lines.value);
    if (!Number.isInteger(count) || count < 1 || count > MAX_LINES) {
      source.textContent = `Lines: give a whole number from 1 to ${MAX_LINES}.`;
      return;
    }
    const mine = ++generation;
    refresh.disabled = true;
    source.textContent = "Reading the log…";
    try {
      const reply = await ctx.call("sysadm", "services", { action: "logs", service, lines: count });
      if (mine !== generation) return;
      const got = reply.lines || [];
      output.textContent = got.length ? `${got.join("\n")}\n` : "";
      output.scrollTop = output.scrollHeight;
      source.textContent = got.length ? `${got.length} lines from ${reply.source}` : `No log lines (${reply.source}).`;
      el.dataset.loaded = String(Date.now());
    } catch (err) {
      if (mine === generation) source.textContent = `Could not read the log of ${service}: ${err.message}`;
    } finally {
      if (mine === generation) refresh.disabled = false;
    }
  };
  form.addEventListener("submit", (event) => { event.preventDefault(); load(); });
  load();
  return { el, refresh: load, stop() { generation += 1; } };
}
