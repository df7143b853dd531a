// The "What happens when…" controls (staff): kill or stop a supervised process, cut or restore a service link, send
// a poison message. Kill and cut are requests to `make run`'s supervisor (orderpipe/dashboard/outages.py): the page only
// files them and shows what the pipeline state says came of them (the links' state, the processes' restarts, the
// feed). Without a supervisor (Compose, bare workers) the buttons are disabled and say why.
import { api, config, el, errorText } from "./live.js";

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

export function renderOutages(supervisor) {
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
