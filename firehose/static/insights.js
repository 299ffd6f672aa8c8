// firehose insights: build duration, slowest steps and queue wait, as live charts with table views.
// A snapshot of /api/trend, /api/steps and /api/waits, then the stream from the snapshot's cursor:
// an event that changes a chart (a finished build, a finished step, a claimed request) re-asks
// the endpoints, debounced, so the charts move as builds finish. Charts: uPlot (vendored, see
// uPlot.LICENSE) for the time series, plain HTML bars for the ranked steps. No build step.
(() => {
  "use strict";

  const WINDOWS = [3600, 21600, 86400, 604800, 2592000];
  const BUCKETS = [60, 300, 900, 3600, 21600, 86400];
  const SORTS = ["total", "mean", "p95", "count"];
  const params = new URLSearchParams(location.search);
  const pick = (name, allowed, dflt) => {
    const v = Number(params.get(name));
    return allowed.includes(v) ? v : dflt;
  };
  const view = {
    builder: params.get("builder") || "",
    window: pick("window", WINDOWS, 604800),
    bucket: pick("bucket", BUCKETS, 3600),
    show: params.get("show") || "",
    sort: SORTS.includes(params.get("sort")) ? params.get("sort") : "total",
    transport: params.get("transport") || "auto",
    limit: 20,
  };
  const $ = (id) => document.getElementById(id);
  const esc = (s) => String(s ?? "").replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
  const enc = encodeURIComponent;
  const state = {
    data: { trend: null, waits: null, steps: null },
    charts: { trend: null, waits: null },
    refreshes: 0,          // snapshots taken (the first, then one per debounced batch of events)
    events: 0,             // stream events that asked for a refresh
    stream: null,
  };

  const api = FirehoseStream.api;                             // stream.js: /api answers, warming_up

  const secs = (v) => (v == null ? "" : `${Number(v).toFixed(1)} s`);
  const pct = (v) => (v == null ? "" : `${(100 * v).toFixed(1)} %`);
  function when(t) {
    const d = new Date(t * 1000);
    const p = (n) => String(n).padStart(2, "0");
    return `${d.getFullYear()}-${p(d.getMonth() + 1)}-${p(d.getDate())} ${p(d.getHours())}:${p(d.getMinutes())}`;
  }
  const num = (v, text) => `<td data-value="${v ?? ""}">${esc(text)}</td>`;

  // --- Snapshot ------------------------------------------------------------------------------

  // One builder shown: ask for that builder only; every matched builder together: ask for
  // that series only (series=all: 200 builders' own buckets over a week are megabytes).
  // The names to choose from come from /api/builders.
  function bucketed() {
    return query({ bucket: String(view.bucket), ...(view.show ? {} : { series: "all" }) });
  }

  function query(extra) {
    const q = new URLSearchParams({ window: String(view.window), ...extra });
    const scope = view.show || view.builder;
    if (scope) q.set("builder", scope);
    return q.toString();
  }

  async function snapshot() {
    const [trend, waits, steps, builders] = await Promise.all([
      api(`/api/trend?${bucketed()}`),
      api(`/api/waits?${bucketed()}`).catch(() => null),   // older servers have none
      api(`/api/steps?${query({ sort: view.sort, limit: String(view.limit) })}`),
      api(`/api/builders${view.builder ? `?builder=${enc(view.builder)}` : ""}`),
    ]);
    state.data = { trend, waits, steps, builders };
    state.refreshes++;
    render();
    return FirehoseStream.earliest([trend.cursor, waits && waits.cursor, steps.cursor, builders.cursor]);
  }

  // The buckets of the selected series: every matched builder together, or one builder.
  function series(answer) {
    if (!answer) return [];
    if (!view.show) return (answer.all && answer.all.buckets) || [];
    const b = (answer.builders || []).find((x) => x.builder === view.show);
    return b ? b.buckets : [];
  }

  // --- Rendering -----------------------------------------------------------------------------

  function render() {
    renderSeriesChoice();
    const trend = series(state.data.trend);
    const waits = series(state.data.waits);
    const who = view.show || (view.builder ? `builders ${view.builder}` : "every builder");
    $("trend-sub").textContent = `(${who}; ${trend.reduce((n, b) => n + b.count, 0)} builds)`;
    $("waits-sub").textContent = state.data.waits ? `(${who}; ${waits.reduce((n, b) => n + b.count, 0)} requests)` : "(this server has no /api/waits)";
    state.charts.trend = drawChart(state.charts.trend, $("trend-chart"), trend, [
      { label: "median", key: "p50", stroke: "#1f5fbf", scale: "s" },
      { label: "p95", key: "p95", stroke: "#c2410c", scale: "s", dash: [6, 4] },
      { label: "failure rate", key: "failure_rate", stroke: "#b91c1c", scale: "%", fill: "rgba(185,28,28,.08)", percent: true },
    ]);
    $("trend-table").tBodies[0].innerHTML = trend.map((b) => `<tr data-start="${b.start}"><th scope="row">${esc(when(b.start))}</th>`
      + num(b.count, b.count) + num(b.mean, secs(b.mean)) + num(b.p50, secs(b.p50)) + num(b.p95, secs(b.p95))
      + num(b.max, secs(b.max)) + num(b.failed, b.failed ?? "") + num(b.failure_rate, pct(b.failure_rate)) + "</tr>").join("")
      || '<tr><td colspan="8">no finished builds in this window</td></tr>';
    state.charts.waits = drawChart(state.charts.waits, $("waits-chart"), waits, [
      { label: "median", key: "p50", stroke: "#1f5fbf", scale: "s" },
      { label: "p95", key: "p95", stroke: "#c2410c", scale: "s", dash: [6, 4] },
    ]);
    $("waits-table").tBodies[0].innerHTML = waits.map((b) => `<tr data-start="${b.start}"><th scope="row">${esc(when(b.start))}</th>`
      + num(b.count, b.count) + num(b.mean, secs(b.mean)) + num(b.p50, secs(b.p50)) + num(b.p95, secs(b.p95))
      + num(b.max, secs(b.max)) + "</tr>").join("")
      || '<tr><td colspan="6">no requests in this window</td></tr>';
    renderSteps();
  }

  function renderSeriesChoice() {
    const names = new Set(((state.data.builders && state.data.builders.builders) || []).map((b) => b.builder));
    if (view.show) names.add(view.show);
    const sel = $("show");
    const want = ["", ...[...names].sort()];
    if (sel.options.length === want.length && [...sel.options].every((o, i) => o.value === want[i])) return;
    sel.innerHTML = want.map((n) => `<option value="${esc(n)}"${n === view.show ? " selected" : ""}>${n ? esc(n) : "all matched builders"}</option>`).join("");
  }

  function drawChart(chart, el, buckets, lines) {
    const xs = buckets.map((b) => b.start);
    const data = [xs, ...lines.map((l) => buckets.map((b) => (b[l.key] == null ? null : l.percent ? 100 * b[l.key] : b[l.key])))];
    el.dataset.points = String(xs.length);
    if (chart) { chart.setData(data); return chart; }
    const hasPercent = lines.some((l) => l.percent);
    const opts = {
      width: Math.max(300, el.clientWidth || 600),
      height: 240,
      series: [{ label: "bucket start", value: (u, v) => (v == null ? "" : when(v)) },
        ...lines.map((l) => ({ label: l.label, stroke: l.stroke, width: 2, dash: l.dash, fill: l.fill, scale: l.scale,
          points: { show: true, size: 5 }, value: (u, v) => (v == null ? "" : l.percent ? `${v.toFixed(1)} %` : `${v.toFixed(1)} s`) }))],
      scales: { x: { time: true }, s: { range: (u, min, max) => [0, Math.max(1, max * 1.1)] }, ...(hasPercent ? { "%": { range: [0, 100] } } : {}) },
      axes: [{}, { scale: "s", label: "seconds", values: (u, vals) => vals.map((v) => `${v}s`) },
        ...(hasPercent ? [{ scale: "%", side: 1, label: "failure rate", grid: { show: false }, values: (u, vals) => vals.map((v) => `${v}%`) }] : [])],
      legend: { live: true },
    };
    return new uPlot(opts, data, el);
  }

  function renderSteps() {
    const rows = (state.data.steps && state.data.steps.steps) || [];
    const key = view.sort;
    const top = Math.max(1e-9, ...rows.map((r) => r[key] || 0));
    $("steps-sub").textContent = `(top ${rows.length}, by ${key})`;
    $("sort").value = key;
    $("steps-chart").innerHTML = rows.map((r, i) => {
      const width = (100 * (r[key] || 0)) / top;
      const label = `${r.builder} / ${r.step}`;
      const text = `total ${secs(r.total)}, mean ${secs(r.mean)}, p95 ${secs(r.p95)}, ${r.count} runs`;
      return `<li data-builder="${esc(r.builder)}" data-step="${esc(r.step)}" data-total="${r.total}" data-mean="${r.mean}" data-p95="${r.p95}" data-count="${r.count}">`
        + `<span class="bar-label" title="${esc(label)}">${i + 1}. ${esc(label)}</span>`
        + `<span class="bar-track"><span class="bar" style="width:${width.toFixed(2)}%"></span></span>`
        + `<span class="bar-value">${esc(text)}</span></li>`;
    }).join("") || "<li>no finished steps in this window</li>";
    $("steps-table").tBodies[0].innerHTML = rows.map((r, i) => `<tr data-builder="${esc(r.builder)}" data-step="${esc(r.step)}"><td>${i + 1}</td>`
      + `<td>${esc(r.builder)}</td><td>${esc(r.step)}</td>` + num(r.count, r.count) + num(r.total, secs(r.total))
      + num(r.mean, secs(r.mean)) + num(r.p95, secs(r.p95)) + num(r.max, secs(r.max)) + "</tr>").join("")
      || '<tr><td colspan="8">no finished steps in this window</td></tr>';
  }

  window.addEventListener("resize", () => requestAnimationFrame(() => {
    for (const [name, chart] of Object.entries(state.charts)) {
      const el = $(`${name}-chart`);
      if (chart && el.clientWidth) chart.setSize({ width: el.clientWidth, height: 240 });
    }
  }));

  // --- Live ----------------------------------------------------------------------------------

  // Events that move a chart. Every one schedules a refresh: at most one snapshot in flight,
  // the next one at least DEBOUNCE_MS after the first event it covers.
  const MOVES = ["build.started", "build.finished", "step.finished", "request.claimed", "request.cancelled"];
  // The pause grows with what a snapshot costs (three times its last duration), so a busy
  // stream over many builders never keeps the page and the server re-asking back to back.
  const DEBOUNCE_MS = 750;
  let timer = null, inFlight = false, again = false, lastCost = 0;
  function scheduleRefresh() {
    if (inFlight) { again = true; return; }
    if (timer) return;
    timer = setTimeout(async () => {
      timer = null; inFlight = true;
      const t0 = performance.now();
      try { await snapshot(); } catch (e) { console.warn("firehose insights:", e.message); again = true; }
      lastCost = performance.now() - t0;
      inFlight = false;
      if (again) { again = false; scheduleRefresh(); }
    }, Math.max(DEBOUNCE_MS, 3 * lastCost));
  }

  function setConnection(st, transport) {
    const el = $("connection");
    if (transport) el.dataset.transport = transport;
    el.dataset.state = st;
    el.textContent = { live: `live (${el.dataset.transport})`, reconnecting: "reconnecting…", connecting: "connecting…", offline: "offline", warming: "server warming up…" }[st];
  }

  // --- Filters in the URL --------------------------------------------------------------------

  $("builder").value = view.builder;
  $("window").value = String(view.window);
  $("bucket").value = String(view.bucket);
  $("filters").addEventListener("submit", (e) => {
    e.preventDefault();
    const q = new URLSearchParams(location.search);
    for (const [k, v] of [["builder", $("builder").value.trim()], ["window", $("window").value], ["bucket", $("bucket").value],
      ["show", $("show").value], ["sort", $("sort").value]]) {
      if (v) q.set(k, v); else q.delete(k);
    }
    location.search = q.toString();                            // the view lives in the URL: shareable
  });
  $("sort").addEventListener("change", () => { $("filters").requestSubmit(); });
  $("to-pushlog").href = "./" + (view.builder ? `?builder=${enc(view.builder)}` : "");

  window.firehoseInsights = { view, state };                   // for tests and the curious

  (async function start() {
    let cursor;
    for (let i = 0; ; i++) {
      try { cursor = await snapshot(); break; } catch (e) {
        if (e.warming) {
          setConnection("warming");
          await new Promise((resolve) => setTimeout(resolve, 1000 * Math.min(30, Math.max(1, e.retryAfter))));
          i = -1;                                                  // it answers: not a failure to back off from
          continue;
        }
        setConnection("offline");
        await new Promise((resolve) => setTimeout(resolve, Math.min(15000, 1000 * 2 ** i)));
      }
    }
    const filter = { type: MOVES };
    if (view.builder) filter.builder = view.builder.split(",").map((s) => s.trim()).filter(Boolean);
    state.stream = FirehoseStream.follow({
      since: cursor, filter, transport: view.transport === "longpoll" ? "longpoll" : undefined,
      onEvent: () => { state.events++; scheduleRefresh(); },
      onGap: () => scheduleRefresh(),
      onState: setConnection,
    });
  })();
})();
