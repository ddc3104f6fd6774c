// tokenyard's live cost dashboard: polls the admin JSON APIs (same origin, the session cookie) every 2 s.
"use strict";

const POLL_MS = 2000;
const usd = (x) => x == null ? "–" : "$" + (Math.abs(x) >= 100 ? x.toLocaleString("en-US", {maximumFractionDigits: 0})
  : Math.abs(x) >= 1 ? x.toFixed(2) : x.toPrecision(3));
const num = (x) => x == null ? "–" : Number(x).toLocaleString("en-US");
const pct = (x) => x == null ? "–" : (100 * x).toFixed(0) + "%";
const esc = (s) => String(s).replace(/[&<>"']/g, (c) => ({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;"}[c]));
const charts = {};
const observers = {};

function forget(id) {  // drop a chart (and its resize watch) so the next draw starts afresh
  if (observers[id]) observers[id].disconnect();
  if (charts[id]) charts[id].destroy();
  delete observers[id];
  delete charts[id];
}

async function getJSON(path) {
  const response = await fetch(path, {credentials: "same-origin", cache: "no-store"});
  if (response.status === 401 || response.status === 403) { location.reload(); throw new Error("signed out"); }
  if (!response.ok) throw new Error(path + " answered " + response.status);
  return response.json();
}

function table(el, headers, rows) {
  const head = "<tr>" + headers.map((h) => `<th>${esc(h)}</th>`).join("") + "</tr>";
  const body = rows.length ? rows.map((r) => "<tr>" + r.map((c) => `<td>${c}</td>`).join("") + "</tr>").join("")
    : `<tr><td colspan="${headers.length}" class="muted">nothing yet</td></tr>`;
  document.getElementById(el).innerHTML = `<table>${head}${body}</table>`;
}

function lineChart(id, series, xs, ys, extra = {}) {
  const el = document.getElementById(id);
  const width = Math.max(260, el.clientWidth || 600);
  if (!charts[id]) {
    charts[id] = new uPlot({
      width, height: 220,
      series: [{}, ...series],
      axes: [{}, {size: 80, values: (u, ticks) => ticks.map((t) => usd(t))}],
      ...extra,
    }, [xs, ...ys], el);
    observers[id] = new ResizeObserver(() => charts[id] && charts[id].setSize({width: Math.max(260, el.clientWidth), height: 220}));
    observers[id].observe(el);
  } else {
    charts[id].setData([xs, ...ys]);
  }
}

const PALETTE = ["#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#000000"];
const SPAN = {minute: {step: 60, count: 60, start: "60m"}, hour: {step: 3600, count: 24, start: "24h"}};
const spendBy = () => document.getElementById("spend-by").value;
const spendPeriod = () => document.getElementById("spend-period").value;

function spendChart(rows, dim, period) {
  // Every period of the span, so a span with one busy minute still reads as the whole span.
  const {step, count} = SPAN[period];
  const now = Math.floor(Date.now() / 1000 / step) * step;
  const xs = Array.from({length: count + 1}, (_, i) => now - (count - i) * step);
  const groups = [...new Set(rows.map((r) => r[dim] || "(none)"))].sort().slice(0, PALETTE.length);
  const ys = groups.map((g) => xs.map((x) => rows.filter((r) => r.period_start === x && (r[dim] || "(none)") === g)
    .reduce((sum, r) => sum + r.cost_usd, 0)));
  const key = [dim, period, ...groups].join("|");
  if (key !== spendKey) {  // other series: draw the chart afresh
    spendKey = key;
    forget("spend-chart");
  }
  const series = groups.length ? groups.map((g, i) => ({label: g, stroke: PALETTE[i], width: 2, value: (u, v) => usd(v)}))
    : [{label: "no traffic", stroke: "#bbb"}];
  lineChart("spend-chart", series, xs, groups.length ? ys : [xs.map(() => 0)]);
}
let spendKey = "";

function byDimension(dim, usage) {
  const rows = usage.data.map((r) => [esc(r[dim] || "(none)"), num(r.requests), num(r.prompt_tokens + r.completion_tokens),
    usd(r.token_cost_usd), usd(r.gpu_cost_usd), `<b>${usd(r.cost_usd)}</b>`]);
  table("by-" + dim, [dim, "requests", "tokens", "token $", "GPU $", "total $"], rows);
}

// Which figures are the engine's own (its /metrics) rather than tokenyard's count.
const source = (s) => `<span class="pill${s === "engine" ? "" : " own"}" title="from ${s === "engine" ? "the engine's metrics" : "tokenyard's own count"}">${esc(s)}</span>`;

function dedicated(usage, cap) {
  table("dedicated", ["backend", "GPU-h provisioned", "GPU-h busy", "utilization", "", "$ / 1M tokens", "idle $",
    "engine tokens", "not via tokenyard", "queue / KV (mean)"],
    usage.dedicated.map((d) => [esc(d.backend), d.gpu_hours.toFixed(3), (d.gpu_hours * d.utilization).toFixed(3),
      `${pct(d.utilization)} ${source(d.utilization_source)}`,
      `<div class="bar" title="cap ${pct(cap)}"><span style="width:${pct(d.utilization)}"></span><i style="left:${pct(cap)}"></i></div>`,
      d.effective_usd_per_1m_tokens == null ? "–" : `${usd(d.effective_usd_per_1m_tokens)} ${source(d.tokens_source)}`,
      usd(d.idle_cost_usd), num(d.engine_tokens),
      d.unseen_tokens == null ? "–" : `<span title="tokens the engine processed that did not come through tokenyard (a shared engine)">${num(d.unseen_tokens)}</span>`,
      d.engine == null ? "–" : `${d.engine.waiting_mean == null ? "–" : d.engine.waiting_mean.toFixed(1)} / ${pct(d.engine.kv_cache_usage_mean)}`]));
}

function limits(backends) {  // the backends with an sla: the limit learned from it and the latencies behind it
  if (backends.failed) { table("limits", ["SLA limits"], [[`<span class="error">${esc(backends.failed)}</span>`]]); return; }
  const sla = (s) => [s.ttft_p95_ms && `TTFT ≤ ${num(s.ttft_p95_ms)} ms`,
    s.min_stream_tokens_per_s && `≥ ${num(s.min_stream_tokens_per_s)} tok/s`].filter(Boolean).join(", ") + ` at p${s.percentile}`;
  const fixed = (x, digits, unit) => x == null ? "–" : x.toFixed(digits) + unit;
  table("limits", ["backend", "SLA", "limit / ceiling", "in flight", "TTFT (SLA percentile)", "tok/s per stream (low tail)", "breached", "last change"],
    backends.data.filter((b) => b.capacity && b.capacity.limit).map((b) => {
      const l = b.capacity.limit, w = l.latencies, last = l.history[l.history.length - 1];
      return [esc(b.name), esc(sla(b.capacity.sla)), `<b>${num(l.current)}</b> / ${num(l.ceiling)}`, num(b.in_flight),
        fixed(w.ttft_p95_ms, 0, " ms"), fixed(w.stream_tokens_per_s_p5, 1, ""), w.breached_share == null ? "–" : pct(w.breached_share),
        last ? `${esc(last.reason)} <span class="muted">(${new Date(last.at * 1000).toLocaleTimeString()})</span>`
          : '<span class="muted">none yet: at its ceiling</span>'];
    }));
}

function queue(q) {
  if (!q.enabled) { table("queue", ["async track"], [["off (it needs a meter store)"]]); return; }
  const paths = Object.keys(q.answered_by_path).sort();
  document.getElementById("queue-open").textContent = num((q.waiting || 0) + (q.claimed || 0) + (q.in_provider_batch || 0));
  document.getElementById("queue-oldest").textContent = q.oldest_age_s == null ? "none waiting" : `oldest ${q.oldest_age_s.toFixed(0)} s`;
  table("queue", ["", "jobs"], [
    ["waiting", num(q.waiting)], ["claimed by the dispatcher", num(q.claimed)], ["in provider batches", num(q.in_provider_batch)],
    ...paths.map((p) => [`answered via ${esc(p.replace("_", " "))}`, num(q.answered_by_path[p]) +
      ` <span class="muted">(avg wait ${(q.wait_s_by_path[p] / q.answered_by_path[p]).toFixed(1)} s)</span>`]),
  ]);
}

let capacityShown = null;  // what the capacity panel shows (backends, samples, limits): redraw when it changes

function capacity(backends) {
  const root = document.getElementById("capacity");
  if (backends.failed) {
    capacityShown = null;
    root.innerHTML = `<p class="error">${esc(backends.failed)}</p>`;
    return;
  }
  const measured = backends.data.filter((b) => b.capacity && b.capacity.envelope && b.capacity.envelope.curve.length);
  const limitOf = (b) => (b.capacity.limit && b.capacity.limit.current != null ? b.capacity.limit.current : null);
  const key = measured.map((b) => `${b.name}:${b.capacity.envelope.samples}:${limitOf(b)}`).join("|");
  if (key === capacityShown) return;
  capacityShown = key;
  if (!measured.length) {
    root.innerHTML = '<p class="muted">no measured envelope yet: dedicated backends fill it as they answer</p>';
    return;
  }
  root.innerHTML = measured.map((b, i) => {
    const e = b.capacity.envelope, c = e.capacity, limit = limitOf(b);
    const what = c ? `capacity <b>${num(Math.round(c.aggregate_tokens_per_s))} tok/s</b> per replica at c = ${c.concurrency}
      (${num(Math.round(c.stream_tokens_per_s))} tok/s per stream)` +
      (c.enough_data ? "" : ` <span class="pill low">not yet used: ${esc(c.why)}</span>`)
      : e.sla ? "no capacity yet: no level has 50 samples within the SLA" : "no SLA: the curve only";
    return `<div class="workload" data-testid="capacity-${esc(b.name)}"><h3>${esc(b.name)}</h3>
      <p>${num(Math.round(e.samples))} samples · ${what}${limit != null ? ` · learned limit <b>${num(limit)}</b>` : ""}</p>
      <div class="chart" id="envelope-${i}"></div></div>`;
  }).join("");
  // The line is per engine replica, as the curve's axis: the API says what that is.
  measured.forEach((b, i) => envelopeChart(`envelope-${i}`, b, b.capacity.limit ? b.capacity.limit.per_replica : null));
}

function envelopeChart(id, b, limit) {
  forget(id);  // the panel is redrawn: its charts are new elements
  const e = b.capacity.envelope, points = e.curve.filter((p) => p.stream_tokens_per_s != null);
  const mark = (u) => {
    const ctx = u.ctx, top = u.bbox.top, height = u.bbox.height;
    const line = (x, colour, dash) => { const px = u.valToPos(x, "x", true); ctx.save(); ctx.strokeStyle = colour;
      ctx.setLineDash(dash); ctx.lineWidth = 2; ctx.beginPath(); ctx.moveTo(px, top); ctx.lineTo(px, top + height); ctx.stroke(); ctx.restore(); };
    if (e.capacity) line(e.capacity.concurrency, "#009E73", []);
    if (limit != null) line(limit, "#D55E00", [6, 4]);  // the learned limit per replica
  };
  lineChart(id, [
    {label: "aggregate tok/s", stroke: "#0072B2", width: 2, points: {show: true}, value: (u, v) => num(v)},
    {label: "per-stream tok/s", stroke: "#D55E00", width: 2, points: {show: true}, value: (u, v) => num(v)},
  ], points.map((p) => p.concurrency), [points.map((p) => p.aggregate_tokens_per_s), points.map((p) => p.stream_tokens_per_s)],
  {scales: {x: {time: false}}, hooks: {draw: [mark]},
   axes: [{incrs: [1, 2, 5, 10, 20, 50, 100], values: (u, ticks) => ticks.map((t) => String(t)),
           label: "requests in flight per replica"},
          {size: 70, values: (u, ticks) => ticks.map((t) => num(t))}]});
}

let adviceShown = null;  // generated_at of the advice on the page: redraw only when it changes

function advice(doc) {
  const root = document.getElementById("advice");
  if (!doc || !doc.workloads || !doc.workloads.length) { root.innerHTML = '<p class="muted">no advice yet</p>'; return; }
  if (doc.generated_at === adviceShown) return;
  adviceShown = doc.generated_at;
  root.innerHTML = doc.workloads.map((w, i) => `
    <div class="workload" data-testid="advice-${esc(w.workload)}">
      <h3>${esc(w.workload)} → <span class="pill">${esc(w.recommended.architecture)}</span>
        <span class="pill ${w.confidence === "low" ? "low" : ""}">${esc(w.confidence)} confidence</span></h3>
      <p>${esc(w.recommended.label)}: <b>${usd(w.recommended.cost_usd_per_month)}/month</b>${w.current ? ` against ${usd(w.current.cost_usd_per_month)}/month now,
        saving <b class="saving">${usd(w.saving_usd_per_month)}</b>` : ""}${w.change_recommended ? " — <b>change recommended</b>" : ""}</p>
      <ul class="reasons">${w.reasons.map((r) => `<li>${esc(r)}</li>`).join("")}</ul>
      <div class="table">${candidates(w)}</div>
      ${w.cost_curve ? `<div class="chart" id="curve-${i}"></div>` : ""}
    </div>`).join("");
  doc.workloads.forEach((w, i) => { if (w.cost_curve) curve(`curve-${i}`, w.cost_curve); });
}

function candidates(w) {
  return "<table><tr><th>candidate</th><th>$/month</th><th>utilization</th></tr>" + w.candidates.map((c) =>
    `<tr><td>${esc(c.label)}</td><td>${usd(c.cost_usd_per_month)}</td><td>${pct(c.utilization)}</td></tr>`).join("") + "</table>";
}

function curve(id, cc) {
  forget(id);  // the advice section is redrawn: its charts are new elements
  const xs = cc.points.map((p) => p.replicas), ys = cc.points.map((p) => p.cost_usd_per_month);
  const mark = (u) => {
    const ctx = u.ctx, top = u.bbox.top, height = u.bbox.height;
    const line = (x, colour, dash) => { const px = u.valToPos(x, "x", true); ctx.save(); ctx.strokeStyle = colour;
      ctx.setLineDash(dash); ctx.lineWidth = 2; ctx.beginPath(); ctx.moveTo(px, top); ctx.lineTo(px, top + height); ctx.stroke(); ctx.restore(); };
    if (cc.breakeven_replicas != null) line(cc.breakeven_replicas, "#D55E00", [6, 4]);
    line(cc.optimum_replicas, "#009E73", []);
  };
  lineChart(id, [{label: `$/month with N always-on ${cc.gpu} (cheapest N = ${cc.optimum_replicas}` +
    (cc.breakeven_replicas != null ? `, breakeven ≈ ${cc.breakeven_replicas.toFixed(1)}` : "") + ")",
    stroke: "#0072B2", width: 2, points: {show: true}, value: (u, v) => usd(v)}], xs, [ys],
    {scales: {x: {time: false}}, hooks: {draw: [mark]},
     axes: [{incrs: [1, 2, 5, 10, 20, 50, 100, 200, 500], values: (u, ticks) => ticks.map((t) => String(t)),
             label: "always-on replicas (N)"}, {size: 80, values: (u, ticks) => ticks.map((t) => usd(t))}]});
}

async function refresh() {
  try {
    const dims = ["mode", "kind", "backend", "model", "tenant"];
    const [total, minute, q, doc, backends, ...byDim] = await Promise.all([
      getJSON("/admin/usage?start=24h&granularity=total&group_by="),
      getJSON(`/admin/usage?start=${SPAN[spendPeriod()].start}&granularity=${spendPeriod()}&group_by=${spendBy()}`),
      getJSON("/admin/queue"),
      getJSON("/admin/advice").catch(() => null),
      // One failed read of the backends blanks only the panels drawn from it, not the whole refresh.
      getJSON("/admin/backends").catch((error) => ({data: [], failed: `backends unavailable: ${error.message}`})),
      ...dims.map((d) => getJSON(`/admin/usage?start=24h&granularity=total&group_by=${d}`)),
    ]);
    const t = total.totals;
    document.getElementById("total-requests").textContent = num(t.requests);
    document.getElementById("total-cost").textContent = usd(t.cost_usd);
    document.getElementById("total-tokens").textContent = `${num(t.prompt_tokens)} / ${num(t.completion_tokens)}`;
    document.getElementById("async-saved").textContent = usd(total.async_savings_usd);
    spendChart(minute.data, spendBy(), spendPeriod());
    dims.forEach((d, i) => byDimension(d, byDim[i]));
    dedicated(total, total.utilization_cap);
    limits(backends);
    queue(q);
    capacity(backends);
    advice(doc);
    document.getElementById("updated").textContent = "updated " + new Date().toLocaleTimeString();
  } catch (error) {
    document.getElementById("updated").innerHTML = `<span class="error">${esc(error.message)}</span>`;
  }
}

document.getElementById("spend-by").addEventListener("change", refresh);
document.getElementById("spend-period").addEventListener("change", refresh);
refresh();
setInterval(refresh, POLL_MS);
