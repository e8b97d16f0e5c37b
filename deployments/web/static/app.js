// Sonic Serve teacher page: plain JS, no build step, no external resources.
// Talks to the v1 HTTP API with `Authorization: Bearer <key>`; progress arrives over SSE read with fetch()
// (EventSource cannot send headers), with polling as the fallback.
(() => {
  "use strict";

  const DICT = JSON.parse(document.getElementById("i18n").textContent);
  const TERMINAL = new Set(["succeeded", "failed", "cancelled"]);
  const POLL_MS = 1500;
  const STREAM_IDLE_MS = 45000;   // no bytes for this long: the stream is stuck, poll instead
  const KEY_STORE = "sonic.apiKey";
  const LANG_STORE = "sonic.lang";
  const JOB_STORE = "sonic.lastJob";

  const $ = (id) => document.getElementById(id);
  const store = {
    get(name) { try { return localStorage.getItem(name); } catch { return null; } },
    set(name, value) {
      try { value == null ? localStorage.removeItem(name) : localStorage.setItem(name, value); } catch { /* private mode */ }
    },
  };

  const state = {
    lang: pickLanguage(),
    key: (store.get(KEY_STORE) || "").trim(),
    image: null, imageEl: null, audio: null, audioSeconds: null,
    preview: null, previewSeq: 0, previewTimer: 0,
    idempotencyKey: null,
    job: null, follow: null, recent: [],
    error: null,
    messages: new Set(),
    streamEvents: 0,                // job updates read from the SSE stream (tests look at it)
  };

  // ---- i18n -------------------------------------------------------------------------------------------------

  function pickLanguage() {
    const saved = store.get(LANG_STORE);
    if (saved && DICT[saved]) return saved;
    const wanted = (navigator.languages && navigator.languages[0]) || navigator.language || "en";
    return wanted.toLowerCase().startsWith("zh") ? "zh" : "en";
  }

  function t(key, vars) {
    let text = (DICT[state.lang] && DICT[state.lang][key]) ?? DICT.en[key] ?? key;
    if (vars) text = text.replace(/\{(\w+)\}/g, (m, name) => (name in vars ? String(vars[name]) : m));
    return text;
  }

  /** Show a dictionary message in `el` (re-translated when the language changes). */
  function say(el, key, vars, tone) {
    el._msg = key ? { key, vars, tone } : null;
    el.textContent = key ? t(key, vars) : "";
    el.classList.toggle("ok", tone === "ok");
    el.classList.toggle("bad", tone === "bad");
    state.messages.add(el);
  }

  function applyLanguage() {
    document.documentElement.lang = state.lang === "zh" ? "zh-CN" : "en";
    $("lang").value = state.lang;
    document.title = `${t("title")} — ${t("tagline")}`;
    for (const el of document.querySelectorAll("[data-i18n]")) el.textContent = t(el.dataset.i18n);
    for (const el of document.querySelectorAll("[data-i18n-placeholder]")) el.placeholder = t(el.dataset.i18nPlaceholder);
    for (const el of document.querySelectorAll("[data-i18n-aria-label]")) {
      el.setAttribute("aria-label", t(el.dataset.i18nAriaLabel));
    }
    for (const el of state.messages) if (el._msg) say(el, el._msg.key, el._msg.vars, el._msg.tone);
    renderKeyToggle();
    renderFiles();
    renderError();
    if (state.job) renderJob(state.job);
    renderRecent();
  }

  // ---- formatting -------------------------------------------------------------------------------------------

  const locale = () => (state.lang === "zh" ? "zh-CN" : "en");
  const toMillis = (v) => (v == null ? null : typeof v === "number" ? (v < 1e12 ? v * 1000 : v) : Date.parse(v));

  function fmtTime(value) {
    const ms = toMillis(value);
    return ms == null || Number.isNaN(ms) ? "—" : new Date(ms).toLocaleString(locale());
  }

  function fmtSize(bytes) {
    const units = ["B", "KB", "MB", "GB"];
    let n = bytes, i = 0;
    while (n >= 1024 && i < units.length - 1) { n /= 1024; i += 1; }
    return `${n.toFixed(i ? 1 : 0)} ${units[i]}`;
  }

  function jobSeconds(job) {
    const start = toMillis(job.started_at) ?? toMillis(job.created_at);
    if (start == null) return null;
    const end = toMillis(job.finished_at) ?? (TERMINAL.has(job.state) ? null : Date.now());
    return end == null ? null : Math.max(0, (end - start) / 1000);
  }

  const stateName = (s) => (s ? t(`state_${s}`) : "—");
  const stageName = (s) => (s ? (DICT.en[`stage_${s}`] ? t(`stage_${s}`) : s) : "—");

  // ---- API --------------------------------------------------------------------------------------------------

  class ApiError extends Error {
    constructor(problem) { super(problem.detail || problem.title || `HTTP ${problem.status}`); this.problem = problem; }
  }

  /** Turn an error response (problem+json, or FastAPI's plain `detail`) into one problem shape. */
  function toProblem(status, body, retryAfter) {
    const problem = { status, title: null, detail: null, errors: [], retry: retryAfter ? Number(retryAfter) : null };
    if (body && typeof body === "object") {
      problem.title = typeof body.title === "string" ? body.title : null;
      const d = body.detail;
      if (Array.isArray(d)) {
        for (const e of d) problem.errors.push({ field: (e.loc || []).slice(1).join("."), message: e.msg });
      } else if (d && typeof d === "object") {
        problem.detail = d.message || d.detail || null;
        if (d.field) problem.errors.push({ field: d.field, message: d.message, fix: d.fix });
      } else if (typeof d === "string") {
        problem.detail = d;
      }
      if (Array.isArray(body.errors)) {
        for (const e of body.errors) problem.errors.push({ field: e.field, message: e.message, fix: e.fix });
      }
    } else if (typeof body === "string" && body.trim() && body.length < 300) {
      problem.detail = body.trim();
    }
    if (!problem.detail && !problem.errors.length) problem.detailKey = "error_http";
    return problem;
  }

  async function api(path, { method = "GET", body, headers = {}, signal } = {}) {
    const h = new Headers(headers);
    h.set("Accept", "application/json, application/problem+json");
    if (state.key) h.set("Authorization", `Bearer ${state.key}`);
    let response;
    try {
      response = await fetch(path, { method, body, headers: h, signal, cache: "no-store" });
    } catch (exc) {
      if (exc.name === "AbortError") throw exc;
      throw new ApiError({ status: 0, detailKey: "error_network", errors: [] });
    }
    const text = await response.text();
    let data = null;
    try { data = text ? JSON.parse(text) : null; } catch { data = text; }
    if (!response.ok) throw new ApiError(toProblem(response.status, data, response.headers.get("Retry-After")));
    return data;
  }

  function problemOf(exc) {
    if (exc instanceof ApiError) return exc.problem;
    return { status: 0, detail: String((exc && exc.message) || exc), errors: [] };
  }

  /** One line for a problem, for small status areas. */
  function problemLine(exc) {
    const p = problemOf(exc);
    if (p.status === 401) return t("error_401");
    const parts = [p.detail || (p.detailKey ? t(p.detailKey, { status: p.status }) : "")];
    for (const e of p.errors) parts.push(`${e.field}: ${e.message || ""}`);
    return parts.filter(Boolean).join(" · ");
  }

  // ---- errors -----------------------------------------------------------------------------------------------

  function showError(exc) {
    state.error = exc instanceof ApiError || exc instanceof Error ? problemOf(exc) : exc;
    renderError();
    markInvalid(state.error.errors || []);
    $("error").scrollIntoView({ behavior: "smooth", block: "nearest" });
  }

  function clearError() {
    state.error = null;
    renderError();
    markInvalid([]);
  }

  function renderError() {
    const p = state.error;
    $("error").hidden = !p;
    if (!p) return;
    $("error-title").textContent = p.title ? `${t("error_title")} — ${p.title}` : t("error_title");
    const lines = [];
    if (p.detail) lines.push(p.detail);
    else if (p.detailKey) lines.push(t(p.detailKey, { status: p.status }));
    if (p.status === 401) lines.push(t("error_401"));
    if (p.retry) lines.push(t("error_retry", { seconds: p.retry }));
    $("error-detail").textContent = lines.join(" ");
    const list = $("error-list");
    list.replaceChildren();
    for (const e of p.errors || []) {
      const li = document.createElement("li");
      if (e.field) {
        const code = document.createElement("code");
        code.textContent = e.field;
        li.append(code, ": ");
      }
      li.append(e.message || "");
      if (e.fix) li.append(` — ${t("fix")} ${e.fix}`);
      list.append(li);
    }
  }

  function fieldElement(field) {
    if (field === "image") return $("photo-input");
    if (field === "audio") return $("audio-input");
    if (field === "api_key") return $("api-key");
    return document.getElementsByName(field)[0] || null;
  }

  function markInvalid(errors) {
    for (const el of document.querySelectorAll("[aria-invalid]")) el.removeAttribute("aria-invalid");
    for (const el of document.querySelectorAll(".drop.invalid")) el.classList.remove("invalid");
    for (const e of errors) {
      const el = e.field && fieldElement(e.field);
      if (!el) continue;
      el.setAttribute("aria-invalid", "true");
      const drop = el.closest(".drop");
      if (drop) drop.classList.add("invalid");
      const details = el.closest("details");
      if (details) details.open = true;
    }
  }

  // ---- API key ----------------------------------------------------------------------------------------------

  function renderKeyToggle() {
    const shown = $("api-key").type === "text";
    $("key-toggle").textContent = t(shown ? "key_hide" : "key_show");
    $("key-toggle").setAttribute("aria-pressed", String(shown));
  }

  function adoptKey() {
    const typed = $("api-key").value.trim();
    if (typed === state.key) return false;
    state.key = typed;
    store.set(KEY_STORE, typed || null);
    return true;
  }

  async function checkKey() {
    if (!state.key) { say($("key-status"), "key_missing", null, "bad"); return; }
    say($("key-status"), "key_saved", null, "ok");
    try {
      const tenant = await api("/v1/tenant");
      if (tenant && tenant.tenant) say($("key-status"), "key_ok", { tenant: tenant.tenant }, "ok");
    } catch (exc) {
      if (problemOf(exc).status === 401) say($("key-status"), "error_401", null, "bad");
    }
  }

  let keyTimer = 0;
  function keyChanged() {                     // coalesces the change + submit events of one save
    clearTimeout(keyTimer);
    keyTimer = setTimeout(() => { checkKey(); refreshRecent(); schedulePreview(0); }, 50);
  }

  // ---- files ------------------------------------------------------------------------------------------------

  const IMAGE_EXT = /\.(jpe?g|png|webp|bmp|gif|tiff?|heic)$/i;
  const AUDIO_EXT = /\.(wav|mp3|m4a|aac|ogg|oga|opus|flac|webm|mp4)$/i;
  const isImage = (f) => f.type.startsWith("image/") || (!f.type && IMAGE_EXT.test(f.name));
  const isAudio = (f) => f.type.startsWith("audio/") || f.type === "video/mp4" || f.type === "video/webm" ||
    (!f.type && AUDIO_EXT.test(f.name)) || AUDIO_EXT.test(f.name);

  function renderFiles() {
    const photo = $("photo-info");
    photo.classList.remove("bad");
    photo.textContent = state.image ? t("file_size", { name: state.image.name, size: fmtSize(state.image.size) }) : "";
    const audio = $("audio-info");
    audio.classList.remove("bad");
    let text = state.audio ? t("file_size", { name: state.audio.name, size: fmtSize(state.audio.size) }) : "";
    if (state.audio && state.audioSeconds) text += ` · ${t("audio_duration", { seconds: state.audioSeconds.toFixed(1) })}`;
    audio.textContent = text;
    $("photo-drop").classList.toggle("has-file", !!state.image);
    $("audio-drop").classList.toggle("has-file", !!state.audio);
  }

  function rejectFile(kind) {
    const info = $(kind === "image" ? "photo-info" : "audio-info");
    say(info, kind === "image" ? "not_image" : "not_audio", null, "bad");
  }

  function setImage(file) {
    if (!isImage(file)) { rejectFile("image"); return; }
    state.image = file;
    state.preview = null;
    state.idempotencyKey = null;
    const img = new Image();
    img.onload = () => {
      if (state.imageEl && state.imageEl.src !== img.src) URL.revokeObjectURL(state.imageEl.src);
      state.imageEl = img;
      drawCrop();
      schedulePreview(0);
    };
    img.onerror = () => { URL.revokeObjectURL(img.src); state.image = null; renderFiles(); rejectFile("image"); };
    img.src = URL.createObjectURL(file);
    $("photo-info")._msg = null;
    renderFiles();
  }

  function setAudio(file) {
    if (!isAudio(file)) { rejectFile("audio"); return; }
    state.audio = file;
    state.audioSeconds = null;
    state.idempotencyKey = null;
    const player = $("audio-preview");
    if (player.src) URL.revokeObjectURL(player.src);
    player.src = URL.createObjectURL(file);
    player.hidden = false;
    $("audio-info")._msg = null;
    renderFiles();
  }

  function wireDrop(zoneId, inputId, accept) {
    const zone = $(zoneId);
    const input = $(inputId);
    input.addEventListener("change", () => { if (input.files && input.files[0]) accept(input.files[0]); });
    for (const name of ["dragenter", "dragover"]) {
      zone.addEventListener(name, (ev) => { ev.preventDefault(); ev.stopPropagation(); zone.classList.add("over"); });
    }
    zone.addEventListener("dragleave", () => zone.classList.remove("over"));
    zone.addEventListener("drop", (ev) => {
      ev.preventDefault();
      ev.stopPropagation();
      zone.classList.remove("over");
      const file = ev.dataTransfer && ev.dataTransfer.files[0];
      if (file) accept(file);
    });
  }

  // A file dropped anywhere else goes where its type belongs instead of replacing the page.
  window.addEventListener("dragover", (ev) => ev.preventDefault());
  window.addEventListener("drop", (ev) => {
    ev.preventDefault();
    const file = ev.dataTransfer && ev.dataTransfer.files[0];
    if (!file) return;
    if (isImage(file)) setImage(file);
    else if (isAudio(file)) setAudio(file);
  });

  // ---- face-crop preview ------------------------------------------------------------------------------------

  function schedulePreview(delayMs = 350) {
    clearTimeout(state.previewTimer);
    state.previewTimer = setTimeout(requestPreview, delayMs);
  }

  async function requestPreview() {
    if (!state.image || !state.imageEl) return;
    $("crop").hidden = false;
    const status = $("crop-status");
    if (!state.key) { say(status, "crop_need_key"); return; }
    const seq = ++state.previewSeq;
    say(status, "crop_loading");
    const form = new FormData();
    form.append("image", state.image, state.image.name);
    form.append("framing", $("framing").value);
    form.append("expand_ratio", $("expand_ratio").value || "0.5");
    try {
      const preview = await api("/v1/preview", { method: "POST", body: form });
      if (seq !== state.previewSeq) return;
      state.preview = preview;
      const [x0, y0, x1, y1] = preview.crop_box || [0, 0, preview.width, preview.height];
      say(status, "crop_result", { faces: preview.faces ?? 1, w: Math.round(x1 - x0), h: Math.round(y1 - y0),
                                   W: preview.width, H: preview.height }, "ok");
    } catch (exc) {
      if (seq !== state.previewSeq) return;
      state.preview = null;
      say(status, "crop_failed", { detail: problemLine(exc) }, "bad");
    }
    drawCrop();
  }

  function renderList(id, items) {
    const list = $(id);
    list.replaceChildren(...(items || []).map((text) => {
      const li = document.createElement("li");
      li.textContent = typeof text === "string" ? text : (text && (text.message || JSON.stringify(text))) || "";
      return li;
    }));
  }

  function drawCrop() {
    const img = state.imageEl;
    if (!img) return;
    $("crop").hidden = false;
    renderList("crop-warnings", state.preview && state.preview.warnings);
    const canvas = $("crop-canvas");
    const scale = Math.min(1, 960 / img.naturalWidth, 720 / img.naturalHeight);
    canvas.width = Math.max(1, Math.round(img.naturalWidth * scale));
    canvas.height = Math.max(1, Math.round(img.naturalHeight * scale));
    const ctx = canvas.getContext("2d");
    ctx.drawImage(img, 0, 0, canvas.width, canvas.height);
    const p = state.preview;
    if (!p || !p.width || !p.height) return;
    const sx = canvas.width / p.width, sy = canvas.height / p.height;
    const line = Math.max(2, Math.round(canvas.width / 240));
    const css = getComputedStyle(document.documentElement);
    if (p.crop_box) {
      const [x0, y0, x1, y1] = p.crop_box;
      const r = [x0 * sx, y0 * sy, (x1 - x0) * sx, (y1 - y0) * sy];
      ctx.save();
      ctx.fillStyle = "rgba(0, 0, 0, 0.5)";       // dim what falls outside the crop
      ctx.beginPath();
      ctx.rect(0, 0, canvas.width, canvas.height);
      ctx.rect(...r);
      ctx.fill("evenodd");
      ctx.strokeStyle = css.getPropertyValue("--box").trim() || "#22c55e";
      ctx.lineWidth = line;
      ctx.strokeRect(...r);
      ctx.restore();
    }
    if (p.face_bbox) {
      const [x, y, w, h] = p.face_bbox;
      ctx.save();
      ctx.strokeStyle = css.getPropertyValue("--face").trim() || "#f59e0b";
      ctx.lineWidth = line;
      ctx.setLineDash([line * 3, line * 2]);
      ctx.strokeRect(x * sx, y * sy, w * sx, h * sy);
      ctx.restore();
    }
  }

  // ---- submit -----------------------------------------------------------------------------------------------

  function newIdempotencyKey() {
    if (window.crypto && crypto.randomUUID) return crypto.randomUUID();
    const bytes = crypto.getRandomValues(new Uint8Array(16));
    return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
  }

  function jobForm() {
    const form = new FormData();
    form.append("image", state.image, state.image.name);
    form.append("audio", state.audio, state.audio.name);
    form.append("preset", document.querySelector("input[name=preset]:checked").value);
    for (const name of ["framing", "expand_ratio", "min_resolution", "steps", "seed"]) {
      const value = $(name).value.trim();
      if (value !== "") form.append(name, value);
    }
    // only when changed: the server's defaults follow the preset
    if ($("fps").selectedIndex > 0) form.append("fps", $("fps").value);
    for (const name of ["dynamic_scale", "motion_scale"]) {
      const el = $(name);
      if (el.value.trim() !== "" && Number(el.value) !== Number(el.defaultValue)) form.append(name, el.value.trim());
    }
    return form;
  }

  async function submitJob(ev) {
    ev.preventDefault();
    clearError();
    if (adoptKey()) keyChanged();
    if (!state.key) {
      showError({ status: 0, detailKey: "key_missing", errors: [{ field: "api_key", message: t("key_label") }] });
      $("api-key").focus();
      return;
    }
    if (!state.image || !state.audio) {
      const errors = [];
      if (!state.image) errors.push({ field: "image", message: t("photo") });
      if (!state.audio) errors.push({ field: "audio", message: t("audio") });
      showError({ status: 0, detailKey: "error_need_files", errors });
      return;
    }
    const button = $("submit");
    button.disabled = true;
    button.textContent = t("submitting");
    state.idempotencyKey = state.idempotencyKey || newIdempotencyKey();
    try {
      const job = await api("/v1/jobs", { method: "POST", body: jobForm(),
                                          headers: { "Idempotency-Key": state.idempotencyKey } });
      state.idempotencyKey = null;
      openJob(job);
      refreshRecent();
    } catch (exc) {
      showError(exc);
    } finally {
      button.disabled = false;
      button.textContent = t("submit");
    }
  }

  // ---- one job: SSE over fetch, polling as the fallback ------------------------------------------------------

  /** An incremental parser of text/event-stream; calls onEvent({event, data, id}) per complete frame and
   *  onRetry(ms) for a `retry:` field. */
  function sseParser(onEvent, onRetry) {
    let buffer = "", data = [], event = "", id = "";
    function line(text) {
      if (text === "") {
        if (data.length) onEvent({ event: event || "message", data: data.join("\n"), id });
        data = []; event = "";
        return;
      }
      if (text[0] === ":") return;                 // comment / keep-alive
      const colon = text.indexOf(":");
      const field = colon < 0 ? text : text.slice(0, colon);
      let value = colon < 0 ? "" : text.slice(colon + 1);
      if (value[0] === " ") value = value.slice(1);
      if (field === "data") data.push(value);
      else if (field === "event") event = value;
      else if (field === "id") id = value;
      else if (field === "retry" && /^\d+$/.test(value) && onRetry) onRetry(Number(value));
    }
    return {
      push(chunk) {
        buffer += chunk;
        const re = /\r\n|\r|\n/g;
        let start = 0, m;
        while ((m = re.exec(buffer))) {
          if (m[0] === "\r" && m.index === buffer.length - 1) break;   // maybe half of "\r\n"
          line(buffer.slice(start, m.index));
          start = re.lastIndex;
        }
        buffer = buffer.slice(start);
      },
    };
  }

  function stopFollowing() {
    const f = state.follow;
    if (!f) return;
    f.stopped = true;
    f.abort.abort();
    clearTimeout(f.pollTimer);
    state.follow = null;
  }

  function openJob(job) {
    stopFollowing();
    state.job = job;
    store.set(JOB_STORE, job.id);
    renderJob(job);
    renderRecent();
    if (TERMINAL.has(job.state)) { finishJob(job.id, job); return; }
    follow(job.id);
  }

  const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

  /** Follow a job over SSE, reconnecting when the server closes the stream early (it does, every so often);
   *  poll instead when the stream cannot be had or keeps coming back empty. */
  function follow(id) {
    const f = { id, abort: new AbortController(), stopped: false, mode: "live", lastByte: Date.now(), pollTimer: 0,
                retryMs: 3000, seen: 0 };
    state.follow = f;
    (async () => {
      let empty = 0;
      while (!f.stopped) {
        let outcome;
        try { outcome = await streamEvents(f); } catch { outcome = "failed"; }
        if (f.stopped || outcome === "finished") return;
        if (outcome === "failed") break;
        empty = f.seen ? 0 : empty + 1;
        if (empty >= 3) break;
        await sleep(f.retryMs);
      }
      if (!f.stopped) startPolling(f);
    })();
  }

  /** One SSE connection: "finished" (a terminal state came), "ended" (closed before that) or "failed". */
  async function streamEvents(f) {
    f.seen = 0;
    f.lastByte = Date.now();
    const response = await fetch(`/v1/jobs/${encodeURIComponent(f.id)}/events`, {
      headers: { Authorization: `Bearer ${state.key}`, Accept: "text/event-stream" },
      signal: f.abort.signal, cache: "no-store",
    });
    const type = response.headers.get("Content-Type") || "";
    if (!response.ok || !response.body || !type.includes("text/event-stream")) return "failed";
    setMode(f, "live");
    let finished = false;
    const parser = sseParser((ev) => {
      if (finished || f.stopped) return;
      let payload;
      try { payload = JSON.parse(ev.data); } catch { return; }
      const job = payload && (payload.job || payload);
      if (!job || job.id !== f.id || !job.state) return;
      state.streamEvents += 1;
      f.seen += 1;
      onJobUpdate(f, job);
      if (TERMINAL.has(job.state)) finished = true;
    }, (ms) => { f.retryMs = Math.min(Math.max(ms, 500), 30000); });
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    while (!finished && !f.stopped) {
      const { value, done } = await reader.read();
      if (done) break;
      f.lastByte = Date.now();
      parser.push(decoder.decode(value, { stream: true }));
    }
    if (!finished) return "ended";
    reader.cancel().catch(() => {});
    if (!f.stopped) finishJob(f.id);
    return "finished";
  }

  function startPolling(f) {
    if (f.stopped || state.follow !== f) return;
    setMode(f, "polling");
    let failures = 0;
    const tick = async () => {
      if (f.stopped) return;
      try {
        const job = await api(`/v1/jobs/${encodeURIComponent(f.id)}`, { signal: f.abort.signal });
        failures = 0;
        if (f.stopped) return;
        onJobUpdate(f, job);
        if (TERMINAL.has(job.state)) { finishJob(f.id, job); return; }
      } catch (exc) {
        if (f.stopped || exc.name === "AbortError") return;
        const status = problemOf(exc).status;
        if (status === 401 || status === 404) { showError(exc); stopFollowing(); return; }
        failures += 1;
      }
      f.pollTimer = setTimeout(tick, Math.min(POLL_MS * 2 ** failures, 15000));
    };
    tick();
  }

  function setMode(f, mode) {
    f.mode = mode;
    if (state.job && state.job.id === f.id) renderJob(state.job);
  }

  function onJobUpdate(f, job) {
    if (state.follow !== f) return;
    state.job = { ...state.job, ...job };
    renderJob(state.job);
    mergeRecent(state.job);
  }

  /** A terminal job: fetch it once more (fresh presigned result links), show it, refresh the list. */
  async function finishJob(id, known) {
    if (state.follow && state.follow.id === id) stopFollowing();
    try {
      const job = known && (known.result || known.state !== "succeeded") ? known
        : await api(`/v1/jobs/${encodeURIComponent(id)}`);
      if (state.job && state.job.id !== id) return;
      state.job = job;
      renderJob(job);
    } catch (exc) {
      showError(exc);
    }
    refreshRecent();
  }

  async function cancelJob() {
    const job = state.job;
    if (!job) return;
    $("cancel").disabled = true;
    try {
      const updated = await api(`/v1/jobs/${encodeURIComponent(job.id)}`, { method: "DELETE" });
      if (updated && updated.id === job.id) {
        state.job = { ...job, ...updated };
        renderJob(state.job);
      }
      finishJob(job.id);
    } catch (exc) {
      showError(exc);
    } finally {
      $("cancel").disabled = false;
    }
  }

  function renderJob(job) {
    $("no-job").hidden = true;
    $("job").hidden = false;
    $("job-id").textContent = job.id;
    const badge = $("job-state");
    badge.textContent = stateName(job.state);
    badge.className = `badge ${job.state || ""}`;
    const f = state.follow && state.follow.id === job.id ? state.follow : null;
    $("job-mode").textContent = f ? `(${t(f.mode === "live" ? "live" : "polling")})` : "";
    $("job-stage").textContent = stageName(job.stage);
    renderElapsed();

    const progress = job.progress || {};
    let fraction = Number(progress.fraction) || 0;
    if (job.state === "succeeded") fraction = 1;
    $("job-progress").value = Math.max(0, Math.min(1, fraction));
    const text = $("job-progress-text");
    if (TERMINAL.has(job.state)) {
      say(text, null);
      text.textContent = `${stateName(job.state)} · ${Math.round(fraction * 100)}%`;
    } else if (progress.total) {
      say(text, null);
      text.textContent = `${t("progress_text", { stage: stageName(progress.stage || job.stage),
                                                 done: progress.done ?? 0, total: progress.total })}` +
        ` · ${Math.round(fraction * 100)}%`;
    } else {
      say(text, null);
      text.textContent = `${stageName(progress.stage || job.stage)} · ${Math.round(fraction * 100)}%`;
    }

    const err = job.error;
    $("job-error").hidden = !(err && job.state === "failed");
    if (err) {
      const parts = [err.message || err.type || ""];
      if (err.field) parts.unshift(`${err.field}:`);
      if (err.fix) parts.push(`\n${t("fix")} ${err.fix}`);
      $("job-error-text").textContent = parts.join(" ");
    }
    renderList("job-warnings", job.warnings);
    $("cancel").hidden = TERMINAL.has(job.state);

    const result = job.state === "succeeded" && job.result;
    $("result").hidden = !(result && result.video_url);
    if (result && result.video_url) {
      const video = $("video");
      if (video.dataset.job !== job.id) {        // keep a playing video; new links only for a new job
        video.dataset.job = job.id;
        if (result.poster_url) video.poster = result.poster_url; else video.removeAttribute("poster");
        video.src = result.video_url;
        const link = $("download");
        link.href = result.download_url || result.video_url;
        link.setAttribute("download", `${job.id}.mp4`);
      }
      $("result-expires").textContent = result.expires_at ? t("result_expires", { time: fmtTime(result.expires_at) }) : "";
    }
  }

  function renderElapsed() {
    const job = state.job;
    if (!job) return;
    const s = jobSeconds(job);
    $("job-elapsed").textContent = s == null ? "—" : t("seconds", { n: s.toFixed(s < 10 ? 1 : 0) });
  }

  // Once a second: elapsed time, and a stuck stream falls back to polling.
  setInterval(() => {
    if (state.job && !TERMINAL.has(state.job.state)) renderElapsed();
    const f = state.follow;
    if (f && f.mode === "live" && Date.now() - f.lastByte > STREAM_IDLE_MS) {
      f.abort.abort();                          // streamEvents rejects -> polling with a fresh controller
      f.abort = new AbortController();
      f.lastByte = Date.now();
    }
  }, 1000);

  // ---- recent jobs ------------------------------------------------------------------------------------------

  async function refreshRecent() {
    const status = $("recent-status");
    if (!state.key) { state.recent = []; say(status, "recent_need_key"); renderRecent(); return; }
    try {
      const data = await api("/v1/jobs?limit=10");
      state.recent = (data && data.jobs) || [];
      say(status, state.recent.length ? null : "recent_empty");
    } catch (exc) {
      say(status, null);
      status.textContent = problemLine(exc);
      status.classList.add("bad");
    }
    renderRecent();
  }

  function mergeRecent(job) {
    const i = state.recent.findIndex((j) => j.id === job.id);
    if (i < 0) return;
    state.recent[i] = { ...state.recent[i], ...job };
    renderRecent();
  }

  function renderRecent() {
    const table = $("recent");
    const body = $("recent-body");
    table.hidden = !state.recent.length;
    body.replaceChildren();
    for (const job of state.recent) {
      const row = document.createElement("tr");
      if (state.job && state.job.id === job.id) row.className = "current";
      const cell = (content) => {
        const td = document.createElement("td");
        td.append(content);
        row.append(td);
        return td;
      };
      const code = document.createElement("code");
      code.textContent = job.id;
      cell(code);
      cell(fmtTime(job.created_at));
      const badge = document.createElement("span");
      badge.className = `badge ${job.state || ""}`;
      badge.textContent = stateName(job.state);
      const stateCell = cell(badge);
      if (!TERMINAL.has(job.state) && job.progress && job.progress.fraction != null) {
        stateCell.append(` ${Math.round(job.progress.fraction * 100)}%`);
      }
      const s = jobSeconds(job);
      cell(s == null ? "—" : t("seconds", { n: s.toFixed(s < 10 ? 1 : 0) }));
      const actions = document.createElement("div");
      actions.className = "actions-cell";
      const open = document.createElement("button");
      open.type = "button";
      open.className = "secondary";
      open.textContent = t("open");
      open.setAttribute("aria-label", t("open_job", { id: job.id }));
      open.addEventListener("click", () => loadJob(job.id));
      actions.append(open);
      if (job.result && job.result.video_url) {
        const link = document.createElement("a");
        link.href = job.result.video_url;
        link.textContent = t("video");
        link.target = "_blank";
        link.rel = "noopener";
        actions.append(link);
      }
      cell(actions);
      body.append(row);
    }
  }

  async function loadJob(id) {
    clearError();
    try {
      openJob(await api(`/v1/jobs/${encodeURIComponent(id)}`));
      $("job-heading").scrollIntoView({ behavior: "smooth", block: "start" });
    } catch (exc) {
      showError(exc);
    }
  }

  // ---- wiring -----------------------------------------------------------------------------------------------

  $("lang").addEventListener("change", () => {
    state.lang = DICT[$("lang").value] ? $("lang").value : "en";
    store.set(LANG_STORE, state.lang);
    applyLanguage();
  });
  $("api-key").value = state.key;
  $("key-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    adoptKey();
    keyChanged();
  });
  $("api-key").addEventListener("change", () => { if (adoptKey()) keyChanged(); });
  $("key-toggle").addEventListener("click", () => {
    const input = $("api-key");
    input.type = input.type === "password" ? "text" : "password";
    renderKeyToggle();
  });
  $("key-forget").addEventListener("click", () => {
    $("api-key").value = "";
    adoptKey();
    say($("key-status"), null);
    stopFollowing();
    state.recent = [];
    refreshRecent();
  });
  wireDrop("photo-drop", "photo-input", setImage);
  wireDrop("audio-drop", "audio-input", setAudio);
  $("audio-preview").addEventListener("loadedmetadata", () => {
    const d = $("audio-preview").duration;
    state.audioSeconds = Number.isFinite(d) ? d : null;
    renderFiles();
  });
  $("framing").addEventListener("change", () => schedulePreview(0));
  $("expand_ratio").addEventListener("input", () => schedulePreview());
  $("job-form").addEventListener("input", () => { state.idempotencyKey = null; });
  $("job-form").addEventListener("submit", submitJob);
  $("cancel").addEventListener("click", cancelJob);
  $("refresh").addEventListener("click", refreshRecent);
  $("error-dismiss").addEventListener("click", clearError);

  applyLanguage();
  refreshRecent();
  if (state.key) {
    checkKey();
    const last = store.get(JOB_STORE);
    if (last) {
      api(`/v1/jobs/${encodeURIComponent(last)}`).then(openJob).catch(() => store.set(JOB_STORE, null));
    }
  }
  // Exposed for tests and the console.
  window.sonic = { state, sseParser, t };
})();
