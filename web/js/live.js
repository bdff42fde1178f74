// The engine's live stream (Server-Sent Events, GET /api/v1/stream): readings, orders, trades
// and market events as JSON. One connection for the whole app; pages subscribe while shown.
// EventSource reconnects by itself; while the tab is hidden the stream is closed to spare the
// engine, and reopened when the tab is shown again.
const listeners = new Set();
let source = null;
let connected = false;
const stateListeners = new Set();

function setConnected(v) {
  connected = v;
  stateListeners.forEach((f) => f(v));
}

function open() {
  if (source || document.hidden) return;
  source = new EventSource('/api/v1/stream', { withCredentials: true });
  source.onopen = () => setConnected(true);
  source.onerror = () => setConnected(false);
  source.onmessage = (m) => {
    let event;
    try { event = JSON.parse(m.data); } catch { return; }
    listeners.forEach((f) => f(event));
  };
}

function close() {
  if (source) source.close();
  source = null;
  setConnected(false);
}

document.addEventListener('visibilitychange', () => (document.hidden ? close() : open()));

/** Calls `f(event)` for each live event until the returned function is called. */
export function subscribe(f) {
  listeners.add(f);
  open();
  return () => listeners.delete(f);
}

/** Calls `f(connected)` on every change of the connection; returns an unsubscribe function. */
export function onConnection(f) {
  stateListeners.add(f);
  f(connected);
  return () => stateListeners.delete(f);
}

/** Reconnects (after signing in or out, the stream carries other events). */
export function restart() {
  close();
  open();
}
