// Shared by dashboard.js and journey.js: the server's configuration, the WebSocket with reconnects, the
// CSRF-protected fetch, small helpers.

// Limits, statuses, close codes and URLs, as the server enforces and serves them (orders/pages.py, page_config):
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
      showStatus("live", "live");
    });
    socket.addEventListener("message", (event) => {
      stats.messages += 1;
      stats.bytes += event.data.length;
      onMessage(JSON.parse(event.data));
    });
    socket.addEventListener("close", (event) => {
      // Refusals are final: reconnecting would be refused again.
      if (event.code === config.closeCodes.forbidden) {
        showStatus("down", "not allowed: log in");
        return;
      }
      if (event.code === config.closeCodes.notFound) {
        showStatus("down", "not found");
        return;
      }
      showStatus("down", "reconnecting…");
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

export function errorText(result) {
  if (!result.data) return `HTTP ${result.status}`;
  if (result.data.detail) return result.data.detail;
  return Object.entries(result.data)
    .map(
      ([field, errors]) =>
        `${field}: ${[]
          .concat(errors)
          .map((e) => (typeof e === "object" ? JSON.stringify(e) : e))
          .join(" ")}`,
    )
    .join("; ");
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
