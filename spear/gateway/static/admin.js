// Spear admin page: plain JS, no libraries, no network beyond this gateway.
//
// Live figures and the plot come from the SSE stream /v1/live/stream; the
// event list from /v1/events (SSE), which also triggers table refreshes;
// node usage is re-read every 2 s (heartbeats are not events). SSE is read
// with fetch() rather than EventSource so a bearer token can travel in a
// header instead of the URL.
//
// Views are chosen by the URL's hash (#executions?..., #execution/ID,
// #functions, #function/NAME, #nodes, #node/ID): elements carry the views
// they belong to in data-view. Actions (cancel, drain) are shown only when
// /v1/whoami says the caller's role may take them; the gateway checks again.
"use strict";

const $ = (id) => document.getElementById(id);
const WINDOW = 300; // seconds shown in the plot
const samples = [];
let token = localStorage.getItem("spear.token") || "";

// ------------------------------------------------------------------ HTTP

function headers(extra) {
  const h = Object.assign({ Accept: "application/json" }, extra || {});
  if (token) h.Authorization = "Bearer " + token;
  return h;
}

function needToken() {
  $("auth").hidden = false;
}

async function api(path, opts) {
  opts = opts || {};
  const r = await fetch(path, Object.assign({}, opts, { headers: headers(opts.headers) }));
  if (r.status === 401) needToken();
  let body = null;
  const type = r.headers.get("content-type") || "";
  if (type.startsWith("application/json")) body = await r.json();
  if (!r.ok && !opts.anyStatus) {
    throw new Error(`${r.status} ${body ? body.code + ": " + body.message : r.statusText}`);
  }
  return opts.anyStatus ? { status: r.status, headers: r.headers, body } : body;
}

const sleep = (ms) => new Promise((ok) => setTimeout(ok, ms));

function stream(path, onEvent, onState) {
  let lastId = null;
  let backoff = 500;
  const parse = (block) => {
    let event = "message", id = null;
    const data = [];
    for (const line of block.split("\n")) {
      if (!line || line.startsWith(":")) continue;
      const k = line.indexOf(":");
      const field = k < 0 ? line : line.slice(0, k);
      let value = k < 0 ? "" : line.slice(k + 1);
      if (value.startsWith(" ")) value = value.slice(1);
      if (field === "event") event = value;
      else if (field === "data") data.push(value);
      else if (field === "id") id = value;
    }
    if (id !== null) lastId = id;
    if (data.length) onEvent(event, data.join("\n"));
  };
  (async () => {
    for (;;) {
      try {
        const h = headers({ Accept: "text/event-stream" });
        if (lastId) h["Last-Event-ID"] = lastId;
        const r = await fetch(path, { headers: h });
        if (r.status === 401) { needToken(); await sleep(2000); continue; }
        if (!r.ok) throw new Error("HTTP " + r.status);
        onState && onState(true);
        backoff = 500;
        const reader = r.body.getReader();
        const dec = new TextDecoder();
        let buf = "";
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          buf += dec.decode(value, { stream: true });
          let i;
          while ((i = buf.indexOf("\n\n")) >= 0) {
            parse(buf.slice(0, i));
            buf = buf.slice(i + 2);
          }
        }
      } catch (e) { /* reconnect below */ }
      onState && onState(false);
      await sleep(backoff);
      backoff = Math.min(backoff * 2, 5000);
    }
  })();
}

// ------------------------------------------------------------------ formatting

const esc = (s) => String(s == null ? "" : s).replace(/[&<>"']/g,
  (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));

function fmt(v, digits) {
  if (v == null || Number.isNaN(v)) return "-";
  if (digits != null) return v.toFixed(digits);
  const a = Math.abs(v);
  if (a >= 1000) return Math.round(v).toLocaleString();
  if (a >= 100) return v.toFixed(0);
  if (a >= 10) return v.toFixed(1);
  return v.toFixed(2);
}

function bytes(n) {
  const u = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < u.length - 1) { n /= 1024; i++; }
  return (i ? n.toFixed(1) : n) + " " + u[i];
}

const bar = (frac) => `<span class="bar"><i style="width:${Math.max(0, Math.min(100, frac * 100)).toFixed(0)}%"></i></span>`;
const badge = (s) => `<span class="badge ${esc(s)}">${esc(s)}</span>`;

// ------------------------------------------------------------------ figures and plot

// the latest value of a figure that is not measured in every sample (no executions
// finished in that interval), if one was seen in the last minute
function recent(get) {
  for (let i = samples.length - 1; i >= 0 && samples[i].ts > samples[samples.length - 1].ts - 60; i--) {
    const v = get(samples[i]);
    if (v != null) return v;
  }
  return null;
}

function showSample(s) {
  $("f-rate").textContent = fmt(s.invocations_per_s);
  $("f-p50").textContent = fmt(recent((x) => x.latency_p50_ms));
  $("f-p95").textContent = fmt(recent((x) => x.latency_p95_ms));
  const hit = recent((x) => x.pool_hit_rate);
  $("f-hit").textContent = hit == null ? "-" : (hit * 100).toFixed(0) + "%";
  $("f-fail").textContent = fmt(s.failures_per_s);
  $("f-active").textContent = s.executions_active;
  $("f-nodes").textContent = s.nodes_ready;
  $("f-cores").textContent = `${fmt(s.cores_reserved)} / ${fmt(s.cores_total)}`;
}

function addSample(s) {
  samples.push(s);
  while (samples.length && samples[0].ts < s.ts - WINDOW - 60) samples.shift();
  showSample(s);
  drawPlot();
}

function niceMax(v) {
  const p = Math.pow(10, Math.floor(Math.log10(v)));
  for (const m of [1, 2, 2.5, 5, 10]) if (m * p >= v) return m * p;
  return 10 * p;
}

function drawPlot() {
  const c = $("plot");
  const dpr = window.devicePixelRatio || 1;
  const w = c.clientWidth, h = c.clientHeight;
  if (!w || !h) return;
  c.width = w * dpr; c.height = h * dpr;
  const g = c.getContext("2d");
  g.scale(dpr, dpr);
  g.clearRect(0, 0, w, h);
  const L = 56, R = 60, T = 10, B = 24;
  const now = samples.length ? samples[samples.length - 1].ts : Date.now() / 1000;
  const t0 = now - WINDOW;
  const pts = samples.filter((s) => s.ts >= t0);
  const maxRate = niceMax(Math.max(1, ...pts.map((s) => s.invocations_per_s)));
  const maxLat = niceMax(Math.max(1, ...pts.map((s) => Math.max(s.latency_p95_ms || 0, s.latency_p50_ms || 0))));
  const css = getComputedStyle(document.documentElement);
  g.font = "11px system-ui, sans-serif";
  g.lineWidth = 1;
  for (let i = 0; i <= 4; i++) {
    const y = T + (h - T - B) * i / 4;
    g.strokeStyle = "#e2e8f0";
    g.beginPath(); g.moveTo(L, y); g.lineTo(w - R, y); g.stroke();
    g.fillStyle = css.getPropertyValue("--rate");
    g.textAlign = "right"; g.fillText(fmt(maxRate * (1 - i / 4)), L - 6, y + 4);
    g.fillStyle = css.getPropertyValue("--p50");
    g.textAlign = "left"; g.fillText(fmt(maxLat * (1 - i / 4)) + " ms", w - R + 6, y + 4);
  }
  g.fillStyle = "#64748b";
  g.textAlign = "center";
  for (let m = 0; m <= WINDOW / 60; m++) {
    const x = L + (w - L - R) * (1 - m * 60 / WINDOW);
    g.fillText(m === 0 ? "now" : `-${m} min`, x, h - 6);
  }
  const X = (ts) => L + (w - L - R) * (ts - t0) / WINDOW;
  const line = (get, max, color) => {
    g.strokeStyle = color; g.lineWidth = 2;
    g.beginPath();
    let pen = false;
    const dots = [];
    for (const s of pts) {
      const v = get(s);
      if (v == null) { pen = false; continue; }
      const x = X(s.ts), y = T + (h - T - B) * (1 - v / max);
      if (pen) g.lineTo(x, y); else { g.moveTo(x, y); pen = true; }
      dots.push([x, y]);
    }
    g.stroke();
    g.fillStyle = color;
    for (const [x, y] of dots) { g.beginPath(); g.arc(x, y, 2.5, 0, 2 * Math.PI); g.fill(); }
  };
  line((s) => s.invocations_per_s, maxRate, css.getPropertyValue("--rate"));
  line((s) => s.latency_p95_ms, maxLat, css.getPropertyValue("--p95"));
  line((s) => s.latency_p50_ms, maxLat, css.getPropertyValue("--p50"));
}

// ------------------------------------------------------------------ tables

async function refreshNodes() {
  const nodes = await api("/v1/nodes");
  const now = Date.now() / 1000;
  $("nodes-count").textContent = `(${nodes.length})`;
  $("nodes").tBodies[0].innerHTML = nodes.map((n) => {
    const u = n.usage, cap = n.capacity;
    const memTotal = cap.memory || u.memory_total || 1;
    return `<tr data-node="${esc(n.node_id)}"><td><a href="#node/${esc(n.node_id)}">${esc(n.name)}</a></td><td><code>${esc(n.node_id)}</code></td>
      <td>${badge(n.state)}</td><td>${esc(n.address)}</td>
      <td>${bar(u.cpu_percent / 100)}${fmt(u.cpu_percent, 0)}% of ${cap.cores}</td>
      <td>${bar(u.memory_used / memTotal)}${bytes(u.memory_used)} / ${bytes(memTotal)}</td>
      <td>${fmt(u.load1)}</td><td>${u.running}</td><td>${u.warm}</td>
      <td>${esc(n.runtimes.join(", "))}</td><td>${fmt(Math.max(0, now - n.last_seen), 1)} s ago</td></tr>`;
  }).join("");
}

async function refreshFunctions() {
  const fns = await api("/v1/functions");
  $("functions-count").textContent = `(${fns.length})`;
  $("functions").tBodies[0].innerHTML = fns.map((f) =>
    `<tr data-function="${esc(f.name)}"><td>${esc(f.name)}</td><td>${esc(f.runtime)}</td>
     <td><code>${esc(f.digest.slice(0, 12))}</code></td>
     <td><a href="#" data-pick="${esc(f.name)}">invoke</a></td></tr>`).join("");
  const sel = $("invoke-fn"), cur = sel.value;
  sel.innerHTML = fns.map((f) => `<option>${esc(f.name)}</option>`).join("");
  $("fn-names").innerHTML = sel.innerHTML;
  if (cur && fns.some((f) => f.name === cur)) sel.value = cur;
}

async function refreshExecutions() {
  const page = await api("/v1/executions?limit=25");
  $("executions-count").textContent = `(${page.executions.length} of ${page.total})`;
  $("executions").tBodies[0].innerHTML = page.executions.map((e) => {
    const lat = e.finished_at && e.submitted_at ? (e.finished_at - e.submitted_at) * 1e3 : null;
    const err = e.error ? `${e.error.code}: ${e.error.message}` : "";
    return `<tr data-execution="${esc(e.execution_id)}"><td><code>${esc(e.execution_id)}</code></td>
      <td>${esc(e.function)}</td><td>${badge(e.status)}</td><td>${esc(e.node_id)}</td>
      <td>${e.attempts}</td><td>${e.cold ? "cold" : "warm"}</td><td>${fmt(lat)}</td>
      <td>${fmt(e.timings.run * 1e3)}</td>
      <td>${e.submitted_at ? new Date(e.submitted_at * 1000).toLocaleTimeString() : ""}</td>
      <td class="err">${esc(err.slice(0, 160))}</td></tr>`;
  }).join("");
}


// refreshes are coalesced: a burst of events causes one reload per table
const timers = {};
function soon(name, fn, delay) {
  if (timers[name]) return;
  timers[name] = setTimeout(async () => {
    timers[name] = null;
    try { await fn(); } catch (e) { /* shown by the next successful refresh */ }
  }, delay);
}

function every(ms, fn) {
  const tick = async () => {
    try { await fn(); } catch (e) { /* keep polling */ }
    setTimeout(tick, ms);
  };
  tick();
}

function addEvent(kind, data) {
  const ev = JSON.parse(data);
  const li = document.createElement("li");
  li.textContent = `${ev.seq}  ${new Date(ev.ts * 1000).toLocaleTimeString()}  ${ev.kind}  ${ev.key}  ${ev.state}  ${ev.detail}`;
  const list = $("events");
  list.insertBefore(li, list.firstChild);
  while (list.childElementCount > 100) list.removeChild(list.lastChild);
  if (ev.kind === "node") soon("nodes", refreshNodes, 200);
  else if (ev.state === "registered" || ev.state === "removed") soon("functions", refreshFunctions, 200);
  else soon("executions", refreshExecutions, 300);
  if (view === "execution" && ev.kind === "execution" && ev.key === $("detail-id").textContent) {
    soon("execution", () => loadExecution(ev.key), 200);
  }
}

// ------------------------------------------------------------------ views

let me = { role: "", operations: [], trace_url: "" };
const may = (op) => me.operations.includes(op);
const TERMINAL = ["succeeded", "failed", "cancelled", "timed_out", "lost"];
const enc = encodeURIComponent;
const when = (ts) => (ts ? new Date(ts * 1000).toLocaleString() : "-");
const ms = (s) => (s == null ? "-" : fmt(s * 1e3));
let view = "overview";

async function whoami() {
  try { me = await api("/v1/whoami"); } catch (e) { me = { role: "?", operations: [], trace_url: "" }; }
  $("whoami").textContent = me.role ? `role: ${me.role}` : "open (no tokens)";
}

function show(name) {
  view = name;
  for (const el of document.querySelectorAll("[data-view]")) {
    el.hidden = !el.dataset.view.split(" ").includes(name);
  }
  const tab = { execution: "executions", function: "functions", node: "nodes" }[name] || name;
  for (const a of document.querySelectorAll("#tabs a")) a.classList.toggle("on", a.dataset.tab === tab);
}

function route() {
  const h = decodeURIComponent(location.hash.slice(1));
  const [path, query] = h.split("?");
  const [name, ...rest] = path.split("/");
  const arg = rest.join("/");
  const views = {
    executions: () => loadExecutions(new URLSearchParams(query || "")),
    execution: () => loadExecution(arg),
    functions: loadFunctions,
    function: () => loadFunction(arg),
    nodes: () => refreshNodes(),
    node: () => loadNode(arg),
  };
  const go = views[name] ? name : "overview";
  show(go);
  if (views[go]) views[go]().catch((e) => report(e));
  if (go === "overview") drawPlot();
}

function report(e) {
  const s = document.querySelector(`[data-view~="${view}"] section`);
  if (!s) return;
  let p = s.querySelector(".problem");
  if (!p) { p = document.createElement("p"); p.className = "problem"; s.prepend(p); }
  p.textContent = String(e.message || e);
}

// a small line chart: series of {values, color}, over xs (Unix seconds)
function chart(c, xs, series, unit) {
  const dpr = window.devicePixelRatio || 1;
  const w = c.clientWidth, h = c.clientHeight;
  if (!w || !h) return;
  c.width = w * dpr; c.height = h * dpr;
  const g = c.getContext("2d");
  g.scale(dpr, dpr);
  const L = 56, R = 12, T = 8, B = 20;
  const all = series.flatMap((s) => s.values.filter((v) => v != null));
  const max = niceMax(Math.max(1e-9, ...all, unit === "%" ? 100 : 0));
  const x0 = xs.length ? xs[0] : 0, x1 = xs.length > 1 ? xs[xs.length - 1] : x0 + 1;
  const X = (t) => L + (w - L - R) * (t - x0) / (x1 - x0 || 1);
  const Y = (v) => T + (h - T - B) * (1 - v / max);
  g.font = "11px system-ui, sans-serif";
  g.fillStyle = "#64748b";
  for (let i = 0; i <= 4; i++) {
    const y = T + (h - T - B) * i / 4;
    g.strokeStyle = "#e2e8f0"; g.lineWidth = 1;
    g.beginPath(); g.moveTo(L, y); g.lineTo(w - R, y); g.stroke();
    g.textAlign = "right"; g.fillText(fmt(max * (1 - i / 4)) + (unit || ""), L - 6, y + 4);
  }
  g.textAlign = "center";
  for (const t of [x0, (x0 + x1) / 2, x1]) {
    if (xs.length) g.fillText(new Date(t * 1000).toLocaleTimeString(), X(t), h - 5);
  }
  for (const s of series) {
    g.strokeStyle = g.fillStyle = s.color; g.lineWidth = 2;
    g.beginPath();
    let pen = false;
    s.values.forEach((v, i) => {
      if (v == null) { pen = false; return; }
      if (pen) g.lineTo(X(xs[i]), Y(v)); else { g.moveTo(X(xs[i]), Y(v)); pen = true; }
    });
    g.stroke();
    s.values.forEach((v, i) => {
      if (v != null) { g.beginPath(); g.arc(X(xs[i]), Y(v), 2.5, 0, 2 * Math.PI); g.fill(); }
    });
  }
}

const color = (name) => getComputedStyle(document.documentElement).getPropertyValue(name);

function execRow(e) {
  const lat = e.finished_at && e.submitted_at ? (e.finished_at - e.submitted_at) * 1e3 : null;
  const err = e.error ? `${e.error.code}: ${e.error.message}` : "";
  return `<tr data-execution="${esc(e.execution_id)}"><td><code>${esc(e.execution_id)}</code></td>
    <td><a href="#function/${esc(e.function)}">${esc(e.function)}</a></td><td>${badge(e.status)}</td>
    <td>${e.node_id ? `<a href="#node/${esc(e.node_id)}">${esc(e.node_id)}</a>` : ""}</td>
    <td>${e.attempts}</td><td>${e.cold ? "cold" : "warm"}</td><td>${fmt(lat)}</td>
    <td>${when(e.submitted_at)}</td><td class="err">${esc(err.slice(0, 120))}</td></tr>`;
}

// ---- executions: filters in the hash, pages by cursor (a stack, to go back)

const PAGE = 50;
let cursors = [""];
let lastFilter = null;

const toLocal = (ts) => {
  const d = new Date(ts * 1000 - new Date().getTimezoneOffset() * 60000);
  return d.toISOString().slice(0, 19);
};

async function loadExecutions(params) {
  const f = $("xs-filter");
  const key = params.toString();
  if (key !== lastFilter) { cursors = [""]; lastFilter = key; }
  for (const el of f.elements) {
    if (!el.name) continue;
    const v = params.get(el.name) || "";
    el.value = (el.name === "since" || el.name === "until") && v ? toLocal(Number(v)) : v;
  }
  const q = new URLSearchParams(params);
  const size = Number(params.get("limit")) || PAGE;
  q.set("limit", size);
  const cursor = cursors[cursors.length - 1];
  if (cursor) q.set("cursor", cursor);
  const page = await api(`/v1/executions?${q}`);
  const first = (cursors.length - 1) * size;
  $("xs-count").textContent = `(${page.total} match)`;
  $("xs-page").textContent = page.executions.length
    ? `${first + 1}\u2013${first + page.executions.length} of ${page.total}` : "none";
  $("xs").tBodies[0].innerHTML = page.executions.map(execRow).join("");
  $("xs-newer").disabled = cursors.length === 1;
  $("xs-older").disabled = !page.next_cursor;
  $("xs-older").dataset.cursor = page.next_cursor;
}

$("xs-filter").addEventListener("submit", (e) => {
  e.preventDefault();
  const q = new URLSearchParams();
  for (const el of e.target.elements) {
    if (!el.name || !el.value.trim()) continue;
    let v = el.type === "datetime-local" ? String(new Date(el.value).getTime() / 1000) : el.value.trim();
    if (el.name === "prefix") v = v.toLowerCase();
    q.set(el.name, v);
  }
  location.hash = "#executions" + (q.toString() ? "?" + q : "");
});
$("xs-filter").addEventListener("reset", () => { setTimeout(() => { location.hash = "#executions"; }, 0); });
$("xs-older").addEventListener("click", () => { cursors.push($("xs-older").dataset.cursor); route(); });
$("xs-newer").addEventListener("click", () => { if (cursors.length > 1) cursors.pop(); route(); });

// ---- one execution

async function loadExecution(id) {
  const res = await api(`/v1/executions/${enc(id)}`);
  const x = res.execution, t = x.timings, u = x.usage;
  $("detail-id").textContent = x.execution_id;
  $("detail-status").innerHTML = badge(x.status);
  const trace = me.trace_url && x.trace_id
    ? `<a id="detail-trace" href="${esc(me.trace_url.replace("{trace_id}", enc(x.trace_id)))}" target="_blank" rel="noopener">${esc(x.trace_id)}</a>`
    : `<code>${esc(x.trace_id)}</code>`;
  const facts = [
    ["function", `<a href="#function/${esc(x.function)}">${esc(x.function)}</a>`],
    ["node", x.node_id ? `<a href="#node/${esc(x.node_id)}">${esc(x.node_id)}</a>` : "-"],
    ["submitted", when(x.submitted_at)], ["finished", when(x.finished_at)],
    ["attempts", x.attempts], ["start", x.cold ? "cold" : "warm"],
    ["exit code", x.exit_code == null ? "-" : x.exit_code], ["trace id", trace],
    ["cpu time", `${ms(u.cpu_time)} ms`], ["peak memory", bytes(u.peak_memory)], ["fuel", u.fuel],
    ["args", esc(JSON.stringify(x.args))],
  ];
  $("detail-facts").innerHTML = facts.map(([k, v]) => `<dt>${k}</dt><dd>${v}</dd>`).join("");
  const total = t.total || t.queue + t.cold_start + t.run || 1;
  $("detail-timings").innerHTML = ["queue", "cold_start", "run"].map((k) =>
    `<span class="stage ${k}" style="flex:${Math.max(t[k] / total, 0.02)}" title="${k}">${k.replace("_", " ")} ${ms(t[k])} ms</span>`
  ).join("") + `<span class="stage-total">total ${ms(t.total)} ms</span>`;
  const e = x.error;
  $("detail-error").hidden = !e;
  if (e) {
    $("detail-error-text").textContent = `${e.code}: ${e.message}` +
      (e.traceback ? `\n--- traceback ---\n${e.traceback}` : "") +
      (e.stderr_tail ? `\n--- stderr (tail) ---\n${e.stderr_tail}` : "");
  }
  $("detail-output").textContent = res.output_text != null ? res.output_text : `(binary, base64) ${res.output}`;
  $("detail-record").textContent = JSON.stringify(x, null, 2);
  $("detail-cancel").hidden = !may("CancelExecution") || TERMINAL.includes(x.status);
  $("detail-cancel").dataset.id = x.execution_id;
  const logs = await api(`/v1/executions/${enc(x.execution_id)}/logs`);
  $("detail-logs").textContent = logs.captured ? (logs.logs || "(empty)")
    : (e && e.stderr_tail) ? `(stderr tail kept with the error)\n${e.stderr_tail}`
    : "(not captured: only invocations streamed through this gateway keep logs)";
}

$("detail-cancel").addEventListener("click", async () => {
  const id = $("detail-cancel").dataset.id;
  if (!confirm(`Cancel execution ${id}?`)) return;
  try {
    await api(`/v1/executions/${enc(id)}/cancel`, { method: "POST" });
    await sleep(300);
    await loadExecution(id);
  } catch (e) { report(e); }
});

// ---- functions

async function loadFunctions() {
  const win = $("fs-window").value;
  const [fns, stats] = await Promise.all([api("/v1/functions"), api(`/v1/stats/functions?window=${win}`)]);
  const by = Object.fromEntries(stats.map((s) => [s.name, s]));
  $("fs").tBodies[0].innerHTML = fns.map((f) => {
    const s = by[f.name] || { total: {}, active: 0 };
    const t = s.total;
    return `<tr data-function="${esc(f.name)}"><td><a href="#function/${esc(f.name)}">${esc(f.name)}</a></td>
      <td>${t.calls || 0}</td><td class="${t.errors ? "err" : ""}">${t.errors || 0}</td><td>${t.cold || 0}</td>
      <td>${s.active}</td><td>${ms(t.p50)}</td><td>${ms(t.p99)}</td></tr>`;
  }).join("");
}
$("fs-window").addEventListener("change", () => loadFunctions().catch(report));

async function loadFunction(name) {
  const win = $("fs-window").value;
  const s = await api(`/v1/functions/${enc(name)}/stats?window=${win}&slices=24`);
  $("fn-name").textContent = s.name;
  $("fn-window").textContent = `(executions submitted in the last ${fmt(s.window / 60)} min)`;
  $("fn-executions").href = `#executions?function=${enc(s.name)}`;
  const t = s.total;
  const warm = Object.values(s.warm).reduce((a, b) => a + b, 0);
  $("fn-figures").innerHTML = [["calls", t.calls], ["errors", t.errors], ["cold starts", t.cold],
    ["running", s.active], ["p50 ms", ms(t.p50)], ["p99 ms", ms(t.p99)], ["warm instances", warm]]
    .map(([l, v]) => `<div class="fig"><span class="v">${v}</span><span class="l">${l}</span></div>`).join("");
  const xs = s.slices.map((x) => x.start);
  chart($("fn-plot-lat"), xs, [
    { values: s.slices.map((x) => (x.p50 == null ? null : x.p50 * 1e3)), color: color("--p50") },
    { values: s.slices.map((x) => (x.p99 == null ? null : x.p99 * 1e3)), color: color("--p95") }]);
  chart($("fn-plot-calls"), xs, [
    { values: s.slices.map((x) => x.calls), color: color("--rate") },
    { values: s.slices.map((x) => x.errors), color: color("--bad") },
    { values: s.slices.map((x) => x.cold), color: color("--warn") }]);
  const nodes = Object.keys(Object.assign({}, s.warm, s.busy)).sort();
  $("fn-instances").tBodies[0].innerHTML = nodes.map((n) =>
    `<tr><td><a href="#node/${esc(n)}">${esc(n)}</a></td><td>${s.warm[n] || 0}</td><td>${s.busy[n] || 0}</td></tr>`).join("")
    || `<tr><td colspan="3">no instances</td></tr>`;
}

// ---- one node

async function loadNode(id) {
  const n = await api(`/v1/nodes/${enc(id)}`);
  const [hist, fns, running, scheduled] = await Promise.all([
    api(`/v1/nodes/${enc(n.node_id)}/history`),
    api(`/v1/functions?node=${enc(n.node_id)}`).catch(() => []),
    api(`/v1/executions?node=${enc(n.node_id)}&status=running&limit=100`),
    api(`/v1/executions?node=${enc(n.node_id)}&status=scheduled&limit=100`)]);
  $("node-name").textContent = `${n.name} (${n.node_id})`;
  $("node-state").innerHTML = badge(n.state);
  const cap = n.capacity, u = n.usage;
  const facts = [["address", esc(n.address)], ["runtimes", esc(n.runtimes.join(", "))],
    ["cores", cap.cores], ["memory", bytes(cap.memory || u.memory_total)],
    ["slots", cap.slots || "no limit"], ["load", fmt(u.load1)], ["registered", when(n.registered_at)],
    ["last heartbeat", when(n.last_seen)],
    ["labels", esc(Object.entries(n.labels).map(([k, v]) => `${k}=${v}`).join(", ") || "-")]];
  $("node-facts").innerHTML = facts.map(([k, v]) => `<dt>${k}</dt><dd>${v}</dd>`).join("");
  const xs = hist.samples.map((x) => x.ts);
  chart($("node-plot"), xs, [
    { values: hist.samples.map((x) => x.cpu_percent), color: color("--rate") },
    { values: hist.samples.map((x) => (x.memory_total ? 100 * x.memory_used / x.memory_total : null)), color: color("--p50") }], "%");
  $("node-instances").tBodies[0].innerHTML = fns.map((f) =>
    `<tr><td><a href="#function/${esc(f.name)}">${esc(f.name)}</a></td><td>${esc(f.runtime)}</td><td>${f.warm}</td>
     <td>${f.busy}</td><td>${f.hits}</td><td>${f.misses}</td></tr>`).join("") || `<tr><td colspan="6">none</td></tr>`;
  const now = Date.now() / 1000;
  const work = running.executions.concat(scheduled.executions);
  $("node-work").tBodies[0].innerHTML = work.map((e) =>
    `<tr data-execution="${esc(e.execution_id)}"><td><code>${esc(e.execution_id)}</code></td><td>${esc(e.function)}</td>
     <td>${badge(e.status)}</td><td>${fmt(now - e.submitted_at, 1)} s</td></tr>`).join("") || `<tr><td colspan="4">none</td></tr>`;
  const drainable = may("DrainNode");
  $("node-drain").hidden = !drainable || n.state !== "ready";
  $("node-undrain").hidden = !drainable || n.state !== "draining";
  $("node-drain").dataset.id = $("node-undrain").dataset.id = n.node_id;
}

for (const [btn, method] of [["node-drain", "POST"], ["node-undrain", "DELETE"]]) {
  $(btn).addEventListener("click", async () => {
    const id = $(btn).dataset.id;
    if (method === "POST" && !confirm(`Drain node ${id}? No new work will go there.`)) return;
    try {
      await api(`/v1/nodes/${enc(id)}/drain`, { method });
      await loadNode(id);
    } catch (e) { report(e); }
  });
}

// ------------------------------------------------------------------ wiring

function setConn(on) {
  $("conn").className = "dot " + (on ? "on" : "off");
  $("conn-text").textContent = on ? "live" : "reconnecting";
}

$("auth").addEventListener("submit", (e) => {
  e.preventDefault();
  token = $("token").value.trim();
  localStorage.setItem("spear.token", token);
  $("auth").hidden = true;
  whoami().then(route);
  refreshAll();
});

for (const t of ["executions", "xs", "node-work"]) {
  $(t).addEventListener("click", (e) => {
    const tr = e.target.closest("tr[data-execution]");
    if (tr && !e.target.closest("a")) location.hash = "#execution/" + tr.dataset.execution;
  });
}

$("functions").addEventListener("click", (e) => {
  const a = e.target.closest("a[data-pick]");
  if (!a) return;
  e.preventDefault();
  $("invoke-fn").value = a.dataset.pick;
  $("invoke-input").focus();
});


$("invoke").addEventListener("submit", async (e) => {
  e.preventDefault();
  const fn = $("invoke-fn").value;
  if (!fn) return;
  const args = $("invoke-args").value.trim();
  const q = new URLSearchParams({ envelope: "true", logs: "true" });
  if (args) q.set("args", args);
  const out = $("invoke-out");
  out.hidden = false;
  out.textContent = "running...";
  try {
    const r = await api(`/v1/functions/${encodeURIComponent(fn)}/invoke?${q}`, {
      method: "POST", body: $("invoke-input").value, anyStatus: true,
      headers: { "Content-Type": "text/plain" },
    });
    const b = r.body || {};
    if (b.execution) {
      const x = b.execution;
      out.textContent = `${x.status} on ${x.node_id} in ${fmt(x.timings.total * 1e3)} ms` +
        (x.error ? `\n${x.error.code}: ${x.error.message}` : "") +
        (x.error && x.error.traceback ? `\n--- traceback ---\n${x.error.traceback}` : "") +
        (x.error && x.error.stderr_tail && !b.logs ? `\n--- stderr (tail) ---\n${x.error.stderr_tail}` : "") +
        `\n--- output ---\n${b.output_text != null ? b.output_text : b.output}` +
        (b.logs ? `\n--- logs ---\n${b.logs}` : "");
    } else {
      out.textContent = `${r.status} ${b.code || ""}: ${b.message || ""}`;
    }
  } catch (err) {
    out.textContent = String(err);
  }
  soon("executions", refreshExecutions, 0);
});

function refreshAll() {
  soon("nodes", refreshNodes, 0);
  soon("functions", refreshFunctions, 0);
  soon("executions", refreshExecutions, 0);
}

stream("/v1/live/stream", (event, data) => {
  const obj = JSON.parse(data);
  if (event === "history") {
    samples.length = 0;
    obj.samples.forEach((s) => samples.push(s));
    if (samples.length) showSample(samples[samples.length - 1]);
    drawPlot();
  } else if (event === "sample") {
    addSample(obj);
  }
}, setConn);
stream("/v1/events?since=0", (event, data) => {
  if (event === "node" || event === "execution") addEvent(event, data);
});
window.addEventListener("hashchange", route);
whoami().then(route);
every(2000, refreshNodes);
every(4000, async () => { if (["node", "function", "functions"].includes(view)) route(); });
every(5000, refreshExecutions);
every(10000, refreshFunctions);
window.addEventListener("resize", drawPlot);
