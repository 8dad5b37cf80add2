// pigpt explorer: the page. Vanilla JS + SVG, no build step, nothing fetched from elsewhere.
// Every number comes from the server (pigpt's engine); this file only keeps the state (mirrored in the URL's hash,
// so a link reproduces the view), asks the JSON API and draws.
"use strict";

const $ = (id) => document.getElementById(id);
const SVG = "http://www.w3.org/2000/svg";

// [settings key, URL key, slider min, slider max, step, default, label]
const SETTINGS = [
  ["temperature", "T", 0, 2, 0.05, 1, "temperature"],
  ["top_k", "k", 0, 200, 1, 0, "top-k (0: off)"],
  ["top_p", "p", 0.01, 1, 0.01, 1, "top-p (1: off)"],
  ["min_p", "minp", 0, 1, 0.01, 0, "min-p (0: off)"],
  ["typical_p", "typ", 0.01, 1, 0.01, 1, "typical (1: off)"],
  ["epsilon_cutoff", "eps", 0, 0.05, 0.0005, 0, "epsilon (0: off)"],
  ["eta_cutoff", "eta", 0, 0.05, 0.0005, 0, "eta (0: off)"],
  ["repetition_penalty", "rep", 0.5, 2, 0.05, 1, "repetition pen."],
  ["min_new_tokens", "min", 0, 256, 1, 0, "min new tokens"],
  ["max_new_tokens", "max", 1, 256, 1, 24, "max new tokens"],
  ["n", "n", 1, 64, 1, 8, "n rollouts"],
  ["seed", "seed", 0, 1000, 1, 0, "seed ω"],
  ["num_beams", "beams", 1, 8, 1, 4, "beams"],
];
const DEFAULT_PROMPT = "def add(a, b):\n    return";

const state = {
  prompt: DEFAULT_PROMPT, settings: {}, path: [], tree: [], times: 100,
  draw: false, rollouts: false, beams: false, reward: "", episode: 0,
};
let lastStep = null, lastDraw = null, lastRollouts = null;

// -- the URL: the whole state ------------------------------------------------------------------------------------
const ids = (s) => (s ? s.split(",").filter((x) => x !== "").map(Number) : []);
function readHash() {
  const q = new URLSearchParams(location.hash.slice(1));
  if (q.has("prompt")) state.prompt = q.get("prompt");
  for (const [key, short, , , , dflt] of SETTINGS) state.settings[key] = q.has(short) ? Number(q.get(short)) : dflt;
  state.path = ids(q.get("path"));
  state.tree = q.get("tree") ? q.get("tree").split(";").map(ids) : [];
  state.times = q.has("N") ? Number(q.get("N")) : 100;
  state.draw = q.get("draw") === "1";
  state.rollouts = q.get("ro") === "1";
  state.beams = q.get("bm") === "1";
  state.reward = q.get("rw") || "";
  state.episode = Number(q.get("ep") || 0);
}
function writeHash() {
  const q = new URLSearchParams();
  q.set("prompt", state.prompt);
  for (const [key, short] of SETTINGS) q.set(short, String(state.settings[key]));
  if (state.path.length) q.set("path", state.path.join(","));
  if (state.tree.length) q.set("tree", state.tree.map((p) => p.join(",")).join(";"));
  q.set("N", String(state.times));
  if (state.draw) q.set("draw", "1");
  if (state.rollouts) q.set("ro", "1");
  if (state.beams) q.set("bm", "1");
  if (state.reward) q.set("rw", state.reward);
  if (state.episode) q.set("ep", String(state.episode));
  history.replaceState(null, "", "#" + q.toString());
  written = location.hash;
}
let written = null;  // the hash this page wrote last: any other one is a link to follow

// -- the API -----------------------------------------------------------------------------------------------------
async function api(path, body) {
  const r = await fetch(path, { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) });
  const data = await r.json().catch(() => ({ error: `HTTP ${r.status}` }));
  if (!r.ok) throw new Error(data.error || `HTTP ${r.status}`);
  return data;
}
function showError(e) { const el = $("error"); el.textContent = e ? String(e.message || e) : ""; el.hidden = !e; }

// one request per kind in flight; a newer request for the same kind supersedes an older one's answer
const seq = {};
async function latest(kind, path, body) {
  const my = (seq[kind] = (seq[kind] || 0) + 1);
  const data = await api(path, body);
  return my === seq[kind] ? data : null;
}

// -- text of tokens ----------------------------------------------------------------------------------------------
function visible(s) { return s.replace(/\n/g, "↵").replace(/\t/g, "⇥").replace(/^ /, "␣"); }

// -- settings panel ------------------------------------------------------------------------------------------------
function buildSettings() {
  const box = $("settings");
  for (const [key, , min, max, step, , label] of SETTINGS) {
    const row = document.createElement("div");
    row.className = "setting";
    row.innerHTML = `<label for="s-${key}">${label}</label>` +
      `<input type="range" id="s-${key}" min="${min}" max="${max}" step="${step}">` +
      `<input type="number" id="n-${key}" min="${min}" step="${step}" aria-label="${label}">`;
    box.appendChild(row);
    const slider = row.children[1], num = row.children[2];
    slider.value = num.value = state.settings[key];
    const set = (v) => { state.settings[key] = Number(v); settingsChanged(); };
    slider.addEventListener("input", () => { num.value = slider.value; set(slider.value); });
    num.addEventListener("change", () => { slider.value = num.value; set(num.value); });
  }
}
let settingsTimer = null;
function settingsChanged() {
  writeHash();
  refreshStep();
  clearTimeout(settingsTimer);  // the heavier panels follow once the slider rests
  settingsTimer = setTimeout(refreshPanels, 400);
}

// -- the step view -------------------------------------------------------------------------------------------------
function stepBody(extra) {
  return Object.assign({ prompt: state.prompt, path: state.path, settings: state.settings }, extra || {});
}
async function refreshStep() {
  try {
    const data = await latest("step", "/api/step", stepBody({ top: 12, tree: state.tree }));
    if (!data) return;
    lastStep = data;
    showError(null);
    drawContext(data);
    if (state.draw) await refreshDraw(); else { lastDraw = null; drawBars(); }
    drawTree();
  } catch (e) { showError(e); }
}
async function refreshDraw() {
  const data = await latest("draw", "/api/draw", stepBody({ times: state.times }));
  if (!data) return;
  lastDraw = data;
  $("draw-info").textContent = `${data.times} draws, seeds ${data.seeds[0]}…${data.seeds[1]} at t=${data.t}`;
  drawBars();
}

function drawContext(d) {
  $("t").textContent = d.t;
  $("label").textContent = `${d.label} · kept ${d.kept.toLocaleString()} of ${d.vocab.toLocaleString()} tokens · seed ω=${d.seed}` +
    (d.cached ? " · logits cached" : "") +
    (d.past_max_new_tokens ? ` · t ≥ max new tokens: a rollout ends before this step` : "") +
    (d.stop ? " · the drawn token ends the rollout" : "");
  const box = $("context");
  box.textContent = "";
  const p = document.createElement("span");
  p.className = "prompt";
  p.textContent = state.prompt;
  p.title = "the prompt: click to go back to t = 0";
  p.onclick = () => goTo([]);
  box.appendChild(p);
  d.context.forEach((tok, i) => {
    const s = document.createElement("span");
    s.className = "tok";
    s.textContent = tok.text;
    s.title = `t=${i}: token ${tok.id} — click to go back to just before it`;
    s.onclick = () => goTo(state.path.slice(0, i));
    box.appendChild(s);
  });
}

function el(name, attrs, text) {
  const e = document.createElementNS(SVG, name);
  for (const k in attrs) e.setAttribute(k, attrs[k]);
  if (text !== undefined) e.textContent = text;
  return e;
}
const pct = (p) => (p >= 0.995 ? (100 * p).toFixed(0) : p >= 0.0995 ? (100 * p).toFixed(1) : (100 * p).toPrecision(2)) + "%";

function drawBars() {
  const d = lastStep, svg = $("bars");
  if (!d) return;
  svg.textContent = "";
  const freq = {};
  if (lastDraw) for (const c of lastDraw.counts) freq[c.id] = c.freq;
  const labelW = 150, barW = 300, gap = 70, rowH = 24, top = 22;
  const width = labelW + 2 * barW + gap + 120;  // room for a full-scale bar's label, then the draws' column
  // both panels share one scale, the largest number shown, so small probabilities stay visible and comparable
  const peak = Math.max(1e-9, ...d.bars.map((b) => Math.max(b.p_raw, b.kept ? b.p : 0, freq[b.id] || 0)));
  const w = (p) => Math.max(1, barW * p / peak);
  svg.setAttribute("width", width);
  svg.setAttribute("height", top + rowH * d.bars.length + 8);
  svg.appendChild(el("text", { x: labelW, y: 14, "font-weight": "bold" }, "model's own π(·|context)" + ` · bars scaled to ${pct(peak)}`));
  svg.appendChild(el("text", { x: labelW + barW + gap, y: 14, "font-weight": "bold" },
    "processed: drawn from" + (lastDraw ? ` · outline: ${lastDraw.times} draws` : "")));
  d.bars.forEach((b, i) => {
    const y = top + i * rowH, drawn = b.id === d.drawn.id;
    const g = el("g", { class: "bar-row", "data-id": b.id, "data-p": b.p.toFixed(6), "data-praw": b.p_raw.toFixed(6),
      "data-kept": b.kept ? "1" : "0", "data-drawn": drawn ? "1" : "0" });
    g.appendChild(el("rect", { class: "bg", x: 0, y: y, width: width, height: rowH - 2, fill: drawn ? "#ffe9bf" : "transparent", rx: 3 }));
    g.appendChild(el("text", { x: labelW - 8, y: y + 16, "text-anchor": "end", fill: b.kept ? "#1d2330" : "#a0a4ad",
      "text-decoration": b.kept ? "none" : "line-through" }, JSON.stringify(visible(b.text)).slice(1, -1)));
    g.appendChild(el("rect", { x: labelW, y: y + 4, width: w(b.p_raw), height: rowH - 10, fill: "#9aa3b5" }));
    g.appendChild(el("text", { x: labelW + w(b.p_raw) + 4, y: y + 16, fill: "#555" }, pct(b.p_raw)));
    const x2 = labelW + barW + gap;
    if (b.kept) {
      g.appendChild(el("rect", { x: x2, y: y + 4, width: w(b.p), height: rowH - 10, fill: drawn ? "#e8890c" : "#3b6fd8" }));
      g.appendChild(el("text", { x: x2 + w(b.p) + 4, y: y + 16, fill: "#1d2330" }, pct(b.p)));
    } else {
      g.appendChild(el("text", { x: x2, y: y + 16, fill: "#a0a4ad" }, b.masked ? "masked (min new tokens)" : "cut: outside the kept set"));
    }
    if (b.id in freq) {  // the empirical frequency, laid over the processed bar
      g.appendChild(el("rect", { class: "freq", x: x2, y: y + 1, width: Math.max(2, w(freq[b.id])), height: rowH - 4, fill: "none", stroke: "#111", "stroke-width": 1.5 }));
      g.appendChild(el("text", { x: x2 + barW + 110, y: y + 16, fill: "#111", "text-anchor": "end", "font-weight": "bold" }, pct(freq[b.id])));
    }
    if (drawn) g.appendChild(el("text", { x: 4, y: y + 16, fill: "#b35f00", "font-weight": "bold" }, "drawn ▶"));
    const tip = el("title", {}, `token ${b.id} ${JSON.stringify(b.text)}: raw ${pct(b.p_raw)}, processed ${pct(b.p)}` +
      (b.id in freq ? `, drawn ${pct(freq[b.id])} of ${lastDraw.times}` : "") + " — click to take it");
    g.appendChild(tip);
    g.addEventListener("click", () => take(b.id));
    svg.appendChild(g);
  });
}

// -- stepping and branching ----------------------------------------------------------------------------------------
function isPrefix(a, b) { return a.length <= b.length && a.every((x, i) => x === b[i]); }
function take(id) {
  const path = state.path.concat([id]);
  state.tree = state.tree.filter((p) => !isPrefix(p, path)).concat([path]);
  goTo(path);
}
function goTo(path) {
  state.path = path;
  writeHash();
  refreshStep();
}

// -- trees (paths taken; rollouts) ---------------------------------------------------------------------------------
// nodes: Map key "1,2,3" -> {path, text, p}; laid out left to right, one column per token
function drawTrie(svg, paths, edgeInfo, opts) {
  svg.textContent = "";
  const root = { key: "", children: new Map(), path: [] };
  for (const p of paths) {
    let node = root;
    p.forEach((tok, i) => {
      if (!node.children.has(tok)) node.children.set(tok, { key: p.slice(0, i + 1).join(","), children: new Map(), path: p.slice(0, i + 1), tok });
      node = node.children.get(tok);
    });
  }
  const colW = opts.colW || 170, rowH = 24, rootW = 64, labelChars = 12;
  let row = 0;
  const place = (n, depth) => {
    n.depth = depth;
    const kids = [...n.children.values()];
    if (!kids.length) { n.row = row++; return; }
    kids.forEach((k) => place(k, depth + 1));
    n.row = (kids[0].row + kids[kids.length - 1].row) / 2;
  };
  place(root, 0);
  let maxDepth = 0;
  const all = [];
  const walk = (n) => { all.push(n); maxDepth = Math.max(maxDepth, n.depth); n.children.forEach(walk); };
  walk(root);
  svg.setAttribute("width", rootW + colW * maxDepth + 20);
  svg.setAttribute("height", Math.max(1, row) * rowH + 10);
  // a node: its token's text at X; the edge into it ends 50 px before X, where its probability is written
  const X = (n) => (n.depth ? rootW + (n.depth - 1) * colW + 56 : 6), Y = (n) => 16 + n.row * rowH;
  const labelOf = (n) => {
    const s = n.depth ? JSON.stringify(visible(opts.text(n))).slice(1, -1) : "prompt";
    return s.length > labelChars ? s.slice(0, labelChars - 1) + "…" : s;
  };
  for (const n of all) for (const k of n.children.values()) {
    const on = opts.current && isPrefix(k.path, opts.current);
    const x1 = X(n) + 7.3 * labelOf(n).length + 4, y1 = Y(n) - 4, x2 = X(k) - 50, y2 = Y(k) - 4;
    svg.appendChild(el("path", { class: "edge", d: `M${x1},${y1} C${(x1 + x2) / 2},${y1} ${(x1 + x2) / 2},${y2} ${x2},${y2}`,
      fill: "none", stroke: on ? "#e8890c" : "#9aa3b5", "stroke-width": on ? 2.5 : 1.2 }));
    const info = edgeInfo(k.path);
    if (info !== undefined) svg.appendChild(el("text", { x: X(k) - 6, y: Y(k), "text-anchor": "end", fill: "#3b6fd8", "font-size": 11 }, pct(info)));
  }
  for (const n of all) {
    const on = opts.current && n.depth && isPrefix(n.path, opts.current);
    const t = el("text", { class: n.depth ? "node" : "root", x: X(n), y: Y(n), fill: on ? "#b35f00" : "#1d2330",
      "font-weight": on || !n.depth ? "bold" : "normal", "data-path": n.path.join(",") }, labelOf(n));
    t.appendChild(el("title", {}, n.depth ? `token ${n.tok}: click to go to this path` : "the prompt"));
    if (opts.onClick) { t.style.cursor = "pointer"; t.addEventListener("click", () => opts.onClick(n.path)); }
    svg.appendChild(t);
  }
}
const tokenText = {};  // id -> text, learned from the server's answers
function remember(id, text) { tokenText[id] = text; }
function drawTree() {
  const d = lastStep;
  if (!d) return;
  d.bars.forEach((b) => remember(b.id, b.text));
  d.context.forEach((c) => remember(c.id, c.text));
  const probs = {};
  for (const e of d.edges || []) probs[e.path.join(",")] = e.p;
  drawTrie($("tree"), state.tree.length ? state.tree : [state.path], (p) => probs[p.join(",")],
    { current: state.path, text: (n) => tokenText[n.tok] ?? String(n.tok), onClick: goTo });
}

// -- rollouts, beams, rewards --------------------------------------------------------------------------------------
function escapeHtml(s) { return s.replace(/[&<>"]/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;" }[c])); }
async function refreshRollouts() {
  const data = await latest("rollouts", "/api/rollouts", { prompt: state.prompt, settings: state.settings });
  if (!data) return;
  lastRollouts = data;
  $("rollouts-card").hidden = false;
  $("rollouts-label").textContent = data.label;
  const rows = data.rollouts.map((r) => {
    const toks = r.tokens.map((id, i) => {
      const p = Math.exp(r.logprobs[i]);
      return `<span style="background: rgba(59,111,216,${(0.08 + 0.5 * (1 - p)).toFixed(2)})" title="token ${id}: log-prob ${r.logprobs[i].toFixed(3)} (processed), ${r.model_logprobs[i].toFixed(3)} (model)">${escapeHtml(visible(r.texts[i]))}</span>`;
    }).join("");
    return `<tr class="rollout" data-seed="${r.seed}" data-tokens="${r.tokens.join(",")}" data-logprobs="${r.logprobs.map((x) => x.toFixed(6)).join(",")}">` +
      `<td class="num">${r.index}</td><td class="num">${r.seed ?? "—"}</td><td class="num">${r.model_logprob.toFixed(2)}</td>` +
      `<td class="num">${r.logprob.toFixed(2)}</td><td>${r.finish_reason}</td><td class="toks">${toks}</td></tr>`;
  }).join("");
  $("rollouts").innerHTML = `<table><tr><th>#</th><th>seed</th><th title="sum of the model's log-probs">log π(y|x)</th>` +
    `<th title="sum of the processed log-probs: the behaviour policy that drew them">Σ log-prob (drawn)</th><th>end</th>` +
    `<th>completion (darker: less likely; hover for log-probs)</th></tr>${rows}</table>`;
  const probs = {};
  for (const r of data.rollouts) r.tokens.forEach((id, i) => { remember(id, r.texts[i]); probs[r.tokens.slice(0, i + 1).join(",")] = Math.exp(r.logprobs[i]); });
  drawTrie($("rollout-tree"), data.rollouts.map((r) => r.tokens.slice(0, 8)), (p) => probs[p.join(",")],
    { colW: 150, text: (n) => tokenText[n.tok] ?? String(n.tok) });
  if (state.reward) await refreshRewards();
}
async function refreshBeams() {
  const data = await latest("beams", "/api/beams", { prompt: state.prompt, settings: state.settings });
  if (!data) return;
  $("beams-card").hidden = false;
  const steps = data.steps.map((row, t) => `<tr><td class="num">${t + 1}</td><td>` + row.map((b) =>
    `<span class="tk">${escapeHtml(visible(b.text))}</span> <span class="muted">(${b.score.toFixed(2)})</span>`).join(" · ") + "</td></tr>").join("");
  const finals = data.beams.map((b, i) => `<tr class="beam"><td class="num">${i}</td><td class="num">${b.score.toFixed(3)}</td>` +
    `<td>${b.finish_reason}</td><td class="tk">${escapeHtml(visible(b.text))}</td></tr>`).join("");
  $("beams").innerHTML = `<table><tr><th>final</th><th title="sum of log-probs / length">score</th><th>end</th><th>beam</th></tr>${finals}</table>` +
    `<details><summary>running beams at each step (running score = sum of log-probs)</summary><table><tr><th>t</th><th>beams</th></tr>${steps}</table></details>`;
}
async function refreshRewards() {
  if (!lastRollouts) { state.rollouts = true; return refreshRollouts(); }
  const data = await latest("rewards", "/api/rewards", { prompt: state.prompt, reward: state.reward, episode: state.episode,
    rollouts: lastRollouts.rollouts.map((r) => ({ tokens: r.tokens, logprobs: r.logprobs, model_logprobs: r.model_logprobs, seed: r.seed, finish_reason: r.finish_reason })) });
  if (!data) return;
  $("rewards-card").hidden = false;
  const fmt = (x, k) => (x === null || x === undefined ? "—" : x.toFixed(k));
  $("rewards").innerHTML = `<table><tr><th>#</th><th>seed</th><th>reward (${escapeHtml(data.reward)})</th><th>advantage</th><th>completion</th></tr>` +
    data.rollouts.map((r) => `<tr class="clickable${r.index === data.episode ? " picked" : ""}" data-episode="${r.index}"><td class="num">${r.index}</td>` +
      `<td class="num">${r.seed ?? "—"}</td><td class="num">${fmt(r.reward, 2)}</td><td class="num">${fmt(r.advantage, 3)}</td>` +
      `<td class="tk">${escapeHtml(visible(r.text))}</td></tr>`).join("") + "</table>";
  for (const tr of $("rewards").querySelectorAll("tr[data-episode]")) {
    tr.onclick = () => { state.episode = Number(tr.dataset.episode); writeHash(); refreshRewards().catch(showError); };
  }
  $("rlview").innerHTML = `<div class="title"><span>RL view of rollout ${data.episode}: state s<sub>t</sub>, action a<sub>t</sub>, log π(a<sub>t</sub>|s<sub>t</sub>), reward</span></div>` +
    `<div class="scroll"><table><tr><th>t</th><th>state (its end)</th><th>action</th><th>log-prob</th><th>reward</th><th>advantage</th></tr>` +
    data.transitions.map((s) => `<tr><td class="num">${s.t}</td><td class="tk">…${escapeHtml(visible(s.state.slice(-40)))}</td>` +
      `<td class="tk">${escapeHtml(JSON.stringify(visible(s.action_text)))}</td><td class="num">${fmt(s.logprob, 3)}</td>` +
      `<td class="num">${fmt(s.reward, 2)}</td><td class="num">${fmt(s.advantage, 3)}</td></tr>`).join("") + "</table></div>";
}
async function refreshPanels() {
  try {
    if (state.rollouts) await refreshRollouts();
    if (state.beams) await refreshBeams();
  } catch (e) { showError(e); }
}

// -- wiring --------------------------------------------------------------------------------------------------------
function wire() {
  const prompt = $("prompt");
  prompt.value = state.prompt;
  let timer = null;
  prompt.addEventListener("input", () => {
    clearTimeout(timer);
    timer = setTimeout(() => {
      state.prompt = prompt.value; state.path = []; state.tree = []; lastRollouts = null;
      writeHash(); refreshStep(); refreshPanels();
    }, 300);
  });
  $("times").value = state.times;
  $("times").addEventListener("change", () => { state.times = Number($("times").value); writeHash(); if (state.draw) refreshDraw().catch(showError); });
  $("reward").value = state.reward;
  $("btn-back").onclick = () => goTo(state.path.slice(0, -1));
  $("btn-step").onclick = () => lastStep && take(lastStep.drawn.id);
  $("btn-draw").onclick = () => { state.draw = true; state.times = Number($("times").value); writeHash(); refreshDraw().catch(showError); };
  $("btn-clear-tree").onclick = () => { state.tree = []; writeHash(); refreshStep(); };
  $("btn-rollouts").onclick = () => { state.rollouts = true; writeHash(); refreshRollouts().catch(showError); };
  $("btn-beams").onclick = () => { state.beams = true; writeHash(); refreshBeams().catch(showError); };
  $("btn-rewards").onclick = () => {
    state.reward = $("reward").value.trim() || "python_compiles"; $("reward").value = state.reward;
    state.rollouts = true; writeHash(); refreshRewards().catch(showError);
  };
}

function syncControls() {
  for (const [key] of SETTINGS) $("s-" + key).value = $("n-" + key).value = state.settings[key];
  $("prompt").value = state.prompt;
  $("times").value = state.times;
  $("reward").value = state.reward;
}
window.addEventListener("hashchange", () => {
  if (location.hash === written) return;
  readHash();
  syncControls();
  lastRollouts = null;
  for (const id of ["rollouts-card", "beams-card", "rewards-card"]) $(id).hidden = true;
  writeHash();
  refreshStep().then(refreshPanels);
});

async function start() {
  readHash();
  buildSettings();
  wire();
  writeHash();
  fetch("/api/info").then((r) => r.json()).then((i) => { $("model").textContent = `model: ${i.model} (context ${i.context})`; }).catch(() => {});
  await refreshStep();
  await refreshPanels();
}
start();
