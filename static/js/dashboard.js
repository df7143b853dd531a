// The dashboard: renders the pipeline snapshot, then applies the batches the server pushes (see dashboard/feed.py
// for the message shapes). Rendering is coalesced to one animation frame, so a busy pipeline never queues work.
import {
  ago,
  api,
  clock,
  config,
  el,
  errorText,
  fmt,
  liveStats,
  openLive,
  orderUrl,
  shortId,
  showFaults,
  showUnsafe,
} from "./live.js";
import { postgresCut, renderOutages, wireOutages } from "./outages.js";

const WINDOW_SECONDS = config.rateWindowSeconds;
const FEED_MAX = config.feedLength;
const CONTROLS_MAX = 6;
const rates = new Map(); // epoch second -> [accepted, completed]
let pipeline = null;
let latestOrders = [];
let feed = []; // newest last
let controlLog = []; // newest last
let dirty = false;
let listsChanged = true; // the feed and the latest orders are rebuilt only when new data arrived

const $ = (id) => document.getElementById(id);

function addRates(rows) {
  for (const [second, accepted, completed] of rows) {
    const bucket = rates.get(second) || [0, 0];
    bucket[0] += accepted;
    bucket[1] += completed;
    rates.set(second, bucket);
  }
  const oldest = Math.floor(Date.now() / 1000) - WINDOW_SECONDS - 5;
  for (const second of rates.keys()) if (second < oldest) rates.delete(second);
}

// Control actions are kept apart from order events, so a burst's thousands of events cannot push them out.
// `feedPending` holds events not drawn yet: the feed is updated by prepending them, never rebuilt whole.
let feedPending = [];
let feedReset = true;
function addFeed(events, controls) {
  feed.push(...(events || []));
  feedPending.push(...(events || []));
  if (feed.length > FEED_MAX) feed = feed.slice(feed.length - FEED_MAX);
  if (feedPending.length > FEED_MAX) feedPending = feedPending.slice(feedPending.length - FEED_MAX);
  controlLog.push(...(controls || []));
  if (controlLog.length > CONTROLS_MAX) controlLog = controlLog.slice(controlLog.length - CONTROLS_MAX);
}

function onMessage(message) {
  if (message.type === "snapshot") {
    rates.clear();
    feed = [];
    feedPending = [];
    feedReset = true;
    controlLog = [];
    addRates(message.rates || []);
    addFeed(message.events, message.controls);
    applyState(message.state);
  } else if (message.type === "update") {
    addRates(message.rates || []);
    addFeed(message.events, message.controls);
    if (message.state) applyState(message.state);
  }
  listsChanged = true;
  schedule();
}

function applyState(state) {
  if (!state) return;
  pipeline = state.pipeline;
  latestOrders = state.latest_orders;
}

function schedule() {
  if (dirty) return;
  dirty = true;
  requestAnimationFrame(() => {
    dirty = false;
    render();
  });
}

function render() {
  const started = performance.now();
  if (pipeline) renderPipeline(pipeline);
  if (listsChanged) {
    listsChanged = false;
    renderOrders();
    renderFeed();
  }
  drawChart();
  const live = liveStats();
  live.renders += 1;
  live.renderMs += performance.now() - started;
}

function renderPipeline(p) {
  $("n-accepted").textContent = fmt(p.orders.total);
  for (const [status, count] of Object.entries(p.orders.by_status)) {
    const node = $(`count-${status}`);
    if (node) node.textContent = fmt(count);
  }
  $("n-outbox").textContent = fmt(p.outbox.backlog);
  $("stage-db").classList.toggle("busy", p.outbox.backlog > 0);
  const main = p.queues.find((q) => q.role === "main");
  if (main) $("exchange-name").textContent = main.name.replace(/\.process$/, "");
  const queueRows = $("queue-rows");
  if (p.queues.length) {
    queueRows.replaceChildren(
      ...p.queues.map((q) =>
        el(
          "tr",
          { class: `q-${q.role}${q.ready > 0 ? " has-ready" : ""}`, "data-queue": q.name },
          el(
            "td",
            {},
            el("span", { class: `role role-${q.role}`, text: roleLabel(q.role) }),
            " ",
            el("span", { class: "mono", text: q.name.split(".").slice(-2).join(".") }),
          ),
          el("td", { class: "num", text: fmt(q.ready) }),
          el("td", { class: "num", text: fmt(q.unacked) }),
          el("td", { class: "num", text: fmt(q.consumers) }),
        ),
      ),
    );
    fillPurgeSelect(p.queues);
  }
  // Depths come from the relays' and workers' observations: when none is recent, say how old they are.
  const stale = p.queues.length && p.queues.every((q) => q.stale);
  $("stage-queues").classList.toggle("stale", Boolean(stale));
  const newest = p.queues
    .map((q) => q.observed_at)
    .sort()
    .pop();
  $("queue-observed").textContent = stale
    ? `depths as last observed ${clock(newest).slice(0, 8)} (${ago(newest)}): no relay or worker has reached RabbitMQ since`
    : "";
  // A heartbeat names its process by host and pid; under the supervisor it is also "worker-1", "worker-2"...
  const supervisedName = new Map((p.processes || []).filter((proc) => proc.pid).map((proc) => [proc.pid, proc.name]));
  const workers = $("worker-list");
  workers.replaceChildren(
    ...(p.workers.length
      ? p.workers.map((w) =>
          el(
            "li",
            { class: "alive", "data-worker": w.name },
            el("span", { class: "dot", title: "heart-beating" }),
            el("span", {
              class: "mono wname",
              text: supervisedName.has(w.pid) ? `${supervisedName.get(w.pid)} · ${w.name}` : w.name,
              title: `${w.hostname} pid ${w.pid}`,
            }),
            el("span", {
              class: "wstat",
              text: `${fmt(w.processed)} done · ${w.unacked} held · ${ago(w.last_seen)}`,
            }),
            w.current_order
              ? el("a", {
                  class: "mono current",
                  href: orderUrl(config.urls.journey, w.current_order),
                  text: `on ${shortId(w.current_order)}`,
                })
              : el("span", { class: "muted current", text: "idle" }),
          ),
        )
      : [el("li", { class: "muted", text: "no worker heart-beating" })]),
  );
  const supervisedRelay = (p.processes || []).find((proc) => proc.name === "relay") || null;
  renderRelay(p.relays || [], p.outbox.backlog, postgresCut(p.supervisor), supervisedRelay);
  renderOutages(p.supervisor);
  // The cluster's nodes are drawn under the exchange (outages.js), not among the workers.
  renderProcesses(
    (p.processes || []).filter((proc) => proc.role !== "rabbitmq"),
    p.supervisor_run,
  );
  renderGone(p.gone_workers || []);
  if (p.stock) renderStock(p.stock);
  if (p.sandbox) {
    showFaults(p.sandbox.active_faults);
    showUnsafe(p.sandbox.unsafe_modes);
    // The form's folded "Unsafe modes" box opens while any is on, so what the banner names is in view.
    if (p.sandbox.unsafe_modes?.length && $("unsafe-modes")) $("unsafe-modes").open = true;
    fillSandbox(p.sandbox.settings);
  }
  const c = p.cache;
  $("n-cache-keys").textContent = c.available === false ? "down" : fmt(c.keys);
  $("n-cache-hits").textContent = fmt(c.hits);
  $("n-cache-misses").textContent = fmt(c.misses);
  $("n-page-reads").textContent = fmt(c.page_reads);
  $("n-cache-ratio").textContent =
    c.hit_ratio === null || c.hit_ratio === undefined ? "–" : `${Math.round(c.hit_ratio * 100)}%`;
}

const RELAY_STATES = {
  idle: "idle",
  publishing: "publishing",
  unreachable: "broker unreachable",
  sweeping: "sweeping",
};

// The relay's heartbeat (worker/relay_monitor.py): running or not, what it is doing, how fast it publishes. Several
// relays share the outbox: their rates add up; the stage shows the first running one's state.
// Under `make run` the supervisor's row for the relay (`supervised`) knows at once what a heartbeat says only after
// WORKER_STALE_AFTER: a killed relay is down now, and the heartbeat it left behind (another pid, silent) is not a
// second running relay.
function renderRelay(relays, backlog, databaseCut = false, supervised = null) {
  const silent = (r) => (Date.now() - Date.parse(r.last_seen)) / 1000 > 3;
  const running = relays.filter((r) => r.alive && !(supervised && r.pid !== supervised.pid && silent(r)));
  const state = running.length ? running[0].state : "none";
  const chip = $("relay-state");
  chip.dataset.state = state;
  chip.textContent = running.length ? RELAY_STATES[state] || state : "not running";
  $("stage-relay").classList.toggle("down", !running.length);
  $("stage-relay").classList.toggle("busy", state === "publishing");
  $("n-relay-rate").textContent = running.length ? fmt(running.reduce((sum, r) => sum + r.rate, 0).toFixed(1)) : "–";
  $("n-relay-backlog").textContent = fmt(backlog);
  const lastPublish = relays
    .map((r) => r.last_publish_at)
    .filter(Boolean)
    .sort()
    .pop();
  $("n-relay-last").textContent = lastPublish ? ago(lastPublish) : "–";
  let detail;
  // It beats every second; silent for longer, it is stuck or cut off from PostgreSQL, where its heartbeat lives.
  const silentFor = relays.length ? (Date.now() - Date.parse(relays[0].last_seen)) / 1000 : 0;
  if (databaseCut && relays.length && silentFor > 3) {
    chip.dataset.state = "unreachable";
    chip.textContent = "database unreachable";
    detail = `PostgreSQL is cut: no outbox rows to claim, and no heartbeat (a PostgreSQL row); last beat ${ago(relays[0].last_seen)}`;
  } else if (running.length && silentFor > 3) {
    detail = `silent for ${Math.round(silentFor)} s: its heartbeat is a PostgreSQL row, so a relay cut off from the database goes quiet too`;
  } else if (running.length) {
    const first = running[0];
    detail = first.detail || `${running.length > 1 ? `${running.length} relays · ` : ""}seen ${ago(first.last_seen)}`;
  } else if (relays.length) {
    detail = `last seen ${clock(relays[0].last_seen).slice(0, 8)} (${ago(relays[0].last_seen)})`;
  } else {
    detail = "start one: manage.py run_relay";
  }
  if (supervised && supervised.state !== "running") {
    chip.dataset.state = "none";
    chip.textContent = supervised.state === "crashed" ? "crashed · restarting" : supervised.state;
    $("stage-relay").classList.add("down");
    $("stage-relay").classList.remove("busy");
    $("n-relay-rate").textContent = "–";
    detail = `${supervised.last_exit || supervised.state}: the outbox waits until the supervisor restarts it`;
  } else if (supervised?.restarts) {
    const last = supervised.last_exit ? ` after ${supervised.last_exit} ${ago(supervised.last_exit_at)}` : "";
    detail += ` · restarted ${supervised.restarts}×${last}`;
  }
  $("relay-detail").textContent = detail;
}

// What the supervisor of `make run` knows and a heartbeat cannot say: a process crashed, how, and how often it came
// back (worker/supervisor.py). Empty when the processes run without it.
function processText(proc) {
  // "starting" after an exit: it stopped (cleanly, or for new settings) and the supervisor starts it again.
  const parts = [proc.state === "starting" && proc.last_exit ? "stopped · restarting" : proc.state];
  if (proc.restarts) parts.push(`restarted ${proc.restarts}×`);
  if (proc.last_exit)
    parts.push(`last exit: ${proc.last_exit}${proc.last_exit_at ? ` ${ago(proc.last_exit_at)}` : ""}`);
  return parts.join(" · ");
}

// "worker-3…8" for workers 3 to 8, "worker-3, worker-5" where the numbers are not consecutive.
function workerRange(names) {
  const numbers = names.map((name) => Number(name.split("-").pop())).sort((a, b) => a - b);
  const consecutive = numbers.every((n, i) => i === 0 || n === numbers[i - 1] + 1);
  if (numbers.length > 1 && consecutive) return `worker-${numbers[0]}…${numbers[numbers.length - 1]}`;
  return numbers.map((n) => `worker-${n}`).join(", ");
}

function renderProcesses(processes, run) {
  const list = $("process-list");
  // A supervisor that stopped heart-beating: its rows describe no process running now (they may run otherwise).
  if (run && !run.running && run.last_seen) {
    list.replaceChildren(
      el(
        "li",
        {
          class: "proc p-ended",
          "data-process": "supervisor",
          "data-state": "ended",
          title: `the ${run.processes} process rows of that make run describe nothing running now: not shown`,
        },
        el("span", { class: "dot", title: "not running" }),
        el("span", { class: "mono pname", text: "supervisor" }),
        el("span", { class: "pstate", text: `not running since ${clock(run.last_seen).slice(0, 8)}` }),
      ),
    );
    return;
  }
  // Workers stopped by scaling down: one line for all of them, so the stage keeps its height.
  const scaledDown = processes.filter((proc) => proc.role === "worker" && proc.state === "stopped");
  const shown = processes.filter((proc) => !scaledDown.includes(proc));
  const items = shown.map((proc) =>
    el(
      "li",
      { class: `proc p-${proc.state}`, "data-process": proc.name, "data-state": proc.state },
      el("span", { class: "dot", title: proc.state }),
      el("span", { class: "mono pname", text: proc.name, title: proc.pid ? `pid ${proc.pid}` : "" }),
      el("span", { class: "pstate", text: processText(proc) }),
    ),
  );
  if (scaledDown.length) {
    const names = scaledDown.map((proc) => proc.name);
    items.push(
      el(
        "li",
        { class: "proc p-stopped", "data-process": "scaled-down", "data-state": "stopped", title: names.join(", ") },
        el("span", { class: "dot", title: "stopped" }),
        el("span", { class: "mono pname", text: workerRange(names) }),
        el("span", { class: "pstate", text: `stopped · ${names.length} worker${names.length > 1 ? "s" : ""}` }),
      ),
    );
  }
  list.replaceChildren(...items);
}

// Stock changes as orders reserve it, bursts drain it and "Restock" refills it.
function renderStock(stock) {
  const total = $("stock-total");
  if (total) total.textContent = fmt(stock.reduce((sum, product) => sum + product.stock, 0));
  for (const product of stock) {
    const option = document.querySelector(`#order-sku option[value="${product.sku}"]`);
    if (option) option.textContent = `${option.dataset.label}, ${fmt(product.stock)} in stock)`;
  }
}

function renderGone(gone) {
  $("gone-workers").hidden = gone.length === 0;
  $("gone-count").textContent = fmt(gone.length);
  $("gone-list").replaceChildren(
    ...gone.map((w) =>
      el(
        "li",
        { "data-worker": w.name },
        el("span", { class: "mono wname", text: w.name, title: `${w.hostname} pid ${w.pid}` }),
        el("span", {
          class: "wstat",
          text: `stopped ${clock(w.stopped_at).slice(0, 8)} (${ago(w.stopped_at)}) · ${fmt(w.processed)} done`,
        }),
      ),
    ),
  );
}

function roleLabel(role) {
  return { main: "main", retry: "retry", dead: "dead letters" }[role] || role;
}

let purgeFilled = "";
function fillPurgeSelect(queues) {
  const select = $("purge-queue");
  const names = queues.map((q) => q.name).join(",");
  if (!select || names === purgeFilled) return;
  purgeFilled = names;
  select.replaceChildren(
    ...queues.map((q) => el("option", { value: q.name, text: `${q.name} (${roleLabel(q.role)})` })),
  );
}

function renderOrders() {
  $("latest-orders").replaceChildren(
    ...latestOrders.map((o) =>
      el(
        "tr",
        { "data-order": o.id },
        el("td", {}, el("a", { class: "mono", href: orderUrl(config.urls.journey, o.id), text: shortId(o.id) })),
        el("td", {}, el("span", { class: `status-chip s-${o.status}`, text: o.status })),
        el("td", { text: o.customer_email }),
        el("td", { class: "num", text: o.total }),
        el("td", { class: "muted", text: clock(o.created_at) }),
      ),
    ),
  );
}

function feedItem(item) {
  return el(
    "li",
    { class: `k-${item.kind}` },
    el("span", { class: "time", text: clock(item.at) }),
    el("span", { class: `kind k-${item.kind}`, text: item.kind.replace(/_/g, " ") }),
    el("a", { class: "mono", href: orderUrl(config.urls.journey, item.order_id), text: shortId(item.order_id) }),
    el("span", { class: "msg", text: item.message }),
  );
}

function renderFeed() {
  const list = $("feed");
  if (feedReset) list.replaceChildren();
  feedReset = false;
  list.prepend(...feedPending.slice().reverse().map(feedItem));
  feedPending = [];
  while (list.children.length > FEED_MAX) list.lastElementChild.remove();
  if (!controlLog.length) return;
  $("control-log").replaceChildren(
    ...controlLog
      .slice()
      .reverse()
      .map((item) =>
        el(
          "li",
          {},
          el("span", { class: "time", text: clock(item.at) }),
          el("span", { class: "msg", text: `${item.action}: ${item.detail}${item.by ? ` (by ${item.by})` : ""}` }),
        ),
      ),
  );
}

const chartSize = { width: 0, height: 0 };
function measureChart() {
  const canvas = $("throughput");
  chartSize.width = canvas.clientWidth;
  chartSize.height = canvas.clientHeight;
  schedule();
}

function drawChart() {
  const canvas = $("throughput");
  const ratio = window.devicePixelRatio || 1;
  // Measured on resize only: reading clientWidth here would force a layout of the whole page on every frame.
  const { width, height } = chartSize;
  if (canvas.width !== width * ratio) {
    canvas.width = width * ratio;
    canvas.height = height * ratio;
  }
  const ctx = canvas.getContext("2d");
  ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
  ctx.clearRect(0, 0, width, height);
  const now = Math.floor(Date.now() / 1000);
  const series = [];
  for (let s = now - WINDOW_SECONDS; s <= now; s++) series.push(rates.get(s) || [0, 0]);
  const peak = Math.max(4, ...series.map(([a, c]) => Math.max(a, c)));
  const top = niceCeil(peak / 4) * 4; // four gridlines at round values
  const left = 44;
  const bottom = height - 20;
  const plotW = width - left - 8;
  const plotH = bottom - 8;
  ctx.font = "11px system-ui, sans-serif";
  ctx.fillStyle = "#6b7280";
  ctx.strokeStyle = "#e5e7eb";
  ctx.lineWidth = 1;
  for (let i = 0; i <= 4; i++) {
    const y = bottom - (plotH * i) / 4;
    ctx.beginPath();
    ctx.moveTo(left, y);
    ctx.lineTo(width - 8, y);
    ctx.stroke();
    const tick = (top * i) / 4;
    ctx.fillText(Number.isInteger(tick) ? fmt(tick) : tick.toFixed(1), 4, y + 4);
  }
  // A tick each minute back from "now", as many as the window holds.
  for (let back = 0; back <= WINDOW_SECONDS; back += 60) {
    const label = back === 0 ? "now" : `-${back / 60}m`;
    ctx.fillText(label, left + (plotW * (WINDOW_SECONDS - back)) / WINDOW_SECONDS - (back === 0 ? 20 : 0), height - 4);
  }
  const line = (index, colour) => {
    ctx.beginPath();
    ctx.strokeStyle = colour;
    ctx.lineWidth = 2;
    series.forEach((point, i) => {
      const x = left + (plotW * i) / WINDOW_SECONDS;
      const y = bottom - (plotH * point[index]) / top;
      if (i === 0) ctx.moveTo(x, y);
      else ctx.lineTo(x, y);
    });
    ctx.stroke();
  };
  line(0, "#2563eb");
  line(1, "#16a34a");
  // The last full second is the current rate.
  const last = series[series.length - 2] || [0, 0];
  $("n-accepted-rate").textContent = fmt(last[0]);
}

function niceCeil(n) {
  const power = 10 ** Math.floor(Math.log10(n));
  for (const step of [1, 2, 2.5, 5, 10]) if (step * power >= n) return step * power;
  return 10 * power;
}

// ------------------------------------------------------------------ controls (rendered for staff only)

function say(id, text, ok = true) {
  const node = $(id);
  node.textContent = text;
  node.dataset.ok = ok ? "yes" : "no";
}

function wireControls() {
  const orderForm = $("order-form");
  if (!orderForm) return;
  orderForm.addEventListener("submit", async (event) => {
    event.preventDefault();
    const result = await api("POST", config.urls.orders, {
      customer_email: $("order-email").value,
      items: [{ sku: $("order-sku").value, quantity: Number($("order-quantity").value) }],
    });
    if (result.ok) {
      const link = el("a", {
        href: orderUrl(config.urls.journey, result.data.id),
        class: "mono",
        text: shortId(result.data.id),
      });
      $("order-result").replaceChildren("Accepted (202): order ", link, ` is ${result.data.status}.`);
      $("order-result").dataset.ok = "yes";
      $("order-result").dataset.order = result.data.id;
    } else say("order-result", `Refused (${result.status}): ${errorText(result)}`, false);
  });

  $("burst-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const count = Number($("burst-count").value);
    const result = await api("POST", config.urls.burst, { count });
    say(
      "burst-result",
      result.ok
        ? result.data.created
          ? `Accepted: ${fmt(result.data.created)} orders placed.`
          : `Accepted: ${fmt(count)} orders are being created in the background.`
        : `Refused (${result.status}): ${errorText(result)}`,
      result.ok,
    );
  });

  loadSandbox();
  $("sandbox-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    // Only what this user changed: sending every field would silently undo what someone else changed meanwhile.
    const body = {};
    for (const input of sandboxInputs()) {
      const value = inputValue(input);
      if (!sandboxShown || !sameValue(value, sandboxShown[input.name])) body[input.name] = value;
    }
    if (!Object.keys(body).length) {
      say("sandbox-result", "Nothing to apply: no setting was changed.");
      return;
    }
    const result = await api("PATCH", config.urls.sandbox, body);
    if (result.ok) {
      fillSandbox(result.data, { force: true });
      const applied = result.data.applied;
      const where = applied.done
        ? `in effect${applied.applied.length ? ` on ${applied.applied.join(", ")}` : ""}`
        : `not yet in effect on ${applied.pending.map((p) => `${p.name} (${p.why})`).join("; ")}`;
      say("sandbox-result", `Applied ${Object.keys(body).join(", ")}: ${where}.`, applied.done);
    } else say("sandbox-result", `Refused (${result.status}): ${errorText(result)}`, false);
  });

  $("restock").addEventListener("click", async () => {
    const result = await api("POST", config.urls.restock, { quantity: config.limits.restock.default });
    if (result.ok) renderStock(result.data.restocked);
    say(
      "burst-result",
      result.ok
        ? `Restocked: +${fmt(config.limits.restock.default)} to every product.`
        : `Refused (${result.status}): ${errorText(result)}`,
      result.ok,
    );
  });

  $("replay-dead").addEventListener("click", async () => {
    const result = await api("POST", config.urls.replayDeadLetters, {});
    say(
      "ops-result",
      result.ok ? `Replay: ${JSON.stringify(result.data)}` : `Refused (${result.status}): ${errorText(result)}`,
      result.ok,
    );
  });
  $("purge").addEventListener("click", async () => {
    const queue = $("purge-queue").value;
    if (
      !queue ||
      !confirm(
        `Purge every ready message from ${queue}? The messages are gone; the sweeper re-sends their orders after a while.`,
      )
    )
      return;
    const result = await api("POST", config.urls.purgeQueue, { queue });
    say(
      "ops-result",
      result.ok
        ? `Purged ${fmt(result.data.purged)} message(s) from ${queue}. ${result.data.note}`
        : `Refused (${result.status}): ${errorText(result)}`,
      result.ok,
    );
  });
  $("flush-cache").addEventListener("click", async () => {
    const result = await api("POST", config.urls.flushCache, {});
    say(
      "ops-result",
      result.ok
        ? `Flushed ${fmt(result.data.removed)} Redis key(s).`
        : `Refused (${result.status}): ${errorText(result)}`,
      result.ok,
    );
  });
}

// The settings as the server last sent them (the pipeline state carries them to every page each second).
let sandboxShown = null;
const sandboxInputs = () => [...$("sandbox-form").querySelectorAll("input[name], select[name]")];
// A select holds a mode: its value is a string, except step_guards' "true"/"false".
const selectValue = (value) => (value === "true" ? true : value === "false" ? false : value);
const inputValue = (input) =>
  input.tagName === "SELECT"
    ? selectValue(input.value)
    : input.type === "checkbox"
      ? input.checked
      : input.value === ""
        ? null
        : Number(input.value);
const sameValue = (a, b) => a === b || (a !== null && b !== null && Number(a) === Number(b));

// A field follows the server unless this user is editing it (it differs from what the server last sent), so a
// change from another page appears here without overwriting an edit in progress.
function fillSandbox(data, { force = false } = {}) {
  if (!$("sandbox-form")) return;
  for (const input of sandboxInputs()) {
    if (!(input.name in data)) continue;
    const editing = !force && sandboxShown && !sameValue(inputValue(input), sandboxShown[input.name]);
    if (editing) continue;
    if (input.type === "checkbox") input.checked = data[input.name];
    else input.value = String(data[input.name] ?? "");
  }
  sandboxShown = Object.fromEntries(sandboxInputs().map((input) => [input.name, data[input.name]]));
}

async function loadSandbox() {
  const result = await api("GET", config.urls.sandbox);
  if (result.ok) fillSandbox(result.data, { force: true });
  else {
    say("sandbox-result", `Fault injection is not available (${result.status}).`, false);
    $("apply-sandbox").disabled = true;
  }
}

// ------------------------------------------------------------------ start

measureChart();
window.addEventListener("resize", measureChart);
onMessage({ type: "snapshot", ...JSON.parse($("initial-state").textContent) });
wireControls();
wireOutages();
openLive(config.urls.pipelineSocket, onMessage);
// Keep "last seen" texts and the chart's time axis moving even when nothing happens.
setInterval(schedule, 1000);
