// patchscopes explorer: the page's logic. Plain JavaScript, no framework, no network beyond this server.
"use strict";

const $ = (id) => document.getElementById(id);
const BLUES = ["#f7fbff", "#deebf7", "#c6dbef", "#9ecae1", "#6baed6", "#4292c6", "#2171b5", "#08519c", "#08306b"];
// Preferred first choices; the first preset served (or generation preset) where the server has no such preset.
const DEFAULT_SCOPE = "token-identity";
const DEFAULT_DESCRIBE_SCOPE = "description";
const QUERY_FIELDS = ["model", "prompt", "scope", "layers", "positions", "top_k", "target_prompt", "target_layer"];

const state = {
  models: [], presets: [], limits: {},
  plan: null, records: [], own: new Map(), cells: new Map(), query: null,
  controller: null, running: false, started: 0, timer: null,
  selected: null, describeController: null, describeCache: new Map(), pendingCell: null,
};

// ---------- text helpers (the same rules as patchscopes.plots.show_token) ----------
const ESCAPES = { "\n": "\\n", "\r": "\\r", "\t": "\\t", "\\": "\\\\" };
function showToken(token) {
  if (token === null || token === undefined || token === "") return "∅";
  let out = "";
  for (const ch of String(token)) {
    if (ESCAPES[ch]) out += ESCAPES[ch];
    else if (ch !== " " && /[\p{C}\p{Z}]/u.test(ch)) {
      const code = ch.codePointAt(0);
      out += code < 0x100 ? "\\x" + code.toString(16).padStart(2, "0")
        : code < 0x10000 ? "\\u" + code.toString(16).padStart(4, "0") : "\\U" + code.toString(16).padStart(8, "0");
    } else out += ch;
  }
  const stripped = out.replace(/^ +| +$/g, "");
  if (!stripped) return "␣".repeat(out.length);
  const lead = out.length - out.replace(/^ +/, "").length;
  const trail = out.length - out.replace(/ +$/, "").length;
  return "␣".repeat(lead) + stripped + "␣".repeat(trail);
}
const shorten = (text, width) => (text.length <= width ? text : text.slice(0, width - 1) + "…");
const isGeneration = (rec) => typeof rec.generated_text === "string";
const pct = (p) => (p === null || p === undefined ? "–" : p >= 0.995 ? "1.00" : p.toFixed(p < 0.01 ? 3 : 2));

function cellProbability(rec) {
  const probs = rec.top_probs || [];
  if (!probs.length) return null;
  if (isGeneration(rec)) {
    const first = (rec.generated_token_ids || [])[0];
    const k = (rec.top_token_ids || []).indexOf(first);
    return k >= 0 ? probs[k] : null;
  }
  return probs[0];
}

function cellText(rec) {
  return isGeneration(rec) ? shorten(showToken(rec.generated_text.trim()), 15) : shorten(showToken(rec.top_token), 10);
}

function colour(p) {
  if (p === null || p === undefined) return "#eef2f6";
  const x = Math.max(0, Math.min(1, p)) * (BLUES.length - 1);
  const i = Math.min(BLUES.length - 2, Math.floor(x));
  const mix = (a, b, t) => Math.round(a + (b - a) * t);
  const rgb = (h) => [1, 3, 5].map((k) => parseInt(h.slice(k, k + 2), 16));
  const [a, b] = [rgb(BLUES[i]), rgb(BLUES[i + 1])];
  return `rgb(${mix(a[0], b[0], x - i)},${mix(a[1], b[1], x - i)},${mix(a[2], b[2], x - i)})`;
}

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") node.className = v;
    else if (k === "text") node.textContent = v;
    else node.setAttribute(k, v);
  }
  for (const child of children) node.append(child);
  return node;
}

function topkList(tokens, probs, ownId) {
  const list = el("ol", { class: "topk" });
  (tokens || []).forEach((tok, k) => {
    const p = (probs || [])[k];
    const bar = el("span", { class: "bar" }, el("i"));
    bar.firstChild.style.width = `${Math.round((p || 0) * 100)}%`;
    list.append(el("li", {}, el("span", { class: "tok", text: showToken(tok), title: JSON.stringify(tok) }), bar,
      el("span", { class: "p", text: pct(p) })));
  });
  if (ownId) list.id = ownId;
  return list;
}

// ---------- API ----------
async function api(path, body, signal) {
  const init = body === undefined ? { signal } : {
    method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body), signal,
  };
  const response = await fetch(path, init);
  if (!response.ok) throw await problem(response);
  return response;
}

async function problem(response) {
  let data = {};
  try { data = await response.json(); } catch (_) { /* not JSON */ }
  const err = new Error(data.error || `${response.status} ${response.statusText}`);
  err.hint = data.hint;
  err.status = response.status;
  return err;
}

async function* sseEvents(response) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      let event = "message", data = "";
      for (const line of block.split("\n")) {
        if (line.startsWith("event: ")) event = line.slice(7);
        else if (line.startsWith("data: ")) data += line.slice(6);
      }
      yield { event, data: data ? JSON.parse(data) : null };
    }
  }
}

// ---------- form and URL ----------
function readForm() {
  const q = {
    model: $("model").value || undefined,
    prompt: $("prompt").value,
    scope: $("scope").value,
    layers: $("layers").value.trim() || "all",
    positions: $("positions").value.trim() || "all",
  };
  const topK = parseInt($("top-k").value, 10);
  if (topK > 0) q.top_k = topK;
  if ($("target-prompt").value.trim()) q.target_prompt = $("target-prompt").value;
  if ($("target-layer").value.trim()) q.target_layer = $("target-layer").value.trim();
  return q;
}

function writeForm(params) {
  if (params.get("model") && state.models.some((m) => m.name === params.get("model"))) $("model").value = params.get("model");
  if (params.has("prompt")) $("prompt").value = params.get("prompt");
  if (params.get("scope") && state.presets.some((p) => p.name === params.get("scope"))) $("scope").value = params.get("scope");
  $("layers").value = params.get("layers") || "all";
  $("positions").value = params.get("positions") || "all";
  $("top-k").value = params.get("top_k") || "";
  $("target-prompt").value = params.get("target_prompt") || "";
  $("target-layer").value = params.get("target_layer") || "";
  $("target-box").open = Boolean(params.get("target_prompt"));
  updateScope();
}

function queryUrl(q, cell) {
  const params = new URLSearchParams();
  for (const key of QUERY_FIELDS) if (q[key] !== undefined && q[key] !== "") params.set(key, q[key]);
  if (cell) params.set("cell", cell);
  return `${location.pathname}?${params}`;
}

function updateScope() {
  const preset = state.presets.find((p) => p.name === $("scope").value);
  if (!preset) return;
  $("scope-about").textContent = preset.description
    || (preset.target_prompt ? `target prompt: ${shorten(preset.target_prompt, 90)}` : "");
  const box = $("target-prompt");
  box.placeholder = preset.target_prompt === null ? "(the source prompt itself)" : preset.target_prompt;
  $("target-hint").textContent = preset.placeholder
    ? `Leave empty for the preset's prompt. A custom prompt must contain the placeholder “${preset.placeholder}”; its last token is patched.`
    : preset.target_prompt === null ? "This preset reads the source prompt itself (T = S); a custom prompt replaces it and is patched at its last token."
      : "Leave empty for the preset's prompt; a custom prompt is patched at its last token.";
  $("target-summary").textContent = box.value.trim() ? "(custom)" : "(the preset's)";
  $("target-layer").placeholder = preset.target_layer === "same" ? "l* = l" : preset.target_layer === "last" ? "last" : String(preset.target_layer);
}

// ---------- grid ----------
function rowKey(rec, plan) {
  return plan.target_layers ? `${rec.source_layer}→${rec.target_layer}` : String(rec.source_layer);
}

function buildGrid(plan) {
  const grid = $("grid");
  grid.replaceChildren();
  grid.classList.toggle("generation", plan.generation);
  state.cells.clear();
  const head = el("tr", {}, el("th", { class: "layer corner", text: plan.target_layers ? "l→l*" : "layer" }));
  for (const pos of plan.positions) {
    head.append(el("th", { title: `position ${pos}: ${JSON.stringify(plan.tokens[pos])}` },
      el("span", { class: "idx", text: String(pos) }), el("span", { class: "tok", text: showToken(plan.tokens[pos]) })));
  }
  const body = el("tbody");
  const rows = plan.target_layers
    ? plan.layers.flatMap((l) => plan.target_layers.map((t) => `${l}→${t}`)) : plan.layers.map(String);
  for (const row of rows) {
    const tr = el("tr", {}, el("th", { class: "layer", text: row }));
    for (const pos of plan.positions) {
      const td = el("td", { class: "pending", "data-row": row, "data-position": String(pos) });
      state.cells.set(`${row}|${pos}`, td);
      tr.append(td);
    }
    body.append(tr);
  }
  const foot = el("tr", {}, el("th", { class: "layer", text: "model's next", title: "the unpatched model's own next-token prediction at each position" }));
  for (const pos of plan.positions) foot.append(el("td", { class: "own", "data-position": String(pos) }));
  grid.append(el("thead", {}, head), body, el("tfoot", {}, foot));
  grid.hidden = false;
  $("legend").hidden = false;
  $("empty").hidden = true;
}

function fillCell(rec) {
  const key = `${rowKey(rec, state.plan)}|${rec.source_position}`;
  const td = state.cells.get(key);
  if (!td) return;
  const p = cellProbability(rec);
  td.className = "fresh";
  td.textContent = cellText(rec);
  td.style.backgroundColor = colour(p);
  td.style.color = p !== null && p >= 0.5 ? "#fff" : "var(--ink)";
  td.dataset.topToken = rec.top_token;
  td.dataset.prob = p === null ? "" : String(p);
  td.record = rec;
  if (state.pendingCell === key) selectCell(td);
}

function fillOwn(records) {
  for (const rec of records) {
    state.own.set(rec.source_position, rec);
    const td = $("grid").querySelector(`tfoot td[data-position="${rec.source_position}"]`);
    if (td) {
      td.textContent = shorten(showToken(rec.top_token), 10);
      td.dataset.topToken = rec.top_token;
      td.title = `the model's own next token after position ${rec.source_position}: ${showToken(rec.top_token)} (${pct(rec.top_prob)})`;
    }
  }
}

function setStatus(text) { $("status").textContent = text; }
function setProgress(done, total) {
  $("progress-fill").style.width = total ? `${(100 * done) / total}%` : "0";
}
function elapsed() { return `${((performance.now() - state.started) / 1000).toFixed(1)} s`; }

function showError(err) {
  const box = $("error");
  box.replaceChildren(el("b", { text: err.message }));
  if (err.hint) box.append(el("div", { class: "hint", text: `hint: ${err.hint}` }));
  box.hidden = false;
}

function setRunning(running) {
  state.running = running;
  $("stop").hidden = !running;
  $("run").textContent = running ? "Running…" : "Run";
  $("run").disabled = running;
  const has = state.records.length > 0;
  for (const id of ["download-json", "download-csv"]) $(id).disabled = running || !has;
  $("copy-link").disabled = !state.query;
  clearInterval(state.timer);
  if (running) state.timer = setInterval(() => tick(), 200);
}

function tick() {
  if (!state.plan) return;
  const done = state.records.length;
  setStatus(`${done} / ${state.plan.patches} patches · ${elapsed()}`);
}

async function run({ push = true, cell = null } = {}) {
  if (state.controller) state.controller.abort();
  const q = readForm();
  $("error").hidden = true;
  if (!q.prompt.trim()) { showError({ message: "Type a source prompt first." }); return; }
  closePanel(false);
  state.query = q;
  state.pendingCell = cell;
  state.records = [];
  state.own.clear();
  state.plan = null;
  const url = queryUrl(q, cell);
  if (push && url !== location.pathname + location.search) history.pushState(null, "", url);
  else history.replaceState(null, "", url);
  const controller = new AbortController();
  state.controller = controller;
  state.started = performance.now();
  setProgress(0, 1);
  setStatus("starting…");
  setRunning(true);
  $("grid").dataset.state = "running";
  try {
    const response = await api("/api/inspect/stream", q, controller.signal);
    for await (const { event, data } of sseEvents(response)) {
      if (controller.signal.aborted) return;
      if (event === "plan") {
        state.plan = data;
        refreshModels().catch(() => {});
        buildGrid(data);
        $("grid").dataset.total = String(data.patches);
        tick();
      } else if (event === "queued") {
        setStatus(`waiting for ${data.ahead} other request${data.ahead > 1 ? "s" : ""} on this model…`);
      } else if (event === "model") {
        fillOwn(data.records);
      } else if (event === "cells") {
        for (const rec of data.records) { state.records.push(rec); fillCell(rec); }
        setProgress(data.done, data.total);
        $("grid").dataset.done = String(data.done);
        tick();
      } else if (event === "done") {
        setProgress(1, 1);
        setStatus(`${data.patches} patches · ${data.seconds.toFixed(2)} s · ${state.plan.model} · ${state.plan.scope}`
          + " · hover a cell for its top tokens, click it to describe");
        $("grid").dataset.state = "done";
      } else if (event === "error") {
        throw Object.assign(new Error(data.error), { hint: data.hint });
      }
    }
  } catch (err) {
    if (err.name === "AbortError") return;
    $("grid").dataset.state = "error";
    setStatus("failed");
    showError(err);
  } finally {
    if (state.controller === controller) {
      state.controller = null;
      setRunning(false);
      if ($("grid").dataset.state === "running") { $("grid").dataset.state = "stopped"; setStatus(`stopped · ${state.records.length} of ${state.plan ? state.plan.patches : "?"} patches`); }
    }
  }
}

// ---------- tooltip ----------
function showTooltip(td, event) {
  const rec = td.record;
  if (!rec) return;
  const tip = $("tooltip");
  const head = el("div", { class: "head" }, el("b", { text: `layer ${td.dataset.row}` }),
    ` · position ${rec.source_position} `, el("code", { text: showToken(rec.source_token) }));
  tip.replaceChildren(head);
  if (isGeneration(rec)) {
    tip.append(el("div", { class: "gen", text: rec.generated_text.trim() || "∅" }), el("div", { class: "foot", text: "first generated token:" }));
  }
  tip.append(topkList(rec.top_tokens, rec.top_probs));
  const own = state.own.get(rec.source_position);
  if (own) tip.append(el("div", { class: "foot", text: `model's own next token: ${showToken(own.top_token)} ${pct(own.top_prob)}` }));
  tip.hidden = false;
  moveTooltip(event);
}

function moveTooltip(event) {
  const tip = $("tooltip");
  const pad = 14;
  let x = event.clientX + pad, y = event.clientY + pad;
  const { width, height } = tip.getBoundingClientRect();
  if (x + width > innerWidth - 4) x = event.clientX - width - pad;
  if (y + height > innerHeight - 4) y = event.clientY - height - pad;
  tip.style.left = `${Math.max(4, x)}px`;
  tip.style.top = `${Math.max(4, y)}px`;
}

// ---------- panel: one cell, and its description ----------
function generationPresets() { return state.presets.filter((p) => p.generation); }

function selectCell(td) {
  if (!td || !td.record) return;
  const rec = td.record;
  for (const other of $("grid").querySelectorAll("td.selected")) other.classList.remove("selected");
  td.classList.add("selected");
  state.selected = td;
  state.pendingCell = null;
  const cellKey = `${td.dataset.row}|${rec.source_position}`;
  if (state.query) history.replaceState(null, "", queryUrl(state.query, cellKey));
  $("panel-title").replaceChildren(`layer ${td.dataset.row} · position ${rec.source_position} `,
    el("code", { text: showToken(rec.source_token) }));
  const own = state.own.get(rec.source_position);
  $("panel-sub").textContent = `${rec.scope} → ${isGeneration(rec) ? JSON.stringify(rec.generated_text.trim()) : showToken(rec.top_token)}`
    + (own ? ` · the model itself predicts ${showToken(own.top_token)}` : "");
  $("panel-topk").replaceWith(topkList(rec.top_tokens, rec.top_probs, "panel-topk"));
  $("panel").hidden = false;
  describe();
}

function closePanel(updateUrl = true) {
  $("panel").hidden = true;
  if (state.describeController) state.describeController.abort();
  for (const other of $("grid").querySelectorAll("td.selected")) other.classList.remove("selected");
  state.selected = null;
  if (updateUrl && state.query) history.replaceState(null, "", queryUrl(state.query));
}

function describePreset() { return state.presets.find((p) => p.name === $("describe-scope").value); }

function onDescribePreset() {
  const preset = describePreset();
  if (!preset) return;
  $("describe-target").value = preset.target_prompt || "";
  $("describe-tokens").value = preset.max_new_tokens || 20;
}

async function describe() {
  const td = state.selected;
  if (!td || !td.record || !state.query) return;
  const rec = td.record;
  const preset = describePreset();
  if (!preset) return;
  const body = { model: state.query.model, prompt: state.query.prompt, layer: rec.source_layer,
    position: rec.source_position, scope: preset.name };
  const tokens = parseInt($("describe-tokens").value, 10);
  if (tokens > 0) body.max_new_tokens = tokens;
  const target = $("describe-target").value;
  if (target.trim() && target !== preset.target_prompt) body.target_prompt = target;
  const out = $("describe-output");
  const key = JSON.stringify(body);
  if (state.describeController) state.describeController.abort();
  if (state.describeCache.has(key)) { showDescription(state.describeCache.get(key)); return; }
  const controller = new AbortController();
  state.describeController = controller;
  out.dataset.state = "running";
  out.textContent = `${preset.name}: generating from layer ${rec.source_layer}, position ${rec.source_position}…`;
  try {
    const response = await api("/api/describe", body, controller.signal);
    const [result] = await response.json();
    state.describeCache.set(key, result);
    if (state.describeController === controller) showDescription(result);
  } catch (err) {
    if (err.name === "AbortError") return;
    out.dataset.state = "error";
    out.replaceChildren(el("b", { text: err.message }), err.hint ? el("span", { class: "meta", text: `hint: ${err.hint}` }) : "");
  }
}

function showDescription(result) {
  const out = $("describe-output");
  out.dataset.state = "done";
  const p = cellProbability(result);
  out.replaceChildren(el("span", { class: "text", text: result.generated_text.trim() || "∅" }),
    el("span", { class: "meta", text: `${result.scope} · l* = ${result.target_layer} · first token p = ${pct(p)}` }));
}

// ---------- downloads ----------
function download(name, type, text) {
  const url = URL.createObjectURL(new Blob([text], { type }));
  const a = el("a", { href: url, download: name });
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 1000);
}

function toCsv(records) {
  const columns = [];
  for (const rec of records) for (const key of Object.keys(rec)) if (!columns.includes(key)) columns.push(key);
  const nested = new Set(columns.filter((c) => records.some((r) => r[c] !== null && typeof r[c] === "object")));
  const quote = (v) => (/[",\n\r]/.test(v) ? `"${v.replace(/"/g, '""')}"` : v);
  const cell = (rec, c) => {
    const v = rec[c];
    if (v === null || v === undefined) return "";
    if (nested.has(c)) return quote(JSON.stringify(v));
    if (typeof v === "boolean") return v ? "True" : "False";
    return quote(String(v));
  };
  return [columns.map(quote).join(","), ...records.map((r) => columns.map((c) => cell(r, c)).join(","))].join("\n") + "\n";
}

function fileStem() {
  const q = state.query || {};
  return `patchscopes-${state.plan ? state.plan.model : "model"}-${q.scope || "scope"}`.replace(/[^\w.-]+/g, "_");
}

// ---------- start ----------
function fillSelect(select, items, label = (x) => x) {
  select.replaceChildren(...items.map((item) => el("option", { value: item, text: label(item) })));
}

async function start() {
  const [models, presets] = await Promise.all([api("/api/models").then((r) => r.json()), api("/api/presets").then((r) => r.json())]);
  state.models = models.models;
  state.limits = models.limits;
  state.presets = presets.presets;
  fillSelect($("model"), state.models.map((m) => m.name));
  $("model").value = models.default;
  fillSelect($("scope"), state.presets.map((p) => p.name));
  if (state.presets.some((p) => p.name === DEFAULT_SCOPE)) $("scope").value = DEFAULT_SCOPE;
  fillSelect($("describe-scope"), generationPresets().map((p) => p.name));
  if (generationPresets().some((p) => p.name === DEFAULT_DESCRIBE_SCOPE)) $("describe-scope").value = DEFAULT_DESCRIBE_SCOPE;
  onDescribePreset();
  showModelInfo();
  $("prompt").maxLength = state.limits.max_prompt_chars;

  $("query").addEventListener("submit", (e) => { e.preventDefault(); run(); });
  $("prompt").addEventListener("keydown", (e) => {
    if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) { e.preventDefault(); run(); }
  });
  $("stop").addEventListener("click", () => state.controller && state.controller.abort());
  $("scope").addEventListener("change", updateScope);
  $("target-prompt").addEventListener("input", updateScope);
  $("model").addEventListener("change", showModelInfo);
  $("example").addEventListener("click", () => {
    $("prompt").value = "The Eiffel Tower is located in the city of";
    run();
  });
  const grid = $("grid");
  grid.addEventListener("mouseover", (e) => { const td = e.target.closest("tbody td"); if (td) showTooltip(td, e); });
  grid.addEventListener("mousemove", (e) => { if (!$("tooltip").hidden) moveTooltip(e); });
  grid.addEventListener("mouseout", (e) => { if (e.target.closest("tbody td")) $("tooltip").hidden = true; });
  grid.addEventListener("click", (e) => { const td = e.target.closest("tbody td"); if (td) selectCell(td); });
  $("panel-close").addEventListener("click", () => closePanel());
  $("describe-run").addEventListener("click", describe);
  $("describe-scope").addEventListener("change", () => { onDescribePreset(); describe(); });
  document.addEventListener("keydown", (e) => {
    if (e.key === "Escape") closePanel();
    if (state.selected && e.target === document.body && e.key.startsWith("Arrow")) moveSelection(e);
  });
  $("copy-link").addEventListener("click", copyLink);
  $("download-json").addEventListener("click", () => download(`${fileStem()}.json`, "application/json",
    JSON.stringify(state.records, null, 1) + "\n"));
  $("download-csv").addEventListener("click", () => download(`${fileStem()}.csv`, "text/csv", toCsv(state.records)));
  window.addEventListener("popstate", () => loadFromUrl(false));
  loadFromUrl(false);
}

function moveSelection(e) {
  const td = state.selected;
  const row = td.parentElement;
  let next = null;
  if (e.key === "ArrowLeft") next = td.previousElementSibling;
  else if (e.key === "ArrowRight") next = td.nextElementSibling;
  else {
    const sibling = e.key === "ArrowUp" ? row.previousElementSibling : row.nextElementSibling;
    if (sibling) next = sibling.children[td.cellIndex];
  }
  if (next && next.tagName === "TD" && next.record) { e.preventDefault(); selectCell(next); }
}

async function copyLink() {
  const url = location.href;
  try {
    await navigator.clipboard.writeText(url);
    setStatus("link copied");
  } catch (_) {
    window.prompt("Copy this link:", url);
  }
}

async function refreshModels() {
  const shown = state.models.find((m) => m.name === $("model").value);
  if (shown && shown.loaded) return;
  state.models = (await (await api("/api/models")).json()).models;
  showModelInfo();
}

function showModelInfo() {
  const m = state.models.find((x) => x.name === $("model").value);
  $("model-info").textContent = m && m.loaded ? `${m.num_layers} layers · d = ${m.hidden_size}` : m ? "loads on first use" : "";
}

function loadFromUrl(push) {
  const params = new URLSearchParams(location.search);
  params.delete("token");
  writeForm(params);
  if (params.get("prompt")) run({ push, cell: params.get("cell") });
}

start().catch((err) => showError(err));
