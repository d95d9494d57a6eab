// The inspector page: sources (recording, live request, stored response), the timeline, the scrubber and the
// response view, wired to the server's analysis API (api/...). Every finding, row and snapshot comes from the
// server (the protocol core's checker and Accumulator); nothing here decides what a stream means.

import { Timeline } from "./timeline.js";
import { renderResponse } from "./render.js";

const $ = (id) => document.getElementById(id);

const state = {
  key: "",
  info: null,
  session: null,   // {id, name, source, live, responses: [{rows, findings, ...}]}
  r: 0,            // the response shown (recordings may hold several)
  current: -1,     // the event shown (index in the response's rows)
  follow: true,    // during a live stream, keep showing the newest event
  live: null,      // AbortController of the live stream being read
  snap: { wanted: null, busy: false },
};

class ApiError extends Error {
  constructor(status, message, code) { super(message); this.status = status; this.code = code; }
}

async function api(path, options = {}) {
  const headers = { ...(options.headers || {}) };
  if (state.key) headers.authorization = `Bearer ${state.key}`;
  const res = await fetch(`api/${path}`, { ...options, headers });
  if (!res.ok) {
    let body = null;
    try { body = await res.json(); } catch { /* not JSON */ }
    throw new ApiError(res.status, body?.error?.message || `${res.status} ${res.statusText}`, body?.error?.code);
  }
  return res;
}

function say(text, bad = false) {
  const msg = $("message");
  msg.textContent = text;
  msg.classList.toggle("bad", bad);
}

function failed(err) {
  if (err instanceof ApiError && err.status === 401) {
    say(`${err.message}: enter an API key of this server (top right).`, true);
    $("api-key").focus();
  } else {
    say(err.message || String(err), true);
  }
}

// --- the timeline and the current event ------------------------------------------------------------------

const timeline = new Timeline($("tl-body"), $("tl-spacer"), { onSelect: (i) => { setFollow(false); setCurrent(i); } });

function shown() { return state.session?.responses[state.r] || null; }

function passes(row) {
  const type = $("filter-type").value, item = $("filter-item").value;
  return (!type || row.type === type) && (!item || row.item === item) && (!$("filter-findings").checked || row.f.length > 0);
}

function applyFilters() {
  const resp = shown();
  if (!resp) return;
  const visible = [];
  for (const row of resp.rows) if (passes(row)) visible.push(row.i);
  timeline.setVisible(visible);
  countRows();
  if (state.current >= 0) timeline.scrollTo(state.current);
}

function countRows() {
  const resp = shown();
  const n = resp ? resp.rows.length : 0;
  $("row-count").textContent = timeline.visible.length === n ? `${n} events` : `${timeline.visible.length} of ${n} events`;
}

function fillFilter(select, values, label) {
  const keep = select.value;
  select.replaceChildren(new Option(label, ""));
  for (const v of values) select.append(new Option(v, v));
  select.value = values.includes(keep) ? keep : "";
}

function fillFilters(resp) {
  const types = [], items = [];
  const seenT = new Set(), seenI = new Set();
  for (const row of resp.rows) {
    if (!seenT.has(row.type)) { seenT.add(row.type); types.push(row.type); }
    if (row.item && !seenI.has(row.item)) { seenI.add(row.item); items.push(row.item); }
  }
  fillFilter($("filter-type"), types.sort(), "all types");
  fillFilter($("filter-item"), items, "all items");
}

function setCurrent(index, { scroll = true } = {}) {
  const resp = shown();
  if (!resp || !resp.rows.length) return;
  index = Math.max(0, Math.min(index, resp.rows.length - 1));
  state.current = index;
  timeline.select(index, { scroll });
  $("scrub").max = String(resp.rows.length - 1);
  $("scrub").value = String(index);
  $("scrub-label").textContent = `${index} of ${resp.rows.length - 1}`;
  showEvent(resp, index);
  wantSnapshot(index);
}

function findingItem(f, withRow) {
  const li = document.createElement("li");
  li.className = f.severity;
  li.dataset.rule = f.rule;
  li.dataset.row = f.row;
  if (withRow) {
    const a = document.createElement("a");
    a.textContent = `#${f.row}${f.end ? " (end)" : ""}`;
    a.addEventListener("click", () => { setFollow(false); setCurrent(f.row); });
    li.append(a, " ");
  }
  const rule = document.createElement("span");
  rule.className = "rule";
  rule.textContent = f.rule;
  const src = document.createElement("span");
  src.className = "src";
  src.textContent = `${f.severity}${f.end ? " · at the end of the stream" : ""} · ${f.source}`;
  li.append(rule, f.message, src);
  return li;
}

function showEvent(resp, index) {
  const row = resp.rows[index];
  $("event-title").textContent = `Event ${index} · ${row.type}${row.seq !== null ? ` · seq ${row.seq}` : ""}`;
  const items = row.f.map((k) => findingItem(resp.findings[k], false));
  if (!items.length) {
    const li = document.createElement("li");
    li.className = "none";
    li.textContent = "no finding on this event";
    items.push(li);
  }
  $("event-findings").replaceChildren(...items);
}

const LIST_LIMIT = 500;

function problemItem(p) {
  const li = document.createElement("li");
  li.className = `${p.severity} problem`;
  const rule = document.createElement("span");
  rule.className = "rule";
  rule.textContent = "READ";
  const src = document.createElement("span");
  src.className = "src";
  src.textContent = `${p.severity} · bytes that gave no event: the events around them are shown`;
  li.append(rule, `${p.line !== null ? `line ${p.line} (byte ${p.offset}): ` : ""}${p.message}`, src);
  return li;
}

function showFindings(resp) {
  const problems = (state.session.problems || []).map(problemItem);
  const list = [...problems, ...resp.findings.slice(0, LIST_LIMIT).map((f) => findingItem(f, true))];
  const errors = resp.findings.filter((f) => f.severity === "error").length;
  const read = problems.length ? ` · ${problems.length} read problem(s)` : "";
  $("findings-title").textContent = `Findings: ${errors} error(s), ${resp.findings.length - errors} warning(s)${read}`;
  if (resp.findings.length > LIST_LIMIT) {
    const li = document.createElement("li");
    li.className = "warning";
    li.textContent = `… and ${resp.findings.length - LIST_LIMIT} more: step through them with n / N`;
    list.push(li);
  }
  if (!resp.findings.length && !problems.length) {
    const li = document.createElement("li");
    li.className = "none";
    li.textContent = "none: this stream breaks no conformance rule";
    list.push(li);
  }
  $("findings").replaceChildren(...list);
}

// Snapshots: one request at a time, always for the newest wanted event (so scrubbing a 10,000-event stream sends
// a handful of requests, and the last one shown is the one asked for last).
function wantSnapshot(index) {
  state.snap.wanted = { id: state.session.id, r: state.r, index };
  if (!state.snap.busy) fetchSnapshot();
}

async function fetchSnapshot() {
  const s = state.snap;
  const want = s.wanted;
  if (!want) return;
  s.busy = true;
  try {
    const res = await api(`sessions/${want.id}/snapshot?response=${want.r}&index=${want.index}`);
    const body = await res.json();
    if (s.wanted === want) {  // nothing newer was asked for meanwhile
      s.wanted = null;
      const target = $("response");
      renderResponse(target, body.response);
      target.dataset.index = String(body.index);
      target.dataset.session = want.id;
      $("event-json").textContent = JSON.stringify(body.event, null, 2);
    }
  } catch (err) {
    if (s.wanted === want) s.wanted = null;
    failed(err);
  } finally {
    s.busy = false;
    if (s.wanted) fetchSnapshot();
  }
}

function setFollow(on) {
  state.follow = on;
  $("follow").checked = on;
}

// --- sessions ---------------------------------------------------------------------------------------------

function indexFindings(resp) {
  for (const row of resp.rows) row.f = [];
  resp.findings.forEach((f, k) => resp.rows[f.row]?.f.push(k));
}

function showResponses() {
  const box = $("responses");
  const responses = state.session.responses;
  box.hidden = responses.length < 2;
  box.replaceChildren(...responses.map((resp, r) => {
    const b = document.createElement("button");
    b.setAttribute("role", "tab");
    b.setAttribute("aria-selected", String(r === state.r));
    b.textContent = `Response ${r + 1}${resp.id ? ` ${resp.id}` : ""} · ${resp.rows.length} events · ${resp.errors ?? 0} error(s)`;
    b.addEventListener("click", () => showResponse(r));
    return b;
  }));
}

function showResponse(r, { at = null } = {}) {
  state.r = r;
  const resp = shown();
  showResponses();
  fillFilters(resp);
  const visible = [];
  for (const row of resp.rows) if (passes(row)) visible.push(row.i);
  timeline.setRows(resp.rows, resp.findings, visible);
  countRows();
  showFindings(resp);
  setCurrent(at ?? resp.rows.length - 1);
}

function listSession(desc) {
  const select = $("session");
  let option = [...select.options].find((o) => o.value === desc.id);
  if (!option) { option = new Option("", desc.id); select.prepend(option); }
  option.textContent = `${desc.name} (${desc.source}, ${desc.events} events)`;
  select.value = desc.id;
}

async function openSession(id, { r = 0, at = null } = {}) {
  const res = await api(`sessions/${id}`);
  const session = await res.json();
  for (const resp of session.responses) indexFindings(resp);
  state.session = session;
  listSession(session);
  document.body.dataset.session = session.id;
  if (session.responses.length) showResponse(Math.min(r, session.responses.length - 1), { at });
}

async function upload(file) {
  say(`reading ${file.name}…`);
  const res = await api(`sessions?name=${encodeURIComponent(file.name)}`, { method: "POST", body: file });
  const session = await res.json();
  await openSession(session.id);
  say(`${file.name}: ${session.events} events in ${session.responses.length} response(s)`);
}

// A live request or a stored response: NDJSON lines from the server as the stream comes.
async function readLive(path, options) {
  if (state.live) state.live.abort();
  const controller = new AbortController();
  state.live = controller;
  $("live-stop").disabled = false;
  setFollow(true);
  let session = null;
  try {
    const res = await api(path, { ...options, signal: controller.signal });
    const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += value;
      let nl;
      while ((nl = buffer.indexOf("\n")) >= 0) {
        const line = buffer.slice(0, nl);
        buffer = buffer.slice(nl + 1);
        if (line) session = onLiveMessage(JSON.parse(line), session);
      }
    }
  } catch (err) {
    if (err.name !== "AbortError") failed(err);
  } finally {
    if (state.live === controller) { state.live = null; $("live-stop").disabled = true; }
  }
  if (session && state.session?.id === session.id && session.responses.length) {
    // The stream is over: take the server's full analysis (end-of-stream findings included).
    await openSession(session.id, { r: state.r, at: state.follow ? null : state.current }).catch(failed);
  }
}

function onLiveMessage(msg, session) {
  if (msg.kind === "session") {
    session = { id: msg.id, name: msg.name, source: msg.source, live: true, responses: [] };
    state.session = session;
    state.r = 0;
    state.current = -1;
    document.body.dataset.session = session.id;
    listSession(msg);
    timeline.setRows([], [], []);
    $("response").replaceChildren();
    $("findings").replaceChildren();
    showResponses();
    say(`${msg.source === "stored" ? "reading" : "sending"}…`);
  } else if (msg.kind === "status") {
    say(`HTTP ${msg.status}${msg.dropped_tools ? ` · tools dropped by the server: ${msg.dropped_tools}` : ""}`, msg.status !== 200);
  } else if (msg.kind === "rows" && session === state.session) {
    onRows(msg.rows);
  } else if (msg.kind === "error") {
    const body = typeof msg.body === "string" ? msg.body : (msg.body?.error?.message || JSON.stringify(msg.body));
    say(`${msg.status ? `HTTP ${msg.status}: ` : ""}${body}`, true);
  } else if (msg.kind === "end") {
    listSession(msg);
    if (msg.events) say(`${msg.events} events in ${msg.responses.length} response(s)`);
  }
  return session;
}

function onRows(items) {
  const responses = state.session.responses;
  let grew = false, newResponse = false;
  for (const { response: r, row, findings } of items) {
    while (responses.length <= r) { responses.push({ rows: [], findings: [] }); newResponse = true; }
    const resp = responses[r];
    row.f = [];
    resp.rows.push(row);
    for (const f of findings) { resp.findings.push(f); row.f.push(resp.findings.length - 1); }
    if (r === state.r) {
      grew = true;
      if (passes(row)) timeline.visible.push(row.i);
    }
  }
  if (newResponse) showResponses();
  const resp = shown();
  if (!grew || !resp) return;
  if (timeline.rows !== resp.rows) {
    fillFilters(resp);
    timeline.setRows(resp.rows, resp.findings, timeline.visible);
  }
  timeline.schedule();
  countRows();
  $("scrub").max = String(resp.rows.length - 1);
  if (state.follow) setCurrent(resp.rows.length - 1);
  else $("scrub-label").textContent = `${state.current} of ${resp.rows.length - 1}`;
}

function liveRequest() {
  const request = { model: $("live-model").value || undefined, input: $("live-input").value };
  const tools = $("live-tools").value.trim();
  if (tools) {
    try { request.tools = JSON.parse(tools); } catch (err) { throw new Error(`tools: not JSON (${err.message})`); }
  }
  if ($("live-instructions").value) request.instructions = $("live-instructions").value;
  if ($("live-temperature").value) request.temperature = Number($("live-temperature").value);
  if ($("live-max").value) request.max_output_tokens = Number($("live-max").value);
  if ($("live-reasoning").value) request.reasoning = { effort: $("live-reasoning").value };
  request.store = $("live-store").checked;
  return { target: $("live-target").value, request };
}

// --- exports ----------------------------------------------------------------------------------------------

async function download(format) {
  if (!state.session) return say("nothing to export yet", true);
  try {
    const res = await api(`sessions/${state.session.id}/export?format=${format}`);
    const name = /filename="([^"]+)"/.exec(res.headers.get("content-disposition") || "")?.[1] || `stream.${format}`;
    const url = URL.createObjectURL(await res.blob());
    const a = document.createElement("a");
    a.href = url;
    a.download = name;
    document.body.append(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(url), 10000);
  } catch (err) { failed(err); }
}

// --- sources and start-up ---------------------------------------------------------------------------------

function showSource(name) {
  for (const tab of document.querySelectorAll(".sources [role=tab]")) tab.setAttribute("aria-selected", String(tab.dataset.source === name));
  for (const panel of document.querySelectorAll("#source-panel .source")) panel.hidden = panel.dataset.source !== name;
}

async function loadInfo() {
  try {
    const res = await api("info");
    const info = await res.json();
    state.info = info;
    $("models").replaceChildren(...info.models.map((m) => new Option(m, m)));
    if (info.models.length && !$("live-model").value) $("live-model").value = info.models[0];
    if (info.upstream) $("live-target").append(new Option(`the upstream (${info.upstream})`, "upstream"));
    for (const name of ["tab-live", "tab-stored"]) {
      $(name).disabled = !info.server;
      $(name).title = info.server ? "" : "needs `headwater serve` (this is `headwater inspect`: recordings only)";
    }
    for (const desc of [...info.sessions].reverse()) listSession(desc);
    if (info.sessions.length) await openSession(info.sessions[info.sessions.length - 1].id);
    else say("Open or drop a recording, send a live request or open a stored response.");
    document.body.dataset.ready = "1";
  } catch (err) { failed(err); }
}

function moveBy(step) {
  const v = timeline.visible;
  if (!v.length) return;
  let pos = timeline.position(state.current);
  if (pos < 0) pos = timeline.nearest(state.current) - (step > 0 ? 1 : 0);
  setFollow(false);
  setCurrent(v[Math.max(0, Math.min(v.length - 1, pos + step))]);
}

function jumpFinding(direction) {
  const resp = shown();
  if (!resp || !resp.findings.length) return;
  const rows = [...new Set(resp.findings.map((f) => f.row))].sort((a, b) => a - b);
  const next = direction > 0 ? rows.find((i) => i > state.current) : [...rows].reverse().find((i) => i < state.current);
  if (next !== undefined) { setFollow(false); setCurrent(next); }
}

function onKey(e) {
  const typing = e.target.closest("input, textarea, select");
  if (e.key === "Escape") {
    if (typing) { e.target.blur(); return; }
    $("filter-type").value = ""; $("filter-item").value = ""; $("filter-findings").checked = false;
    applyFilters();
    return;
  }
  if (typing || e.ctrlKey || e.metaKey || e.altKey) return;
  const page = timeline.pageSize();
  const keys = {
    ArrowDown: () => moveBy(1), j: () => moveBy(1), ArrowUp: () => moveBy(-1), k: () => moveBy(-1),
    PageDown: () => moveBy(page), PageUp: () => moveBy(-page),
    Home: () => moveBy(-Infinity), End: () => { setCurrent(timeline.visible[timeline.visible.length - 1]); },
    n: () => jumpFinding(1), N: () => jumpFinding(-1),
    t: () => $("tl-body").focus(), "/": () => $("filter-type").focus(), i: () => $("filter-item").focus(),
    f: () => { $("filter-findings").checked = !$("filter-findings").checked; applyFilters(); },
    o: () => $("file-input").click(),
    1: () => showSource("recording"), 2: () => showSource("live"), 3: () => showSource("stored"),
    "[": () => state.session && state.r > 0 && showResponse(state.r - 1),
    "]": () => state.session && state.r < state.session.responses.length - 1 && showResponse(state.r + 1),
    "?": () => $("help").showModal(),
  };
  const action = keys[e.key];
  if (action) { e.preventDefault(); action(); }
}

function start() {
  const match = /[#&]key=([^&]+)/.exec(location.hash);
  if (match) {
    sessionStorage.setItem("headwater-inspector-key", decodeURIComponent(match[1]));
    history.replaceState(null, "", location.pathname + location.search);
  }
  state.key = sessionStorage.getItem("headwater-inspector-key") || "";
  $("api-key").value = state.key;
  timeline.measure();

  $("api-key").addEventListener("change", () => {
    state.key = $("api-key").value.trim();
    sessionStorage.setItem("headwater-inspector-key", state.key);
    say("");
    loadInfo();
  });
  for (const tab of document.querySelectorAll(".sources [role=tab]")) tab.addEventListener("click", () => showSource(tab.dataset.source));
  $("open-file").addEventListener("click", () => $("file-input").click());
  $("file-input").addEventListener("change", async () => {
    for (const file of $("file-input").files) await upload(file).catch(failed);
    $("file-input").value = "";
  });
  $("session").addEventListener("change", () => openSession($("session").value).catch(failed));
  $("filter-type").addEventListener("change", applyFilters);
  $("filter-item").addEventListener("change", applyFilters);
  $("filter-findings").addEventListener("change", applyFilters);
  $("scrub").addEventListener("input", () => { setFollow(false); setCurrent(Number($("scrub").value)); });
  $("follow").addEventListener("change", () => {
    state.follow = $("follow").checked;
    if (state.follow && shown()) setCurrent(shown().rows.length - 1);
  });
  $("export-sse").addEventListener("click", () => download("sse"));
  $("export-jsonl").addEventListener("click", () => download("jsonl"));
  $("export-check").addEventListener("click", () => download("check"));
  $("help-button").addEventListener("click", () => $("help").showModal());
  $("live-form").addEventListener("submit", (e) => {
    e.preventDefault();
    let body;
    try { body = liveRequest(); } catch (err) { return say(err.message, true); }
    readLive("live", { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify(body) });
  });
  $("live-stop").addEventListener("click", () => state.live?.abort());
  $("stored-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const id = $("stored-id").value.trim();
    if (id) readLive(`stored/${encodeURIComponent(id)}`, {});
  });
  document.addEventListener("keydown", onKey);

  let depth = 0;
  window.addEventListener("dragenter", (e) => { e.preventDefault(); depth++; $("drop").hidden = false; });
  window.addEventListener("dragleave", () => { if (--depth <= 0) { depth = 0; $("drop").hidden = true; } });
  window.addEventListener("dragover", (e) => e.preventDefault());
  window.addEventListener("drop", async (e) => {
    e.preventDefault();
    depth = 0;
    $("drop").hidden = true;
    showSource("recording");
    for (const file of e.dataTransfer.files) await upload(file).catch(failed);
  });
  loadInfo();
}

start();
