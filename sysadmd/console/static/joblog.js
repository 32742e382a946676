// Follow a job's output with core/job_log (follow from the last offset until eof), every
// byte decoded as one UTF-8 stream.  onText(text) gets each piece, onChunk(reply) every
// reply (to show whether the job still runs), onEnd(reply) the last.

function base64Bytes(text) {
  const raw = atob(text);
  const bytes = new Uint8Array(raw.length);
  for (let i = 0; i < raw.length; i++) bytes[i] = raw.charCodeAt(i);
  return bytes;
}

export function followLog(ctx, id, onText, onError, onEnd = () => {}, onChunk = () => {}) {
  let stopped = false;
  const decoder = new TextDecoder();
  (async () => {
    let offset = 0;
    try {
      while (!stopped) {
        const chunk = await ctx.call("core", "job_log",
          { id, offset, length: 262144, follow: true, timeout: 20, encoding: "base64" });
        if (stopped) return;
        if (chunk.data) onText(decoder.decode(base64Bytes(chunk.data), { stream: true }));
        offset = chunk.next_offset;
        onChunk(chunk);
        if (chunk.eof) {
          const rest = decoder.decode();
          if (rest) onText(rest);
          onEnd(chunk);
          return;
        }
      }
    } catch (err) {
      if (!stopped) onError(err);
    }
  })();
  return { stop() { stopped = true; } };
}
