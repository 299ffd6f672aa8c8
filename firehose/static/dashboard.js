// firehose dashboard: a live pushlog (revisions down, builders across), running builds and the queue.
// It takes a snapshot from /api, then follows the stream from the snapshot's cursor over WebSocket,
// falling back to long-poll when WebSocket is blocked, and resumes by cursor after a drop.
// No build step: plain browser JavaScript.
(() => {
  "use strict";

  const LETTERS = { pending: "P", running: "R", success: "S", warnings: "W", failure: "F",
    exception: "X", retry: "Y", cancelled: "C", skipped: "K" };
  const params = new URLSearchParams(location.search);
  const view = {
    branch: params.get("branch") || "",
    builder: params.get("builder") || "",
    group: params.get("group") === "master" ? "master" : "tag",
    limit: Math.min(500, Math.max(1, parseInt(params.get("limit") || "100", 10) || 100)),
    transport: params.get("transport") || "auto",
  };
  const $ = (id) => document.getElementById(id);
  const ui = {
    branch: $("branch"), builder: $("builder"), group: $("group"), form: $("filters"),
    connection: $("connection"), table: $("pushlog"), empty: $("empty"), lastgreen: $("lastgreen"),
    running: $("running"), runningCount: $("running-count"), queue: $("queue"), queueCount: $("queue-count"),
    details: $("details"), detailsTitle: $("details-title"), detailsBody: $("details-body"),
    toasts: $("toasts"),
  };
  const model = {
    rows: [],                 // revisions of view.branch, newest first: {revision, time, author, comments, builders}
    rowByRevision: new Map(),
    builders: new Map(),      // name -> {tags, masters}
    running: new Map(),       // "master/buildid" -> build
    queue: new Map(),         // "master/buildrequestid" -> request
    lastGreen: null,
    cursor: null,             // last event applied
  };
  const conn = { transport: null, state: "connecting", stream: null };   // stream: FirehoseStream (stream.js)
  const cellEls = new Map();  // revision + "\0" + builder -> td
  const esc = (s) => String(s ?? "").replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
  const enc = encodeURIComponent;

  function filterQuery() {
    const q = new URLSearchParams();
    if (view.builder) q.set("builder", view.builder);
    return q.toString();
  }

  const api = FirehoseStream.api;                             // stream.js: /api answers, warming_up

  function offsetOf(cursor) { return cursor ? Number(cursor.split(":")[1]) : 0; }

  // --- Snapshot ------------------------------------------------------------------------------

  async function loadSnapshot() {
    const branches = (await api("/api/revisions")).branches;
    if (!view.branch) view.branch = ["main", "master", "trunk"].find((b) => branches.includes(b)) || branches[0] || "main";
    ui.branch.innerHTML = [...new Set([view.branch, ...branches])]
      .map((b) => `<option${b === view.branch ? " selected" : ""}>${esc(b)}</option>`).join("");
    ui.branch.title = `${branches.length} branch${branches.length === 1 ? "" : "es"} seen: those with a change, a request or a build`
      + " the firehose still remembers, most recently active first";
    const q = filterQuery();
    const answers = await Promise.all([
      api(`/api/revisions?branch=${enc(view.branch)}&limit=${view.limit}&${q}`),
      api(`/api/running?limit=500&${q}`),
      api(`/api/queue?limit=500&${q}`),
      api(`/api/builders?${q}`),
    ]);
    const [revs, running, queue, builders] = answers;
    model.rows = []; model.rowByRevision.clear(); model.builders.clear();
    model.running.clear(); model.queue.clear();
    for (const b of builders.builders) {
      model.builders.set(b.builder, { tags: b.tags || [], masters: b.masters || [], median: b.duration_p50 ?? null });
    }
    for (const row of revs.revisions) {
      model.rows.push(row); model.rowByRevision.set(row.revision, row);
      for (const name of Object.keys(row.builders)) knowBuilder(name);
    }
    for (const b of running.builds) model.running.set(`${b.master}/${b.buildid}`, b);
    for (const r of queue.requests) model.queue.set(`${r.master}/${r.buildrequestid}`, r);
    // Events after the oldest of these answers are applied on top: every update is idempotent.
    model.cursor = answers.map((a) => a.cursor).sort((a, b) => offsetOf(a) - offsetOf(b))[0];
    await refreshLastGreen();
    renderGrid(); renderRunning(); renderQueue();
    const week = Date.now() - 7 * 86400e3;
    for (const [rev, w] of Object.entries(watches.all())) {              // watched pushes, on screen or not
      if (w.notified && (w.at || 0) < week) watches.put(rev, null);        // told a week ago: forget it
      else askRevision(rev);
    }
  }

  let greenTimer = null;
  function scheduleLastGreen() {
    clearTimeout(greenTimer);
    greenTimer = setTimeout(refreshLastGreen, 300);
  }
  async function refreshLastGreen() {
    try {
      const g = await api(`/api/lastgreen?branch=${enc(view.branch)}&${filterQuery()}`);
      model.lastGreen = g.revision ? g.revision.revision : null;
    } catch (e) { model.lastGreen = null; }
    ui.lastgreen.textContent = model.lastGreen ? `last green: ${model.lastGreen.slice(0, 12)}` : "no green revision yet";
    for (const tr of ui.table.querySelectorAll("tr.green")) tr.classList.remove("green");
    const tr = model.lastGreen && ui.table.querySelector(`tr[data-rev="${CSS.escape(model.lastGreen)}"]`);
    if (tr) tr.classList.add("green");
  }


  // --- A revision's overall state, and watched pushes -----------------------------------------
  // The state (pending, running, done), result and failures of a revision are the server's
  // (firehose revision_status, the one definition `firehose wait` shares): the page never
  // computes them. It asks /api/revisions?revision= again, debounced, when an event of that
  // revision arrives.

  function revisionsOf(d) {
    const out = new Set();
    if (d.revision) out.add(d.revision);
    for (const st of d.sourcestamps || []) if (st && st.revision) out.add(st.revision);
    if (d.properties && typeof d.properties.got_revision === "string") out.add(d.properties.got_revision);
    return out;
  }

  const watches = {                                           // revision -> {branch, builder, notified, at}
    key: "firehose-watched",
    all() {
      try { return JSON.parse(localStorage.getItem(this.key) || "{}") || {}; } catch (e) { return {}; }
    },
    get(rev) { return this.all()[rev] || null; },
    put(rev, w) {
      const all = this.all();
      if (w) all[rev] = w; else delete all[rev];
      try { localStorage.setItem(this.key, JSON.stringify(all)); } catch (e) { /* private mode: this page only */ }
    },
  };

  const asking = new Map();                                   // revision -> timer
  const watchChecks = {};                                     // revision -> answers applied (for tests)
  const ASK_MS = 300;
  function askRevision(rev) {
    if (asking.has(rev)) return;
    asking.set(rev, setTimeout(async () => {
      const w = watches.get(rev);
      const builder = w ? w.builder : view.builder;
      try {
        const q = new URLSearchParams({ revision: rev });
        if (builder) q.set("builder", builder);
        const answer = await api(`/api/revisions?${q}`);
        asking.delete(rev);
        const rows = answer.revisions || [];
        const branch = w ? w.branch : view.branch;
        const status = rows.find((r) => r.branch === branch) || rows[0];
        if (!status) return;
        const row = model.rowByRevision.get(rev);
        if (row && (!w || w.builder === view.builder)) {
          for (const k of ["state", "result", "failures", "green"]) row[k] = status[k];
          paintRevision(row);
        }
        if (w) settleWatch(rev, status);
        watchChecks[rev] = (watchChecks[rev] || 0) + 1;
      } catch (e) {
        asking.delete(rev);
      }
    }, ASK_MS));
  }

  function settleWatch(rev, status) {
    const w = watches.get(rev);
    if (!w || w.notified || status.state !== "done") return;
    w.notified = true;                                        // before telling: exactly once, even across tabs
    watches.put(rev, w);
    const failed = status.failures || [];
    const title = `push ${rev.slice(0, 12)} is done: ${failed.length ? `${failed.length} failed` : status.result || "done"}`;
    const body = failed.length ? `failed: ${[...new Set(failed.map((f) => f.builder))].join(", ")}` : "every build finished green";
    if (w.already) { toast(`${title} (it was done when you asked)`, body); return; }
    let shown = false;
    if ("Notification" in window && Notification.permission === "granted") {
      try { new Notification(title, { body, tag: `firehose-${rev}` }); shown = true; } catch (e) { shown = false; }
    }
    if (!shown) toast(title, body);
  }

  function toast(title, body) {
    const el = document.createElement("div");
    el.className = "toast";
    el.innerHTML = `<strong>${esc(title)}</strong><br>${esc(body)} <button type="button" aria-label="Dismiss">×</button>`;
    el.querySelector("button").addEventListener("click", () => el.remove());
    ui.toasts.append(el);
  }

  function toggleWatch(rev) {
    if (watches.get(rev)) {
      watches.put(rev, null);
    } else {
      // Permission is asked only here, when the user asks to be notified.
      if ("Notification" in window && Notification.permission === "default") {
        try { Notification.requestPermission().catch(() => {}); } catch (e) { /* old API: no promise */ }
      }
      const row = model.rowByRevision.get(rev);
      watches.put(rev, { branch: view.branch, builder: view.builder, notified: false, at: Date.now(),
        already: !!(row && row.state === "done") });
      askRevision(rev);
    }
    const row = model.rowByRevision.get(rev);
    if (row) paintRevision(row);
  }

  function revisionHTML(row) {
    const who = row.author ? ` — ${esc(row.author)}` : "";
    const st = row.state || "pending";
    const label = st === "done" ? (row.green ? "done ✔" : `done: ${row.result || "?"}`) : st;
    const failed = row.failures || [];
    const names = [...new Set(failed.map((f) => f.builder))];
    const fails = failed.length
      ? ` <span class="failures" title="failed: ${esc(names.join(", "))}">✖ ${failed.length}: ${esc(names.join(", "))}</span>` : "";
    const watched = !!watches.get(row.revision);
    return `<span class="revtext">${esc(row.revision.slice(0, 12))}${who}</span>`
      + ` <span class="status ${esc(st === "done" ? (row.green ? "success" : row.result || "") : st)}" data-state="${esc(st)}"`
      + ` data-result="${esc(row.result || "")}">${esc(label)}</span>${fails}`
      + ` <button type="button" class="watch" aria-pressed="${watched}" data-rev="${esc(row.revision)}"`
      + ` title="${watched ? "Watching: click to stop" : "Notify me when every build of this push has finished"}"`
      + ` aria-label="${watched ? "stop watching" : "notify me when done"} ${esc(row.revision.slice(0, 12))}">${watched ? "watching" : "notify me"}</button>`;
  }

  function paintRevision(row) {
    const th = ui.table.querySelector(`tr[data-rev="${CSS.escape(row.revision)}"] th.rev`);
    if (th) th.innerHTML = revisionHTML(row);
  }

  // --- Applying events -----------------------------------------------------------------------

  function knowBuilder(name, tags, master) {
    let b = model.builders.get(name);
    const isNew = !b;
    if (!b) { b = { tags: [], masters: [], median: null }; model.builders.set(name, b); }
    if (tags && tags.length) b.tags = tags;
    if (master && !b.masters.includes(master)) b.masters.push(master);
    if (isNew) scheduleRender();
  }

  function ensureRow(revision, time, extra) {
    let row = model.rowByRevision.get(revision);
    if (!row) {
      row = { revision, branch: view.branch, time, builders: {} };
      model.rowByRevision.set(revision, row);
      model.rows.unshift(row);
      model.rows.sort((a, b) => b.time - a.time);
      if (model.rows.length > view.limit) model.rowByRevision.delete(model.rows.pop().revision);
      scheduleRender();
      askRevision(revision);
    }
    if (extra) for (const k of ["author", "comments", "revlink"]) if (extra[k] != null) row[k] = extra[k];
    return row;
  }

  function setCell(ev, d, cell) {
    if (!d.revision || (d.branch || "(none)") !== view.branch || !d.builder) return;
    if (!matchesBuilder(d.builder)) return;
    const row = ensureRow(d.revision, ev.time);
    const old = row.builders[d.builder];
    if (old && old.buildid != null) {
      if (cell.buildid == null) return;                       // a request never hides a build
      const older = (cell.started_at || 0) < (old.started_at || 0)
        || ((cell.started_at || 0) === (old.started_at || 0) && cell.buildid < old.buildid && cell.master === old.master);
      if (older) return;
      if (old.state === "finished" && cell.state !== "finished" && old.buildid === cell.buildid) return;
    }
    row.builders[d.builder] = cell;
    knowBuilder(d.builder, d.tags, ev.master);
    paintCell(row, d.builder);
  }

  function matchesBuilder(name) {
    if (!view.builder) return true;
    return view.builder.split(",").some((p) =>
      new RegExp("^" + p.trim().split("*").map((s) => s.replace(/[.+?^${}()|[\]\\]/g, "\\$&")).join(".*") + "$").test(name));
  }

  function apply(ev) {
    const d = ev.data || {};
    const [entity, verb] = ev.type.split(".");
    if (entity === "build" || entity === "request" || entity === "buildset") {
      for (const rev of revisionsOf(d)) if (model.rowByRevision.has(rev) || watches.get(rev)) askRevision(rev);
    }
    if (entity === "build") {
      const key = `${ev.master}/${d.buildid}`;
      const finished = verb === "finished";
      if (finished) model.running.delete(key);
      else model.running.set(key, { ...(model.running.get(key) || {}), ...d, master: ev.master });
      // The pushlog files a build under the revision it was asked to build (its source stamp);
      // `revision` prefers got_revision, which differs for builds of a branch's head.
      const asked = (d.sourcestamps || []).map((s) => s.revision).find(Boolean);
      setCell(ev, asked ? { ...d, revision: asked } : d, { state: finished ? "finished" : "running", result: d.result, master: ev.master,
        buildid: d.buildid, number: d.number, started_at: d.started_at });
      if (finished) scheduleLastGreen();
      scheduleLists();
    } else if (entity === "step") {
      const b = model.running.get(`${ev.master}/${d.buildid}`);
      if (b) { b.current_step = verb === "started" ? d : (b.current_step && b.current_step.stepid === d.stepid ? null : b.current_step); scheduleLists(); }
    } else if (entity === "request") {
      const key = `${ev.master}/${d.buildrequestid}`;
      if (verb === "submitted") model.queue.set(key, { ...d, master: ev.master });
      else model.queue.delete(key);
      if (verb === "submitted" || verb === "cancelled") {
        setCell(ev, d, { state: verb === "cancelled" ? "cancelled" : "pending", master: ev.master });
      }
      scheduleLists();
    } else if (entity === "buildset" && verb === "submitted") {
      for (const builder of d.builders || []) {
        const row = model.rowByRevision.get(d.revision);
        if (!row || !row.builders[builder]) setCell(ev, { ...d, builder }, { state: "pending" });
      }
    } else if (entity === "change") {
      if (d.revision && (d.branch || "(none)") === view.branch) ensureRow(d.revision, d.when || ev.time, d);
    } else if (entity === "master" && verb === "started") {
      resync();                                               // a master restarted: reconcile from the API
    }
  }

  function handle(msg) {                                      // an event (stream.js passes no control message)
    if (model.cursor && offsetOf(msg.id) <= offsetOf(model.cursor) && msg.id.split(":")[0] === model.cursor.split(":")[0]) return;
    apply(msg);
    model.cursor = msg.id;
  }

  function onGap(gap) {
    if (gap.reason === "slow" || gap.reason === "error") {
      model.cursor = gap.cursor;                              // stream.js resumes from there
    } else {
      resync();                                               // history we cannot replay: take a new snapshot
    }
  }

  let resyncing = null;
  function resync() {
    if (resyncing) return resyncing;
    resyncing = loadSnapshot().catch(() => {}).then(() => {
      resyncing = null;
      if (conn.stream) conn.stream.restart(model.cursor);     // follow on from the new snapshot
    });
    return resyncing;
  }

  // --- Rendering -----------------------------------------------------------------------------

  function columns() {
    const groupOf = (name) => {
      const b = model.builders.get(name) || { tags: [], masters: [] };
      return (view.group === "master" ? b.masters[0] : b.tags[0]) || "other";
    };
    // The builders that built (or were asked to build) a revision on screen.
    const onScreen = new Set();
    for (const row of model.rows.slice(0, view.limit)) for (const n of Object.keys(row.builders)) onScreen.add(n);
    const names = [...onScreen].filter(matchesBuilder);
    names.sort((a, b) => groupOf(a).localeCompare(groupOf(b)) || a.localeCompare(b));
    const groups = [];
    for (const n of names) {
      const g = groupOf(n);
      if (groups.length && groups[groups.length - 1].name === g) groups[groups.length - 1].count++;
      else groups.push({ name: g, count: 1 });
    }
    return { names, groups };
  }

  let renderPending = false;
  function scheduleRender() {
    if (renderPending) return;
    renderPending = true;
    requestAnimationFrame(() => { renderPending = false; renderGrid(); });
  }

  // Rows are virtualized: only those in (or near) the scrolled view are in the DOM, between two
  // spacer rows of the right height, so 500 revisions x 200 builders stay as cheap as 40 x 200.
  const ROW_HEIGHT = 22;                                      // px; fixed in dashboard.css
  const OVERSCAN = 15;                                        // rows rendered above and below the view
  const grid = { names: [], rows: [], range: [0, 0] };
  const wrap = $("grid-wrap");
  let focusKey = null;                                        // revision + "\0" + builder of the roving cell

  function renderGrid() {
    const { names, groups } = columns();
    grid.names = names;
    grid.rows = model.rows.slice(0, view.limit);
    ui.empty.hidden = grid.rows.length > 0;
    const out = ['<thead><tr class="groups"><th scope="col" rowspan="2" class="rev">revision</th>'];
    // A narrow group's label is cut (its full name in the tooltip), never drawn over its neighbour's.
    // A group is at least wide enough for 8 characters of its label.
    for (const g of groups) {
      out.push(`<th scope="colgroup" colspan="${g.count}" title="${esc(g.name)}" style="min-width:${(Math.min(8, g.name.length) * 0.62 + 0.5).toFixed(2)}em">`
        + `<div class="glabel">${esc(g.name)}</div></th>`);
    }
    // The rotated names are only as tall as the longest of them needs (at most 9rem).
    const longest = Math.max(4, ...names.map((n) => n.length));
    ui.table.style.setProperty("--names-height", `${Math.min(144, Math.ceil(longest * 7.3) + 10)}px`);
    out.push('</tr><tr class="builders">');
    for (const n of names) out.push(`<th scope="col" title="${esc(n)}"><span>${esc(n)}</span></th>`);
    out.push("</tr></thead><tbody></tbody>");
    ui.table.innerHTML = out.join("");
    ui.table.setAttribute("aria-rowcount", String(grid.rows.length + 2));
    renderRows(true);
  }

  function viewRows() {                                      // the rows actually in the scrolled view
    const head = ui.table.tHead ? ui.table.tHead.offsetHeight : 0;
    const first = Math.floor(Math.max(0, wrap.scrollTop - head) / ROW_HEIGHT);
    return [first, Math.min(grid.rows.length, first + Math.ceil((wrap.clientHeight || 800) / ROW_HEIGHT) + 1)];
  }

  function spacer(rows) {
    return rows > 0 ? `<tr class="spacer" aria-hidden="true"><td colspan="${grid.names.length + 1}" style="height:${rows * ROW_HEIGHT}px"></td></tr>` : "";
  }

  function renderRows(force) {
    const [v0, v1] = viewRows();
    // Re-render only when the view leaves the rendered rows: about once per OVERSCAN rows scrolled.
    if (!force && v0 >= grid.range[0] && v1 <= grid.range[1]) return;
    const a = Math.max(0, v0 - OVERSCAN), b = Math.min(grid.rows.length, v1 + OVERSCAN);
    grid.range = [a, b];
    const out = [spacer(a)];
    for (let i = a; i < b; i++) {
      const row = grid.rows[i];
      out.push(`<tr data-rev="${esc(row.revision)}" aria-rowindex="${i + 3}"${row.revision === model.lastGreen ? ' class="green"' : ""}>`);
      out.push(`<th scope="row" class="rev" title="${esc(row.comments || "")}">${revisionHTML(row)}</th>`);
      for (const n of grid.names) out.push(cellHTML(row, n));
      out.push("</tr>");
    }
    out.push(spacer(grid.rows.length - b));
    const hadFocus = ui.table.contains(document.activeElement);
    ui.table.tBodies[0].innerHTML = out.join("");
    cellEls.clear();
    for (const td of ui.table.tBodies[0].querySelectorAll("td.cell")) cellEls.set(td.dataset.rev + "\0" + td.dataset.builder, td);
    const roving = (focusKey && cellEls.get(focusKey)) || (!focusKey && ui.table.querySelector("td.cell"));
    if (roving) {
      roving.tabIndex = 0;
      if (hadFocus) roving.focus({ preventScroll: true });
    }
  }

  wrap.addEventListener("scroll", () => requestAnimationFrame(() => renderRows(false)), { passive: true });
  window.addEventListener("resize", () => requestAnimationFrame(() => renderRows(false)));

  function cellDescription(row, name, c) {
    if (!c) return `${name} at ${row.revision.slice(0, 12)}: not built`;
    const what = c.state === "finished" ? (c.result || "finished") : c.state;
    return `${name} at ${row.revision.slice(0, 12)}: ${what}${c.number != null ? ` (build ${c.number})` : ""}${runningText(name, c)}`;
  }

  // A running build's elapsed time against its builder's median build duration.
  function startedAt(c) {
    const b = c && c.buildid != null ? model.running.get(`${c.master}/${c.buildid}`) : null;
    return (b && b.started_at) || (c && c.started_at) || null;
  }
  function runningText(name, c) {
    if (!c || c.state !== "running") return "";
    const t = startedAt(c);
    if (!t) return "";
    const median = (model.builders.get(name) || {}).median;
    const elapsed = Date.now() / 1000 - t;
    return `, ${fmtDuration(elapsed)} elapsed` + (median ? ` of a ${fmtDuration(median)} median` : "");
  }
  function progressStyle(name, c) {
    if (!c || c.state !== "running") return "";
    const t = startedAt(c), median = (model.builders.get(name) || {}).median;
    if (!t || !median) return "";
    const p = Math.min(100, Math.max(0, (100 * (Date.now() / 1000 - t)) / median));
    return `--progress:${p.toFixed(1)}%`;
  }

  function cellClass(c) {
    if (!c) return "";
    return c.state === "finished" ? (c.result || "exception") : c.state;
  }

  function cellHTML(row, name) {
    const c = row.builders[name];
    const cls = cellClass(c);
    const build = c && c.buildid != null ? ` data-build="${esc(c.master)}/${c.buildid}"` : "";
    return `<td class="cell ${cls}" role="gridcell" tabindex="-1" data-rev="${esc(row.revision)}" data-builder="${esc(name)}"`
      + ` data-state="${esc(cls)}"${build} style="${progressStyle(name, c)}" aria-label="${esc(cellDescription(row, name, c))}" title="${esc(cellDescription(row, name, c))}">`
      + `${c ? LETTERS[cls] || "?" : ""}</td>`;
  }

  function paintCell(row, name) {
    const td = cellEls.get(row.revision + "\0" + name);
    if (!td) {
      if (!grid.names.includes(name)) scheduleRender();      // a new column
      return;                                                 // an off-screen row: painted when shown
    }
    const c = row.builders[name];
    const cls = cellClass(c);
    td.className = `cell ${cls}`;
    td.dataset.state = cls;
    if (c && c.buildid != null) td.dataset.build = `${c.master}/${c.buildid}`;
    td.textContent = c ? LETTERS[cls] || "?" : "";
    const label = cellDescription(row, name, c);
    td.setAttribute("aria-label", label);
    td.title = label;
    td.setAttribute("style", progressStyle(name, c));
  }

  function fmtDuration(s) {
    if (s == null) return "";
    s = Math.max(0, Math.round(s));
    const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), sec = s % 60;
    return h ? `${h}h${String(m).padStart(2, "0")}m` : m ? `${m}m${String(sec).padStart(2, "0")}s` : `${sec}s`;
  }

  let listsPending = false;
  function scheduleLists() {
    if (listsPending) return;
    listsPending = true;
    requestAnimationFrame(() => { listsPending = false; renderRunning(); renderQueue(); });
  }

  function renderRunning() {
    const now = Date.now() / 1000;
    const builds = [...model.running.values()].filter((b) => matchesBuilder(b.builder))
      .sort((a, b) => (a.started_at || 0) - (b.started_at || 0));
    ui.runningCount.textContent = `(${builds.length})`;
    ui.running.innerHTML = builds.map((b) => {
      const step = b.current_step ? ` · ${esc(b.current_step.name)}` : "";
      const median = (model.builders.get(b.builder) || {}).median;
      return `<li data-build="${esc(b.master)}/${b.buildid}"><span><strong>${esc(b.builder)}</strong> #${esc(b.number)}${step}</span>`
        + `<span class="meta"><span class="elapsed" data-started="${b.started_at || ""}">${fmtDuration(b.started_at ? now - b.started_at : null)}</span>`
        + `${median ? ` <span class="median" title="the builder's median build duration">/ ~${fmtDuration(median)}</span>` : ""}</span></li>`;
    }).join("");
  }

  function renderQueue() {
    const now = Date.now() / 1000;
    const reqs = [...model.queue.values()].filter((r) => matchesBuilder(r.builder))
      .sort((a, b) => (a.submitted_at || 0) - (b.submitted_at || 0));
    ui.queueCount.textContent = `(${reqs.length})`;
    ui.queue.innerHTML = reqs.map((r) => `<li><span><strong>${esc(r.builder)}</strong> ${esc((r.revision || "").slice(0, 12))}</span>`
      + `<span class="meta elapsed" data-started="${r.submitted_at || ""}">waiting ${fmtDuration(r.submitted_at ? now - r.submitted_at : null)}</span></li>`).join("");
  }

  setInterval(() => {                                         // tick elapsed times without re-rendering
    const now = Date.now() / 1000;
    for (const el of document.querySelectorAll(".elapsed[data-started]")) {
      const t = Number(el.dataset.started);
      if (t) el.textContent = (el.closest("#queue") ? "waiting " : "") + fmtDuration(now - t);
    }
    for (const td of ui.table.querySelectorAll('td.cell[data-state="running"]')) {
      const row = model.rowByRevision.get(td.dataset.rev);
      if (row) paintCell(row, td.dataset.builder);
    }
  }, 1000);

  // --- Details and keyboard ------------------------------------------------------------------

  async function showDetails(key, opener) {
    const [master, buildid] = [key.slice(0, key.lastIndexOf("/")), key.slice(key.lastIndexOf("/") + 1)];
    ui.details.hidden = false;
    ui.detailsTitle.textContent = "loading…";
    ui.detailsBody.innerHTML = "";
    ui.details.opener = opener;
    let b;
    try { b = (await api(`/api/builds/${enc(master)}/${enc(buildid)}`)).build; } catch (e) {
      ui.detailsTitle.textContent = `build ${buildid}: ${e.message}`; return;
    }
    ui.detailsTitle.textContent = `${b.builder} #${b.number} — ${b.finished ? b.result || "finished" : "running"}`;
    const link = (u, t) => `<a href="${esc(u)}" target="_blank" rel="noopener">${esc(t)}</a>`;
    const steps = (b.steps || []).map((s) => `<tr class="${esc(s.finished ? s.result || "" : "running")}"><td>${esc(s.number)}</td><td>${esc(s.name)}</td>`
      + `<td>${esc(s.finished ? s.result : "running")}</td><td>${fmtDuration(s.duration)}</td><td>${esc(s.state_string ?? s.state ?? "")}</td>`
      + `<td>${(s.urls || []).map((u) => link(u.url, u.name)).join(" ")}</td></tr>`).join("");
    const failure = b.failure ? failureHTML(b.failure, link) : "";
    const props = Object.entries(b.properties || {}).sort().map(([k, v]) => {
      const text = typeof v === "string" ? v : JSON.stringify(v);
      return `<tr><th>${esc(k)}</th><td>${/^https?:\/\//.test(text) ? link(text, text) : esc(text)}</td></tr>`;
    }).join("");
    ui.detailsBody.innerHTML = `<p>master ${esc(b.master)} · worker ${esc(b.worker || "?")} · ${esc(b.branch || "")} ${esc(b.revision || "")}`
      + ` · ${fmtDuration(b.duration ?? b.elapsed)}${b.url ? " · " + link(b.url, "open in Buildbot") : ""}</p>`
      + failure
      + `<h3>Steps</h3><table><thead><tr><th>#</th><th>step</th><th>result</th><th>duration</th><th>status</th><th>links</th></tr></thead><tbody>${steps}</tbody></table>`
      + `<h3>Properties</h3><table><tbody>${props}</tbody></table>`;
    $("details-close").focus();
  }

  // What failed: each failed step with its duration, its own status text and its log's last lines.
  function failureHTML(f, link) {
    const items = (f.steps || []).map((s) => {
      const tail = s.log_tail;
      const log = tail && tail.lines && tail.lines.length
        ? `<p class="log-name">last ${tail.lines.length} lines of <code>${esc(tail.log || "log")}</code>${tail.truncated ? " (cut)" : ""}:</p>`
          + `<pre class="log-tail">${esc(tail.lines.join("\n"))}</pre>`
        : '<p class="log-name">no log lines were sent (the plugin sends them with its logs option)</p>';
      return `<li class="failed-step" data-step="${esc(s.name)}"><strong>${esc(s.name)}</strong> <span class="cell ${esc(s.result || "")}">${esc(s.result || "")}</span>`
        + ` · ${fmtDuration(s.duration)} · <span class="state-string">${esc(s.state_string || "")}</span>${log}</li>`;
    }).join("");
    const where = f.url ? ` ${link(f.url, "open the build in Buildbot")}` : "";
    return `<section class="failure" aria-label="What failed"><h3>What failed${where ? " ·" : ""}${where}</h3>`
      + `<ul class="failed-steps">${items || "<li>no failed step was recorded</li>"}</ul></section>`;
  }

  function closeDetails() {
    ui.details.hidden = true;
    if (ui.details.opener) ui.details.opener.focus();
  }

  ui.table.addEventListener("click", (e) => {
    const bell = e.target.closest("button.watch");
    if (bell) { toggleWatch(bell.dataset.rev); return; }
    const td = e.target.closest("td.cell");
    if (!td) return;
    moveFocus(td);
    if (td.dataset.build) showDetails(td.dataset.build, td);
  });
  ui.running.addEventListener("click", (e) => {
    const li = e.target.closest("li[data-build]");
    if (li) showDetails(li.dataset.build, li);
  });
  $("details-close").addEventListener("click", closeDetails);
  document.addEventListener("keydown", (e) => { if (e.key === "Escape" && !ui.details.hidden) closeDetails(); });

  function moveFocus(td) {
    for (const el of ui.table.querySelectorAll('td.cell[tabindex="0"]')) el.tabIndex = -1;
    td.tabIndex = 0;
    td.focus();
    focusKey = td.dataset.rev + "\0" + td.dataset.builder;
  }

  function focusCell(rowIndex, colIndex) {
    rowIndex = Math.max(0, Math.min(grid.rows.length - 1, rowIndex));
    colIndex = Math.max(0, Math.min(grid.names.length - 1, colIndex));
    const key = grid.rows[rowIndex].revision + "\0" + grid.names[colIndex];
    let td = cellEls.get(key);
    if (!td) {                                                // scroll the row into view, render, focus
      const head = ui.table.tHead.offsetHeight;
      wrap.scrollTop = Math.max(0, head + rowIndex * ROW_HEIGHT - wrap.clientHeight / 2);
      renderRows(true);
      td = cellEls.get(key);
    }
    if (td) { moveFocus(td); td.scrollIntoView({ block: "nearest", inline: "nearest" }); }
  }

  ui.table.addEventListener("keydown", (e) => {
    const td = e.target.closest("td.cell");
    if (!td) return;
    const row = grid.rows.findIndex((r) => r.revision === td.dataset.rev);
    const col = grid.names.indexOf(td.dataset.builder);
    const page = Math.max(1, Math.floor(wrap.clientHeight / ROW_HEIGHT) - 1);
    const moves = {
      ArrowRight: [0, 1], ArrowLeft: [0, -1], ArrowDown: [1, 0], ArrowUp: [-1, 0],
      PageDown: [page, 0], PageUp: [-page, 0], Home: [0, -col], End: [0, grid.names.length],
    };
    if ((e.key === "Enter" || e.key === " ") && td.dataset.build) { e.preventDefault(); showDetails(td.dataset.build, td); return; }
    const move = moves[e.key];
    if (!move) return;
    e.preventDefault();
    focusCell(row + move[0], col + move[1]);
  });

  ui.builder.value = view.builder;
  ui.group.value = view.group;
  ui.form.addEventListener("submit", (e) => {
    e.preventDefault();
    const q = new URLSearchParams(location.search);
    for (const [k, v] of [["branch", ui.branch.value], ["builder", ui.builder.value.trim()], ["group", ui.group.value]]) {
      if (v) q.set(k, v); else q.delete(k);
    }
    location.search = q.toString();                            // the view lives in the URL: shareable
  });

  // --- Connection ----------------------------------------------------------------------------

  function setState(state, transport) {
    conn.state = state;
    if (transport) conn.transport = transport;
    const label = { live: `live (${conn.transport})`, reconnecting: "reconnecting…", connecting: "connecting…", offline: "offline", warming: "server warming up…" }[state];
    ui.connection.textContent = label;
    ui.connection.dataset.state = state;
    ui.connection.dataset.transport = conn.transport || "";
  }

  // WebSocket, long-poll when WebSocket is blocked, resume by cursor after a drop: stream.js.
  function connect() {
    const filter = view.builder ? { builder: view.builder.split(",").map((s) => s.trim()).filter(Boolean) } : {};
    conn.stream = FirehoseStream.follow({
      since: model.cursor, filter, transport: view.transport === "longpoll" ? "longpoll" : undefined,
      onEvent: handle, onGap, onState: setState,
    });
  }

  window.firehoseDashboard = { model, conn, view, grid, watchChecks };     // for tests and the curious

  (async function start() {
    for (let i = 0; ; i++) {
      try { await loadSnapshot(); break; } catch (e) {
        if (e.warming) {
          setState("warming");
          await new Promise((resolve) => setTimeout(resolve, 1000 * Math.min(30, Math.max(1, e.retryAfter))));
          i = -1;                                                  // it answers: not a failure to back off from
          continue;
        }
        setState("offline");
        await new Promise((resolve) => setTimeout(resolve, Math.min(15000, 1000 * 2 ** i)));
      }
    }
    connect();
  })();
})();
