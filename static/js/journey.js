// One order's journey: the timeline of its events and, for the selected one, what PostgreSQL, RabbitMQ and Redis
// held at that moment (each event's `snapshot`). New events arrive over the order's own WebSocket group.
import { api, clock, config, el, errorText, openLive, orderUrl, shortId } from "./live.js";

const $ = (id) => document.getElementById(id);
const orderId = $("order-id").textContent.trim();
const TERMINAL = new Set(config.terminalStatuses);
let order = null;
let events = [];
let selectedSeq = null;
let followLatest = true;

function onMessage(message) {
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
  renderSelected();
  renderStepControl(status);
}

function renderTimeline() {
  $("timeline").replaceChildren(
    ...events.map((event) => {
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

function renderSelected() {
  const event = events.find((e) => e.seq === selectedSeq);
  if (!event) return;
  $("selected-title").textContent = `#${event.seq} · ${event.label || event.kind} · ${clock(event.at)}`;
  $("selected-message").textContent = event.message;
  const snap = event.snapshot || {};
  const db = snap.db || {};
  $("panel-db").replaceChildren(
    ...row("table", db.table, "mono"),
    ...row("id", db.id ? `${shortId(db.id)}…` : "", "mono"),
    ...row("status", db.status, `status-text s-${db.status}`),
    ...row("step", db.step || "(not started)"),
    ...row("attempts", db.attempts),
    ...row("version", db.version),
    ...row("total", db.total),
    ...row("failure reason", db.failure_reason),
    ...row("updated at", db.updated_at ? clock(db.updated_at) : ""),
  );
  const q = snap.queue || {};
  const queueRows = [];
  if (q.outbox_id !== undefined) queueRows.push(...row("outbox row", `#${q.outbox_id}`, "mono"));
  if (q.exchange !== undefined) queueRows.push(...row("exchange", q.exchange, "mono"));
  if (q.routing_key !== undefined) queueRows.push(...row("routing key", q.routing_key, "mono"));
  if (q.queue !== undefined) queueRows.push(...row("queue", q.queue, "mono"));
  if (q.message_id !== undefined) queueRows.push(...row("message id", q.message_id, "mono"));
  if (q.delivery_tag !== undefined) queueRows.push(...row("delivery tag", q.delivery_tag, "mono"));
  if (q.redelivered !== undefined)
    queueRows.push(...row("redelivered", q.redelivered ? "yes" : "no", q.redelivered ? "warn" : ""));
  if (q.delivery_count !== undefined) queueRows.push(...row("delivery count", q.delivery_count));
  if (q.queue_ready !== undefined) queueRows.push(...row("queue depth (ready)", q.queue_ready));
  for (const [key, value] of Object.entries(q)) {
    if (
      ![
        "outbox_id",
        "exchange",
        "routing_key",
        "queue",
        "message_id",
        "delivery_tag",
        "redelivered",
        "delivery_count",
        "queue_ready",
        "note",
      ].includes(key)
    )
      queueRows.push(...row(key.replace(/_/g, " "), typeof value === "object" ? JSON.stringify(value) : value, "mono"));
  }
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
