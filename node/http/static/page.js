// The status page: reads the node's JSON APIs, listens to /api/stream (Server-Sent
// Events) and re-reads what an event changed. No framework; every text goes in through
// textContent (never innerHTML), so names and notes from the mesh cannot inject markup.
"use strict";

const SVG = "http://www.w3.org/2000/svg";
// KPIs move without events: the node pushes its VSM view on the stream every 5 s (once
// for every page); only without the stream does the page re-read /api/vsm itself.
// Uptimes and "for" columns are re-read every 15 s. A hidden tab re-reads nothing
// (events still patch it; it re-reads all when shown).
const REFRESH_MS = 5000;
const SLOW_REFRESH_MS = 15000;
const DEBOUNCE_MS = 250; // a burst of events costs one re-read per API
const SPARK_SAMPLES = 60;
const EVENTS_SHOWN = 60;

const state = {
  status: null, peers: [], tools: [], vsm: null, policies: null, children: [],
  events: [], audit: [], spark: [], paused: false,
};

// -- DOM helpers ---------------------------------------------------------------------

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined) continue;
    if (k === "text") node.textContent = String(v);
    else node.setAttribute(k, String(v));
  }
  for (const c of children) node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return node;
}

function svg(tag, attrs) {
  const node = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "text") node.textContent = String(v);
    else node.setAttribute(k, String(v));
  }
  return node;
}

function badge(stateName, text) {
  return el("span", { class: "badge", "data-state": stateName, text: text || stateName });
}

function short(id) { return id ? String(id).slice(-8) : "—"; }
function fmt(v) {
  if (v === null || v === undefined) return "—";
  if (typeof v === "number") return Number.isInteger(v) ? String(v) : v.toFixed(3);
  if (typeof v === "object") return JSON.stringify(v);
  return String(v);
}
function ago(seconds) {
  if (seconds === null || seconds === undefined) return "—";
  if (seconds < 60) return `${Math.round(seconds)} s`;
  if (seconds < 3600) return `${Math.round(seconds / 60)} min`;
  return `${(seconds / 3600).toFixed(1)} h`;
}
function clock(tsSeconds) { return new Date(tsSeconds * 1000).toLocaleTimeString(); }
function replace(id, ...children) { document.getElementById(id).replaceChildren(...children); }
function kv(id, pairs) {
  const out = [];
  for (const [k, v] of pairs) out.push(el("dt", { text: k }), el("dd", {}, v instanceof Node ? v : fmt(v)));
  replace(id, ...out);
}

// -- admin actions -----------------------------------------------------------------------
// Read-only unless the viewer gives a token the node accepts for its admin actions
// (GET /api/admin). The token stays in this tab's sessionStorage, is sent only in the
// Authorization header, never in a URL; every action is still checked by the node.

const TOKEN_KEY = "vsmcp.admin-token";
const admin = { token: sessionStorage.getItem(TOKEN_KEY) || "", caller: null, actions: [] };
const may = (action) => admin.caller !== null && admin.actions.includes(action);

async function adminFetch(method, path, body) {
  const headers = { Accept: "application/json", Authorization: `Bearer ${admin.token}` };
  const init = { method, cache: "no-store", headers };
  if (body !== undefined) {
    headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const response = await fetch(path, init);
  let answer = {};
  try { answer = await response.json(); } catch (e) { /* not JSON: the status says it */ }
  if (!response.ok) throw new Error(answer.error || `HTTP ${response.status}`);
  return answer;
}

function adminMessage(text) { document.getElementById("admin-message").textContent = text; }

async function checkAdmin() {
  admin.caller = null;
  admin.actions = [];
  const badgeNode = document.getElementById("admin-state");
  document.getElementById("admin-forget").hidden = !admin.token;
  if (!admin.token) {
    badgeNode.dataset.state = "read-only";
    badgeNode.textContent = "read-only";
  } else {
    try {
      const answer = await adminFetch("GET", "/api/admin");
      admin.caller = answer.caller;
      admin.actions = answer.actions;
      badgeNode.dataset.state = "admin";
      badgeNode.textContent = `admin: ${answer.caller}`;
    } catch (e) {
      badgeNode.dataset.state = "refused";
      badgeNode.textContent = "read-only: token refused";
      adminMessage(`token refused: ${e.message}`);
    }
  }
  renderPolicies();
  renderMesh();
}

// An action button: the first press arms it ("Confirm …"), the second runs it; it
// disarms itself after a few seconds.
function actionButton(action, label, attrs, run) {
  const button = el("button", { type: "button", class: "action", "data-admin-action": action,
    ...attrs, text: label });
  button.addEventListener("click", async () => {
    if (button.dataset.armed !== "1") {
      button.dataset.armed = "1";
      button.textContent = `Confirm: ${label}`;
      setTimeout(() => { button.dataset.armed = "0"; button.textContent = label; }, 5000);
      return;
    }
    button.disabled = true;
    try {
      adminMessage(await run());
    } catch (e) {
      adminMessage(`${label} failed: ${e.message}`);
      button.disabled = false;
    }
  });
  return button;
}

function revokeButton(p) {
  return actionButton("revoke-policy", "Revoke", { "data-policy-key": p.key }, async () => {
    await adminFetch("POST", "/api/policies/revoke", { issuer: p.issuer, id: p.id });
    schedule("policies", "audit");
    return `revoked ${p.id}`;
  });
}

function stopButton(child) {
  return actionButton("stop-child", "Stop", { "data-child": child.name }, async () => {
    await adminFetch("DELETE", `/api/children/${encodeURIComponent(child.name)}`);
    schedule("children", "peers");
    return `stopped child ${child.name}`;
  });
}

// -- loading ---------------------------------------------------------------------------

async function getJSON(path) {
  const response = await fetch(path, { cache: "no-store", headers: { Accept: "application/json" } });
  if (!response.ok) throw new Error(`${path}: HTTP ${response.status}`);
  return response.json();
}

const loaders = {
  status: async () => { state.status = await getJSON("/api/status"); renderHeader(); renderMesh(); },
  peers: async () => { state.peers = (await getJSON("/api/peers")).peers; renderMesh(); },
  children: async () => { state.children = (await getJSON("/api/children")).children; renderMesh(); },
  tools: async () => { state.tools = (await getJSON("/api/tools")).tools; renderTools(); },
  vsm: async () => { state.vsm = await getJSON("/api/vsm"); sample(); renderVsm(); renderHeader(); renderMesh(); },
  policies: async () => { state.policies = await getJSON("/api/policies"); renderPolicies(); },
  events: async () => { state.events = (await getJSON("/api/events")).events.slice().reverse(); renderEvents(); },
  audit: async () => { state.audit = (await getJSON("/api/audit/recent")).entries; renderAudit(); },
};

const pending = new Set();
let timer = null;
function schedule(...names) {
  for (const n of names) pending.add(n);
  if (timer === null) timer = setTimeout(flush, DEBOUNCE_MS);
}
async function flush() {
  timer = null;
  const names = [...pending];
  pending.clear();
  await Promise.all(names.map(async (n) => {
    try { await loaders[n](); } catch (e) { console.warn(e); }
  }));
}
function loadAll() { schedule(...Object.keys(loaders)); }

// What each event kind changes on the page.
const AFFECTS = {
  membership: ["peers", "status", "tools", "vsm"],
  registry: ["tools", "vsm"],
  policy: ["policies", "vsm"],
  s5_response: ["vsm", "policies"],
  algedonic: ["vsm"],
  unit_state: ["vsm"],
  denial: ["vsm"],
  child_refused: ["children"],
  scale: ["children", "status"],
  pattern_matched: ["vsm"],
  envelope_rejected: [],
};

// -- live stream -------------------------------------------------------------------------

function setLive(name, text) {
  const node = document.getElementById("live");
  node.dataset.state = name;
  node.textContent = text;
}

function connect() {
  const source = new EventSource("/api/stream");
  source.addEventListener("hello", () => { setLive("live", "live"); loadAll(); });
  source.addEventListener("events", (message) => {
    const events = JSON.parse(message.data);
    for (const e of events) {
      state.events.unshift(e);
      if (e.kind === "algedonic") pushSpark(e.valence === "pain" ? -e.intensity : e.intensity, e.valence);
    }
    state.events.length = Math.min(state.events.length, EVENTS_SHOWN);
    if (state.paused) return;
    renderEvents();
    for (const e of events) schedule(...(AFFECTS[e.kind] || []));
    schedule("audit");
  });
  source.addEventListener("vsm", (message) => {
    if (state.paused) return;
    state.vsm = JSON.parse(message.data);
    sample(); renderVsm(); renderHeader(); renderMesh();
  });
  source.addEventListener("resync", () => { if (!state.paused) loadAll(); });
  // EventSource reconnects by itself (after `retry`); a 503 at the cap ends it for good.
  source.onerror = () => {
    if (source.readyState === EventSource.CLOSED) {
      setLive("offline", "offline: reload to retry");
    } else {
      setLive("connecting", "reconnecting");
    }
  };
}

// -- rendering: header ---------------------------------------------------------------

function selfState() {
  const viability = state.vsm ? state.vsm.viability.node : 1;
  return viability < 0.5 ? "degraded" : "alive";
}

function renderHeader() {
  const s = state.status;
  if (!s) return;
  document.title = `vsmcp ${s.name}`;
  document.getElementById("node-name").textContent = s.name;
  document.getElementById("node-id").textContent = s.node_id;
  document.getElementById("node-zone").textContent = s.zone;
  document.getElementById("node-version").textContent = s.version;
  document.getElementById("node-uptime").textContent = ago(s.uptime_s);
  document.getElementById("dev-banner").hidden = !s.dev;
  if (state.vsm) {
    const v = state.vsm.viability;
    const node = document.getElementById("viability");
    node.dataset.state = v.node >= 0.8 ? "ok" : v.node >= 0.5 ? "degraded" : "dead";
    node.textContent = `viability ${v.node.toFixed(2)} (${node.dataset.state}) · mesh ${v.mesh.toFixed(2)}`;
  }
}

// -- rendering: mesh -------------------------------------------------------------------

function meshNodes() {
  const s = state.status;
  if (!s) return [];
  const nodes = [{ id: s.node_id, name: s.name, state: selfState(), self: true, zone: s.zone,
    parent: s.parent, since_s: s.uptime_s }];
  for (const p of state.peers) {
    nodes.push({ id: p.id, name: short(p.id), state: p.state, self: false, zone: p.zone,
      parent: p.parent, since_s: p.since_s, endpoint: p.endpoint });
  }
  // A child VSM of this node that is not (or not yet) a member: shown with its process state.
  const known = new Set(nodes.map((n) => n.id));
  for (const c of state.children) {
    const id = c.node_id || `child:${c.name}`;
    if (known.has(id)) continue;
    nodes.push({ id, name: c.name, state: c.state, self: false, zone: null, parent: s.node_id,
      since_s: null });
  }
  for (const c of state.children) {
    const node = nodes.find((n) => n.id === (c.node_id || `child:${c.name}`));
    if (node) node.child = c;
  }
  return nodes;
}

function renderMesh() {
  const nodes = meshNodes();
  if (!nodes.length) return;
  const counts = {};
  for (const n of nodes) counts[n.state] = (counts[n.state] || 0) + 1;
  document.getElementById("mesh-counts").textContent =
    `· ${nodes.length} nodes: ` + Object.entries(counts).map(([k, v]) => `${v} ${k}`).join(", ");

  const rows = nodes.map((n) => el("tr", { id: `node-${n.id}`, "data-node-id": n.id, "data-state": n.state },
    el("td", {}, el("span", { text: n.self ? `${n.name} (this node)` : n.name }), el("br"),
      el("span", { class: "mono muted", text: n.id })),
    el("td", {}, badge(n.state), n.child && may("stop-child") ? stopButton(n.child) : ""),
    el("td", { text: n.zone || "—" }),
    el("td", { class: "mono", text: n.parent ? short(n.parent) : "—" }),
    el("td", { text: ago(n.since_s) })));
  document.querySelector("#nodes tbody").replaceChildren(...rows);
  drawGraph(nodes);
}

function drawGraph(nodes) {
  const graph = document.getElementById("graph");
  const title = graph.querySelector("title");
  const W = 640, H = 380, cx = W / 2, cy = H / 2;
  const peers = nodes.filter((n) => !n.self);
  const at = new Map();
  at.set(nodes[0].id, [cx, cy]);
  const r = Math.min(W, H) / 2 - 50;
  peers.forEach((p, i) => {
    // Offset by half a step: two peers sit left and right, not in one line with this node.
    const a = (2 * Math.PI * i) / Math.max(peers.length, 1) - Math.PI / 2 + Math.PI / Math.max(peers.length, 1);
    at.set(p.id, [cx + 1.5 * r * Math.cos(a), cy + r * Math.sin(a)]);
  });
  const parts = [title];
  const defs = svg("defs");
  const marker = svg("marker", { id: "arrow", viewBox: "0 0 10 10", refX: 24, refY: 5,
    markerWidth: 8, markerHeight: 8, orient: "auto-start-reverse" });
  marker.append(svg("path", { d: "M 0 0 L 10 5 L 0 10 z", fill: "#0969da" }));
  defs.append(marker);
  parts.push(defs);
  const [sx, sy] = at.get(nodes[0].id);
  for (const p of peers) {
    if (p.state === "dead" || p.state === "left") continue;
    const [x, y] = at.get(p.id);
    parts.push(svg("line", { class: `link ${p.state}`, x1: sx, y1: sy, x2: x, y2: y }));
  }
  for (const n of nodes) {
    if (!n.parent || !at.has(n.parent)) continue;
    const [px, py] = at.get(n.parent);
    const [x, y] = at.get(n.id);
    parts.push(svg("path", { class: "tree", d: `M ${px} ${py + 8} Q ${(px + x) / 2 + 30} ${(py + y) / 2} ${x} ${y}`,
      "marker-end": "url(#arrow)" }));
  }
  for (const n of nodes) {
    const [x, y] = at.get(n.id);
    const link = svg("a", { href: `#node-${n.id}`, "data-graph-node": n.id, "data-state": n.state });
    link.append(svg("title", { text: `${n.name}: ${n.state}${n.zone ? `, zone ${n.zone}` : ""}` }));
    link.append(svg("circle", { cx: x, cy: y, r: n.self ? 20 : 16 }));
    link.append(svg("text", { x, y: y + (n.self ? 36 : 32), "text-anchor": "middle",
      text: n.self ? `${n.name} (here)` : n.name }));
    link.append(svg("text", { class: "state", x, y: y + (n.self ? 50 : 46), "text-anchor": "middle",
      text: `${n.state}${n.zone ? ` · ${n.zone}` : ""}` }));
    parts.push(link);
  }
  graph.replaceChildren(...parts);
}

// -- rendering: tools ------------------------------------------------------------------

function renderTools() {
  const byName = new Map();
  for (const t of state.tools) {
    if (!byName.has(t.name)) byName.set(t.name, []);
    byName.get(t.name).push(t);
  }
  document.getElementById("tools-count").textContent = `· ${byName.size}`;
  const rows = [...byName.entries()].sort(([a], [b]) => a.localeCompare(b)).map(([name, offers]) => {
    const providers = el("ul", { class: "plain" }, ...offers.map((t) => {
      const health = t.provider_state || "unknown";
      return el("li", {}, el("span", { class: "mono", text: short(t.provider) }), " ",
        badge(health === "self" ? "self" : health, health === "self" ? "this node" : health));
    }));
    return el("tr", { "data-tool": name },
      el("td", {}, el("span", { class: "mono", text: name }), el("br"),
        el("span", { class: "muted", text: offers[0].description || "" })),
      el("td", { text: offers[0].zone }),
      el("td", {}, providers));
  });
  document.querySelector("#tools-table tbody").replaceChildren(...rows);
}

// -- rendering: VSM --------------------------------------------------------------------

function sample() {
  const agg = state.vsm && state.vsm.s3.algedonic && state.vsm.s3.algedonic.aggregate;
  if (agg) pushSpark(agg.balance, "balance");
}
function pushSpark(value, kind) {
  state.spark.push({ value: Math.max(-1, Math.min(1, Number(value) || 0)), kind, ts: Date.now() });
  if (state.spark.length > SPARK_SAMPLES) state.spark.shift();
  renderSpark();
}
function renderSpark() {
  const W = 240, H = 48, pts = state.spark;
  const y = (v) => H / 2 - (v * (H / 2 - 4));
  const x = (i) => (pts.length < 2 ? W / 2 : (i * (W - 8)) / (pts.length - 1) + 4);
  const parts = [svg("line", { class: "zero", x1: 0, y1: H / 2, x2: W, y2: H / 2 })];
  const balance = pts.map((p, i) => [i, p]).filter(([, p]) => p.kind === "balance");
  if (balance.length) {
    parts.push(svg("polyline", { points: balance.map(([i, p]) => `${x(i)},${y(p.value)}`).join(" ") }));
  }
  for (const [i, p] of pts.map((p, i) => [i, p])) {
    if (p.kind === "pain" || p.kind === "pleasure") {
      parts.push(svg("circle", { class: p.kind, cx: x(i), cy: y(p.value), r: 3 }));
    }
  }
  document.getElementById("spark").replaceChildren(...parts);
  const signals = pts.filter((p) => p.kind !== "balance");
  const last = balance.length ? balance[balance.length - 1][1].value : 0;
  document.getElementById("spark-text").textContent =
    `balance now ${last.toFixed(2)} (−1 pain … +1 pleasure); ` +
    `${signals.filter((p) => p.kind === "pain").length} pain and ` +
    `${signals.filter((p) => p.kind === "pleasure").length} pleasure signals seen on this page`;
}

function renderVsm() {
  const v = state.vsm;
  if (!v) return;
  const factors = el("div", { class: "factors" });
  for (const [name, value] of Object.entries(v.viability.factors)) {
    const bar = el("span");
    bar.style.width = `${Math.round(value * 100)}%`;
    factors.append(el("span", { text: name }), el("span", { class: "bar" }, bar),
      el("span", { text: value.toFixed(2) }));
  }
  replace("viability-detail",
    el("p", {}, "node ", el("strong", { text: v.viability.node.toFixed(2) }),
      " · mesh ", el("strong", { text: v.viability.mesh.toFixed(2) })),
    factors,
    el("details", {}, el("summary", { text: "inputs" }),
      el("dl", { class: "kv" }, ...Object.entries(v.viability.inputs).flatMap(([k, x]) =>
        [el("dt", { text: k }), el("dd", { text: fmt(x) })]))));

  const units = (v.s1.units || []).map((u) => el("tr", { "data-unit": u.unit, "data-state": u.state },
    el("td", { class: "mono", text: u.unit }), el("td", {}, badge(u.state)),
    el("td", { text: `${u.running_calls} running, ${u.waiting_calls} waiting` }),
    el("td", { text: fmt(u.restarts) }), el("td", { text: u.last_error || "—" })));
  document.querySelector("#s1 tbody").replaceChildren(...units);

  const s2 = v.s2 || {};
  const rl = s2.rate_limits || {};
  kv("s2", [
    ["limits scale", s2.limits_scale],
    ["rate per origin", rl.per_origin], ["rate per tool", rl.per_tool], ["rate per peer", rl.per_peer],
    ["concurrency", Object.entries(s2.concurrency || {}).map(([k, c]) => `${k} ${c.effective}/${c.max}`).join(", ")],
    ["routing", s2.routing ? `${s2.routing.registry_tools} tools in the registry` : null],
  ]);
  const s3 = v.s3 || {};
  const k = s3.kpis || {};
  const agg = (s3.algedonic && s3.algedonic.aggregate) || {};
  kv("s3", [
    [`calls (${fmt(k.window_s)} s)`, k.calls], ["errors", `${fmt(k.errors)} (ratio ${fmt(k.error_ratio)})`],
    ["latency ms", k.latency_ms], ["calls total", k.calls_total],
    ["shed calls", s3.shed_calls],
    ["algedonic", `${fmt(agg.pain)} pain, ${fmt(agg.pleasure)} pleasure, balance ${fmt(agg.balance)}`],
  ]);
  const s4 = v.s4 || {};
  kv("s4", Object.entries(s4));

  const s5 = v.s5 || {};
  const rules = el("ul", { class: "plain" }, ...(s5.rules || []).map((r) =>
    el("li", {}, el("span", { class: "mono", text: r.name }), ` — ${r.do} when ${r.valence} ≥ ${r.when}`)));
  const active = (s5.active || []).map((a) => el("li", {}, badge("degraded", "active"), " ", fmt(a)));
  const bridges = Object.entries(v.bridges || {}).map(([name, b]) =>
    el("li", {}, el("span", { class: "mono", text: name }), " ", badge(b.connected ? "alive" : "down", b.connected ? "connected" : "disconnected")));
  replace("s5",
    el("p", { text: `${fmt(s5.handled)} signals handled, ${fmt(s5.policies)} policies, shedding ${fmt(s5.shedding)}` }),
    rules,
    el("h4", { text: "active responses" }),
    active.length ? el("ul", { class: "plain" }, ...active) : el("p", { class: "muted", text: "none" }),
    ...(bridges.length ? [el("h4", { text: "bridges" }), el("ul", { class: "plain" }, ...bridges)] : []));
}

// -- rendering: policies, events, audit ------------------------------------------------

function renderPolicies() {
  const list = (state.policies && state.policies.policies) || [];
  document.getElementById("policies-count").textContent = `· ${list.length}`;
  if (!list.length) {
    replace("policy-list", el("li", { class: "muted", text: "no policies" }));
    return;
  }
  replace("policy-list", ...list.map((p) => {
    const st = p.enforced ? "enforced" : p.kind === "revocation" ? "left" : "pending";
    const item = el("li", { class: "policy", "data-policy": p.id, "data-state": st },
      el("p", {}, badge(st, p.enforced ? "enforced" : st === "pending" ? "not enforced" : p.kind), " ",
        el("strong", { text: `${p.kind}${p.target ? ` of ${p.target}` : ""}` }),
        el("span", { class: "muted", text: ` · until ${p.expires} · by ${short(p.issuer)}` }),
        p.kind !== "revocation" && may("revoke-policy") ? revokeButton(p) : ""));
    const note = p.note;
    if (note && typeof note === "object") {
      item.append(el("p", { class: "note" }, el("span", { class: "muted", text: "note: " }),
        `${note.source || ""} — ${note.evidence || ""} — ${note.action || ""}`));
    }
    return item;
  }));
}

function eventSummary(e) {
  const skip = new Set(["kind", "ts"]);
  return Object.entries(e).filter(([k, v]) => !skip.has(k) && v !== null && v !== "")
    .map(([k, v]) => `${k}=${typeof v === "string" && v.length > 20 && /^12D3/.test(v) ? short(v) : fmt(v)}`).join(" ");
}

function renderEvents() {
  const items = state.events.slice(0, EVENTS_SHOWN).map((e) =>
    el("li", { "data-kind": e.kind }, el("span", { class: "muted", text: `${clock(e.ts)} ` }),
      el("strong", { text: e.kind }), " ", el("span", { class: "mono", text: eventSummary(e) })));
  replace("event-list", ...(items.length ? items : [el("li", { class: "muted", text: "no events yet" })]));
}

function renderAudit() {
  const items = state.audit.map((a) => {
    const data = JSON.stringify(a.data);
    return el("li", {}, el("span", { class: "muted", text: `#${a.seq} ${clock(a.ts_ms / 1000)} ` }),
      el("strong", { text: a.kind }), " ", el("span", { class: "mono", text: `${short(a.actor)} ${data.length > 160 ? data.slice(0, 160) + "…" : data}` }));
  });
  replace("audit-list", ...(items.length ? items : [el("li", { class: "muted", text: "no entries yet" })]));
}

// -- start -------------------------------------------------------------------------------

document.getElementById("refresh").addEventListener("click", loadAll);
document.getElementById("pause").addEventListener("click", (ev) => {
  state.paused = !state.paused;
  ev.currentTarget.setAttribute("aria-pressed", String(state.paused));
  ev.currentTarget.textContent = state.paused ? "Resume updates" : "Pause updates";
  if (!state.paused) loadAll();
});
function useToken() {
  const input = document.getElementById("admin-token");
  admin.token = input.value.trim();
  input.value = "";
  if (admin.token) sessionStorage.setItem(TOKEN_KEY, admin.token);
  else sessionStorage.removeItem(TOKEN_KEY);
  adminMessage("");
  checkAdmin();
}
document.getElementById("admin-use").addEventListener("click", useToken);
document.getElementById("admin-token").addEventListener("keydown", (ev) => {
  if (ev.key === "Enter") useToken();
});
document.getElementById("admin-forget").addEventListener("click", () => {
  admin.token = "";
  sessionStorage.removeItem(TOKEN_KEY);
  adminMessage("");
  checkAdmin();
});
const quiet = () => state.paused || document.hidden;
const live = () => document.getElementById("live").dataset.state === "live";
setInterval(() => { if (!quiet() && !live()) schedule("vsm"); }, REFRESH_MS);
setInterval(() => { if (!quiet()) schedule("status", "peers"); }, SLOW_REFRESH_MS);
document.addEventListener("visibilitychange", () => { if (!quiet()) loadAll(); });
loadAll();
connect();
checkAdmin();
