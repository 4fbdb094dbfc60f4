// Store and forward: every recording is put in IndexedDB before it is sent, and stays
// there until the server has answered that it is safe. Sending retries with back-off
// and starts again at once when the browser says the connection is back.

const DB_NAME = "carecall-kiosk";
const STORE = "outbox";

function openDatabase() {
  return new Promise((resolve, reject) => {
    const request = indexedDB.open(DB_NAME, 1);
    request.onupgradeneeded = () => request.result.createObjectStore(STORE, { keyPath: "id" });
    request.onsuccess = () => resolve(request.result);
    request.onerror = () => reject(request.error);
  });
}

async function transaction(mode, work) {
  const db = await openDatabase();
  try {
    return await new Promise((resolve, reject) => {
      const tx = db.transaction(STORE, mode);
      const result = work(tx.objectStore(STORE));
      tx.oncomplete = () => resolve(result && "result" in result ? result.result : undefined);
      tx.onerror = () => reject(tx.error);
      tx.onabort = () => reject(tx.error);
    });
  } finally {
    db.close();
  }
}

export const store = {
  put: (item) => transaction("readwrite", (s) => s.put(item)),
  remove: (id) => transaction("readwrite", (s) => s.delete(id)),
  all: () => transaction("readonly", (s) => s.getAll()),
};

// Statuses worth trying again later; any other 4xx will never succeed as sent.
const RETRY_STATUSES = new Set([408, 425, 429]);

export class Courier {
  constructor({ url, token, retryMaxSeconds, onSent, onWaiting, onRejected, onUnauthorized }) {
    Object.assign(this, { url, token, retryMaxSeconds, onSent, onWaiting, onRejected, onUnauthorized });
    this.failures = 0;
    this.running = false;
    // Recordings IndexedDB refused (storage full, private mode): kept here until sent.
    this.memory = new Map();
    this.again = false;
    this.timer = null;
    window.addEventListener("online", () => this.kick());
  }

  /** Keep a recording safe in IndexedDB (or, failing that, in memory), then send it. */
  async send(item) {
    try {
      await store.put(item);
    } catch (error) {
      console.warn("IndexedDB refused the recording; keeping it in memory", error);
      this.memory.set(item.id, item);
    }
    this.kick();
  }

  async forget(id) {
    this.memory.delete(id);
    await store.remove(id).catch(() => {});
  }

  /** Try to send everything waiting now, unless a round is already running. */
  kick() {
    clearTimeout(this.timer);
    this.timer = null;
    if (this.running) {
      this.again = true;
      return;
    }
    this.run();
  }

  async run() {
    this.running = true;
    let retry = false;
    try {
      const stored = await store.all().catch(() => []);
      const items = [...stored, ...this.memory.values()].sort((a, b) => a.createdAt - b.createdAt);
      for (const item of items) {
        if (!(await this.deliver(item))) {
          retry = true;
          break;
        }
      }
    } catch (error) {
      console.warn("outbox round failed", error);
      retry = true;
    } finally {
      this.running = false;
    }
    if (this.again) {
      this.again = false;
      this.kick();
    } else if (retry) {
      this.failures += 1;
      const cap = this.retryMaxSeconds * 1000;
      const delay = Math.min(cap, 1000 * 2 ** (this.failures - 1)) * (0.75 + Math.random() / 2);
      this.timer = setTimeout(() => this.kick(), delay);
    } else {
      this.failures = 0;
    }
  }

  /** Send one item; return false when it should be tried again later. */
  async deliver(item) {
    const form = new FormData();
    form.append("client_id", item.id);
    form.append("language", item.language);
    const extension = item.blob.type.includes("mp4") ? "mp4" : item.blob.type.includes("ogg") ? "ogg" : "webm";
    form.append(item.kind, item.blob, `${item.kind}.${extension}`);
    let response;
    try {
      // Allow slow links: 30 s plus a second for every 50 kB.
      const timeout = 30000 + item.blob.size / 50;
      response = await fetch(this.url, {
        method: "POST",
        body: form,
        headers: { Authorization: `Bearer ${this.token()}` },
        signal: AbortSignal.timeout(timeout),
        cache: "no-store",
      });
    } catch (error) {
      this.onWaiting(item, error);
      return false;
    }
    const body = await response.json().catch(() => ({}));
    if (response.ok) {
      await this.forget(item.id);
      this.onSent(item, body);
      return true;
    }
    if (response.status === 401) {
      this.onUnauthorized(item, body);
      return false;
    }
    if (response.status >= 500 || RETRY_STATUSES.has(response.status)) {
      this.onWaiting(item, new Error(`server answered ${response.status}`));
      return false;
    }
    await this.forget(item.id);
    this.onRejected(item, response.status, body);
    return true;
  }
}
