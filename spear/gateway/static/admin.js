// Spear admin page: plain JS, no libraries, no network beyond this gateway.
//
// Live figures and the plot come from the SSE stream /v1/live/stream; the
// event list from /v1/events (SSE), which also triggers table refreshes;
// node usage is re-read every 2 s (heartbeats are not events). SSE is read
// with fetch() rather than EventSource so a bearer token can travel in a
// header instead of the URL.
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
    return `<tr data-node="${esc(n.node_id)}"><td>${esc(n.name)}</td><td><code>${esc(n.node_id)}</code></td>
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

async function showExecution(id) {
  const res = await api(`/v1/executions/${encodeURIComponent(id)}`);
  $("detail").hidden = false;
  $("detail-id").textContent = id;
  $("detail-record").textContent = JSON.stringify(res.execution, null, 2);
  $("detail-output").textContent = res.output_text != null ? res.output_text : `(binary, base64) ${res.output}`;
  const logs = await api(`/v1/executions/${encodeURIComponent(id)}/logs`);
  $("detail-logs").textContent = logs.captured ? (logs.logs || "(empty)")
    : "(not captured: only invocations streamed through this gateway keep logs)";
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
  refreshAll();
});

$("executions").addEventListener("click", (e) => {
  const tr = e.target.closest("tr[data-execution]");
  if (tr) showExecution(tr.dataset.execution).catch((err) => alert(err.message));
});

$("functions").addEventListener("click", (e) => {
  const a = e.target.closest("a[data-pick]");
  if (!a) return;
  e.preventDefault();
  $("invoke-fn").value = a.dataset.pick;
  $("invoke-input").focus();
});

$("detail-close").addEventListener("click", () => { $("detail").hidden = true; });

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
every(2000, refreshNodes);
every(5000, refreshExecutions);
every(10000, refreshFunctions);
window.addEventListener("resize", drawPlot);
