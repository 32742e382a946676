// File transfers for the Files page, through the jobs API's transfer endpoints (protocol.md
// §6.12).  Download: core/download (filesystem.get) queues a job that spools the file, then
// the browser fetches GET /_download/<job>?auth_token=… itself (an <a download> click: the
// file streams to disk, never whole in page memory; the one-job token is in the URL, no
// cookie).  Upload: POST /_upload, multipart with `data` first then `file`, the session's
// token as `Authorization: Bearer`, progress from XMLHttpRequest's upload events.

import { h, field, formatBytes } from "./dom.js";

const FINISHED = new Set(["SUCCESS", "FAILED", "ABORTED"]);

// core/job_wait until the job is finished; its last record.
async function finished(ctx, id) {
  for (;;) {
    const job = await ctx.call("core", "job_wait", [id, { timeout: 30 }]);
    if (FINISHED.has(job.state)) return job;
  }
}

function jobError(job) {
  return job.error || `the job ended ${String(job.state).toLowerCase()}`;
}

export async function downloadFile(ctx, path, name, say) {
  say(`Preparing ${name}…`);
  const [jobId, url] = await ctx.call("core", "download", ["filesystem.get", [path], name]);
  const job = await finished(ctx, jobId);
  if (job.state !== "SUCCESS") throw new Error(jobError(job));
  if (typeof url !== "string" || !url.startsWith("/_download/")) throw new Error("the server answered an unexpected download address");
  const link = h("a", { href: url, download: name, hidden: true });
  document.body.append(link);
  link.click();
  link.remove();
  const result = job.result || {};
  say(`Downloading ${name} (${formatBytes(Number(result.size))}, SHA-256 ${result.sha256 || "?"}).`);
  return job;
}

function send(dir, file, token, progress) {
  return new Promise((resolve, reject) => {
    const body = new FormData();
    const target = dir.endsWith("/") ? dir + file.name : `${dir}/${file.name}`;
    body.append("data", JSON.stringify({ method: "filesystem.put", params: [target, { mode: 420 }] }));
    body.append("file", file, file.name);
    const xhr = new XMLHttpRequest();
    xhr.open("POST", "/_upload");
    xhr.setRequestHeader("Authorization", `Bearer ${token}`);
    xhr.responseType = "text";
    xhr.upload.addEventListener("progress", (event) => {
      if (event.lengthComputable) progress(event.loaded, event.total);
    });
    xhr.addEventListener("load", () => {
      let reply = null;
      try { reply = JSON.parse(xhr.responseText); } catch (err) { reply = null; }
      if (xhr.status === 200 && reply && typeof reply.job_id === "number") { resolve(reply.job_id); return; }
      const args = reply && (reply.args || reply);
      const detail = args && (args.detail || args.message || args.error);
      reject(new Error(`the upload was refused (${xhr.status}${detail ? `: ${detail}` : ""})`));
    });
    xhr.addEventListener("error", () => reject(new Error("the upload failed (the connection broke)")));
    xhr.addEventListener("abort", () => reject(new Error("the upload was cancelled")));
    xhr.send(body);
  });
}

// The upload form: dir() is the directory shown, exists(name) says whether the listing
// holds that name (to ask before replacing it), done() refreshes the listing.
export function uploadForm(ctx, dir, exists, done) {
  const [label, input] = field("File", { type: "file", name: "file", required: true });
  const button = h("button", { type: "submit" }, "Upload");
  const bar = h("progress", { max: 100, value: 0, "aria-label": "Upload progress", hidden: true });
  const message = h("p", { class: "form-message", role: "status" });
  const form = h("form", { class: "inline-form", "aria-label": "Upload a file" }, label, input, button, bar, message);
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const file = input.files && input.files[0];
    if (!file) { message.textContent = "File: choose a file to upload first."; return; }
    const target = dir();
    if (exists(file.name) && !window.confirm(`${file.name} exists in ${target}. Replace it?`)) return;
    const token = ctx.token();
    if (!token) { message.textContent = "Upload: the session has no token; sign in again."; return; }
    button.disabled = true;
    bar.hidden = false;
    bar.value = 0;
    form.dataset.state = "sending";
    message.textContent = `Sending ${file.name} (${formatBytes(file.size)})…`;
    try {
      const jobId = await send(target, file, token, (loaded, total) => {
        bar.value = total ? Math.round(loaded * 100 / total) : 100;
        message.textContent = `Sending ${file.name}: ${formatBytes(loaded)} of ${formatBytes(total)}`;
      });
      bar.value = 100;
      message.textContent = `Writing ${file.name} (job ${jobId})…`;
      const job = await finished(ctx, jobId);
      if (job.state !== "SUCCESS") throw new Error(jobError(job));
      message.textContent = `Uploaded ${file.name} to ${target} (job ${jobId}).`;
      form.dataset.state = "done";
      input.value = "";
      done();
    } catch (err) {
      form.dataset.state = "failed";
      message.textContent = `Could not upload ${file.name}: ${err.message}`;
    } finally {
      button.disabled = false;
    }
  });
  return form;
}
