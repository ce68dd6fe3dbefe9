"use strict";
/*
 * Tally's live dashboard. Plain JavaScript, no framework and no build step: the node serves
 * this file, index.html and style.css as they are, compiled into its binary
 * (node/src/api/dashboard.rs), and the page loads nothing from anywhere but that node.
 *
 * Charts are hand-written SVG, not an npm charting library (where STYLE.md would reach for
 * a maintained one): the two the page needs, a line of concurrent viewers over time and bars
 * of watch time, take a few dozen lines each, which is smaller and clearer than a library,
 * and keeps the assets free of a bundling step.
 *
 * Data comes from pushed frames: the WebSocket GET /v1/subscribe (docs/API.md, "Push").
 * While the socket cannot be opened (a node without it, a proxy refusing the upgrade), every
 * subscription polls the matching REST query once a second and makes a frame of the same
 * shape from the answer, so a page never knows which of the two it gets.
 *
 * Pages are hash routes: #/cluster, #/top, #/channel/<id>, #/player/<id>. An id may hold
 * any character: it is percent-encoded in the hash (encodeURIComponent), a plain JSON string
 * in a subscription, and sent as ?id= in a query.
 *
 * For tests and for scripts reading the page: every number sits in an element with
 * data-field="<name>" and its exact value in data-value; table rows carry data-node,
 * data-partition or data-channel. Ids and all other data are only ever set as text or as
 * attribute values, never parsed as HTML.
 */
(() => {
  const KEY_STORAGE = "tally.apiKey";
  const POLL_MS = 1000;
  const HOUR_MS = 3600 * 1000;
  // Events/s of a partition: offsets gained over (about) this much time.
  const RATE_WINDOW_MS = 5000;
  const RECENT_LIMIT = 50;
  const SVG_NS = "http://www.w3.org/2000/svg";

  // ---------------------------------------------------------------- small helpers

  /** An element with attributes (on* are listeners) and children (strings become text). */
  function h(tag, attrs, ...children) {
    const e = document.createElement(tag);
    setAttrs(e, attrs);
    e.append(...children.flat().filter((c) => c !== null && c !== undefined && c !== false));
    return e;
  }

  /** The same for SVG. */
  function s(tag, attrs, ...children) {
    const e = document.createElementNS(SVG_NS, tag);
    setAttrs(e, attrs);
    e.append(...children.flat().filter((c) => c !== null && c !== undefined && c !== false));
    return e;
  }

  /** Replaces the children of `e`, leaving out null, undefined and false. */
  function fill(e, ...children) {
    e.replaceChildren(...children.flat().filter((c) => c !== null && c !== undefined && c !== false));
  }

  function setAttrs(e, attrs) {
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === undefined || v === null || v === false) continue;
      if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
      else e.setAttribute(k, v === true ? "" : String(v));
    }
  }

  /**
   * JSON.parse that keeps integers above 2^53 exact as BigInt (revenue is a 128-bit sum,
   * counters are u64), using the reviver's source text where the browser gives it.
   */
  function parseJSON(text) {
    return JSON.parse(text, (_key, value, context) => {
      if (typeof value === "number" && !Number.isSafeInteger(value) && context &&
          typeof context.source === "string" && /^-?\d+$/.test(context.source)) {
        return BigInt(context.source);
      }
      return value;
    });
  }

  const fmt = {
    int(v) {
      if (v === null || v === undefined) return "–";
      if (typeof v === "bigint") return v.toLocaleString("en-US");
      if (typeof v === "number") return v.toLocaleString("en-US", { maximumFractionDigits: 2 });
      return String(v);
    },
    duration(ms) {
      if (ms === null || ms === undefined) return "–";
      const n = Number(ms);
      if (n < 1000) return `${Math.round(n)} ms`;
      const secs = n / 1000;
      if (secs < 60) return `${secs.toFixed(1)} s`;
      const m = Math.floor(secs / 60), sec = Math.floor(secs % 60);
      if (m < 60) return `${m} min ${String(sec).padStart(2, "0")} s`;
      const hr = Math.floor(m / 60);
      return `${hr} h ${String(m % 60).padStart(2, "0")} min`;
    },
    /** Local time, YYYY-MM-DD HH:MM:SS. */
    time(ms) {
      if (ms === null || ms === undefined || Number(ms) <= 0) return "–";
      const d = new Date(Number(ms));
      const p = (n) => String(n).padStart(2, "0");
      return `${d.getFullYear()}-${p(d.getMonth() + 1)}-${p(d.getDate())} ${p(d.getHours())}:${p(d.getMinutes())}:${p(d.getSeconds())}`;
    },
    ago(ms) { return ms < 1000 ? "just now" : `${fmt.duration(ms)} ago`; },
    bool(v) { return v === null || v === undefined ? "–" : v ? "yes" : "no"; },
    text(v) { return v === null || v === undefined || v === "" ? "–" : String(v); },
  };

  /** Shows `value` in `el`: its exact value in data-value, `text` (or the value) as text. */
  function show(el, value, text) {
    el.dataset.value = value === null || value === undefined ? "" : String(value);
    el.textContent = text === undefined ? fmt.int(value) : text;
  }

  /** The ids of the API: 1-128 bytes of UTF-8, no control characters (docs/API.md). */
  function idProblem(id) {
    const bytes = new TextEncoder().encode(id).length;
    if (bytes < 1 || bytes > 128) return `an id is 1 to 128 bytes, this one is ${bytes}`;
    if (/[\u0000-\u001f\u007f-\u009f]/.test(id)) return "an id holds no control characters";
    return null;
  }

  function entityHash(kind, id) { return `#/${kind}/${encodeURIComponent(id)}`; }

  function entityLink(kind, id) {
    return h("a", { href: entityHash(kind, id), "data-id": id }, id);
  }

  // ---------------------------------------------------------------- messages

  const messages = new Map(); // text -> element
  /** A line under the header; the same text is shown once; it goes after 10 s. */
  function message(text, kind = "error") {
    const box = document.getElementById("messages");
    let el = messages.get(text);
    if (!el) {
      el = h("div", { class: `message ${kind}`, "data-field": "message" }, text);
      messages.set(text, el);
      box.append(el);
    }
    clearTimeout(el.timer);
    el.timer = setTimeout(() => { el.remove(); messages.delete(text); }, 10000);
  }

  // ---------------------------------------------------------------- the API key

  const auth = {
    key() { return sessionStorage.getItem(KEY_STORAGE); },
    pending: null,
    listeners: new Set(),
    /** Opens the key dialog (once, however many ask); resolves when a key was given. */
    ask(reason) {
      if (!this.pending) {
        this.pending = new Promise((resolve) => {
          const dialog = document.getElementById("key-dialog");
          const input = document.getElementById("key-input");
          document.getElementById("key-reason").textContent = reason;
          input.value = "";
          const form = document.getElementById("key-form");
          const done = (ev) => {
            ev.preventDefault();
            const key = input.value.trim();
            if (!key) return;
            form.removeEventListener("submit", done);
            sessionStorage.setItem(KEY_STORAGE, key);
            dialog.close();
            this.pending = null;
            resolve(key);
            for (const l of this.listeners) l(key);
          };
          form.addEventListener("submit", done);
          if (!dialog.open) dialog.showModal();
          input.focus();
        });
      }
      return this.pending;
    },
  };

  /** GET a JSON answer: {status, body}. A 401 asks for a key and tries again with it. */
  async function getJSON(path) {
    for (;;) {
      const key = auth.key();
      const headers = { accept: "application/json" };
      if (key) headers.authorization = `Bearer ${key}`;
      const r = await fetch(path, { headers, cache: "no-store" });
      if (r.status === 401) {
        await auth.ask(key ? "The node refused this key (401): enter another API key."
                           : "This node needs an API key (401).");
        continue;
      }
      const text = await r.text();
      let body;
      try { body = parseJSON(text); } catch { body = { error: text }; }
      return { status: r.status, body };
    }
  }

  // ---------------------------------------------------------------- the feed

  /** The name the node gives a subscription (docs/API.md, "Updates"). */
  function subscriptionName(target) {
    if (target === "cluster") return "cluster";
    if (target.player !== undefined) return `player:${target.player}`;
    if (target.channel !== undefined) return `channel:${target.channel}`;
    const top = target.top || {};
    return `top:${top.by || "concurrent"}:${top.limit || 10}`;
  }

  /** The REST query a subscription polls while the socket is down, and its frame. */
  function pollQuery(target) {
    const entity = (kind, id, field) => ({
      path: `/v1/${kind}?id=${encodeURIComponent(id)}`,
      frame(status, body) {
        if (status === 404) return { data: null, offset: -1 };
        if (status !== 200) return null;
        const f = body.freshness || {};
        return {
          data: body[field], served_by: body.served_by, stale: body.stale,
          partition: f.partition, offset: f.entity_offset, partition_offset: f.partition_offset,
        };
      },
    });
    if (target === "cluster") {
      return { path: "/v1/cluster", always: true, frame: (st, body) => (st === 200 ? { data: body } : null) };
    }
    if (target.player !== undefined) return entity("players", target.player, "player");
    if (target.channel !== undefined) return entity("channels", target.channel, "channel");
    const top = target.top || {};
    const q = new URLSearchParams({ by: top.by || "concurrent", limit: String(top.limit || 10) });
    return { path: `/v1/channels/top?${q}`, frame: (st, body) => (st === 200 ? { data: body } : null) };
  }

  /**
   * One WebSocket for every subscription of the page, each subscription with its listeners.
   * While the socket is not open, each subscription polls instead (see the file's comment);
   * the socket is tried again after a pause that grows from 1 s to 30 s.
   */
  class Feed {
    constructor() {
      this.subs = new Map();
      this.ws = null;
      this.open = false;
      this.retryMs = 1000;
      this.retryTimer = null;
      auth.listeners.add(() => this.reconnect());
    }

    /** Calls `listener` with every frame of `target`; returns the function that stops it. */
    subscribe(target, listener) {
      const name = subscriptionName(target);
      let sub = this.subs.get(name);
      if (!sub) {
        sub = { name, target, listeners: new Set(), last: null, poll: null };
        this.subs.set(name, sub);
        this.connect();
        if (this.open) this.send({ subscribe: target });
        else this.startPolling(sub);
      } else if (sub.last) {
        listener(sub.last);
      }
      sub.listeners.add(listener);
      return () => {
        sub.listeners.delete(listener);
        if (sub.listeners.size > 0 || this.subs.get(name) !== sub) return;
        this.subs.delete(name);
        this.stopPolling(sub);
        if (this.open) this.send({ unsubscribe: target });
      };
    }

    send(msg) {
      if (this.ws && this.open) this.ws.send(JSON.stringify(msg));
    }

    connect() {
      if (this.ws || this.retryTimer) return;
      const url = new URL("/v1/subscribe", location.href);
      url.protocol = location.protocol === "https:" ? "wss:" : "ws:";
      const key = auth.key();
      if (key) url.searchParams.set("access_token", key);
      let ws;
      try {
        ws = new WebSocket(url);
      } catch {
        this.retryLater();
        return;
      }
      this.ws = ws;
      ws.onopen = () => {
        if (this.ws !== ws) return;
        this.open = true;
        this.retryMs = 1000;
        setTransport("websocket");
        for (const sub of this.subs.values()) {
          this.stopPolling(sub);
          this.send({ subscribe: sub.target });
        }
      };
      ws.onmessage = (ev) => { if (this.ws === ws) this.onFrame(ev.data); };
      ws.onclose = (ev) => {
        if (this.ws !== ws) return;
        const wasOpen = this.open;
        this.ws = null;
        this.open = false;
        if (wasOpen && ev.code !== 1000) {
          message(`websocket closed (${ev.code}${ev.reason ? `: ${ev.reason}` : ""}); polling until it is back`, "note");
        }
        for (const sub of this.subs.values()) this.startPolling(sub);
        this.retryLater();
      };
    }

    /** Closes the socket and opens it again at once (the key changed). */
    reconnect() {
      clearTimeout(this.retryTimer);
      this.retryTimer = null;
      this.retryMs = 1000;
      if (this.ws) {
        const old = this.ws;
        this.ws = null;
        this.open = false;
        old.close(1000);
      }
      for (const sub of this.subs.values()) this.startPolling(sub);
      this.connect();
    }

    retryLater() {
      if (this.subs.size > 0) setTransport("polling");
      this.retryTimer = setTimeout(() => { this.retryTimer = null; this.connect(); }, this.retryMs);
      this.retryMs = Math.min(this.retryMs * 2, 30000);
    }

    onFrame(text) {
      let f;
      try { f = parseJSON(text); } catch { message("the node sent a frame that is not JSON"); return; }
      if (f.type === "error") { message(`node: ${f.error}`); return; }
      if (f.type !== "snapshot" && f.type !== "update") return;
      const sub = this.subs.get(f.subscription);
      if (sub) this.deliver(sub, f);
    }

    deliver(sub, frame) {
      sub.last = frame;
      const at = new Date();
      const el = document.getElementById("last-frame");
      el.textContent = `last update ${at.toLocaleTimeString("en-GB", { hour12: false })}`;
      el.dataset.value = String(at.getTime());
      for (const l of [...sub.listeners]) {
        try {
          l(frame);
        } catch (e) {
          console.error(e);
          message(`dashboard: showing ${sub.name} failed: ${e.message || e}`);
        }
      }
    }

    startPolling(sub) {
      if (sub.poll) return;
      const poll = { stopped: false, timer: null, previous: null, sent: 0 };
      sub.poll = poll;
      const query = pollQuery(sub.target);
      const run = async () => {
        try {
          const { status, body } = await getJSON(query.path);
          if (poll.stopped) return;
          const part = query.frame(status, body);
          if (!part) {
            message(`${query.path.split("?")[0]}: ${status} ${body && body.error ? body.error : ""}`);
          } else {
            // Unchanged answers are not frames (as a subscription would not send one); the
            // cluster view is, since its rates need a sample each second.
            const same = JSON.stringify([part.data, part.offset], (_k, v) => (typeof v === "bigint" ? v.toString() : v));
            if (query.always || same !== poll.previous) {
              poll.previous = same;
              this.deliver(sub, {
                type: poll.sent++ === 0 ? "snapshot" : "update", subscription: sub.name,
                gap: false, polled: true, ...part,
              });
            }
          }
        } catch (e) {
          if (!poll.stopped) message(`${query.path.split("?")[0]}: ${e.message || e}`);
        }
        if (!poll.stopped) poll.timer = setTimeout(run, POLL_MS);
      };
      run();
    }

    stopPolling(sub) {
      if (!sub.poll) return;
      sub.poll.stopped = true;
      clearTimeout(sub.poll.timer);
      sub.poll = null;
    }
  }

  function setTransport(t) {
    const el = document.getElementById("transport");
    el.textContent = t;
    el.dataset.value = t;
    document.getElementById("transport-dot").className = `dot ${t}`;
  }

  const feed = new Feed();

  // ---------------------------------------------------------------- page parts

  /** What a page holds that must stop when it goes: subscriptions, timers. */
  class Lifetime {
    constructor() { this.stops = []; }
    add(stop) { this.stops.push(stop); return stop; }
    every(ms, f) { const t = setInterval(f, ms); this.add(() => clearInterval(t)); }
    stop() { for (const f of this.stops.splice(0)) f(); }
  }

  /** A grid of labelled numbers: the grid, and `update(data)` that shows the values of data. */
  function counters(specs) {
    const cells = new Map();
    const grid = h("div", { class: "counters" }, specs.map(([field, label]) => {
      const value = h("span", { class: "value", "data-field": field, "data-value": "" }, "–");
      cells.set(field, value);
      return h("div", { class: "counter" }, h("span", { class: "label" }, label), value);
    }));
    const update = (data) => {
      for (const [field, , format] of specs) {
        const v = data ? data[field] : null;
        show(cells.get(field), v, (format || fmt.int)(v));
      }
    };
    return { grid, update };
  }

  /** The line saying where a frame came from. */
  function freshnessLine() {
    const field = (name) => h("span", { "data-field": name, "data-value": "" }, "–");
    const f = {
      served_by: field("served_by"), partition: field("partition"), offset: field("offset"),
      partition_offset: field("partition_offset"), flags: h("span", { class: "flags" }),
    };
    const line = h("p", { class: "freshness muted" },
      "served by ", f.served_by, " · partition ", f.partition, " · offset ", f.offset,
      " · partition offset ", f.partition_offset, " ", f.flags);
    // A gap is marked on one frame only; the page keeps saying when the last one was.
    let lastGap = null;
    const update = (frame) => {
      if (frame.gap) lastGap = new Date();
      show(f.served_by, frame.served_by, fmt.text(frame.served_by));
      show(f.partition, frame.partition);
      show(f.offset, frame.offset);
      show(f.partition_offset, frame.partition_offset);
      fill(f.flags,
        frame.polled ? h("span", { class: "badge", "data-field": "polled" }, "polled") : null,
        frame.stale || (frame.data && frame.data.stale) ? h("span", { class: "badge warn", "data-field": "stale" }, "stale") : null,
        lastGap ? h("span", { class: "badge warn", "data-field": "gap", "data-value": String(lastGap.getTime()) },
          `the feed was lost and found again at ${lastGap.toLocaleTimeString("en-GB", { hour12: false })}`) : null,
      );
    };
    return { line, update };
  }

  function section(title, ...children) {
    return h("section", {}, h("h2", {}, title), ...children);
  }

  function table(headings, body, attrs) {
    return h("table", attrs || {}, h("thead", {}, h("tr", {}, headings.map((t) => h("th", {}, t)))), body);
  }

  /** The row of `key` in `tbody` (made by `make` the first time), kept across renders. */
  function keyedRow(tbody, attr, key, make) {
    for (const tr of tbody.children) if (tr.getAttribute(attr) === key) return tr;
    const tr = make();
    tr.setAttribute(attr, key);
    tbody.append(tr);
    return tr;
  }

  /** A number cell: data-field and data-value on the td itself. */
  function numCell(field) { return h("td", { class: "num", "data-field": field, "data-value": "" }, "–"); }

  /** A small horizontal bar, `part` of `whole`. */
  function bar(part, whole) {
    const w = whole > 0 ? Math.max(1, Math.round((Number(part) / Number(whole)) * 160)) : 0;
    return s("svg", { class: "bar", width: 160, height: 10, viewBox: "0 0 160 10", "aria-hidden": "true" },
      s("rect", { x: 0, y: 0, width: 160, height: 10, class: "bar-bg" }),
      s("rect", { x: 0, y: 0, width: w, height: 10, class: "bar-fg" }));
  }

  /** Rounds up to 1, 2 or 5 times a power of ten. */
  function niceStep(x) {
    const p = 10 ** Math.floor(Math.log10(x));
    for (const m of [1, 2, 5, 10]) if (m * p >= x) return m * p;
    return 10 * p;
  }

  /**
   * Draws `samples` ({t, v}, oldest first) into `svg` as a step line over the hour before
   * `now`: the value holds until the next sample, the last one until now.
   */
  function drawTimeChart(svg, samples, now, label) {
    const W = 720, H = 220, L = 52, R = 14, T = 14, B = 30;
    const t0 = now - HOUR_MS;
    const shown = samples.filter((p) => p.t >= t0);
    const before = samples.filter((p) => p.t < t0).pop();
    if (before) shown.unshift({ t: t0, v: before.v });
    const max = Math.max(1, ...shown.map((p) => p.v));
    const step = Math.max(1, niceStep(max / 4));
    const top = step * Math.ceil(max / step);
    const x = (t) => L + ((t - t0) / HOUR_MS) * (W - L - R);
    const y = (v) => T + (1 - v / top) * (H - T - B);
    const parts = [s("title", {}, label)];
    for (let v = 0; v <= top; v += step) {
      parts.push(s("line", { class: "grid", x1: L, x2: W - R, y1: y(v), y2: y(v) }));
      parts.push(s("text", { class: "tick", x: L - 6, y: y(v) + 4, "text-anchor": "end" }, fmt.int(v)));
    }
    for (let m = 60; m >= 0; m -= 10) {
      const t = now - m * 60000;
      parts.push(s("line", { class: "grid", x1: x(t), x2: x(t), y1: T, y2: H - B }));
      parts.push(s("text", { class: "tick", x: x(t), y: H - B + 18, "text-anchor": "middle" }, m === 0 ? "now" : `−${m} min`));
    }
    if (shown.length > 0) {
      let d = `M${x(shown[0].t).toFixed(1)},${y(shown[0].v).toFixed(1)}`;
      for (const p of shown.slice(1)) d += ` H${x(p.t).toFixed(1)} V${y(p.v).toFixed(1)}`;
      d += ` H${x(now).toFixed(1)}`;
      const area = `${d} V${y(0).toFixed(1)} H${x(shown[0].t).toFixed(1)} Z`;
      parts.push(s("path", { class: "area", d: area }));
      // Where the samples begin (the page opened less than an hour ago): nothing is known before.
      if (samples[0].t >= t0) {
        const x0 = x(samples[0].t).toFixed(1);
        parts.push(s("line", { class: "since", x1: x0, x2: x0, y1: T, y2: H - B }));
        parts.push(s("text", { class: "tick", x: Number(x0) - 4, y: H - B - 6, "text-anchor": "end" }, "page opened"));
      }
      parts.push(s("path", { class: "line", d, "data-field": "chart-line", "data-samples": String(samples.length),
        "data-value": String(shown[shown.length - 1].v) }));
      const last = shown[shown.length - 1];
      parts.push(s("circle", { class: "point", cx: x(now).toFixed(1), cy: y(last.v).toFixed(1), r: 4 },
        s("title", {}, `now: ${fmt.int(last.v)}`)));
      parts.push(s("text", { class: "tick", x: x(now) - 8, y: y(last.v) + 4, "text-anchor": "end" }, fmt.int(last.v)));
    } else {
      parts.push(s("text", { class: "tick", x: W / 2, y: H / 2, "text-anchor": "middle" }, "no samples yet"));
    }
    svg.replaceChildren(...parts);
  }

  // ---------------------------------------------------------------- cluster page

  /** Events/s per partition from successive next_offset values (a partition keeps its rate when it moves). */
  class Rates {
    constructor() { this.samples = new Map(); }
    add(key, offset, t) {
      let list = this.samples.get(key);
      if (!list) this.samples.set(key, (list = []));
      // Backwards: a new owner replaying from its checkpoint; start again.
      if (list.length && offset < list[list.length - 1].offset) list.length = 0;
      list.push({ offset, t });
      while (list.length > 2 && list[1].t <= t - RATE_WINDOW_MS) list.shift();
    }
    rate(key) {
      const list = this.samples.get(key);
      if (!list || list.length < 2) return null;
      const a = list[0], b = list[list.length - 1];
      if (b.t - a.t < 900) return null;
      return ((b.offset - a.offset) * 1000) / (b.t - a.t);
    }
  }

  function partitionOrder(a, b) {
    const [ka, pa] = a.split("/"), [kb, pb] = b.split("/");
    return ka === kb ? Number(pa) - Number(pb) : ka < kb ? -1 : 1;
  }

  function clusterPage(root) {
    const life = new Lifetime();
    const summary = counters([
      ["members", "Live members"], ["gone", "Gone"], ["partitions_owned", "Partitions owned"],
      ["partitions_unowned", "Partitions without owner"], ["events_per_sec", "Events/s"], ["lag", "Lag (records)"],
    ]);
    const nodesBody = h("tbody");
    const partsBody = h("tbody");
    const changes = h("ol", { class: "changes" });
    root.append(
      h("h1", {}, "Cluster"),
      summary.grid,
      section("Nodes", table(["Node", "Status", "API", "Partitions", "Lag", "Oldest checkpoint", "Events/s", "Ready", "Generation"], nodesBody, { id: "nodes" })),
      section("Partitions", table(["Partition", "Owner", "Next offset", "Durable offset", "Lag", "Checkpoint age", "Resident", "Events/s"], partsBody, { id: "partitions" }),
        h("p", { class: "muted" }, "Events/s: offsets gained per second over the last 5 s (Kafka counts transaction markers as offsets too).")),
      section("Recent ownership changes", changes),
    );
    const rates = new Rates();
    const known = new Map(); // node_id -> {member, goneSince}: nodes seen since the page opened
    life.add(feed.subscribe("cluster", (frame) => render(frame.data)));
    return life;

    function render(view) {
      if (!view) return;
      const now = Date.now();
      const members = new Map((view.members || []).map((m) => [m.node_id, m]));
      const details = new Map((view.nodes || []).map((n) => [n.node_id, n]));
      for (const [id, m] of members) known.set(id, { member: m, goneSince: null });
      for (const [id, k] of known) if (!members.has(id) && k.goneSince === null) k.goneSince = now;

      const owners = view.partitions || {};
      const shards = new Map(); // "kind/partition" -> [node_id, shard], the owner's first
      for (const n of view.nodes || []) {
        for (const sh of n.shards || []) {
          const key = `${sh.kind}/${sh.partition}`;
          if (!shards.has(key) || owners[key] === n.node_id) shards.set(key, [n.node_id, sh]);
        }
      }
      for (const [key, [, sh]] of shards) rates.add(key, Number(sh.next_offset), now);

      // Nodes: every one seen, the gone ones last.
      const ids = [...known.keys()].sort((a, b) =>
        (known.get(a).goneSince !== null) - (known.get(b).goneSince !== null) || (a < b ? -1 : a > b ? 1 : 0));
      const rows = [];
      let totalRate = 0, totalLag = 0;
      for (const id of ids) {
        const k = known.get(id);
        const d = details.get(id);
        const tr = keyedRow(nodesBody, "data-node", id, () => h("tr", {},
          h("td", { "data-field": "node_id" }, id), h("td", { "data-field": "status", "data-value": "" }),
          h("td", { "data-field": "api_addr" }), numCell("owned"), numCell("lag"), numCell("checkpoint_age_ms"),
          numCell("events_per_sec"), h("td", { "data-field": "ready", "data-value": "" }), h("td", { "data-field": "generation", "data-value": "" })));
        const cell = (f) => tr.querySelector(`[data-field="${f}"]`);
        let status;
        if (k.goneSince !== null) status = "gone";
        else if (d && d.error) status = "unreachable";
        else status = k.member.status || "serving";
        const statusCell = cell("status");
        fill(statusCell, h("span", { class: `badge status-${status}` }, status),
          status === "gone" ? ` ${fmt.ago(now - k.goneSince)}` : null,
          status === "unreachable" ? h("span", { class: "muted" }, ` ${d.error}`) : null);
        statusCell.dataset.value = status;
        tr.dataset.status = status;
        show(cell("api_addr"), k.member.api_addr, fmt.text(k.member.api_addr));
        const owned = Object.values(owners).filter((o) => o === id).length;
        show(cell("owned"), status === "gone" ? 0 : owned);
        const live = status !== "gone" && d && !d.error ? d.shards || [] : null;
        if (live) {
          // A shard that has not fetched yet reports lag -1: not known, not counted.
          const lag = live.reduce((a, sh) => a + Math.max(0, Number(sh.lag || 0)), 0);
          const age = live.reduce((a, sh) => Math.max(a, Number(sh.checkpoint_age_ms || 0)), 0);
          const rate = live.reduce((a, sh) => a + (rates.rate(`${sh.kind}/${sh.partition}`) || 0), 0);
          totalLag += lag;
          totalRate += rate;
          show(cell("lag"), lag);
          show(cell("checkpoint_age_ms"), age, fmt.duration(age));
          show(cell("events_per_sec"), Math.round(rate));
          show(cell("ready"), d.ready, fmt.bool(d.ready));
        } else {
          for (const f of ["lag", "checkpoint_age_ms", "events_per_sec", "ready"]) show(cell(f), null, "–");
        }
        show(cell("generation"), k.member.generation, fmt.text(k.member.generation));
        rows.push(tr);
      }
      nodesBody.replaceChildren(...rows);

      // Partitions: every one known, in order.
      const keys = [...new Set([...Object.keys(owners), ...shards.keys(), ...[...partsBody.children].map((tr) => tr.dataset.partition)])].sort(partitionOrder);
      const partRows = [];
      let unowned = 0;
      for (const key of keys) {
        const tr = keyedRow(partsBody, "data-partition", key, () => h("tr", {},
          h("td", {}, key), h("td", { "data-field": "owner", "data-value": "" }), numCell("next_offset"), numCell("durable_offset"),
          numCell("lag"), numCell("checkpoint_age_ms"), numCell("resident_entities"), numCell("events_per_sec")));
        const cell = (f) => tr.querySelector(`[data-field="${f}"]`);
        const owner = owners[key];
        if (!owner) unowned++;
        const ownerCell = cell("owner");
        show(ownerCell, owner || "", owner || "none");
        ownerCell.classList.toggle("warn", !owner);
        const entry = shards.get(key);
        const sh = entry ? entry[1] : null;
        show(cell("next_offset"), sh ? sh.next_offset : null);
        show(cell("durable_offset"), sh ? sh.durable_offset : null);
        show(cell("lag"), sh && sh.lag >= 0 ? sh.lag : null);
        show(cell("checkpoint_age_ms"), sh ? sh.checkpoint_age_ms : null, sh ? fmt.duration(sh.checkpoint_age_ms) : "–");
        show(cell("resident_entities"), sh ? sh.resident_entities : null);
        const rate = rates.rate(key);
        show(cell("events_per_sec"), rate === null ? null : Math.round(rate));
        partRows.push(tr);
      }
      partsBody.replaceChildren(...partRows);

      summary.update({
        members: members.size, gone: [...known.values()].filter((k) => k.goneSince !== null).length,
        partitions_owned: Object.keys(owners).length, partitions_unowned: unowned,
        events_per_sec: Math.round(totalRate), lag: totalLag,
      });

      const recent = [];
      for (const n of view.nodes || []) for (const c of n.recent_changes || []) recent.push({ node: n.node_id, ...c });
      recent.sort((a, b) => b.at_ms - a.at_ms);
      changes.replaceChildren(...recent.slice(0, 15).map((c) => h("li", {},
        h("span", { class: "muted" }, `${fmt.time(c.at_ms)} `), `${c.node} ${c.change} ${c.kind}/${c.partition}`,
        c.offset !== undefined && c.offset !== null ? ` at offset ${c.offset}` : "", c.note ? ` (${c.note})` : "")));
    }
  }

  // ---------------------------------------------------------------- top channels page

  function topPage(root) {
    const life = new Lifetime();
    const LIMIT = 10;
    let by = "concurrent";
    let stop = null;
    const select = h("select", { id: "top-by", "aria-label": "order by" },
      ["concurrent", "peak", "follows"].map((b) => h("option", { value: b }, b)));
    const body = h("tbody");
    const flags = h("span", { class: "flags" });
    root.append(
      h("h1", {}, "Top channels ", h("small", { class: "muted" }, "by "), select, " ", flags),
      table(["#", "Channel", "Concurrent", "Peak", "Follows", ""], body, { id: "top" }),
    );
    const subscribe = () => {
      if (stop) stop();
      body.replaceChildren();
      stop = feed.subscribe({ top: { by, limit: LIMIT } }, render);
    };
    select.addEventListener("change", () => { by = select.value; subscribe(); });
    subscribe();
    life.add(() => stop && stop());
    return life;

    function render(frame) {
      const data = frame.data || { channels: [] };
      const list = data.channels || [];
      const max = list.reduce((m, c) => Math.max(m, Number(c[by] || 0)), 0);
      body.replaceChildren(...list.map((c, i) => h("tr", { "data-channel": c.id },
        h("td", { class: "num" }, String(i + 1)), h("td", {}, entityLink("channel", c.id)),
        h("td", { class: "num", "data-field": "concurrent", "data-value": String(c.concurrent) }, fmt.int(c.concurrent)),
        h("td", { class: "num", "data-field": "peak", "data-value": String(c.peak) }, fmt.int(c.peak)),
        h("td", { class: "num", "data-field": "follows", "data-value": String(c.follows) }, fmt.int(c.follows)),
        h("td", {}, bar(c[by] || 0, max)))));
      if (list.length === 0) body.append(h("tr", {}, h("td", { colspan: 6, class: "muted" }, "no channel has viewers yet")));
      fill(flags, data.stale ? h("span", { class: "badge warn", "data-field": "stale" }, "stale") : null);
    }
  }

  // ---------------------------------------------------------------- channel page

  const CHANNEL_FIELDS = [
    ["concurrent_viewers", "Concurrent viewers"], ["peak_concurrent", "Peak concurrent"],
    ["joins", "Joins"], ["leaves", "Leaves"], ["expirations", "Expired views"],
    ["unique_viewers", "Unique viewers"], ["watch_ms", "Watch time", fmt.duration],
    ["avg_watch_ms", "Average view", fmt.duration], ["follows", "Follows"], ["last_event", "Last event", fmt.time],
  ];

  function channelPage(root, id) {
    const life = new Lifetime();
    const grid = counters(CHANNEL_FIELDS);
    const fresh = freshnessLine();
    const empty = h("p", { class: "muted", hidden: true, "data-field": "empty" }, "No event of this channel seen yet.");
    const svg = s("svg", { class: "chart", id: "concurrent-chart", viewBox: "0 0 720 220", role: "img" });
    root.append(
      h("h1", {}, "Channel ", h("span", { class: "id", "data-field": "channel-id" }, id)),
      fresh.line, empty, grid.grid,
      section("Concurrent viewers, last hour", svg,
        h("p", { class: "muted" }, "Sampled from the live feed while this page is open (the node keeps no history to ask for).")),
    );
    // The chart's samples: one per feed frame, at most one a second. There is no history
    // endpoint yet, so the chart starts empty and covers only the time this page was open.
    const samples = [];
    const redraw = () => drawTimeChart(svg, samples, Date.now(), `Concurrent viewers of ${id}, last hour`);
    life.add(feed.subscribe({ channel: id }, (frame) => {
      fresh.update(frame);
      empty.hidden = frame.data !== null;
      grid.update(frame.data);
      if (frame.data) {
        const t = Date.now(), v = Number(frame.data.concurrent_viewers);
        const last = samples[samples.length - 1];
        if (last && t - last.t < 1000) last.v = v;
        else samples.push({ t, v });
        while (samples.length > 1 && samples[1].t < t - HOUR_MS) samples.shift();
      }
      redraw();
    }));
    life.every(1000, redraw);
    redraw();
    return life;
  }

  // ---------------------------------------------------------------- player page

  const PLAYER_FIELDS = [
    ["events", "Events"], ["sessions", "Sessions"], ["session_open", "Session open", fmt.bool],
    ["playtime_ms", "Playtime", fmt.duration], ["matches", "Matches"], ["kills", "Kills"], ["deaths", "Deaths"],
    ["avg_kills_per_match", "Kills per match"], ["avg_survival_secs", "Average survival (s)"],
    ["best_survival_secs", "Best survival (s)"], ["best_placement", "Best placement"],
    ["purchases", "Purchases"], ["level", "Level"], ["achievements", "Achievements"],
    ["chat_messages", "Chat messages"], ["follows", "Follows"], ["last_seen", "Last seen", fmt.time],
  ];

  /** The fields of a player view as flat name -> comparable text, for the recent changes. */
  function flatten(data) {
    const out = new Map();
    if (!data) return out;
    for (const [k, v] of Object.entries(data)) {
      if (k === "id") continue;
      if (v && typeof v === "object" && !Array.isArray(v)) {
        for (const [k2, v2] of Object.entries(v)) out.set(`${k}.${k2}`, String(v2));
      } else if (Array.isArray(v)) {
        out.set(k, JSON.stringify(v));
      } else {
        out.set(k, v === null ? "null" : String(v));
      }
    }
    return out;
  }

  function playerPage(root, id) {
    const life = new Lifetime();
    const grid = counters(PLAYER_FIELDS);
    const fresh = freshnessLine();
    const empty = h("p", { class: "muted", hidden: true, "data-field": "empty" }, "No event of this player seen yet.");
    const current = h("span", { "data-field": "current_channel", "data-value": "" }, "–");
    const revenue = h("ul", { class: "plain", id: "revenue" });
    const kinds = h("tbody");
    const prefs = h("tbody");
    const recent = h("ol", { class: "recent", id: "recent" });
    root.append(
      h("h1", {}, "Player ", h("span", { class: "id", "data-field": "player-id" }, id)),
      fresh.line, empty,
      h("p", {}, "Watching now: ", current),
      grid.grid,
      h("div", { class: "columns" },
        section("Channel preferences", table(["Channel", "Watch time", ""], prefs, { id: "top-channels" }),
          h("p", { class: "muted" }, "Up to five channels by watch time (views that ended or sent a heartbeat).")),
        section("Events by kind", table(["Kind", "Events"], kinds, { id: "events-by-kind" })),
        section("Revenue", revenue, h("p", { class: "muted" }, "In minor units of each currency."))),
      section("Recent changes", h("p", { class: "muted" }, "What each frame of the live feed changed, newest first."), recent),
    );
    let previous = null;
    life.add(feed.subscribe({ player: id }, (frame) => {
      const d = frame.data;
      fresh.update(frame);
      empty.hidden = d !== null;
      grid.update(d);
      show(current, d ? d.current_channel : null, "");
      fill(current, d && d.current_channel ? entityLink("channel", d.current_channel) : "–");
      revenue.replaceChildren(...Object.entries((d && d.revenue) || {}).map(([cur, amount]) =>
        h("li", {}, h("span", { "data-field": `revenue.${cur}`, "data-value": String(amount) }, fmt.int(amount)), ` ${cur}`)));
      kinds.replaceChildren(...Object.entries((d && d.events_by_kind) || {}).map(([k, n]) =>
        h("tr", { "data-kind": k }, h("td", {}, k), h("td", { class: "num", "data-field": `events_by_kind.${k}`, "data-value": String(n) }, fmt.int(n)))));
      const top = (d && d.top_channels) || [];
      const max = top.reduce((m, [, ms]) => Math.max(m, Number(ms)), 0);
      prefs.replaceChildren(...top.map(([ch, ms]) => h("tr", { "data-channel": ch },
        h("td", {}, entityLink("channel", ch)),
        h("td", { class: "num", "data-field": "watch_ms", "data-value": String(ms) }, fmt.duration(ms)),
        h("td", {}, bar(ms, max)))));
      if (top.length === 0) prefs.append(h("tr", {}, h("td", { colspan: 3, class: "muted" }, "none yet")));
      addRecent(frame, previous);
      previous = d;
    }));
    return life;

    function addRecent(frame, before) {
      const now = flatten(frame.data), then = flatten(before);
      const changed = [];
      for (const [k, v] of now) if (then.get(k) !== v && k !== "last_seen") changed.push(`${k} ${then.has(k) ? then.get(k) : "–"} → ${v}`);
      for (const k of then.keys()) if (!now.has(k)) changed.push(`${k} ${then.get(k)} → –`);
      let what;
      if (frame.type === "snapshot" && before === null) what = frame.data ? "snapshot" : "snapshot: no event yet";
      else if (changed.length === 0) what = frame.gap ? "gap: the feed was lost and found again; nothing changed" : null;
      else what = (frame.gap ? "after a gap: " : "") + changed.join(", ");
      if (!what) return;
      recent.prepend(h("li", { "data-offset": String(frame.offset) },
        h("span", { class: "muted" }, `${new Date().toLocaleTimeString("en-GB", { hour12: false })} offset ${fmt.text(frame.offset)} `), what));
      while (recent.children.length > RECENT_LIMIT) recent.lastChild.remove();
    }
  }

  // ---------------------------------------------------------------- routing

  const PAGES = { cluster: clusterPage, top: topPage, channel: channelPage, player: playerPage };

  /** The route of the hash: {name, id}; the id percent-decoded. */
  function parseHash() {
    const rest = location.hash.replace(/^#\/?/, "");
    const slash = rest.indexOf("/");
    const name = (slash < 0 ? rest : rest.slice(0, slash)) || "cluster";
    if (slash < 0) return { name, id: null };
    const raw = rest.slice(slash + 1);
    try { return { name, id: decodeURIComponent(raw) }; } catch { return { name, id: raw }; }
  }

  let page = null;
  function route() {
    if (page) page.stop();
    const { name, id } = parseHash();
    const root = document.getElementById("app");
    root.replaceChildren();
    for (const a of document.querySelectorAll("[data-nav]")) a.classList.toggle("active", a.dataset.nav === name);
    const make = PAGES[name];
    const needsId = name === "channel" || name === "player";
    if (!make || (needsId && !id)) {
      root.append(h("h1", {}, "Not found"), h("p", {}, "No page ", h("code", {}, location.hash), ": try ", h("a", { href: "#/cluster" }, "the cluster"), "."));
      page = new Lifetime();
      return;
    }
    if (needsId) {
      const problem = idProblem(id);
      if (problem) {
        root.append(h("h1", {}, "Not an id"), h("p", {}, problem));
        page = new Lifetime();
        return;
      }
      document.getElementById("search-kind").value = name;
    }
    document.title = needsId ? `${id} · Tally` : `${name} · Tally`;
    page = make(root, id);
  }

  document.getElementById("search").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const kind = document.getElementById("search-kind").value;
    const id = document.getElementById("search-id").value;
    const problem = idProblem(id);
    if (problem) { message(`search: ${problem}`); return; }
    location.hash = entityHash(kind, id);
  });
  window.addEventListener("hashchange", route);
  if (!location.hash) history.replaceState(null, "", "#/cluster");
  route();
})();
