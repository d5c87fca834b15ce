// banger web: the page over the JSON API (docs/web.md). No framework, no other host.
"use strict";

const $ = (id) => document.getElementById(id);
// One colour per instrument category (index of /api/instruments; 11 is drums).
const COLOURS = ["#4dabf7", "#b197fc", "#f783ac", "#ff922b", "#51cf66", "#ffd43b",
                 "#ff6b6b", "#3bc9db", "#e599f7", "#748ffc", "#a9e34b", "#ced4da"];
const state = { instruments: [], prompt: null, busy: false };

init();

async function init() {
  try {
    const listing = await api("GET", "/api/instruments");
    state.instruments = listing.instruments;
    fillInstruments(listing.instruments);
    $("variants").max = listing.limits.variants;
    $("length").max = listing.limits.bars;
  } catch (err) {
    showError(err.message);
  }
  $("controls").addEventListener("submit", (event) => {
    event.preventDefault();
    generate(readOptions());
  });
  $("random").addEventListener("change", () => {  // a fixed seed starts from the last one used
    $("seed").disabled = $("random").checked;
    if (!$("random").checked && $("seed").value === "" && state.lastSeed !== undefined) {
      $("seed").value = state.lastSeed;
    }
  });
  $("temperature").addEventListener("input", () => {
    $("temperature-value").textContent = Number($("temperature").value).toFixed(2);
  });
  $("unit").addEventListener("change", () => {
    const bars = $("unit").value === "bars";
    $("length").value = bars ? 8 : 512;
  });
  $("lead").addEventListener("change", syncLead);
  $("file").addEventListener("change", upload);
  $("prompt-clear").addEventListener("click", clearPrompt);
  for (const radio of document.querySelectorAll("input[name=mode]")) {
    radio.addEventListener("change", showMode);
  }
  showMode();
}

function fillInstruments(instruments) {
  for (const inst of instruments.filter((i) => !i.drums)) {
    const option = document.createElement("option");
    option.value = inst.name;
    option.textContent = inst.name;
    $("lead").append(option);
    const label = document.createElement("label");
    const box = Object.assign(document.createElement("input"),
                              { type: "checkbox", name: "more", value: inst.name });
    const text = Object.assign(document.createElement("span"), { textContent: inst.name });
    label.append(box, text);
    $("more").append(label);
  }
}

function syncLead() {  // the main instrument cannot also be one of "more"
  for (const box of document.querySelectorAll("input[name=more]")) {
    box.disabled = box.value === $("lead").value;
    if (box.disabled) box.checked = false;
  }
}

// --- the request --------------------------------------------------------------------------

function readOptions() {
  const number = (id) => ($(id).value.trim() === "" ? null : Number($(id).value));
  const lead = $("lead").value;
  const more = [...document.querySelectorAll("input[name=more]:checked")].map((b) => b.value);
  const drums = document.querySelector("input[name=drums]:checked").value;
  const options = {
    instruments: lead ? [lead, ...more] : more,
    only: $("only").checked,
    drums: drums === "auto" ? null : drums === "on",
    variants: number("variants") ?? 1,
    temperature: Number($("temperature").value),
    top_p: number("top-p") ?? 0.95,
    top_k: number("top-k") ?? 0,
    echo: number("echo") ?? 0.6,
    seed: $("random").checked ? null : number("seed"),
  };
  options[$("unit").value] = number("length");
  if (number("bpm") !== null) options.bpm = number("bpm");
  if (state.prompt) {
    options.prompt = state.prompt.url;
    options.prompt_bars = number("prompt-bars");
    const mode = document.querySelector("input[name=mode]:checked").value;
    if (mode !== "continue") {  // the parts chosen above are the ones added or rewritten
      const parts = [...options.instruments, ...(options.drums ? ["drums"] : [])];
      delete options.tokens;
      Object.assign(options, { instruments: [], only: false, drums: null, bars: 0 });
      if (mode === "add") options.add = parts;
      else Object.assign(options, { instruments: parts, rewrite: [number("rewrite-from"), number("rewrite-to")] });
    }
  }
  return options;
}

const MODE_HINTS = {
  continue: "New bars follow the ones kept.",
  add: "The instruments chosen above (and drums when on) play along with every note of the file, for its whole length.",
  rewrite: "These bars are written anew for the instruments chosen above (none chosen: every part playing there); every other note is kept.",
};

function showMode() {
  const mode = document.querySelector("input[name=mode]:checked").value;
  $("mode-hint").textContent = MODE_HINTS[mode];
  $("rewrite-range").hidden = mode !== "rewrite";
}

async function generate(options) {
  if (state.busy) return;
  state.busy = true;
  showError(null);
  $("generate").disabled = true;
  const stopProgress = showProgress();
  try {
    const result = await api("POST", "/api/generate", options);
    const count = result.pieces.length;
    result.pieces.slice().reverse().forEach((piece, i) => addCard(piece, count - i, options));
    if (result.pieces.length) state.lastSeed = result.pieces[0].seed;
  } catch (err) {
    showError(err.message);
  } finally {
    stopProgress();
    $("generate").disabled = false;
    state.busy = false;
  }
}

function showProgress() {
  const started = performance.now();
  $("status").hidden = false;
  $("progress").removeAttribute("value");
  $("status-text").textContent = "Starting…";
  let stopped = false;
  const tick = async () => {
    if (stopped) return;
    const seconds = ((performance.now() - started) / 1000).toFixed(0);
    try {
      const p = await api("GET", "/api/progress");
      if (stopped) return;
      if (p.total > 0) {
        $("progress").max = p.total;
        $("progress").value = p.done;
      }
      const waiting = p.waiting > 0 ? ` (${p.waiting} waiting in the queue)` : "";
      $("status-text").textContent = `Generating… ${seconds} s${waiting}`;
    } catch (err) { /* the answer of the generate request says what went wrong */ }
    if (!stopped) setTimeout(tick, 500);
  };
  tick();
  return () => { stopped = true; $("status").hidden = true; };
}

// --- a MIDI file to continue ----------------------------------------------------------------

async function upload() {
  const file = $("file").files[0];
  if (!file) return;
  showError(null);
  const form = new FormData();
  form.append("file", file);
  try {
    const info = await api("POST", "/api/uploads", form);
    setPrompt(info, file.name);
  } catch (err) {
    clearPrompt();
    showError(`${file.name}: ${err.message}`);
  }
}

function setPrompt(info, name) {
  state.prompt = { url: info.prompt, bars: info.bars };
  const parts = [...info.instruments, ...(info.drums ? ["drums"] : [])].join(", ") || "no instruments";
  $("prompt-text").textContent = `${name}: ${info.bars} bars, ${parts}.`;
  $("prompt-bars").max = info.bars;
  $("rewrite-from").max = info.bars;
  $("rewrite-to").max = info.bars;
  $("prompt-bars").value = info.bars;
  $("prompt").hidden = false;
}

function clearPrompt() {
  state.prompt = null;
  $("file").value = "";
  $("prompt").hidden = true;
}

// --- results ----------------------------------------------------------------------------------

function addCard(piece, number, options) {
  const card = $("card").content.firstElementChild.cloneNode(true);
  const band = [...piece.instruments, ...(piece.drums ? ["drums"] : [])];
  const title = card.querySelector(".title");
  band.forEach((name, i) => {  // the names double as the piano roll's legend
    const index = state.instruments.findIndex((inst) => inst.name === name);
    const swatch = Object.assign(document.createElement("i"), { className: "swatch" });
    swatch.style.background = COLOURS[index] || "#888";
    const word = Object.assign(document.createElement("span"), { className: "name" });
    word.append(swatch, name);
    title.append(...(i ? [" + "] : []), word);
  });
  if (!band.length) title.textContent = "silence (no notes)";
  card.querySelector(".meta").textContent =
    `seed ${piece.seed} · take ${number} · ${piece.bars} bars · ${Math.round(piece.bpm)} bpm · ` +
    `${piece.notes.length} notes`;
  const audio = card.querySelector("audio");
  if (piece.audio) audio.src = piece.audio; else audio.remove();
  const link = card.querySelector("a.midi");
  link.href = piece.midi;
  link.download = piece.midi.split("/").pop();
  card.querySelector(".more").addEventListener("click", () => generate({ ...options, seed: null }));
  card.querySelector(".continue").addEventListener("click", () => {
    setPrompt({ prompt: piece.midi, bars: piece.bars, instruments: piece.instruments,
                drums: piece.drums }, `seed ${piece.seed}, take ${number}`);
    const next = { ...options, seed: null, prompt: piece.midi, prompt_bars: piece.bars };
    if (next.instruments.length === 0) next.instruments = piece.instruments;
    generate(next);
  });
  $("empty").hidden = true;
  $("results").prepend(card);
  const canvas = card.querySelector("canvas");
  drawRoll(canvas, piece);
  new ResizeObserver(() => drawRoll(canvas, piece)).observe(canvas);
}

function drawRoll(canvas, piece) {
  const ratio = window.devicePixelRatio || 1;
  const width = canvas.clientWidth, height = canvas.clientHeight;
  if (!width || !height) return;
  canvas.width = Math.round(width * ratio);
  canvas.height = Math.round(height * ratio);
  const ctx = canvas.getContext("2d");
  ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
  ctx.clearRect(0, 0, width, height);
  const seconds = Math.max(piece.seconds, 0.001);
  const x = (t) => (t / seconds) * width;
  const drumLane = piece.drums ? Math.round(height * 0.2) : 0;
  const melodic = piece.notes.filter((n) => n[3] !== 11);
  const pitches = melodic.map((n) => n[2]);
  const low = Math.min(...pitches, 60) - 2, high = Math.max(...pitches, 72) + 2;
  const rowHeight = (height - drumLane - 4) / (high - low + 1);
  ctx.strokeStyle = "rgba(255,255,255,0.12)";  // bar lines
  ctx.lineWidth = 1;
  const bar = (4 * 60) / piece.bpm;
  for (let t = bar; t < seconds - 1e-6; t += bar) {
    ctx.beginPath();
    ctx.moveTo(Math.round(x(t)) + 0.5, 0);
    ctx.lineTo(Math.round(x(t)) + 0.5, height);
    ctx.stroke();
  }
  if (drumLane) {
    ctx.strokeStyle = "rgba(255,255,255,0.3)";
    ctx.beginPath();
    ctx.moveTo(0, height - drumLane - 0.5);
    ctx.lineTo(width, height - drumLane - 0.5);
    ctx.stroke();
  }
  for (const [start, duration, pitch, instrument] of piece.notes) {
    ctx.fillStyle = COLOURS[instrument] || "#ffffff";
    if (instrument === 11) {
      const y = height - drumLane + ((pitch - 35) / 47) * (drumLane - 3);
      ctx.fillRect(x(start), Math.min(Math.max(y, height - drumLane + 1), height - 3), 2, 2);
    } else {
      const y = 2 + (high - pitch) * rowHeight;
      ctx.fillRect(x(start), y, Math.max(x(duration) - 0.5, 1.5), Math.max(rowHeight, 1.5));
    }
  }
}

// --- plumbing ------------------------------------------------------------------------------

async function api(method, url, body) {
  const init = { method, headers: {} };
  if (body instanceof FormData) {
    init.body = body;
  } else if (body !== undefined) {
    init.body = JSON.stringify(body);
    init.headers["Content-Type"] = "application/json";
  }
  let response;
  try {
    response = await fetch(url, init);
  } catch (err) {
    throw new Error("The banger server does not answer. Is `banger web` still running?");
  }
  let data = null;
  try { data = await response.json(); } catch (err) { /* not JSON: said below */ }
  if (!response.ok) {
    const message = data && data.error ? data.error : `the server answered ${response.status}`;
    const hint = data && data.hint ? ` (${data.hint})` : "";
    throw new Error(plain(message) + hint);
  }
  return data;
}

function plain(message) {  // the library names command-line flags; the page has fields
  return message.charAt(0).toUpperCase() + message.slice(1).replace(/--([a-z-]+)/g, (_, name) => name.replace(/-/g, " "));
}

function showError(message) {
  $("error").hidden = !message;
  $("error").textContent = message || "";
}
