// The lesson pages (templates/lessons/*.html): one script for every lesson. The lesson itself is data
// (orderpipe/lessons/catalog.py): its steps' buttons call the pipeline's existing endpoints, its checkpoint panel
// polls the lesson's state (numbers measured from real state) every second, and the pipeline socket keeps the
// banner and the workers list live. The flaky client simulator of lesson 4 runs here, in the page.
//
// The buttons are pressed in order: "Start" (a fresh run at the lesson's baseline), then each step's actions, each
// enabled once the one before is done and once its waits hold on the polled numbers. A settings change is done once
// every worker runs it (the sandbox API's `applied`); a step that begins a later phase first freezes the earlier ones.

import { api, config, el, errorText, fmt, openLive, orderUrl, showFaults, showUnsafe } from "./live.js";

const $ = (id) => document.getElementById(id);
const configEl = $("lesson-config");
const lesson = configEl ? JSON.parse(configEl.textContent) : null;
let state = $("lesson-state") ? JSON.parse($("lesson-state").textContent) : null;

function say(ok, text) {
  const out = $("lesson-result");
  if (!out) return;
  out.dataset.ok = ok ? "yes" : "no";
  out.textContent = text;
}

function phaseOf(id) {
  return state.phases.find((phase) => phase.id === id);
}

// ---------------------------------------------------------------- the checkpoint panel

function shown(name, numbers) {
  const value = numbers[name];
  if (value === null || value === undefined) return "–";
  if (name === "lost" && numbers.lost_resent)
    return `${fmt(value)} (${fmt(numbers.lost_resent)} later re-sent by the sweeper)`;
  if (name === "throughput") return `${value}/s`;
  if (name === "seconds") return numbers.completed > 1 ? `${value} s` : "–";
  return fmt(value);
}

const BAD = new Set(["lost", "duplicates", "charged_twice", "stale_reads", "ghost_messages", "oversold", "dropped"]);

function render() {
  for (const phase of state.phases) {
    const head = $(`phase-${phase.id}`);
    if (head) head.dataset.frozen = phase.frozen ? "yes" : "no";
    for (const name of lesson.numbers) {
      const cell = $(`n-${phase.id}-${name}`);
      if (!cell) continue;
      cell.textContent = shown(name, phase.numbers);
      cell.dataset.value = phase.numbers[name] ?? "";
      cell.dataset.bad = BAD.has(name) ? String(phase.numbers[name] > 0) : "";
    }
  }
  // Why some orders cannot be called lost or not yet (a queue holds messages, or nobody observed the queues).
  const why = state.phases.map((phase) => phase.numbers.lost_why).find(Boolean);
  const note = $("lost-note");
  if (note) note.textContent = why ? `'Not yet known': ${why}.` : "";
  for (const checkpoint of state.checkpoints) {
    const item = $(`checkpoint-${checkpoint.id}`);
    if (item) item.dataset.passed = checkpoint.passed_at ? "yes" : "no";
  }
  if (lesson.chart) renderCharts();
  const emails = $("phase-emails");
  if (emails && state.phases[0].email) emails.textContent = state.phases[0].email;
  updateButtons();
}

// ---------------------------------------------------------------- the calls charts (lesson 11)

const SVG = "http://www.w3.org/2000/svg";

function bar(x, y, width, height, kind) {
  const rect = document.createElementNS(SVG, "rect");
  for (const [key, value] of Object.entries({ x, y, width, height, class: kind })) rect.setAttribute(key, value);
  return rect;
}

// Each column's chart: a bar per bin, refused stacked on charged; the same scales in every column (the most bins
// and the highest bin of any), so their peaks compare at a glance.
function renderCharts() {
  const charts = state.phases.map((phase) => phase.numbers[lesson.chart]);
  const bins = Math.max(1, ...charts.map((c) => (c ? c.charged.length : 0)));
  const top = Math.max(1, ...charts.flatMap((c) => (c ? c.charged.map((n, i) => n + c.refused[i]) : [])));
  state.phases.forEach((phase, index) => {
    const svg = $(`chart-${phase.id}`);
    const chart = charts[index];
    if (!svg) return;
    const width = 200 / bins;
    const rects = [];
    (chart?.charged || []).forEach((charged, i) => {
      const refused = chart.refused[i];
      const h1 = (refused / top) * 60;
      const h2 = (charged / top) * 60;
      if (refused) rects.push(bar(i * width, 60 - h1, width, h1, "refused"));
      if (charged) rects.push(bar(i * width, 60 - h1 - h2, width, h2, "charged"));
    });
    svg.replaceChildren(...rects);
    svg.dataset.bins = String(chart ? chart.charged.length : 0);
    svg.dataset.calls = String(chart ? chart.charged.reduce((a, n, i) => a + n + chart.refused[i], 0) : 0);
  });
}

async function refresh() {
  const result = await api("GET", lesson.stateUrl);
  if (result.ok) {
    state = result.data;
    render();
  }
}

async function poll() {
  try {
    await refresh();
  } finally {
    setTimeout(poll, lesson.pollMs);
  }
}

// ---------------------------------------------------------------- the workers, from the pipeline socket

// Which service links `make run`'s supervisor has cut now (name -> true), as the pipeline state last said.
const linksCut = new Map();

function renderPipeline(p) {
  if (p.sandbox) {
    showFaults(p.sandbox.active_faults);
    showUnsafe(p.sandbox.unsafe_modes);
  }
  for (const link of p.supervisor?.links || []) linksCut.set(link.name, Boolean(link.cut));
  const list = $("lesson-workers");
  if (!list) return;
  const processes = (p.processes || []).filter((proc) => proc.role === "worker");
  const items = processes.map((proc) =>
    el(
      "li",
      { "data-process": proc.name, "data-state": proc.state },
      el("b", { text: proc.name }),
      ` ${proc.state}${proc.restarts ? `, restarted ${proc.restarts}×` : ""}${proc.last_exit ? ` (last: ${proc.last_exit})` : ""}`,
    ),
  );
  for (const worker of p.workers || []) {
    items.push(
      el(
        "li",
        { class: "heartbeat", "data-worker": worker.name },
        el("span", { class: "mono", text: worker.name }),
        ` processed ${fmt(worker.processed)}, holding ${fmt(worker.unacked)}`,
      ),
    );
  }
  const queues = p.queues || [];
  const ready = (role) => queues.filter((q) => q.role === role).reduce((sum, q) => sum + q.ready, 0);
  items.push(
    el("li", {
      class: "muted",
      text: `queues: main ${fmt(ready("main"))} · retry tiers ${fmt(ready("retry"))} · dead letters ${fmt(ready("dead"))}`,
    }),
  );
  list.replaceChildren(...(items.length ? items : [el("li", { class: "muted", text: "no worker running" })]));
}

function onPipeline(message) {
  if ((message.type === "snapshot" || message.type === "update") && message.state)
    renderPipeline(message.state.pipeline);
}

// ---------------------------------------------------------------- the steps' buttons

function cookie(name) {
  const match = document.cookie.match(new RegExp(`(?:^|; )${name}=([^;]*)`));
  return match ? decodeURIComponent(match[1]) : "";
}

// A product with stock for the flaky client's orders (the one with the most left).
async function pickSku() {
  const result = await api("GET", lesson.products);
  const products = (result.data?.results || result.data || []).filter((p) => p.stock > 0);
  products.sort((a, b) => b.stock - a.stock);
  return products[0]?.sku;
}

function postOrder(body, key = null) {
  const headers = {
    "Content-Type": "application/json",
    Accept: "application/json",
    "X-CSRFToken": cookie("csrftoken"),
  };
  if (key) headers["Idempotency-Key"] = key;
  return fetch(config.urls.orders, { method: "POST", credentials: "same-origin", headers, body: JSON.stringify(body) });
}

// The flaky client: each logical request is POSTed, its reply "lost" (ignored, as if the network dropped it after
// the server committed), and the same request POSTed once more, with the same Idempotency-Key when `key` is on.
async function flakyClient(params, phase) {
  const sku = await pickSku();
  if (!sku) return { ok: false, text: "No product has stock left: restock from the dashboard." };
  const run = Math.random().toString(16).slice(2, 8);
  const line = showLog(
    `client ${run}: ${params.count} orders of ${sku}, ${params.key ? "with" : "without"} an Idempotency-Key`,
  );
  for (let n = 1; n <= params.count; n += 1) {
    const body = {
      customer_email: phaseOf(phase).email,
      items: [{ sku, quantity: 1 }],
      note: `${lesson.flakyNotePrefix}${run} request ${n}`,
    };
    const key = params.key ? crypto.randomUUID() : null;
    const first = await postOrder(body, key);
    const retry = await postOrder(body, key);
    const replayed = retry.headers.get("Idempotent-Replayed") === "true";
    line(
      `request ${n}: reply lost (the server had answered ${first.status}) → retried → ${retry.status}${replayed ? ", the stored first response (Idempotent-Replayed)" : ", a new order"}`,
    );
    if (first.status === 429 || retry.status === 429)
      return { ok: false, text: "Throttled (429): wait a minute and run it again." };
  }
  return { ok: true, text: `Flaky client done: ${params.count} logical requests, each sent twice.` };
}

function showLog(title) {
  const log = $("client-log");
  log.hidden = false;
  log.textContent = `${title}\n`;
  return (text) => {
    log.textContent += `${text}\n`;
  };
}

// POST orders through the public API, one at a time, as a shop's client would (the publish modes act on the API's
// accept; a burst does not go through it). Says what the server answered.
async function postOrders(params, phase) {
  const sku = await pickSku();
  if (!sku) return { ok: false, text: "No product has stock left: restock from the dashboard." };
  const line = showLog(`POST ${params.count} orders of ${sku} to the API`);
  const answers = {};
  for (let n = 1; n <= params.count; n += 1) {
    const response = await postOrder({ customer_email: phaseOf(phase).email, items: [{ sku, quantity: 1 }] });
    answers[response.status] = (answers[response.status] || 0) + 1;
    line(`order ${n}: ${response.status}${response.status === 202 ? " accepted" : ""}`);
  }
  const summary = Object.entries(answers)
    .map(([code, count]) => `${count} × ${code}`)
    .join(", ");
  return { ok: true, text: `${params.count} orders POSTed: ${summary}.` };
}

// Read the phase's orders through the API, as customers refreshing a page would: `rounds` rounds, or, with
// `afterSettled`, once every `everyMs` until the phase's orders are all settled and that many rounds more (so the
// reads see every order change, whatever the machine's speed). The server counts the hits, misses and stale reads.
async function readOrders(params, phase) {
  await refresh(); // the orders the step before placed exist: read the state that lists them
  const ids = phaseOf(phase).numbers.ids;
  if (!ids.length) return { ok: false, text: "This phase has no orders to read yet." };
  const line = showLog(`read ${ids.length} orders`);
  let after = params.afterSettled ?? 0;
  let round = 0;
  const maxRounds = params.rounds ?? 300;
  while (round < maxRounds) {
    round += 1;
    const seen = { HIT: 0, MISS: 0 };
    const statuses = {};
    for (const id of ids) {
      const response = await fetch(orderUrl(lesson.orderApi, id), { credentials: "same-origin" });
      const body = response.ok ? await response.json() : {};
      seen[response.headers.get("X-Cache")] = (seen[response.headers.get("X-Cache")] || 0) + 1;
      statuses[body.status] = (statuses[body.status] || 0) + 1;
    }
    const shownStatuses = Object.entries(statuses)
      .map(([status, count]) => `${count} ${status}`)
      .join(", ");
    line(`round ${round}: ${seen.HIT} hits, ${seen.MISS} misses; the API said ${shownStatuses}`);
    if (params.rounds === undefined) {
      await refresh();
      if (phaseOf(phase).numbers.settled) {
        if (after === 0) break;
        after -= 1;
      }
    }
    if (round < maxRounds) await new Promise((resolve) => setTimeout(resolve, params.everyMs));
  }
  return { ok: true, text: `Read ${ids.length} orders ${round} times.` };
}

async function replay(phase) {
  await refresh();
  const ids = phaseOf(phase).numbers.replayable_ids;
  if (!ids.length) return { ok: false, text: "None of this lesson's orders is dead-lettered (yet)." };
  let replayed = 0;
  for (const id of ids) {
    const result = await api("POST", config.urls.replayDeadLetters, { order_id: id });
    if (!result.ok) return { ok: false, text: `Refused (${result.status}): ${errorText(result)}` };
    replayed += result.data.replayed;
  }
  return { ok: true, text: `${replayed} dead-lettered order(s) replayed.` };
}

function appliedText(applied) {
  if (!applied.done) return `not yet in effect on ${applied.pending.map((p) => `${p.name} (${p.why})`).join("; ")}`;
  return applied.applied.length ? `in effect on ${applied.applied.join(", ")}` : "in effect (no worker running)";
}

// Wait until the settings `applied` describes (or a later version) run on every worker, saying who is still behind.
async function untilApplied(applied, label) {
  const deadline = Date.now() + lesson.appliedWaitMs;
  let now = applied;
  while (!now.done) {
    say(true, `${label}: ${appliedText(now)}…`);
    if (Date.now() > deadline)
      return { ok: false, text: `${label}: ${appliedText(now)} after ${lesson.appliedWaitMs / 1000} s.` };
    await new Promise((resolve) => setTimeout(resolve, 300));
    const result = await api("GET", config.urls.sandbox);
    if (result.ok && result.data.applied.version >= applied.version) now = result.data.applied;
  }
  return { ok: true, text: `${label}: done, ${appliedText(now)}.` };
}

async function waitFor(predicate, timeoutMs) {
  const deadline = Date.now() + timeoutMs;
  while (!predicate()) {
    if (Date.now() > deadline) return false;
    await new Promise((resolve) => setTimeout(resolve, 200));
  }
  return true;
}

// A step the lesson's own endpoint carries out (its catalog holds the parameters): named by its place.
async function act(button, action) {
  const result = await api("POST", lesson.actUrl, {
    step: Number(button.dataset.step) - 1,
    action: Number(button.dataset.action),
  });
  if (!result.ok) return { ok: false, text: `Refused (${result.status}): ${errorText(result)}` };
  return { ok: true, text: `${action.label}: ${result.data.text}` };
}

async function run(action, button) {
  const call = async (method, url, body) => {
    const result = await api(method, url, body);
    return {
      ok: result.ok,
      text: result.ok ? `${action.label}: done.` : `Refused (${result.status}): ${errorText(result)}`,
    };
  };
  switch (action.kind) {
    case "sandbox": {
      // Done once every worker runs the change (and, for scaling, the wanted workers run with it).
      const result = await api("PATCH", config.urls.sandbox, action.params);
      if (!result.ok) return { ok: false, text: `Refused (${result.status}): ${errorText(result)}` };
      return untilApplied(result.data.applied, action.label);
    }
    case "burst":
      return call("POST", config.urls.burst, { ...action.params, customer_email: phaseOf(action.phase).email });
    case "restock":
      return call("POST", config.urls.restock, action.params);
    case "flush_cache":
      return call("POST", config.urls.flushCache);
    case "purge":
      return call("POST", config.urls.purgeQueue, { queue: lesson.mainQueue });
    case "replay":
      return replay(action.phase);
    case "kill":
      return call("POST", config.urls.kill, { process: action.params.process, signal: "SIGKILL" });
    case "outage": {
      // The supervisor carries it out within about a second: the step is done once the pipeline state shows it.
      const result = await call("POST", config.urls.outage, action.params);
      const cut = action.params.action === "cut";
      if (result.ok && !(await waitFor(() => linksCut.get(action.params.service) === cut, 15000))) {
        return { ok: false, text: `${action.label}: the supervisor did not carry it out within 15 s.` };
      }
      return result;
    }
    case "post_orders":
      return postOrders(action.params, action.phase);
    case "read_orders":
      return readOrders(action.params, action.phase);
    case "flaky_client":
      return flakyClient(action.params, action.phase);
    case "stock_burst":
    case "outage_burst":
      return act(button, action);
    default:
      return { ok: false, text: `Unknown action ${action.kind}` };
  }
}

// ---------------------------------------------------------------- pressing them in order

const buttons = () => [...document.querySelectorAll(".lesson-action")];
const actionOf = (button) => lesson.steps[Number(button.dataset.step) - 1][Number(button.dataset.action)];
// How many actions of this run are done (null until "Start" is pressed in this page), and whether one is running.
let progress = null;
let busy = false;

// What each wait of the catalog (WAITS) needs of its phase's numbers.
const WAIT_TESTS = {
  settled: (n) => Boolean(n.settled),
  held: (n) => n.held > 0,
  published: (n) => n.accepted > 0 && n.in_outbox === 0,
  nacked: (n) => n.publish_nacks > 0,
};

function unmet(action) {
  return (action.waits || []).filter(([kind, phase]) => !WAIT_TESTS[kind](phaseOf(phase)?.numbers || {}));
}

function updateButtons() {
  const start = $("lesson-start");
  if (!start || start.dataset.refused) return;
  start.disabled = busy;
  const next = $("lesson-next");
  let waiting = "";
  buttons().forEach((button, index) => {
    const action = actionOf(button);
    const open = progress !== null && index === progress && !busy;
    const missing = open ? unmet(action) : [];
    button.disabled = !open || missing.length > 0;
    if (open && missing.length)
      waiting = `Next: ${action.label}, once ${missing.map(([kind, phase]) => `${lesson.waitLabels[kind]} (${phaseOf(phase).label})`).join(" and ")}.`;
    else if (open) waiting = `Next: ${action.label}.`;
  });
  if (progress === null) waiting = "Press “Start the lesson”.";
  else if (progress >= buttons().length) waiting = "Every step done.";
  if (next) next.textContent = waiting;
}

async function press(button) {
  const index = buttons().indexOf(button);
  const action = actionOf(button);
  const step = Number(button.dataset.step) - 1;
  busy = true;
  updateButtons();
  say(true, `${action.label}…`);
  try {
    // The first press of a step that begins a later phase keeps the earlier phases' figures as they are now.
    if (Number(button.dataset.action) === 0 && lesson.begins[step]) {
      const begun = await api("POST", lesson.phaseUrl, { phase: lesson.begins[step] });
      if (!begun.ok) {
        say(false, `Refused (${begun.status}): ${errorText(begun)}`);
        return;
      }
    }
    const result = await run(action, button);
    say(result.ok, result.text);
    if (result.ok) {
      button.dataset.done = "yes";
      progress = Math.max(progress ?? 0, index + 1);
    }
    await refresh();
  } finally {
    busy = false;
    updateButtons();
  }
}

async function start() {
  busy = true;
  updateButtons();
  say(true, "Starting: the lesson's baseline…");
  try {
    const result = await api("POST", lesson.startUrl);
    if (!result.ok) {
      say(false, `Refused (${result.status}): ${errorText(result)}`);
      return;
    }
    const reset = result.data.reset.length ? `reset ${result.data.reset.join(", ")}` : "nothing to reset";
    const applied = await untilApplied(result.data.applied, "Started");
    say(applied.ok, `${applied.text} A fresh run; ${reset}.`);
    if (!applied.ok) return;
    for (const button of buttons()) delete button.dataset.done;
    $("client-log").hidden = true;
    progress = 0;
    $("lesson-start").dataset.done = "yes";
    await refresh();
  } finally {
    busy = false;
    updateButtons();
  }
}

function wireSteps() {
  if ($("lesson-start")?.disabled) $("lesson-start").dataset.refused = "yes"; // not staff: nothing to press
  for (const button of buttons()) button.addEventListener("click", () => press(button));
  $("lesson-start")?.addEventListener("click", start);
  $("lesson-reset")?.addEventListener("click", async () => {
    busy = true;
    updateButtons();
    try {
      const result = await api("POST", lesson.resetUrl);
      if (!result.ok) {
        say(false, `Refused (${result.status}): ${errorText(result)}`);
        return;
      }
      const applied = await untilApplied(result.data.applied, "Reset");
      const reset = result.data.reset.length ? `, reset ${result.data.reset.join(", ")}` : "";
      say(applied.ok, `Reset: the lesson's baseline${reset}; ${result.data.removed_orders} order(s) deleted.`);
      for (const button of buttons()) delete button.dataset.done;
      $("client-log").hidden = true;
      progress = null;
      await refresh();
    } finally {
      busy = false;
      updateButtons();
    }
  });
}

function wireInstructor() {
  const button = $("reset-all");
  if (!button) return;
  button.addEventListener("click", async () => {
    const result = await api("POST", button.dataset.url);
    say(
      result.ok,
      result.ok
        ? `Reset: ${result.data.removed_orders} order(s) deleted, ${result.data.removed_passes} checkpoint(s) forgotten.`
        : `Refused (${result.status}): ${errorText(result)}`,
    );
    if (result.ok) setTimeout(() => location.reload(), 800);
  });
}

if (lesson) {
  render();
  wireSteps();
  setTimeout(poll, lesson.pollMs);
}
wireInstructor();
// The banner and the live status on every lesson page; outside the sandbox there is nothing to watch for.
if (document.getElementById("fault-banner")) openLive(config.urls.pipelineSocket, onPipeline);
