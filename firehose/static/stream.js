// firehose stream follower for the pages: WebSocket /ws from a snapshot's cursor, long-poll /poll
// when WebSocket is blocked, resume by cursor after a drop. No build step: plain browser JavaScript.
//   const s = FirehoseStream.follow({ since, filter, onEvent, onGap, onState });
//   s.cursor          the last position applied; s.stop(); s.restart(cursor) after a new snapshot
// `filter` is the stream filter as JSON ({builder: ["linux*"], type: ["build.finished"]}).
// `onGap(gap)` is called for a gap (the events between are not coming): refetch what you show.
// `onState(state, transport)`: "connecting", "live", "reconnecting".
(() => {
  "use strict";

  function query(filter) {
    const q = new URLSearchParams();
    for (const [k, v] of Object.entries(filter || {})) q.set(k, [].concat(v).join(","));
    return q.toString();
  }

  function follow({ since, filter, onEvent, onGap, onState, transport }) {
    const s = { cursor: since || "now", stopped: false, attempt: 0, wsBlocked: 0, generation: 0, socket: null };
    const state = (st, tr) => { if (onState) onState(st, tr); };
    const delay = () => {
      s.attempt = Math.min(s.attempt + 1, 6);
      return Math.min(15000, 500 * 2 ** (s.attempt - 1)) * (0.75 + Math.random() / 2);
    };
    const handle = (msg) => {
      if (msg.type === "gap") {
        s.cursor = msg.cursor;
        if (onGap) onGap(msg);
        return msg.reason === "slow" || msg.reason === "error";   // the subscription ended
      }
      if (!String(msg.type).includes(".")) return false;         // subscribed, pong, ...
      s.cursor = msg.id;
      onEvent(msg);
      return false;
    };

    function connect() {
      if (s.stopped) return;
      const generation = ++s.generation;
      if (transport === "longpoll" || !("WebSocket" in window) || s.wsBlocked >= 2) { longPoll(generation); return; }
      const ws = new WebSocket(`${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/ws`);
      s.socket = ws;
      let acknowledged = false;
      const subscribe = () => ws.send(JSON.stringify({ cmd: "subscribe", filter: filter || {}, since: s.cursor }));
      ws.onopen = subscribe;
      ws.onmessage = (m) => {
        if (generation !== s.generation) return;                  // a socket restart() dropped
        const msg = JSON.parse(m.data);
        if (msg.type === "subscribed") { acknowledged = true; s.wsBlocked = 0; s.attempt = 0; state("live", "websocket"); return; }
        if (msg.type === "error") { console.warn("firehose:", msg.message); return; }
        if (handle(msg)) subscribe();                             // resume after a slow/error gap
      };
      ws.onclose = async () => {
        if (generation !== s.generation || s.stopped) return;
        s.socket = null;
        state("reconnecting");
        if (!acknowledged) {
          try { const r = await fetch("/health", { cache: "no-store" }); if (r.ok) s.wsBlocked++; } catch (e) { /* down */ }
        }
        setTimeout(connect, s.wsBlocked >= 2 ? 0 : delay());
      };
    }

    async function longPoll(generation) {
      state("connecting", "long-poll");
      let wait = 0;
      while (generation === s.generation && !s.stopped) {
        try {
          const r = await fetch(`/poll?since=${encodeURIComponent(s.cursor)}&timeout=${wait}&limit=500&${query(filter)}`, { cache: "no-store" });
          const body = await r.json();
          if (generation !== s.generation || s.stopped) return;    // restart() began another loop
          if (!r.ok) throw new Error(body.message);
          s.attempt = 0; wait = 25;
          state("live", "long-poll");
          if (body.gap) { handle({ type: "gap", ...body.gap }); continue; }
          for (const ev of body.events) handle(ev);
          s.cursor = body.cursor;
        } catch (e) {
          state("reconnecting");
          wait = 0;
          await new Promise((resolve) => setTimeout(resolve, delay()));
        }
      }
    }

    s.stop = () => { s.stopped = true; s.generation++; if (s.socket) s.socket.close(); };
    // Follow again from `cursor` (after a new snapshot): the old socket or poll loop is dropped.
    s.restart = (cursor) => {
      s.cursor = cursor || "now";
      s.generation++;
      const old = s.socket;
      s.socket = null;
      if (old) old.close();
      connect();
    };
    state("connecting");
    connect();
    return s;
  }

  // The earliest of several answers' cursors: events after it are applied on top (idempotently).
  function earliest(cursors) {
    const off = (c) => (c ? Number(String(c).split(":")[1]) : 0);
    return cursors.filter(Boolean).sort((a, b) => off(a) - off(b))[0];
  }

  // GET an /api answer; a refusal throws its message.  A server that has just started without
  // its state checkpoint answers 503 warming_up: the error says how far it is and when to ask.
  async function api(path) {
    const r = await fetch(path, { cache: "no-store" });
    const body = await r.json();
    if (!r.ok) {
      const err = new Error(body.message || r.statusText);
      if (body.error === "warming_up") {
        err.warming = body.progress || {};
        err.retryAfter = Number(r.headers.get("Retry-After")) || 1;
      }
      throw err;
    }
    return body;
  }

  window.FirehoseStream = { follow, earliest, query, api };
})();
