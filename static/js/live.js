// Shared by dashboard.js and journey.js: the server's configuration, the WebSocket with reconnects, the
// CSRF-protected fetch, small helpers.

// Limits, statuses, close codes and URLs, as the server enforces and serves them (orderpipe/dashboard/pages.py, page_config):
// the scripts keep no copy of their own.
export const config = JSON.parse(document.getElementById("orderpipe-config").textContent);

// A URL of the config that names one order: the server sent it with a placeholder id.
export function orderUrl(template, orderId) {
  return template.replace(config.orderIdPlaceholder, orderId);
}

const statusEl = () => document.getElementById("live-status");

function showStatus(state, text) {
  const el = statusEl();
  if (!el) return;
  el.dataset.state = state;
  el.textContent = text;
}

// While the socket is down the page's numbers are frozen: <body data-live="down"> greys them (base.css) and the
// status says since when, so nobody reads a stale picture as the live one.
let downSince = null;
function markDown(text) {
  downSince ??= new Date();
  document.body.dataset.live = "down";
  showStatus("down", `${text} · disconnected since ${clock(downSince.toISOString()).slice(0, 8)}`);
}

function markLive() {
  downSince = null;
  document.body.dataset.live = "up";
  showStatus("live", "live");
}

// The banner of templates/base.html: which faults and modes are on (the dashboard keeps it live from the pipeline
// state), and the staff's one click back to the defaults.
export function showFaults(active) {
  const banner = document.getElementById("fault-banner");
  if (!banner) return;
  banner.hidden = active.length === 0;
  document.getElementById("fault-list").textContent = active.join(", ");
}

// The red banner: the unsafe modes that are on, by name, and the staff's one click back to the safe modes.
export function showUnsafe(active) {
  const banner = document.getElementById("unsafe-banner");
  if (!banner || !active) return;
  banner.hidden = active.length === 0;
  document.getElementById("unsafe-list").textContent = active.join(", ");
}

function wireRestoreSafe() {
  const button = document.getElementById("restore-safe-modes");
  if (!button) return;
  button.addEventListener("click", async () => {
    const result = await api("PATCH", config.urls.sandbox, config.safeModes);
    const out = document.getElementById("restore-safe-result");
    out.dataset.ok = result.ok ? "yes" : "no";
    out.textContent = result.ok ? "" : `Refused (${result.status}): ${errorText(result)}`;
    if (result.ok) showUnsafe([]);
  });
}

function wireRestore() {
  const button = document.getElementById("restore-defaults");
  if (!button) return;
  button.addEventListener("click", async () => {
    const result = await api("PATCH", config.urls.sandbox, config.sandboxDefaults);
    const out = document.getElementById("restore-result");
    out.dataset.ok = result.ok ? "yes" : "no";
    out.textContent = result.ok ? "" : `Refused (${result.status}): ${errorText(result)}`;
    if (result.ok) showFaults([]);
  });
}

// Where the sockets go: the page's own origin, or, when the server set data-websocket-port on <body> (HTTP and
// WebSockets served by different processes, see gunicorn.conf.py), that port on the page's host. The session cookie
// and the server's origin check go by host, not port, so a logged-in page keeps its user across the two.
function socketUrl(path) {
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  const port = document.body.dataset.websocketPort;
  return port ? `${scheme}://${location.hostname}:${port}${path}` : `${scheme}://${location.host}${path}`;
}

// Counters the benchmark in bench/ reads from window.orderpipeLive: messages and bytes received, (re)connects, and
// (dashboard.js) renders and their time.
export function liveStats() {
  window.orderpipeLive ??= { messages: 0, bytes: 0, connects: 0, renders: 0, renderMs: 0 };
  return window.orderpipeLive;
}

// Opens a socket to `path`; every (re)connect makes the server send a fresh snapshot first, so a tab that was
// offline never shows stale numbers. Exposes counters on window.orderpipeLive for the benchmark in bench/.
export function openLive(path, onMessage) {
  const stats = liveStats();
  let delay = 500;
  function connect() {
    const socket = new WebSocket(socketUrl(path));
    socket.addEventListener("open", () => {
      delay = 500;
      stats.connects += 1;
      markLive();
    });
    socket.addEventListener("message", (event) => {
      stats.messages += 1;
      stats.bytes += event.data.length;
      onMessage(JSON.parse(event.data));
    });
    socket.addEventListener("close", (event) => {
      // Refusals are final: reconnecting would be refused again.
      if (event.code === config.closeCodes.forbidden) {
        markDown("not allowed: log in");
        return;
      }
      if (event.code === config.closeCodes.notFound) {
        markDown("not found");
        return;
      }
      markDown("reconnecting…");
      setTimeout(connect, delay);
      delay = Math.min(delay * 2, 8000);
    });
  }
  connect();
}

function cookie(name) {
  const match = document.cookie.match(new RegExp(`(?:^|; )${name}=([^;]*)`));
  return match ? decodeURIComponent(match[1]) : "";
}

// JSON request with the session's CSRF token. Resolves to {ok, status, data}.
export async function api(method, url, body) {
  const response = await fetch(url, {
    method,
    credentials: "same-origin",
    headers: { "Content-Type": "application/json", Accept: "application/json", "X-CSRFToken": cookie("csrftoken") },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  let data = null;
  try {
    data = await response.json();
  } catch {
    data = null;
  }
  return { ok: response.ok, status: response.status, data };
}

// A DRF error body as a sentence a learner can read: {"items": {"0": {"quantity": ["Ensure…"]}}} becomes
// "items #1 › quantity: Ensure…", never raw JSON.
export function errorText(result) {
  if (!result.data) return `HTTP ${result.status}`;
  return errorMessages(result.data, "").join("; ");
}

function errorMessages(value, where) {
  if (Array.isArray(value)) return value.flatMap((item) => errorMessages(item, where));
  if (value !== null && typeof value === "object") {
    return Object.entries(value).flatMap(([key, inner]) => {
      if (key === "detail" || key === "non_field_errors") return errorMessages(inner, where);
      const part = /^\d+$/.test(key) ? `#${Number(key) + 1}` : key.replace(/_/g, " ");
      return errorMessages(inner, where ? `${where}${part.startsWith("#") ? " " : " › "}${part}` : part);
    });
  }
  return [where ? `${where}: ${value}` : String(value)];
}

export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = value;
    else if (key.startsWith("data-")) node.setAttribute(key, value);
    else node[key] = value;
  }
  for (const child of children) node.append(child);
  return node;
}

export function shortId(id) {
  return String(id).slice(0, 8);
}

// Hand-formatted: toLocaleTimeString costs ~0.3 ms a call, which adds up over a feed re-rendered several times a second.
const pad = (n, width = 2) => String(n).padStart(width, "0");
export function clock(iso) {
  const d = new Date(iso);
  return `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}.${pad(d.getMilliseconds(), 3)}`;
}

export function ago(iso) {
  const seconds = Math.max(0, Math.round((Date.now() - new Date(iso).getTime()) / 1000));
  if (seconds < 60) return `${seconds}s ago`;
  if (seconds < 3600) return `${Math.round(seconds / 60)}m ago`;
  return `${Math.round(seconds / 3600)}h ago`;
}

const numbers = new Intl.NumberFormat("en-US");
export function fmt(n) {
  return n === null || n === undefined ? "–" : numbers.format(Number(n));
}

wireRestore();
wireRestoreSafe();
