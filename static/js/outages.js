// The "What happens when…" controls (staff): kill or stop a supervised process, cut or restore a service link, kill or
// restart a node of the RabbitMQ cluster, send a poison message. Kill and cut are requests to `make run`'s supervisor (orderpipe/dashboard/outages.py): the page only
// files them and shows what the pipeline state says came of them (the links' state, the processes' restarts, the
// feed). Without a supervisor (Compose, bare workers) the buttons are disabled and say why; so are the node controls
// when the supervisor runs against one broker instead of `make cluster`'s three nodes.
import { ago, api, config, el, errorText } from "./live.js";

const $ = (id) => document.getElementById(id);
const LINK_LABELS = { postgresql: "PostgreSQL", rabbitmq: "RabbitMQ", redis: "Redis" };

function say(text, ok = true) {
  const node = $("outage-result");
  node.textContent = text;
  node.dataset.ok = ok ? "yes" : "no";
}

async function send(url, body, done) {
  const result = await api("POST", url, body);
  say(result.ok ? done(result.data) : `Refused (${result.status}): ${errorText(result)}`, result.ok);
}

export function wireOutages() {
  if (!$("outage-box")) return;
  for (const [id, signal] of [
    ["kill-sigkill", "SIGKILL"],
    ["kill-sigterm", "SIGTERM"],
  ])
    $(id).addEventListener("click", () => {
      const process = $("kill-process").value;
      if (!process) return;
      send(config.urls.kill, { process, signal }, (data) => data.note);
    });
  for (const button of document.querySelectorAll("#link-list button[data-service]"))
    button.addEventListener("click", () => {
      const { service, action } = button.dataset;
      send(config.urls.outage, { service, action }, (data) => data.note);
    });
  for (const [id, action] of [
    ["node-kill", "kill"],
    ["node-restart", "restart"],
  ])
    $(id).addEventListener("click", () => {
      const node = $("node-pick").value;
      if (!node) return;
      send(config.urls.node, { node, action }, (data) => data.note);
    });
  $("node-pick").addEventListener("change", () => renderNodes(lastSupervisor));
  $("send-poison").addEventListener("click", () =>
    send(
      config.urls.poison,
      { kind: "undecodable" },
      (data) => `Poison message ${data.message_id} published: watch the dead-letter queue.`,
    ),
  );
}

// A cut of PostgreSQL restores itself: count down to the time the supervisor gave.
function linkText(link) {
  if (!link) return "direct (no proxy)";
  if (!link.cut) return "up";
  if (link.restore_at) {
    const left = Math.max(0, Math.ceil((Date.parse(link.restore_at) - Date.now()) / 1000));
    return `cut · restores in ${left} s`;
  }
  return "cut";
}

const NODE_WORDS = { running: "up", starting: "starting", crashed: "down" };

// A node as the supervisor last saw it: up, starting, or down since when and how.
function nodeText(node) {
  if (node.state === "running") return node.restarts ? `up · restarted ${node.restarts}×` : "up";
  if (node.state === "starting") return "starting…";
  const since = node.last_exit_at ? ` ${ago(node.last_exit_at)}` : "";
  return `down · ${node.last_exit || "gone"}${since}`;
}

function renderNodes(supervisor) {
  const nodes = supervisor.available ? supervisor.nodes || [] : [];
  $("node-list").replaceChildren(
    ...nodes.map((node) =>
      el(
        "li",
        { "data-node": node.name, "data-state": node.state, title: node.pid ? `pid ${node.pid}` : "" },
        el("span", { class: "dot" }),
        el("span", { class: "mono", text: node.name }),
        el("span", { class: "nstate", text: nodeText(node) }),
      ),
    ),
  );
  if (!$("outage-box")) return;
  const reason = supervisor.available ? supervisor.cluster_reason : "";
  $("node-reason").hidden = !reason;
  $("node-reason").textContent = reason ? `RabbitMQ node: ${reason}.` : "";
  const off = !supervisor.available || Boolean(reason);
  $("node-pick").disabled = off;
  const select = $("node-pick");
  const chosen = select.value;
  const wanted = nodes.map((node) => `${node.name}|${node.state}`).join();
  if (select.dataset.shown !== wanted) {
    select.dataset.shown = wanted;
    select.replaceChildren(
      ...nodes.map((node) =>
        el("option", {
          value: node.name,
          text: `${node.name} (${NODE_WORDS[node.state] || node.state})`,
        }),
      ),
    );
    if (nodes.some((node) => node.name === chosen)) select.value = chosen;
  }
  // Kill a node that is up, restart one that is down: the buttons follow the picked node's state.
  const picked = nodes.find((node) => node.name === select.value);
  $("node-kill").disabled = off || picked?.state !== "running";
  $("node-restart").disabled = off || picked?.state !== "crashed";
}

let lastSupervisor = { available: false, nodes: [] };

export function renderOutages(supervisor) {
  if (supervisor) {
    lastSupervisor = supervisor;
    renderNodes(supervisor);
  }
  if (!$("outage-box") || !supervisor) return;
  const reason = $("outage-reason");
  reason.hidden = supervisor.available;
  reason.textContent = supervisor.available ? "" : `Disabled: ${supervisor.reason}.`;
  for (const node of document.querySelectorAll("#outage-box [data-needs-supervisor]"))
    node.disabled = !supervisor.available;
  const select = $("kill-process");
  const names = supervisor.processes || [];
  if ([...select.options].map((o) => o.value).join() !== names.join()) {
    const chosen = select.value;
    select.replaceChildren(...names.map((name) => el("option", { value: name, text: name })));
    if (names.includes(chosen)) select.value = chosen;
  }
  const links = new Map((supervisor.links || []).map((link) => [link.name, link]));
  for (const name of Object.keys(LINK_LABELS)) {
    const link = links.get(name);
    const row = document.querySelector(`#link-list [data-link="${name}"]`);
    if (!row) continue;
    row.dataset.cut = link?.cut ? "yes" : "no";
    $(`link-state-${name}`).textContent = linkText(link);
    if (!link) for (const button of row.querySelectorAll("button")) button.disabled = true;
  }
}

// The relay's heartbeat is a PostgreSQL row: cut off from the database, the relay cannot write it, so the page says
// so from the link's state instead of calling the relay "not running".
export function postgresCut(supervisor) {
  return Boolean(supervisor?.links?.some((link) => link.name === "postgresql" && link.cut));
}
