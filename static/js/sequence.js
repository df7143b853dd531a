// One order's journey as a sequence diagram: a lane per participant, an arrow per event at its time, retries and
// redeliveries drawn as loops on RabbitMQ's lane. Which arrow an event kind draws comes from the server's table
// (orderpipe/dashboard/sequence.py, sent as the "sequence-table" JSON); this module only lays it out.
//
// Time runs down. The gap between two arrows is to scale (SCALE.pxPerSecond) but never less than one row, so
// arrows milliseconds apart stay readable; a wait longer than SCALE.breakAfterMs is cut short by a break that says
// how long it was.
import { clock } from "./live.js";

const NS = "http://www.w3.org/2000/svg";
export const SCALE = { row: 30, pxPerSecond: 40, breakAfterMs: 2500, breakRow: 110 };
const GUTTER = 96; // the left column: each arrow's number and the time since the one before
const HEAD = 34; // the lane names
const TOP = 26; // from the lane names to the first arrow
const BOTTOM = 22;
const MIN_LANE = 92;

// Text colours at least 7:1 on white and 4.5:1 on the selected row's band (#dbeafe).
export const TONES = {
  normal: "#1f2937",
  retry: "#92400e",
  redelivery: "#6d28d9",
  fail: "#b91c1c",
  control: "#155e75",
};
const LANE_COLOURS = {
  client: "#475569",
  api: "#1d4ed8",
  postgresql: "#336791",
  relay: "#0f766e",
  rabbitmq: "#c2410c",
  worker: "#6d28d9",
  gateway: "#15803d",
  redis: "#b91c1c",
};
const MUTED = "#475569";

// The table's row for this event: the first whose `when` key the event's queue snapshot has, else the default.
export function arrowFor(table, event) {
  const rows = table.arrows[event.kind];
  if (!rows)
    return { source: "worker", target: "worker", label: event.kind, via: [], when: "", tone: "normal", loop: "" };
  const queue = event.snapshot?.queue || {};
  return rows.find((row) => row.when && row.when in queue) || rows[rows.length - 1];
}

// "+12 ms", "+0.84 s", "+2 min 5 s": as the timeline shows it.
export function gapText(ms) {
  if (!(ms >= 0)) return "";
  if (ms < 1000) return `+${Math.round(ms)} ms`;
  if (ms < 60_000) return `+${(ms / 1000).toFixed(ms < 10_000 ? 2 : 1)} s`;
  return `+${Math.floor(ms / 60_000)} min ${Math.round((ms % 60_000) / 1000)} s`;
}

// Where each event's arrow goes, top to bottom: [{event, y, gapMs, broken}] and the height of the arrows' part.
export function layout(events, scale = SCALE) {
  let y = 0;
  const rows = events.map((event, index) => {
    const gapMs = index === 0 ? 0 : Math.max(0, Date.parse(event.at) - Date.parse(events[index - 1].at));
    const broken = gapMs > scale.breakAfterMs;
    if (index > 0) y += broken ? scale.breakRow : Math.max(scale.row, (gapMs / 1000) * scale.pxPerSecond);
    return { event, y, gapMs, broken, first: index === 0 };
  });
  return { rows, height: y };
}

// The loops: each arrow that closes one (`loop` in the table) goes back to the latest earlier event of the loop's
// starting kinds. [{name, fromSeq, toSeq}]
export function loops(table, events) {
  const found = [];
  events.forEach((event, index) => {
    const name = arrowFor(table, event).loop;
    if (!name) return;
    const starts = new Set(table.loops[name] || []);
    for (let i = index - 1; i >= 0; i -= 1)
      if (starts.has(events[i].kind)) {
        found.push({ name, fromSeq: events[i].seq, toSeq: event.seq });
        return;
      }
  });
  return found;
}

function svg(tag, attrs = {}, ...children) {
  const node = document.createElementNS(NS, tag);
  for (const [key, value] of Object.entries(attrs))
    if (value !== undefined && value !== null) node.setAttribute(key, value);
  for (const child of children) node.append(child);
  return node;
}

const text = (content, attrs) => svg("text", attrs, content);

// Arrowheads, one per tone (a marker takes its colour from its own fill, not from the line's).
function defs() {
  return svg(
    "defs",
    {},
    ...Object.entries(TONES).map(([tone, colour]) =>
      svg(
        "marker",
        {
          id: `seq-head-${tone}`,
          viewBox: "0 0 10 10",
          refX: 9,
          refY: 5,
          // In the drawing's units, so a selected (thicker) arrow keeps the same head.
          markerUnits: "userSpaceOnUse",
          markerWidth: 10,
          markerHeight: 10,
          orient: "auto-start-reverse",
        },
        svg("path", { d: "M0,0 L10,5 L0,10 z", fill: colour }),
      ),
    ),
  );
}

function laneXs(lanes, width) {
  const laneWidth = Math.max(MIN_LANE, (width - GUTTER - 8) / lanes.length);
  return Object.fromEntries(lanes.map((lane, i) => [lane.key, GUTTER + (i + 0.5) * laneWidth]));
}

// What the diagram says in words (its <desc>): the participants and each arrow, for a screen reader and the export.
function describe(table, events) {
  const name = Object.fromEntries(table.lanes.map((lane) => [lane.key, lane.name]));
  const lines = events.map((event) => {
    const arrow = arrowFor(table, event);
    return `#${event.seq} ${name[arrow.source]} to ${name[arrow.target]}: ${labelFor(arrow, event)}`;
  });
  return `Participants: ${table.lanes.map((lane) => lane.name).join(", ")}. ${lines.join(". ")}.`;
}

// The table's label, with what this one event adds: which retry, which delivery, how long the delay.
function labelFor(arrow, event) {
  const queue = event.snapshot?.queue || {};
  if (event.kind === "retry_scheduled" && queue.ttl_ms !== undefined)
    return `${arrow.label} (${queue.ttl_ms / 1000} s)`;
  if (arrow.loop === "retry" && queue.retries) return `retry ${queue.retries}: ${arrow.label}`;
  if (arrow.loop === "redelivery" && queue.delivery_count) return `${arrow.label} #${queue.delivery_count}`;
  return arrow.label;
}

function drawHeader(lanes, xs) {
  const group = svg("g", { class: "seq-lanes" });
  for (const lane of lanes) {
    const x = xs[lane.key];
    group.append(
      svg("rect", {
        x: x - 46,
        y: 4,
        width: 92,
        height: HEAD - 8,
        rx: 6,
        fill: "#ffffff",
        stroke: LANE_COLOURS[lane.key] || MUTED,
        "stroke-width": 1.5,
      }),
      text(lane.name, {
        x,
        y: HEAD / 2 + 4,
        "text-anchor": "middle",
        "font-size": 12,
        "font-weight": 600,
        fill: "#1f2937",
      }),
    );
  }
  return group;
}

// A wait too long to draw to scale: a white band with zigzag edges across the lanes, and how long it was.
function drawBreak(y0, y1, width, ms) {
  const mid = (y0 + y1) / 2;
  const zig = (y) => {
    let d = `M${GUTTER - 6},${y}`;
    for (let x = GUTTER - 6, up = true; x < width; x += 8, up = !up) d += ` L${x + 8},${y + (up ? -4 : 4)}`;
    return d;
  };
  return svg(
    "g",
    { class: "seq-break", "data-ms": Math.round(ms) },
    svg("rect", { x: GUTTER - 6, y: mid - 12, width: width - GUTTER + 6, height: 24, fill: "#ffffff" }),
    svg("path", { d: zig(mid - 12), fill: "none", stroke: "#94a3b8" }),
    svg("path", { d: zig(mid + 12), fill: "none", stroke: "#94a3b8" }),
    text(`${gapText(ms).slice(1)} later (not to scale)`, {
      x: GUTTER + 4,
      y: mid + 4,
      "font-size": 11,
      "font-style": "italic",
      fill: MUTED,
    }),
  );
}

// A loop on RabbitMQ's lane from the row where the message went round to the row where it came back: solid for a
// retry (through a delay queue), dashed for a redelivery (a delivery never acked, returned to the queue).
function drawLoop(loop, x, y0, y1) {
  const bulge = loop.name === "retry" ? 26 : 42;
  const tone = loop.name === "retry" ? "retry" : "redelivery";
  const top = y0 + 5;
  const bottom = y1 - 5;
  const d = `M${x - 3},${top} C${x - bulge},${top} ${x - bulge},${top} ${x - bulge},${top + 10} L${x - bulge},${Math.max(
    top + 10,
    bottom - 10,
  )} C${x - bulge},${bottom} ${x - bulge},${bottom} ${x - 3},${bottom}`;
  const title = loop.name === "retry" ? "retry: through a delay queue and back" : "redelivery: never acked, returned";
  return svg(
    "g",
    { class: "seq-loop", "data-loop": loop.name, "data-from": loop.fromSeq, "data-to": loop.toSeq },
    svg("title", {}, `${title} (#${loop.fromSeq} to #${loop.toSeq})`),
    svg("path", {
      d,
      fill: "none",
      stroke: TONES[tone],
      "stroke-width": 2.5,
      "stroke-dasharray": loop.name === "retry" ? null : "5 3",
      "marker-end": `url(#seq-head-${tone})`,
    }),
  );
}

// The cache write that followed this event (write-through): a dot on Redis's lane, hollow when Redis held a newer
// version already, a cross when Redis was down.
function drawCacheMark(event, x, y) {
  const cache = event.snapshot?.cache;
  if (!cache || (cache.present === undefined && !cache.error)) return null;
  const group = svg("g", { class: "seq-cache", "aria-hidden": "true" });
  if (cache.error) {
    group.append(
      svg("title", {}, `Redis: ${cache.error}`),
      svg("path", {
        d: `M${x - 4},${y - 4} L${x + 4},${y + 4} M${x - 4},${y + 4} L${x + 4},${y - 4}`,
        stroke: TONES.fail,
        "stroke-width": 2,
      }),
    );
  } else if (cache.present) {
    const written = cache.written !== false;
    group.append(
      svg(
        "title",
        {},
        written ? `cached: version ${cache.value?.version ?? "?"}` : "cache write skipped: Redis held a newer version",
      ),
      svg("circle", {
        cx: x,
        cy: y,
        r: 4,
        fill: written ? LANE_COLOURS.redis : "#ffffff",
        stroke: LANE_COLOURS.redis,
        "stroke-width": 1.5,
      }),
    );
  } else return null;
  return group;
}

// A label keeps a rim of its row's background, so a lifeline behind it does not cut through the letters.
const halo = (selected) => ({
  stroke: selected ? "#dbeafe" : "#ffffff",
  "stroke-width": 3,
  "paint-order": "stroke",
  "stroke-linejoin": "round",
});

function drawArrow(table, event, row, xs, width, selected) {
  const arrow = arrowFor(table, event);
  const colour = TONES[arrow.tone] || TONES.normal;
  const x1 = xs[arrow.source] ?? xs.worker;
  const x2 = xs[arrow.target] ?? xs.worker;
  const y = row.y;
  const label = labelFor(arrow, event);
  const names = Object.fromEntries(table.lanes.map((lane) => [lane.key, lane.name]));
  const group = svg("g", {
    class: `seq-arrow tone-${arrow.tone}${selected ? " selected" : ""}`,
    "data-seq": event.seq,
    "data-kind": event.kind,
    "data-from": arrow.source,
    "data-to": arrow.target,
    tabindex: 0,
    role: "button",
    "aria-pressed": String(selected),
  });
  // Its name is the label it shows; the <desc> adds what the gutter and the lanes say.
  group.append(
    svg(
      "desc",
      {},
      `#${event.seq}, ${names[arrow.source]} to ${names[arrow.target]}, ${event.label || event.kind} at ${clock(
        event.at,
      )}${row.first ? "" : `, ${gapText(row.gapMs)} after the step before`}`,
    ),
  );
  // The row's hit area (transparent: the selected row's band is drawn under the loops, in buildSvg).
  group.append(
    svg("rect", {
      class: "seq-hit",
      x: 2,
      y: y - 19,
      width: width - 4,
      height: 26,
      rx: 4,
      fill: "#ffffff",
      "fill-opacity": 0,
    }),
    text(`#${event.seq}`, {
      x: 8,
      y: y + 4,
      "font-size": 11,
      "font-weight": 600,
      fill: MUTED,
      "font-family": "monospace",
      "aria-hidden": "true",
    }),
    text(row.first ? "" : gapText(row.gapMs), {
      x: 40,
      y: y + 4,
      "font-size": 11,
      fill: MUTED,
      "font-family": "monospace",
      class: "seq-gap",
      "aria-hidden": "true",
    }),
  );
  const strokeWidth = selected ? 2.5 : 1.6;
  if (x1 === x2) {
    // A self-message: out to the right and back to the same lane.
    group.append(
      svg("path", {
        d: `M${x1},${y - 8} L${x1 + 30},${y - 8} L${x1 + 30},${y + 4} L${x1 + 2},${y + 4}`,
        fill: "none",
        stroke: colour,
        "stroke-width": strokeWidth,
        "marker-end": `url(#seq-head-${arrow.tone})`,
      }),
      text(label, { x: x1 + 36, y: y, "font-size": 12, fill: colour, class: "seq-label", ...halo(selected) }),
    );
  } else {
    const dir = x2 > x1 ? 1 : -1;
    group.append(
      svg("line", {
        x1,
        y1: y,
        x2: x2 - dir * 2,
        y2: y,
        stroke: colour,
        "stroke-width": strokeWidth,
        "stroke-dasharray": arrow.tone === "fail" && event.kind === "publish_failed" ? "4 3" : null,
        "marker-end": `url(#seq-head-${arrow.tone})`,
      }),
      ...arrow.via.map((lane) => svg("circle", { cx: xs[lane], cy: y, r: 3, fill: colour })),
      svg("circle", { cx: x1, cy: y, r: 2.5, fill: colour }),
      text(label, {
        // From the arrow's left end on: clear of the loops, which bulge out left of RabbitMQ's lane.
        x: Math.min(x1, x2) + 8,
        y: y - 5,
        "font-size": 12,
        fill: colour,
        "font-weight": selected ? 700 : 400,
        class: "seq-label",
        ...halo(selected),
      }),
    );
  }
  const cache = drawCacheMark(event, xs.redis, y);
  if (cache) group.append(cache);
  return group;
}

// The whole diagram as one <svg>. With `header`, the lane names are drawn on top (the export); without, the page
// shows them in a separate sticky strip (`headerSvg`) so they stay in view while the arrows scroll.
export function buildSvg(
  table,
  events,
  { width, selectedSeq = null, header = true, title = "Sequence diagram", caption = "" } = {},
) {
  const xs = laneXs(table.lanes, width);
  const fullWidth = Math.max(width, GUTTER + 8 + MIN_LANE * table.lanes.length);
  const { rows, height: arrowsHeight } = layout(events);
  const top = (header ? HEAD : 0) + TOP;
  const captionLines = caption ? caption.split("\n") : [];
  const lifelinesEnd = top + arrowsHeight + BOTTOM;
  const height = lifelinesEnd + captionLines.length * 16 + (caption ? 6 : 0);
  const root = svg("svg", {
    xmlns: NS,
    width: fullWidth,
    height,
    viewBox: `0 0 ${fullWidth} ${height}`,
    class: "seq-svg",
    "font-family": "system-ui, -apple-system, 'Segoe UI', 'DejaVu Sans', sans-serif",
    "aria-labelledby": "seq-title",
    "aria-describedby": "seq-desc",
  });
  root.append(
    svg("title", { id: "seq-title" }, title),
    svg("desc", { id: "seq-desc" }, describe(table, events)),
    defs(),
    svg("rect", { x: 0, y: 0, width: fullWidth, height, fill: "#ffffff" }),
  );
  if (header) root.append(drawHeader(table.lanes, xs));
  // The lifelines.
  for (const lane of table.lanes)
    root.append(
      svg("line", {
        x1: xs[lane.key],
        y1: header ? HEAD : 0,
        x2: xs[lane.key],
        y2: lifelinesEnd,
        stroke: "#cbd5e1",
        "stroke-dasharray": "4 4",
      }),
    );
  const body = svg("g", { transform: `translate(0, ${top})` });
  rows.forEach((row, index) => {
    if (row.broken) body.append(drawBreak(rows[index - 1].y, row.y, fullWidth, row.gapMs));
  });
  // Bottom to top: the selected row's band, the loops, the arrows.
  const ys = Object.fromEntries(rows.map((row) => [row.event.seq, row.y]));
  if (selectedSeq in ys)
    body.append(
      svg("rect", {
        class: "seq-band",
        x: 2,
        y: ys[selectedSeq] - 19,
        width: fullWidth - 4,
        height: 26,
        rx: 4,
        fill: "#dbeafe",
      }),
    );
  for (const loop of loops(table, events)) body.append(drawLoop(loop, xs.rabbitmq, ys[loop.fromSeq], ys[loop.toSeq]));
  for (const row of rows) body.append(drawArrow(table, row.event, row, xs, fullWidth, row.event.seq === selectedSeq));
  root.append(body);
  captionLines.forEach((line, i) => {
    root.append(text(line, { x: 8, y: lifelinesEnd + 12 + i * 16, "font-size": 11, fill: MUTED }));
  });
  return root;
}

// The lane names alone, for the sticky strip above the scrolling diagram (hidden from screen readers: the
// diagram's own description names the participants).
export function headerSvg(table, width) {
  const xs = laneXs(table.lanes, width);
  const fullWidth = Math.max(width, GUTTER + 8 + MIN_LANE * table.lanes.length);
  return svg(
    "svg",
    { xmlns: NS, width: fullWidth, height: HEAD, "aria-hidden": "true", class: "seq-head-svg" },
    drawHeader(table.lanes, xs),
  );
}

// The standalone file for the download: the diagram with its lane names, the order and time in its title.
export function exportSvg(table, events, { width, orderId }) {
  const first = events[0];
  const root = buildSvg(table, events, {
    width,
    header: true,
    title: `orderpipe order ${orderId}: its journey as a sequence diagram${first ? ` (from ${first.at})` : ""}`,
    caption:
      `order ${orderId}${first ? `, from ${first.at}` : ""}\n` +
      "solid loop: a retry through a delay queue · dashed loop: a redelivery (never acked) · red dot: cache written",
  });
  for (const node of root.querySelectorAll("[tabindex]")) {
    node.removeAttribute("tabindex");
    node.removeAttribute("role");
    node.removeAttribute("aria-pressed");
  }
  return `<?xml version="1.0" encoding="UTF-8"?>\n${new XMLSerializer().serializeToString(root)}\n`;
}

// The diagram on the page: draws the arrows into `box` and the lane names into `head` (a sticky strip, both inside
// the `scroller`), calls `onSelect(seq)` when an arrow is clicked or chosen with the keyboard (Enter, Space, arrow
// keys, Home, End); `scaleNote` says the scale in words; `download` is the link that saves the diagram as SVG.
export function createSequence({ table, box, head, scroller, scaleNote, download, orderId, onSelect }) {
  let events = [];
  let selectedSeq = null;
  let drawnWidth = 0;

  function draw() {
    const hadFocus = box.contains(document.activeElement);
    const width = box.clientWidth;
    drawnWidth = width;
    const root = buildSvg(table, events, {
      width,
      selectedSeq,
      header: false,
      title: "The journey as a sequence diagram",
    });
    box.replaceChildren(root);
    head.replaceChildren(headerSvg(table, width));
    const chosen = root.querySelector(`.seq-arrow[data-seq="${selectedSeq}"]`);
    if (chosen) {
      if (hadFocus) chosen.focus({ preventScroll: true });
      reveal(chosen);
    }
  }

  // Scroll the diagram (not the page) so the selected arrow is in view below the lane names.
  function reveal(node) {
    const view = scroller.getBoundingClientRect();
    const top = view.top + head.offsetHeight + 4;
    const rect = node.getBoundingClientRect();
    if (rect.top < top) scroller.scrollTop -= top - rect.top;
    else if (rect.bottom > view.bottom - 4) scroller.scrollTop += rect.bottom - view.bottom + 4;
  }

  function arrowOf(target) {
    return target instanceof Element ? target.closest(".seq-arrow") : null;
  }

  box.addEventListener("click", (e) => {
    const arrow = arrowOf(e.target);
    if (arrow) onSelect(Number(arrow.dataset.seq), { focus: true });
  });
  box.addEventListener("keydown", (e) => {
    const arrow = arrowOf(e.target);
    if (!arrow) return;
    const all = [...box.querySelectorAll(".seq-arrow")];
    const index = all.indexOf(arrow);
    const to = { ArrowDown: index + 1, ArrowUp: index - 1, Home: 0, End: all.length - 1 }[e.key];
    if (e.key === "Enter" || e.key === " ") {
      e.preventDefault();
      onSelect(Number(arrow.dataset.seq), { focus: true });
    } else if (to !== undefined && all[to]) {
      e.preventDefault();
      all[to].focus();
      onSelect(Number(all[to].dataset.seq), { focus: true });
    }
  });
  if (scaleNote)
    scaleNote.textContent =
      `Gaps are to scale (1 s = ${SCALE.pxPerSecond} px, at least one row); ` +
      `waits over ${SCALE.breakAfterMs / 1000} s are cut short and say how long they were.`;
  // The SVG download: made when the link is clicked, so it holds the journey as it is then.
  download?.addEventListener("click", () => {
    const file = new Blob([exportSvg(table, events, { width: Math.max(box.clientWidth, 900), orderId })], {
      type: "image/svg+xml",
    });
    if (download.href.startsWith("blob:")) URL.revokeObjectURL(download.href);
    download.href = URL.createObjectURL(file);
  });
  new ResizeObserver(() => {
    if (box.clientWidth !== drawnWidth) draw();
  }).observe(box);

  return {
    update(nextEvents, nextSelected) {
      events = nextEvents;
      selectedSeq = nextSelected;
      draw();
    },
  };
}
