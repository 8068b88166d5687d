// capsgen explore: the page. It asks /api/describe what the run can show and builds only that.
// State lives in window.capsgenExplorer; `shown` holds the capsule values of the decoded image on
// screen (a test compares that image with the model's own decoding of those values).
"use strict";

const state = {desc: null, poses: null, active: null, edit: 0, a: null, b: null,
               inflight: false, pending: false, shown: null, decodes: 0};
window.capsgenExplorer = state;
const $ = (id) => document.getElementById(id);

function showError(message) {
  const el = $("error");
  el.textContent = message;
  el.hidden = !message;
}

async function api(name, body) {
  const response = await fetch("/api/" + name, body === undefined ? {} : {
    method: "POST", headers: {"Content-Type": "application/json"}, body: JSON.stringify(body)});
  const answer = await response.json();
  if (!response.ok) throw new Error(answer.error || response.statusText);
  showError("");
  return answer;
}

function option(select, value, text) {
  const o = document.createElement("option");
  o.value = value;
  o.textContent = text;
  select.appendChild(o);
}

function clip(v) {
  const b = state.desc.layout.bound;
  return Math.max(-b, Math.min(b, v));
}

// ------------------------------------------------------------------------------ capsules
function activeIndices() {
  return state.active.map((on, k) => on ? k : -1).filter((k) => k >= 0);
}

function scheduleDecode() {
  if (state.inflight) { state.pending = true; return; }
  state.inflight = true;
  const values = {poses: state.poses.map((row) => row.slice()), active: state.active.slice()};
  api("decode", values).then((answer) => {
    $("decoded-image").src = answer.image;
    state.shown = values;
    state.decodes += 1;
  }).catch((e) => showError(e.message)).finally(() => {
    state.inflight = false;
    if (state.pending) { state.pending = false; scheduleDecode(); }
  });
}

function buildSliders() {
  const layout = state.desc.layout, box = $("sliders");
  box.innerHTML = "";
  const edit = $("edit-select"), actives = activeIndices();
  edit.innerHTML = "";
  actives.forEach((k) => option(edit, k, layout.names[k]));
  if (!actives.includes(state.edit)) state.edit = actives[0];
  edit.value = state.edit;
  $("edit-choice").hidden = actives.length < 2;
  for (let d = 0; d < layout.dim; d++) {
    const label = document.createElement("label"), input = document.createElement("input");
    const out = document.createElement("output");
    input.type = "range";
    input.min = -layout.bound; input.max = layout.bound; input.step = layout.bound / 100;
    input.value = clip(state.poses[state.edit][d]);
    input.dataset.dim = d;
    out.textContent = Number(state.poses[state.edit][d]).toFixed(2);
    input.addEventListener("input", () => {
      state.poses[state.edit][d] = parseFloat(input.value);
      out.textContent = parseFloat(input.value).toFixed(2);
      scheduleDecode();
    });
    label.append("dim " + d, input, out);
    box.appendChild(label);
  }
}

function buildActiveControls() {
  const layout = state.desc.layout, box = $("active-controls");
  box.innerHTML = "";
  if (state.desc.explorable.includes("capsule-sampling")) return;   // the capsule select decides
  if (layout.pairs) {
    for (let a = 0; a < layout.names.length / 2; a++) {
      const label = document.createElement("label"), box2 = document.createElement("input");
      box2.type = "checkbox";
      box2.checked = state.active[2 * a + 1];
      box2.addEventListener("change", () => {
        state.active[2 * a] = !box2.checked;
        state.active[2 * a + 1] = box2.checked;
        buildSliders(); scheduleDecode();
      });
      label.append(box2, layout.names[2 * a].replace(/=0$/, ""));
      box.appendChild(label);
    }
  } else {
    const label = document.createElement("label"), select = document.createElement("select");
    select.id = "active-select";
    layout.names.forEach((name, k) => option(select, k, name));
    select.value = activeIndices()[0];
    select.addEventListener("change", () => {
      state.active = state.active.map((_, k) => k === Number(select.value));
      state.edit = Number(select.value);
      buildSliders(); drawRouting(); drawScores(); scheduleDecode();
    });
    label.append("decode capsule ", select);
    box.appendChild(label);
  }
}

function drawScores() {
  const box = $("scores"), enc = state.a;
  $("scores-figure").hidden = !enc;
  if (!enc) return;
  box.innerHTML = "";
  const names = state.desc.layout.names, lo = Math.min(...enc.scores), hi = Math.max(...enc.scores);
  const lengths = state.desc.explorable.includes("routing-maps") || lo >= 0;
  $("scores-caption").textContent = lengths ? "capsule lengths" : "scores (-KL)";
  enc.scores.forEach((s, k) => {
    const row = document.createElement("div"), name = document.createElement("span");
    const fill = document.createElement("span"), value = document.createElement("span");
    row.className = "bar" + (state.active[k] ? " active" : "");
    name.className = "name"; name.textContent = names[k];
    fill.className = "fill";
    const share = lengths ? s : (hi > lo ? (s - lo) / (hi - lo) : 1);
    fill.style.width = (Math.max(0, share) * 9) + "em";
    value.textContent = s.toFixed(3);
    row.append(name, fill, value);
    box.appendChild(row);
  });
}

function drawRouting() {
  const enc = state.a, fig = $("routing-figure");
  fig.hidden = !(enc && enc.routing);
  if (fig.hidden) return;
  const map = enc.routing[activeIndices()[0]], h = map.length, w = map[0].length;
  const canvas = $("routing-map"), ctx = canvas.getContext("2d");
  const flat = map.flat(), lo = Math.min(...flat), hi = Math.max(...flat);
  for (let y = 0; y < h; y++) for (let x = 0; x < w; x++) {
    const v = hi > lo ? (map[y][x] - lo) / (hi - lo) : 0.5;
    ctx.fillStyle = `rgb(${Math.round(255 * v)}, ${Math.round(80 + 100 * v)}, ${Math.round(255 * (1 - v))})`;
    ctx.fillRect(x * canvas.width / w, y * canvas.height / h, canvas.width / w + 1, canvas.height / h + 1);
  }
}

function takeValues(poses, active) {
  state.poses = poses.map((row) => row.slice());
  state.active = active.slice();
  state.edit = activeIndices()[0];
  buildActiveControls(); buildSliders(); drawScores(); drawRouting();
}

async function encode() {
  const answer = await api("encode", {index: Number($("image-index").value)});
  state.a = answer;
  $("source-figure").hidden = false;
  $("source-image").src = answer.image;
  $("source-caption").textContent = "test image " + answer.index +
    (answer.label !== null && state.desc.classes ? " (" + state.desc.classes[answer.label] + ")" : "");
  takeValues(answer.poses, answer.active);
  $("decoded-image").src = answer.decoded;
  state.shown = {poses: answer.poses, active: answer.active};
  $("interp").value = 0;
}

async function prior() {
  const body = {seed: Number($("prior-seed").value)};
  if (state.desc.explorable.includes("capsule-sampling")) {
    body.capsule = Number($("capsule-select").value);
    body.domain = $("domain-select").value;
  } else {
    body.active = state.active;
  }
  const answer = await api("prior", body);
  state.a = null;
  $("source-figure").hidden = true;
  takeValues(answer.poses, answer.active);
  $("decoded-image").src = answer.image;
  state.shown = {poses: answer.poses, active: answer.active};
}

async function encodeB() {
  state.b = await api("encode", {index: Number($("image-b").value)});
  $("interp").disabled = !state.a;
}

function swapAttribute() {
  const a = Number($("swap-select").value), b = state.b;
  if (!b) return showError("encode the second test image first");
  for (const k of [2 * a, 2 * a + 1]) {
    state.poses[k] = b.poses[k].slice();
    state.active[k] = b.active[k];
  }
  buildActiveControls(); buildSliders(); scheduleDecode();
}

function interpolate() {
  const t = parseFloat($("interp").value), a = state.a, b = state.b;
  if (!a || !b) return;
  // Masked capsules interpolate linearly (Huang et al. fig. 7); where the two images' active
  // capsules differ, the page switches from A's to B's at t = 1/2.
  const poses = a.poses.map((row, k) => row.map((v, d) => (1 - t) * v + t * b.poses[k][d]));
  takeValues(poses, t < 0.5 ? a.active : b.active);
  scheduleDecode();
}

function setUpCapsules(desc) {
  const ex = desc.explorable, layout = desc.layout;
  $("capsules").hidden = false;
  state.active = layout.names.map((_, k) => layout.pairs ? k % 2 === 0 : k === 0);
  state.poses = layout.names.map(() => new Array(layout.dim).fill(0));
  const canEncode = ex.includes("encode-poses") && desc.test_images > 0;
  $("encode-controls").hidden = !canEncode;
  $("image-index").max = desc.test_images - 1;
  $("image-b").max = desc.test_images - 1;
  $("encode").addEventListener("click", () => encode().catch((e) => showError(e.message)));
  const canPrior = ex.includes("pose-prior") || ex.includes("capsule-sampling");
  $("prior-controls").hidden = !canPrior;
  if (ex.includes("capsule-sampling")) {
    $("capsule-choice").hidden = false;
    $("domain-choice").hidden = false;
    for (let j = 0; j < desc.capsules; j++) option($("capsule-select"), j, layout.names[j]);
  }
  $("prior").addEventListener("click", () => prior().catch((e) => showError(e.message)));
  $("edit-select").addEventListener("change", () => { state.edit = Number($("edit-select").value); buildSliders(); });
  if (canEncode) {
    $("pair-tools").hidden = false;
    $("encode-b").addEventListener("click", () => encodeB().catch((e) => showError(e.message)));
    $("interp").addEventListener("input", interpolate);
    if (layout.pairs) {
      $("swap-tools").hidden = false;
      for (let a = 0; a < layout.names.length / 2; a++) option($("swap-select"), a, layout.names[2 * a].replace(/=0$/, ""));
      $("swap").addEventListener("click", swapAttribute);
    }
  }
  buildActiveControls(); buildSliders();
  (canEncode ? encode() : canPrior ? prior() : Promise.resolve(scheduleDecode())).catch((e) => showError(e.message));
}

// ------------------------------------------------------------------------------ latents
async function walkImage() {
  const body = {seed_a: Number($("seed-a").value), seed_b: Number($("seed-b").value),
                t: [parseFloat($("walk-t").value)]};
  if (state.desc.walk_classes) body.label = Number($("walk-label").value);
  const answer = await api("walk", body);
  $("walk-image").src = answer.images[0];
  $("walk-caption").textContent = "t = " + body.t[0].toFixed(2) +
    (answer.p_real ? ", discriminator P(real) = " + answer.p_real[0].toFixed(3) : "");
}

async function walkStrip() {
  const body = {seed_a: Number($("seed-a").value), seed_b: Number($("seed-b").value),
                t: Array.from({length: 8}, (_, k) => k / 7)};
  if (state.desc.walk_classes) body.label = Number($("walk-label").value);
  const answer = await api("walk", body), strip = $("walk-strip");
  strip.innerHTML = "";
  answer.images.forEach((src, k) => {
    const img = document.createElement("img");
    img.src = src;
    img.title = "t = " + body.t[k].toFixed(2) + (answer.p_real ? ", P(real) = " + answer.p_real[k].toFixed(3) : "");
    strip.appendChild(img);
  });
}

function setUpLatents(desc) {
  $("latents").hidden = false;
  if (desc.walk_classes) {
    $("walk-class").hidden = false;
    desc.walk_classes.forEach((name, k) => option($("walk-label"), k, name));
  }
  const redraw = () => Promise.all([walkImage(), walkStrip()]).catch((e) => showError(e.message));
  for (const id of ["seed-a", "seed-b", "walk-label"]) $(id).addEventListener("change", redraw);
  $("walk-t").addEventListener("input", () => walkImage().catch((e) => showError(e.message)));
  redraw();
}

// ------------------------------------------------------------------------------ start
const CANNOT = [
  ["decode-poses", "decode capsule values (no decoder over capsules)"],
  ["encode-poses", "encode test images into capsules"],
  ["routing-maps", "show per-image routing coefficients"],
  ["latent-walk", "walk between generator latents (no generator)"],
];

async function start() {
  const desc = await api("describe");
  state.desc = desc;
  $("run-facts").textContent = `${desc.family} run ${desc.run} (${desc.data}, ${desc.shape.join("x")}, ` +
    `checkpoint ${desc.checkpoint}); it can: ${desc.capabilities.join(", ") || "nothing beyond training"}`;
  const list = $("cannot-list");
  for (const [name, text] of CANNOT) {
    if (!desc.explorable.includes(name)) {
      const li = document.createElement("li");
      li.textContent = "This run cannot " + text + ".";
      list.appendChild(li);
    }
  }
  if (desc.explorable.includes("encode-poses") && !desc.test_images) {
    const li = document.createElement("li");
    li.textContent = "No test images to pick: " + desc.test_problem;
    list.appendChild(li);
  }
  if (desc.explorable.includes("decode-poses")) setUpCapsules(desc);
  if (desc.explorable.includes("latent-walk")) setUpLatents(desc);
  document.body.dataset.ready = "1";
}

start().catch((e) => showError(e.message));
