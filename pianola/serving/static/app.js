// The pianola page: options from GET /v1/model, POST /v1/generate, the pieces and the gallery.
// Plain JavaScript, no build step, nothing loaded from elsewhere.
"use strict";

(() => {
  const $ = (selector, root = document) => root.querySelector(selector);
  const $$ = (selector, root = document) => Array.from(root.querySelectorAll(selector));

  const INTEGER_FIELDS = ["n", "length", "seed", "top_k"];
  const NUMBER_FIELDS = ["temperature", "top_p", "repetition_penalty"];
  const FIELDS = [...INTEGER_FIELDS, ...NUMBER_FIELDS, "strategy"];
  const LABELS = {
    n: "Pieces", length: "Length", seed: "Seed", strategy: "Strategy", temperature: "Temperature",
    top_k: "Top-k", top_p: "Top-p", repetition_penalty: "Repetition penalty",
  };
  const STRATEGY_HINTS = {
    greedy: "Always the likeliest next token: the same music every time, prone to loops.",
    temperature: "Draw from the whole distribution, sharpened or flattened by the temperature.",
    top_k: "Draw from the k likeliest tokens only.",
    top_p: "Draw from the smallest set of tokens holding top-p of the probability.",
  };
  const METRIC_LABELS = {
    tokens: "Tokens",
    notes: "Notes",
    pitch_min: "Lowest pitch",
    pitch_max: "Highest pitch",
    pitch_span: "Pitch span (semitones)",
    polyphony_mean: "Mean polyphony",
    polyphony_max: "Most notes at once",
    scale_consistency: "Scale consistency",
    scale: "Best-fitting scale",
    distinct_4gram_ratio: "Distinct 4-grams",
    longest_repeat: "Longest repeat (tokens)",
    longest_repeat_fraction: "Longest repeat (share)",
    pitch_class_histogram: "Pitch classes",
  };
  const PITCH_CLASSES = ["C", "C♯", "D", "E♭", "E", "F", "F♯", "G", "A♭", "A", "B♭", "B"];
  const HEALTH_EVERY_MS = 15000;

  const state = { model: null, defaults: {}, limits: {}, primer: null, busy: false };

  // ---------------------------------------------------------------- formatting

  function formatNumber(value) {
    if (typeof value !== "number" || !Number.isFinite(value)) return String(value);
    if (Number.isInteger(value)) return value.toLocaleString("en");
    const size = Math.abs(value);
    const digits = size >= 100 ? 1 : size >= 1 ? 2 : 3;
    return value.toLocaleString("en", { maximumFractionDigits: digits });
  }

  function formatBytes(bytes) {
    if (bytes < 1000) return `${bytes} bytes`;
    if (bytes < 1e6) return `${formatNumber(bytes / 1000)} kB`;
    return `${formatNumber(bytes / 1e6)} MB`;
  }

  function pitchName(midi) {
    return `${PITCH_CLASSES[((midi % 12) + 12) % 12]}${Math.floor(midi / 12) - 1}`;
  }

  function formatMetric(key, value) {
    if ((key === "pitch_min" || key === "pitch_max") && Number.isInteger(value)) {
      return `${value} (${pitchName(value)})`;
    }
    if (value === null || value === undefined) return "–";
    if (Array.isArray(value)) return value.map(formatNumber).join(", ");
    if (typeof value === "object") return JSON.stringify(value);
    return formatNumber(value);
  }

  function label(key) {
    return METRIC_LABELS[key] || key.replace(/_/g, " ").replace(/^./, (c) => c.toUpperCase());
  }

  function formatTime(seconds) {
    const date = new Date(seconds * 1000);
    const ago = (Date.now() - date.getTime()) / 1000;
    let relative;
    if (ago < 45) relative = "just now";
    else if (ago < 3600) relative = `${Math.round(ago / 60)} min ago`;
    else if (ago < 86400) relative = `${Math.round(ago / 3600)} h ago`;
    else relative = date.toLocaleDateString();
    return { date, relative, absolute: date.toLocaleString() };
  }

  function shortVersion(version) {
    if (!version) return "?";
    if (version.startsWith("folder:")) {
      const parts = version.slice("folder:".length).split("/").filter(Boolean);
      return `folder …/${parts.slice(-2).join("/")}`;
    }
    return /^\d+$/.test(version) ? `version ${version}` : version;
  }

  function el(tag, attributes = {}, ...children) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attributes)) {
      if (value === undefined || value === null || value === false) continue;
      if (name === "text") node.textContent = value;
      else if (name === "className") node.className = value;
      else if (name === "dataset") Object.assign(node.dataset, value);
      else node.setAttribute(name, value === true ? "" : value);
    }
    for (const child of children) {
      if (child !== null && child !== undefined) node.append(child);
    }
    return node;
  }

  // ---------------------------------------------------------------- requests

  async function api(path, options = {}) {
    let response;
    try {
      response = await fetch(path, { headers: { Accept: "application/json" }, ...options });
    } catch (error) {
      throw new Error(`the server cannot be reached (${error.message})`);
    }
    let body = null;
    const text = await response.text();
    try {
      body = text ? JSON.parse(text) : null;
    } catch (_error) {
      body = null;
    }
    if (!response.ok) {
      throw new Error(describeError(body, response, text));
    }
    return body;
  }

  function describeError(body, response, text) {
    const detail = body && body.detail;
    if (typeof detail === "string" && detail) return detail;
    if (Array.isArray(detail)) {
      return detail.map((d) => (d && d.msg ? `${(d.loc || []).slice(1).join(".") || "body"}: ${d.msg}` : String(d))).join("; ");
    }
    const status = `${response.status} ${response.statusText}`.trim();
    return text && text.length < 300 ? `${status}: ${text}` : `the server answered ${status}`;
  }

  // ---------------------------------------------------------------- alert

  function showError(message) {
    const box = $("#error");
    box.textContent = message;
    box.hidden = false;
  }

  function clearError() {
    const box = $("#error");
    box.textContent = "";
    box.hidden = true;
    for (const input of $$("[aria-invalid]")) {
      input.removeAttribute("aria-invalid");
      input.removeAttribute("aria-errormessage");
    }
  }

  // ---------------------------------------------------------------- model and health

  function renderModel(model) {
    const info = $("#model-info");
    info.replaceChildren();
    const tokenizer = model.tokenizer && typeof model.tokenizer === "object" ? model.tokenizer.name : model.tokenizer;
    const parts = [
      el("span", { className: "chip", title: model.version, text: shortVersion(model.version) }),
      el("span", { className: "chip", text: `model ${model.model || "?"}` }),
      el("span", {
        className: "chip",
        title: model.tokenizer ? JSON.stringify(model.tokenizer) : undefined,
        text: `tokenizer ${tokenizer || "?"}`,
      }),
    ];
    const heldout = model.heldout || {};
    const figures = [];
    if (typeof heldout.perplexity === "number") figures.push(`perplexity ${formatNumber(heldout.perplexity)}`);
    if (typeof heldout.accuracy === "number") figures.push(`accuracy ${formatNumber(heldout.accuracy * 100)}%`);
    if (typeof heldout.nll_per_note === "number") figures.push(`${formatNumber(heldout.nll_per_note)} nats/note`);
    if (figures.length) {
      parts.push(el("span", { className: "chip heldout", title: JSON.stringify(heldout), text: `held-out: ${figures.join(" · ")}` }));
    }
    info.append(el("span", { className: "visually-hidden", text: "Serving: " }), ...parts);
  }

  function fillForm(defaults, limits) {
    for (const name of FIELDS) {
      const input = $(`#${name}`);
      if (input && defaults[name] !== undefined && defaults[name] !== null) input.value = String(defaults[name]);
    }
    if (limits.max_n) {
      $("#n").max = limits.max_n;
      $("#n-hint").textContent = `1 to ${formatNumber(limits.max_n)}`;
    }
    if (limits.max_length) {
      $("#length").max = limits.max_length;
      $("#length-hint").textContent = `Tokens, 1 to ${formatNumber(limits.max_length)}`;
    }
    if (limits.max_primer_bytes) {
      $("#primer-hint").textContent =
        `A .mid or .midi file of piano music, up to ${formatBytes(limits.max_primer_bytes)}. ` +
        "Without one, each piece continues a window of the training music picked by the seed.";
    }
    updateStrategy();
  }

  async function loadModel(fillDefaults) {
    const model = await api("v1/model");
    state.model = model;
    state.defaults = model.defaults || {};
    state.limits = model.limits || {};
    renderModel(model);
    if (fillDefaults) fillForm(state.defaults, state.limits);
    return model;
  }

  async function checkHealth() {
    const badge = $("#health");
    const text = $("#health-text");
    try {
      const health = await api("healthz");
      const ok = health.status === "ok";
      badge.dataset.state = ok ? "ok" : "warn";
      const flight = health.in_flight ? ` · ${health.in_flight} in flight` : " · idle";
      text.textContent = `${ok ? "healthy" : health.status}${flight}`;
      badge.title = `serving ${health.model_version}`;
      if (state.model && health.model_version && health.model_version !== state.model.version) {
        await loadModel(false); // the alias moved: a new version is served
      }
    } catch (error) {
      badge.dataset.state = "down";
      text.textContent = "unreachable";
      badge.title = error.message;
    }
  }

  // ---------------------------------------------------------------- options

  function updateStrategy() {
    const strategy = $("#strategy").value;
    for (const field of $$("[data-strategies]")) {
      const relevant = field.dataset.strategies.split(" ").includes(strategy);
      field.hidden = !relevant;
      for (const input of $$("input, select", field)) input.disabled = !relevant;
    }
    $("#strategy-hint").textContent = STRATEGY_HINTS[strategy] || "";
  }

  function readSettings() {
    const body = {};
    for (const name of FIELDS) {
      const input = $(`#${name}`);
      if (!input || input.disabled) continue;
      if (name === "strategy") {
        body.strategy = input.value;
        continue;
      }
      const raw = input.value.trim();
      if (raw === "") {
        if (input.validity.badInput) throw fieldError(input, `${LABELS[name]} is not a number`);
        continue; // left empty: the server's default
      }
      const value = Number(raw);
      if (!Number.isFinite(value)) throw fieldError(input, `${LABELS[name]} must be a number`);
      if (INTEGER_FIELDS.includes(name) && !Number.isInteger(value)) {
        throw fieldError(input, `${LABELS[name]} must be a whole number`);
      }
      if (input.min !== "" && value < Number(input.min)) {
        throw fieldError(input, `${LABELS[name]} must be at least ${input.min}`);
      }
      if (input.max !== "" && value > Number(input.max)) {
        throw fieldError(input, `${LABELS[name]} must be at most ${formatNumber(Number(input.max))}`);
      }
      body[name] = value;
    }
    if (state.primer) body.primer_midi = state.primer.base64;
    return body;
  }

  function fieldError(input, message) {
    const error = new Error(message);
    error.input = input;
    return error;
  }

  // ---------------------------------------------------------------- primer

  function setPrimer(primer) {
    state.primer = primer;
    $("#primer-status").textContent = primer ? `${primer.name} (${formatBytes(primer.size)}) will start each piece.` : "";
    $("#primer-clear").hidden = !primer;
  }

  function clearPrimer() {
    $("#primer").value = "";
    setPrimer(null);
  }

  function readBase64(file) {
    return new Promise((resolve, reject) => {
      const reader = new FileReader();
      reader.onload = () => {
        const url = String(reader.result);
        const comma = url.indexOf(",");
        resolve(comma >= 0 ? url.slice(comma + 1) : url);
      };
      reader.onerror = () => reject(reader.error || new Error("the file cannot be read"));
      reader.readAsDataURL(file);
    });
  }

  async function onPrimerChosen() {
    clearError();
    const input = $("#primer");
    const file = input.files && input.files[0];
    if (!file) {
      setPrimer(null);
      return;
    }
    const cap = state.limits.max_primer_bytes;
    if (cap && file.size > cap) {
      clearPrimer();
      showError(`The primer "${file.name}" is ${formatBytes(file.size)}, over the limit of ${formatBytes(cap)}. ` +
                "Choose a smaller MIDI file.");
      return;
    }
    if (file.size === 0) {
      clearPrimer();
      showError(`The primer "${file.name}" is empty.`);
      return;
    }
    $("#primer-status").textContent = `Reading ${file.name}…`;
    try {
      const base64 = await readBase64(file);
      if (input.files[0] !== file) return; // another file was chosen meanwhile
      setPrimer({ name: file.name, size: file.size, base64 });
    } catch (error) {
      clearPrimer();
      showError(`The primer "${file.name}" cannot be read: ${error.message}`);
    }
  }

  // ---------------------------------------------------------------- generation

  function setBusy(busy, message = "") {
    state.busy = busy;
    const button = $("#generate");
    button.disabled = busy || !state.model;
    button.classList.toggle("busy", busy);
    button.setAttribute("aria-busy", String(busy));
    $(".label", button).textContent = busy ? "Generating…" : "Generate";
    $("#result").setAttribute("aria-busy", String(busy));
    $("#busy-status").textContent = message;
  }

  async function onGenerate(event) {
    event.preventDefault();
    if (state.busy) return;
    clearError();
    let body;
    try {
      body = readSettings();
    } catch (error) {
      showError(error.message);
      if (error.input) {
        error.input.setAttribute("aria-invalid", "true");
        error.input.setAttribute("aria-errormessage", "error");
        error.input.focus();
      }
      return;
    }
    const count = body.n ?? state.defaults.n ?? 1;
    const length = body.length ?? state.defaults.length;
    const started = performance.now();
    const what = `${count} piece${count === 1 ? "" : "s"} of ${formatNumber(length)} tokens`;
    setBusy(true, `Generating ${what}…`);
    const timer = setInterval(() => {
      $("#busy-status").textContent = `Generating ${what}… ${Math.round((performance.now() - started) / 1000)} s`;
    }, 1000);
    try {
      const answer = await api("v1/generate", {
        method: "POST",
        headers: { "Content-Type": "application/json", Accept: "application/json" },
        body: JSON.stringify(body),
      });
      renderPieces(answer, body);
      const seconds = (performance.now() - started) / 1000;
      clearInterval(timer);
      setBusy(false, `Generated ${what} in ${formatNumber(seconds)} s.`);
      refreshGallery();
      checkHealth();
    } catch (error) {
      clearInterval(timer);
      setBusy(false, "");
      showError(error.message);
    }
  }

  function pieceUrl(id, kind) {
    return `v1/pieces/${encodeURIComponent(id)}.${kind}`;
  }

  function audioPlayer(id, preload) {
    const wrap = el("div", { className: "player" });
    const audio = el("audio", { controls: true, preload, src: pieceUrl(id, "wav"), "aria-label": `Piece ${id.slice(0, 8)}, audio` });
    audio.append("Your browser cannot play WAV audio; download the MIDI file instead.");
    const note = el("small", { className: "player-note", "aria-live": "polite" });
    if (preload !== "none") note.textContent = "Rendering the audio…";
    audio.addEventListener("play", () => {
      if (audio.readyState < 1) note.textContent = "Rendering the audio…";
    });
    audio.addEventListener("loadedmetadata", () => {
      note.textContent = Number.isFinite(audio.duration) ? `${formatNumber(audio.duration)} s` : "";
    });
    audio.addEventListener("error", () => {
      note.textContent = "The audio could not be rendered; the MIDI file is still there to download.";
      note.classList.add("bad");
    });
    wrap.append(audio, note);
    return wrap;
  }

  function rollImage(id, className, loading) {
    const image = el("img", {
      className, src: pieceUrl(id, "png"), alt: `Piano roll of piece ${id.slice(0, 8)}: time across, pitch up`,
      loading, decoding: "async",
    });
    image.addEventListener("error", () => image.classList.add("broken"));
    return image;
  }

  function midiLink(id, text = "Download MIDI") {
    return el("a", {
      className: "button secondary download", href: pieceUrl(id, "mid"), download: `pianola-${id.slice(0, 8)}.mid`,
      text,
    });
  }

  function metricsTable(metrics) {
    const table = el("table", { className: "metrics" });
    table.append(el("caption", { className: "visually-hidden", text: "Metrics of the piece" }));
    const body = el("tbody");
    for (const [key, value] of Object.entries(metrics || {})) {
      const cell = el("td");
      if (key === "pitch_class_histogram" && Array.isArray(value) && value.length === 12) {
        cell.append(histogram(value));
      } else {
        cell.textContent = formatMetric(key, value);
      }
      body.append(el("tr", { dataset: { metric: key } }, el("th", { scope: "row", text: label(key) }), cell));
    }
    table.append(body);
    return table;
  }

  function histogram(values) {
    const top = Math.max(...values, 1e-9);
    const words = values.map((v, i) => `${PITCH_CLASSES[i]} ${formatNumber(v * 100)}%`).join(", ");
    const chart = el("div", { className: "histogram", role: "img", "aria-label": `Share of notes by pitch class: ${words}` });
    values.forEach((v, i) => {
      const bar = el("span", { className: "bar", title: `${PITCH_CLASSES[i]}: ${formatNumber(v * 100)}%` });
      bar.style.setProperty("--h", `${Math.round((v / top) * 100)}%`);
      chart.append(el("span", { className: "column", "aria-hidden": "true" }, bar, el("span", { className: "pc", text: PITCH_CLASSES[i] })));
    });
    return chart;
  }

  function renderPieces(answer, body) {
    const list = $("#pieces");
    list.replaceChildren();
    $("#result-empty").hidden = true;
    const pieces = (answer && answer.pieces) || [];
    pieces.forEach((piece, index) => {
      const short = piece.id.slice(0, 8);
      const heading = el("h3", {}, `Piece ${index + 1} `, el("code", { text: short, title: piece.id }));
      const tokens = Array.isArray(piece.tokens) ? piece.tokens : [];
      const details = el("details", { className: "tokens" },
        el("summary", { text: `${formatNumber(tokens.length)} tokens` }),
        el("pre", { text: tokens.join(" ") }));
      const article = el("article", { className: "piece", dataset: { pieceId: piece.id, testid: "piece" }, "aria-label": `Piece ${index + 1}` },
        el("div", { className: "piece-head" }, heading, midiLink(piece.id)),
        rollImage(piece.id, "roll", "eager"),
        audioPlayer(piece.id, "metadata"),
        metricsTable(piece.metrics),
        details);
      list.append(article);
    });
    const source = body.primer_midi ? `primed by ${state.primer ? state.primer.name : "your MIDI"}` : "primed by training music";
    const summary = $("#result-summary");
    summary.textContent = `${pieces.length} piece${pieces.length === 1 ? "" : "s"}, ${source}, by ${shortVersion(answer.model_version)}`;
    summary.title = answer.model_version || "";
    summary.hidden = false;
    const first = $(".piece h3", list);
    if (first) {
      first.tabIndex = -1;
      first.focus({ preventScroll: true });
      first.closest(".piece").scrollIntoView({ behavior: "smooth", block: "nearest" });
    }
  }

  // ---------------------------------------------------------------- gallery

  function settingsSummary(settings) {
    if (!settings) return "";
    const parts = [settings.strategy === "top_k" ? `top-k ${settings.top_k}` :
      settings.strategy === "top_p" ? `top-p ${formatNumber(settings.top_p)}` : settings.strategy];
    if (settings.strategy !== "greedy" && settings.temperature !== undefined) parts.push(`T ${formatNumber(settings.temperature)}`);
    if (settings.length !== undefined) parts.push(`${formatNumber(settings.length)} tokens`);
    if (settings.seed !== undefined) parts.push(`seed ${settings.seed}`);
    return parts.join(" · ");
  }

  let galleryRequest = 0;

  async function refreshGallery() {
    const mine = ++galleryRequest;
    const status = $("#gallery-status");
    let records;
    try {
      records = (await api("v1/pieces?limit=12")).pieces || [];
    } catch (error) {
      if (mine === galleryRequest) status.textContent = `The gallery cannot be loaded: ${error.message}`;
      return;
    }
    if (mine !== galleryRequest) return; // a newer refresh is on its way
    const gallery = $("#gallery");
    const existing = new Map($$(".gallery-item", gallery).map((item) => [item.dataset.pieceId, item]));
    const items = records.map((record) => existing.get(record.id) || galleryItem(record));
    for (const item of items) {
      const record = records.find((r) => r.id === item.dataset.pieceId);
      const time = $("time", item);
      if (record && time) time.textContent = formatTime(record.time).relative;
    }
    gallery.replaceChildren(...items);
    status.textContent = records.length ? "" : "No pieces yet: generate the first one.";
  }

  function galleryItem(record) {
    const when = formatTime(record.time);
    const metrics = record.metrics || {};
    const facts = [];
    if (metrics.notes !== undefined) facts.push(`${formatNumber(metrics.notes)} notes`);
    if (metrics.scale) facts.push(metrics.scale);
    const primer = record.primer === "midi" ? "from uploaded MIDI" : record.primer === "tokens" ? "from given tokens" : "from training music";
    return el("li", { className: "gallery-item", dataset: { pieceId: record.id, testid: "gallery-item" } },
      el("article", { "aria-label": `Piece ${record.id.slice(0, 8)}` },
        rollImage(record.id, "thumb", "lazy"),
        el("div", { className: "gallery-body" },
          el("p", { className: "gallery-title" },
            el("code", { text: record.id.slice(0, 8), title: record.id }), " ",
            el("time", { datetime: when.date.toISOString(), title: when.absolute, text: when.relative })),
          el("p", { className: "gallery-settings", text: settingsSummary(record.settings) }),
          el("p", { className: "gallery-facts", text: [primer, ...facts].join(" · ") }),
          audioPlayer(record.id, "none"),
          midiLink(record.id, "MIDI"))));
  }

  // ---------------------------------------------------------------- start

  async function start() {
    $("#options").addEventListener("submit", onGenerate);
    $("#strategy").addEventListener("change", updateStrategy);
    $("#primer").addEventListener("change", onPrimerChosen);
    $("#primer-clear").addEventListener("click", () => {
      clearPrimer();
      $("#primer").focus();
    });
    $("#reset").addEventListener("click", () => {
      clearError();
      clearPrimer();
      fillForm(state.defaults, state.limits);
    });
    $("#gallery-refresh").addEventListener("click", refreshGallery);
    for (const input of $$("#options input, #options select")) {
      input.addEventListener("input", () => {
        input.removeAttribute("aria-invalid");
        input.removeAttribute("aria-errormessage");
      });
    }
    updateStrategy();
    refreshGallery();
    checkHealth();
    setInterval(checkHealth, HEALTH_EVERY_MS);
    try {
      await loadModel(true);
      document.body.dataset.ready = "true";
    } catch (error) {
      $("#model-info").textContent = "The model description cannot be loaded.";
      showError(`The model description cannot be loaded: ${error.message}. Reload the page to try again.`);
    }
    setBusy(false, $("#busy-status").textContent);
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
