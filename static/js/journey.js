// One order's journey: the timeline of its events and, for the selected one, what PostgreSQL, RabbitMQ and Redis
// held at that moment (each event's `snapshot`). New events arrive over the order's own WebSocket group.
import { api, clock, config, el, errorText, openLive, orderUrl, shortId, showFaults, showUnsafe } from "./live.js";
import { createSequence } from "./sequence.js";

const $ = (id) => document.getElementById(id);
const orderId = $("order-id").textContent.trim();
const TERMINAL = new Set(config.terminalStatuses);
let order = null;
let events = [];
let selectedSeq = null;
let followLatest = true;

// The same journey as a sequence diagram (static/js/sequence.js): selecting an arrow selects the step.
const sequence = createSequence({
  table: JSON.parse($("sequence-table").textContent),
  box: $("sequence-body"),
  head: $("sequence-head"),
  scroller: $("sequence"),
  scaleNote: $("sequence-scale"),
  download: $("sequence-svg"),
  orderId,
  onSelect(seq) {
    selectedSeq = seq;
    followLatest = seq === events[events.length - 1]?.seq;
    render();
  },
});

function onMessage(message) {
  // The fault banner (templates/base.html) follows the sandbox: the socket sends the faults on, then each change.
  if (message.active_faults) showFaults(message.active_faults);
  if (message.unsafe_modes) showUnsafe(message.unsafe_modes);
  if (message.type === "sandbox") return;
  if (message.type === "snapshot") {
    order = message.order;
    events = message.events;
  } else if (message.type === "events") {
    const known = new Set(events.map((e) => e.seq));
    for (const event of message.events) if (!known.has(event.seq)) events.push(event);
    events.sort((a, b) => a.seq - b.seq);
  } else return;
  const last = events[events.length - 1];
  if (last?.snapshot?.db) order = { ...(order || {}), ...last.snapshot.db };
  if (followLatest && last) selectedSeq = last.seq;
  render();
}

function render() {
  const status = order?.status || "pending";
  const chip = $("order-status");
  chip.textContent = status.replace(/_/g, " ");
  chip.className = `status-chip s-${status}`;
  chip.dataset.status = status;
  if (order)
    $("order-summary").textContent =
      `${order.customer_email ? `${order.customer_email} · ` : ""}total ${order.total} · attempt ${order.attempts ?? 0}`;
  renderTimeline();
  sequence.update(events, selectedSeq);
  renderSelected();
  renderStepControl(status);
}

// The time from the event before to this one, as a learner reads it: "+0.21 s", "+3 min 5 s".
function gap(event, index) {
  if (index === 0) return "";
  const ms = Date.parse(event.at) - Date.parse(events[index - 1].at);
  if (!(ms >= 0)) return "";
  if (ms < 1000) return `+${ms} ms`;
  if (ms < 60_000) return `+${(ms / 1000).toFixed(ms < 10_000 ? 2 : 1)} s`;
  return `+${Math.floor(ms / 60_000)} min ${Math.round((ms % 60_000) / 1000)} s`;
}

function renderTimeline() {
  $("timeline").replaceChildren(
    ...events.map((event, index) => {
      const item = el(
        "li",
        {
          class: `k-${event.kind}${event.seq === selectedSeq ? " selected" : ""}`,
          "data-seq": event.seq,
          "data-kind": event.kind,
        },
        el(
          "button",
          { type: "button", "aria-pressed": String(event.seq === selectedSeq) },
          el("span", { class: "seq", text: `#${event.seq}` }),
          el("span", { class: "label", text: event.label || event.kind }),
          el("span", { class: "time", text: clock(event.at) }),
          el("span", { class: "gap", title: "since the step before", text: gap(event, index) }),
        ),
      );
      item.querySelector("button").addEventListener("click", () => {
        selectedSeq = event.seq;
        followLatest = event.seq === events[events.length - 1].seq;
        render();
      });
      return item;
    }),
  );
}

function row(term, value, cls = "") {
  return [
    el("dt", { text: term }),
    el("dd", { class: cls, text: value === undefined || value === null || value === "" ? "–" : String(value) }),
  ];
}

// The rows of the database panel: the order row (the snapshot's flat fields) and the other rows the step wrote
// (`db.rows`), each keyed by table and id so the same row can be found at an earlier step.
const ORDER_FIELDS = ["status", "step", "attempts", "version", "total", "failure_reason", "updated_at", "completed_at"];

function dbRows(snapshot) {
  const db = snapshot?.db;
  if (!db) return [];
  const fields = Object.fromEntries(ORDER_FIELDS.filter((name) => name in db).map((name) => [name, db[name]]));
  if (db.result) fields.result = db.result;
  return [{ table: db.table, id: db.id, fields }, ...(db.rows || [])];
}

// The same row as the latest step before `index` showed it, or null when no earlier step had it.
function earlier(row, index) {
  for (let i = index - 1; i >= 0; i -= 1) {
    const found = dbRows(events[i].snapshot).find((r) => r.table === row.table && r.id === row.id);
    if (found) return found;
  }
  return null;
}

const shown = (value) =>
  value === undefined || value === null || value === ""
    ? "–"
    : typeof value === "object"
      ? JSON.stringify(value)
      : /^\d{4}-\d\d-\d\dT/.test(String(value))
        ? clock(String(value))
        : String(value);

function renderDb(event, index) {
  const items = [];
  for (const row of dbRows(event.snapshot)) {
    const before = earlier(row, index);
    const isOrder = row.table === event.snapshot.db.table && row.id === event.snapshot.db.id;
    // A row no earlier step showed is new, unless the snapshot says it was there before the order (a product).
    const created = before === null && !row.existed;
    const tag = created ? "new row" : isOrder ? "" : "written";
    items.push(
      el(
        "dt",
        { class: "row-head", "data-table": row.table },
        el("span", { class: "mono", text: `${row.table} · ${row.id.length > 12 ? `${shortId(row.id)}…` : row.id}` }),
        tag ? el("span", { class: `tag${created ? " new" : ""}`, text: tag }) : "",
        row.note ? el("span", { class: "tag delta", text: row.note }) : "",
      ),
    );
    for (const [name, value] of Object.entries(row.fields || {})) {
      const was = before?.fields?.[name];
      const changed = before !== null && JSON.stringify(was) !== JSON.stringify(value);
      const cls = [
        name === "status" ? `status-text s-${value}` : "",
        changed ? "changed" : "",
        typeof value === "object" && value ? "mono" : "",
      ]
        .filter(Boolean)
        .join(" ");
      items.push(
        el("dt", { text: name.replace(/_/g, " ") }),
        el("dd", {
          class: cls,
          "data-field": `${row.table}.${name}`,
          title: changed ? `was ${shown(was)} at the step before` : "",
          text: name === "step" && value === "" ? "(not started)" : shown(value),
        }),
      );
    }
  }
  $("panel-db").replaceChildren(...items);
}

function renderSelected() {
  const index = events.findIndex((e) => e.seq === selectedSeq);
  const event = events[index];
  if (!event) return;
  const since = gap(event, index);
  $("selected-title").textContent =
    `#${event.seq} · ${event.label || event.kind} · ${clock(event.at)}${since ? ` · ${since} since #${events[index - 1].seq}` : ""}`;
  $("selected-message").textContent = event.message;
  const snap = event.snapshot || {};
  renderDb(event, index);
  const q = snap.queue || {};
  const queueRows = [];
  const shownKeys = new Set(["note"]);
  const add = (key, term, value, cls = "") => {
    shownKeys.add(key);
    if (q[key] !== undefined) queueRows.push(...row(term, value ?? q[key], cls));
  };
  add("outbox_id", "outbox row", `#${q.outbox_id}`, "mono");
  add("queue", "queue", undefined, "mono");
  add("from_queue", "taken from", undefined, "mono");
  add("watched_via", "seen through", undefined, "mono");
  add("exchange", "exchange", q.exchange === "" ? "(default: routed by queue name)" : q.exchange, "mono");
  add("routing_key", "routing key", undefined, "mono");
  add("ttl_ms", "TTL", `${q.ttl_ms / 1000} s`);
  if (q.back_at !== undefined) {
    const inMs = Date.parse(q.back_at) - Date.parse(event.at);
    add("back_at", "back in the main queue", `${clock(q.back_at)} (after ${(inMs / 1000).toFixed(1)} s)`);
  }
  for (const [name, value] of Object.entries(q.headers || {})) queueRows.push(...row(name, value, "mono header"));
  shownKeys.add("headers");
  add("message_id", "message id", undefined, "mono");
  add("delivery_tag", "delivery tag");
  add("redelivered", "redelivered", q.redelivered ? "yes" : "no", q.redelivered ? "warn" : "");
  add("delivery_count", "delivery count");
  add("delivery_limit", "delivery limit");
  add("retries", "retries");
  if ("queue_ready" in q)
    add(
      "queue_ready",
      "queue depth (ready)",
      q.queue_ready ?? "not observed yet",
      q.queue_ready === null ? "note" : "",
    );
  for (const [key, value] of Object.entries(q))
    if (!shownKeys.has(key))
      queueRows.push(...row(key.replace(/_/g, " "), typeof value === "object" ? JSON.stringify(value) : value, "mono"));
  if (q.note) queueRows.push(...row("note", q.note, "note"));
  if (!queueRows.length) queueRows.push(...row("message", "not on the broker at this step", "note"));
  $("panel-queue").replaceChildren(...queueRows);
  const c = snap.cache || {};
  const cacheRows = [...row("key", c.key, "mono")];
  if (c.error) cacheRows.push(...row("error", c.error, "warn"));
  else if (c.present === undefined) cacheRows.push(...row("entry", c.note || "not known at this step", "note"));
  else {
    cacheRows.push(...row("entry", c.present ? "present" : "absent", c.present ? "ok" : "warn"));
    if (c.present) cacheRows.push(...row("TTL", c.ttl === null || c.ttl === undefined ? "none" : `${c.ttl} s`));
    if (c.written === false) cacheRows.push(...row("write", "skipped: Redis already held a newer version", "note"));
    if (c.note) cacheRows.push(...row("note", c.note, "note"));
  }
  const article = $("panel-cache");
  article.replaceChildren(...cacheRows);
  if (c.value) {
    const value = {
      status: c.value.status,
      step: c.value.step,
      version: c.value.version,
      total: c.value.total,
      attempts: c.value.attempts,
    };
    if (c.value.result) value.result = c.value.result;
    article.append(
      el("dt", { text: "value" }),
      el("dd", {}, el("pre", { class: "json", text: JSON.stringify(value, null, 2) })),
    );
  }
}

// Step-by-step mode: the worker records `step_waiting` and waits; "Next step" lets it run one step.
let stepMode = false;
function renderStepControl(status) {
  const button = $("next-step");
  if (!button) return;
  const last = events[events.length - 1];
  const waiting = last && last.kind === "step_waiting" && !TERMINAL.has(status);
  button.disabled = !waiting;
  $("step-hint").textContent = waiting
    ? "The worker is waiting: press Next step to run one step."
    : TERMINAL.has(status)
      ? "The order is finished."
      : stepMode
        ? "Step-by-step mode is on: the worker will wait before the next step."
        : "Step-by-step mode is off (turn it on from the dashboard).";
}

async function wireStepControl() {
  const button = $("next-step");
  if (!button) return;
  const sandbox = await api("GET", config.urls.sandbox);
  stepMode = Boolean(sandbox.ok && sandbox.data.step_mode);
  render();
  button.addEventListener("click", async () => {
    button.disabled = true;
    const result = await api("POST", orderUrl(config.urls.nextStep, orderId), {});
    if (!result.ok) $("step-hint").textContent = `Refused (${result.status}): ${errorText(result)}`;
  });
}

onMessage({ type: "snapshot", ...JSON.parse($("initial-journey").textContent) });
wireStepControl();
openLive(orderUrl(config.urls.journeySocket, orderId), onMessage);
