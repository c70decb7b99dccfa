// The dashboard page: reads the run's rounds from the server's event stream (one `round` event per new line of
// metrics.jsonl) and draws them with uPlot; status, clients, refusals, partition and config beside them.
"use strict";

const rows = [];
const charts = {};
let status = {};

// Each chart: its title and the series it draws (a row's key, or a function of the row and the rows before it).
const CHARTS = [
  { id: "accuracy", title: "Accuracy", series: ["accuracy", "fed_accuracy", "fed_personal_accuracy",
                                               "fed_fine_tuned_accuracy", "train_accuracy"] },
  { id: "loss", title: "Loss", series: ["train_loss", "loss", "fed_loss", "fed_personal_loss"] },
  { id: "epsilon", title: "Privacy: epsilon spent", series: ["epsilon", ["max_epsilon", () => status.max_epsilon]] },
  { id: "clip", title: "Clip norm", series: ["clip_norm", "update_norm"] },
  { id: "bytes", title: "MB moved so far", series: [["up", (r, i) => cumulative("bytes_up", i) / 1e6],
                                                   ["down", (r, i) => cumulative("bytes_down", i) / 1e6]] },
  { id: "time", title: "Round time by phase (s)", series: "timings" },
  { id: "clients", title: "Updates and failures", series: ["clients", "failures", "stragglers", "available"] },
];

function cumulative(key, i) {
  let total = 0;
  for (let j = 0; j <= i; j++) total += rows[j][key] || 0;
  return total;
}

function seriesOf(spec) {
  if (spec.series === "timings") {
    const phases = new Set();
    rows.forEach(r => Object.keys(r.timings || {}).forEach(p => phases.add(p)));
    return [...phases].sort().map(p => [p, r => (r.timings || {})[p] ?? null]);
  }
  return spec.series.map(s => Array.isArray(s) ? s : [s, r => (typeof r[s] === "number" ? r[s] : null)])
    .filter(([name, get]) => rows.some((r, i) => get(r, i) !== null && get(r, i) !== undefined));
}

const COLOURS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2"];

function draw() {
  const done = rows.filter(r => !r.failed);
  for (const spec of CHARTS) {
    const series = seriesOf(spec);
    let box = document.getElementById("chart-" + spec.id);
    if (!series.length) { if (box) box.remove(); delete charts[spec.id]; continue; }
    const data = [done.map(r => r.round)];
    for (const [, get] of series) data.push(done.map(r => { const v = get(r, rows.indexOf(r)); return v ?? null; }));
    const names = series.map(([n]) => n).join(",");
    if (!box) {
      box = document.createElement("div");
      box.className = "chart";
      box.id = "chart-" + spec.id;
      document.getElementById("charts").appendChild(box);
    }
    box.dataset.points = String(done.length);
    const chart = charts[spec.id];
    if (chart && chart.names === names) {
      chart.plot.setData(data);
      continue;
    }
    if (chart) chart.plot.destroy();
    box.innerHTML = "";
    const opts = { title: spec.title, width: 440, height: 220, scales: { x: { time: false } },
                   series: [{ label: "round" }, ...series.map(([n], k) => ({ label: n, stroke: COLOURS[k % 7],
                                                                           width: 1.5, spanGaps: true }))] };
    charts[spec.id] = { names, plot: new uPlot(opts, data, box) };
  }
  showClients();
}

function text(el, value) { document.getElementById(el).textContent = value; }

function showClients() {
  const last = rows[rows.length - 1];
  if (!last) return;
  text("clients-round", `${last.round}${last.failed ? " (failed attempt)" : ""}`);
  const box = document.getElementById("clients");
  box.innerHTML = "";
  const line = (cls, t) => { const d = document.createElement("div"); d.className = cls; d.textContent = t;
                             box.appendChild(d); };
  line("", `selected: ${(last.selected || []).join(", ") || "none"}`);
  line("", `updates aggregated: ${last.clients ?? 0}; failures: ${last.failures ?? 0}`);
  for (const f of last.failed_clients || []) line("failed", `client ${f.client}: ${f.reason}`);
  for (const f of last.eval_failed_clients || []) line("failed", `evaluation of client ${f.client}: ${f.reason}`);
  if (last.failed_because) line("failed", `round failed: ${last.failed_because}`);
}

function duration(s) {
  if (s === null || s === undefined) return "-";
  s = Math.round(s);
  const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), sec = s % 60;
  return h ? `${h}h ${m}m` : m ? `${m}m ${sec}s` : `${sec}s`;
}

function showStatus(s) {
  status = s;
  const el = document.getElementById("status");
  el.textContent = s.status || "?";
  el.className = "status " + (s.status || "");
  text("title", s.strategy ? `${s.strategy} on ${s.dataset}` : "");
  const cards = [["round", s.rounds ? `${s.round} / ${s.rounds}` : s.round], ["elapsed", duration(s.elapsed_seconds)],
                 ["ETA", duration(s.eta_seconds)]];
  for (const [k, v] of Object.entries(s.metrics || {})) cards.push([k, v.toFixed(4)]);
  if (s.epsilon !== null && s.epsilon !== undefined)
    cards.push(["epsilon", s.epsilon.toFixed(3) + (s.max_epsilon ? ` / ${s.max_epsilon}` : "")]);
  const box = document.getElementById("summary");
  box.innerHTML = "";
  for (const [label, value] of cards) {
    const c = document.createElement("div");
    c.className = "card";
    c.innerHTML = `<div class="label"></div><div class="value"></div>`;
    c.firstChild.textContent = label;
    c.lastChild.textContent = String(value);
    box.appendChild(c);
  }
}

async function once() {
  const config = await fetch("/api/config");
  if (config.ok) text("config", await config.text());
  const part = await (await fetch("/api/partition")).json();
  if (part.label_counts) drawPartition(part.label_counts);
  else text("partition", "not known (a deployed server never sees the clients' data)");
}

function drawPartition(counts) {
  const max = Math.max(1, ...counts.flat());
  const table = document.createElement("table");
  table.className = "heat";
  const head = table.insertRow();
  head.insertCell().textContent = "client";
  counts[0].forEach((_, c) => { head.insertCell().textContent = String(c); });
  counts.forEach((row, i) => {
    const tr = table.insertRow();
    tr.insertCell().textContent = String(i);
    row.forEach(v => { const td = tr.insertCell(); td.textContent = v ? String(v) : "";
                       td.style.background = `rgba(31, 119, 180, ${(v / max).toFixed(3)})`; });
  });
  const box = document.getElementById("partition");
  box.innerHTML = "";
  box.appendChild(table);
}

async function refusals() {
  const got = await (await fetch("/api/refusals")).json();
  text("refusals", got.lines.length ? got.lines.join("\n") : "none");
  const seen = await (await fetch("/api/presence")).json();
  if (!seen.clients.length) return;
  const box = document.getElementById("presence");
  box.innerHTML = "";
  const live = seen.clients.filter(c => c.live).length;
  const head = document.createElement("div");
  head.textContent = `${live} of ${seen.clients.length} joined clients connected`;
  box.appendChild(head);
  for (const c of seen.clients) {
    const d = document.createElement("div");
    const ago = c.last_seen ? `${Math.max(0, Math.round(seen.time - c.last_seen))} s ago` : "never";
    d.className = c.live ? "" : "failed";
    d.textContent = `client ${c.client}: ${c.live ? "connected" : "gone"}, last seen ${ago}, ${c.examples} examples` +
                    (c.missed ? `, ${c.missed} tasks missed` : "");
    box.appendChild(d);
  }
}

function listen() {
  const events = new EventSource("/api/events");
  let pending = false;
  const later = () => { if (!pending) { pending = true; setTimeout(() => { pending = false; draw(); }, 100); } };
  events.addEventListener("round", e => { rows.push(JSON.parse(e.data)); later(); });
  events.addEventListener("reset", () => { rows.length = 0; later(); });
  events.addEventListener("status", e => { showStatus(JSON.parse(e.data)); refusals(); });
}

once();
listen();
