// The WebSocket API client: one connection, requests matched to replies by id, events
// handed to listeners.  Nothing here keeps credentials: the caller stores the token.

export class ApiError extends Error {
  constructor(code, message, detail) {
    super(detail || message || `error ${code}`);
    this.code = String(code);
    this.title = message || "";
    this.detail = detail || "";
  }
}

export class ConnectionClosed extends Error {
  constructor(code, reason) {
    super(reason ? `connection closed (${code}): ${reason}` : `connection closed (${code})`);
    this.code = code;
    this.reason = reason || "";
  }
  get blocked() { return this.code === 1008 && /blocked/i.test(this.reason); }
}

export class Connection {
  // options.socket: () => an object that behaves as a WebSocket (readyState, send, close,
  // onopen/onmessage/onclose): the transport seam, e.g. a session relayed through a bridge.
  constructor(url, options = {}) {
    this.url = url;
    this.makeSocket = options.socket || null;
    this.ws = null;
    this.nextId = 1;
    this.pending = new Map();
    this.listeners = new Map();
    this.closeListeners = new Set();
    this.closed = null;
    this.requestHandler = null;  // (message) => …: requests the other end sends us
    this.textFilter = null;  // (text) => true when it took a message that is not for us (relay frames)
  }

  sendText(text) {
    if (!this.closed && this.ws && this.ws.readyState === WebSocket.OPEN) this.ws.send(text);
  }

  send(message) {
    if (!this.closed && this.ws && this.ws.readyState === WebSocket.OPEN) this.ws.send(JSON.stringify(message));
  }

  open() {
    return new Promise((resolve, reject) => {
      const ws = this.makeSocket ? this.makeSocket() : new WebSocket(this.url);
      this.ws = ws;
      let opened = false;
      ws.onopen = () => { opened = true; resolve(this); };
      ws.onmessage = (message) => this.received(message.data);
      ws.onclose = (event) => {
        const closed = new ConnectionClosed(event.code, event.reason);
        this.closed = closed;
        for (const { reject: fail } of this.pending.values()) fail(closed);
        this.pending.clear();
        if (!opened) reject(closed);
        for (const listener of this.closeListeners) listener(closed);
      };
    });
  }

  close() {
    this.closeListeners.clear();
    if (this.ws && this.ws.readyState <= WebSocket.OPEN) this.ws.close(1000);
  }

  onClose(listener) { this.closeListeners.add(listener); }

  on(eventName, listener) {
    if (!this.listeners.has(eventName)) this.listeners.set(eventName, new Set());
    this.listeners.get(eventName).add(listener);
    return () => this.listeners.get(eventName).delete(listener);
  }

  received(text) {
    if (this.textFilter && this.textFilter(text)) return;
    let message;
    try { message = JSON.parse(text); } catch (err) { return; }
    if (message.namespace === "events" && message.name !== "response") {
      for (const listener of this.listeners.get(message.name) || []) listener(message.args);
      return;
    }
    const waiting = this.pending.get(message.id);
    if (!waiting) {
      // A request from the other end (a bridge asks who we are and for our key list).
      if (this.requestHandler && message.name !== "response" && message.name !== "error") this.requestHandler(message);
      return;
    }
    this.pending.delete(message.id);
    if (message.name === "error" || message.namespace === "error") {
      const args = message.args && typeof message.args === "object" ? message.args
        : { code: "401", message: String(message.args || "error") };  // a bridge's "unauthorized"
      waiting.reject(new ApiError(args.code, args.message, args.detail));
    } else {
      waiting.resolve(message.args);
    }
  }

  call(namespace, name, args = {}) {
    if (this.closed) return Promise.reject(this.closed);
    const id = `c${this.nextId++}`;
    return new Promise((resolve, reject) => {
      this.pending.set(id, { resolve, reject });
      this.ws.send(JSON.stringify({ namespace, name, id, args }));
    });
  }
}

export function socketUrl() {
  return `wss://${window.location.host}/`;
}
