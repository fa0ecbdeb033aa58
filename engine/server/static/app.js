// FLX Engine web page: plain JS, no build step, no external assets.
// Every piece of data from the server goes into the page through textContent or a checked same-origin URL:
// character names, tags and file names come from strangers' .flx files.
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const ACTIVE = new Set(["queued", "running"]);
  const POLL_MS = 2000;
  const state = {
    auth: false,
    signIn: null, // pending sign-in promise shared by every call that got a 401
    characters: [],
    jobs: new Map(), // batch id -> batch info
    streams: new Map(), // batch id -> EventSource
    polling: null,
    sse: typeof window.EventSource === "function",
    outputs: new Map(), // batch id -> outputs list (fetched once the batch has ended)
    route: "library",
  };

  // ---------------------------------------------------------------- helpers

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k === "class") node.className = v;
      else if (k === "text") node.textContent = String(v);
      else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
      else node.setAttribute(k, v === true ? "" : String(v));
    }
    for (const c of children) {
      if (c === null || c === undefined || c === false) continue;
      node.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return node;
  }

  // A URL from the server is used only when it stays on this origin (no javascript:, data: or other hosts).
  function safeUrl(u) {
    if (typeof u !== "string" || !u) return null;
    try {
      const url = new URL(u, window.location.origin);
      if (url.origin !== window.location.origin) return null;
      if (url.protocol !== "http:" && url.protocol !== "https:") return null;
      return url.pathname + url.search;
    } catch (_) {
      return null;
    }
  }

  const enc = encodeURIComponent;
  const fmtScore = (s) => (typeof s === "number" && Number.isFinite(s) ? `${s.toFixed(1)}%` : null);
  const fmtTime = (t) => {
    if (t === null || t === undefined || t === "") return "";
    const d = typeof t === "number" ? new Date(t * 1000) : new Date(t);
    return Number.isNaN(d.getTime()) ? String(t) : d.toLocaleString();
  };
  const fmtEta = (s) => {
    if (typeof s !== "number" || !Number.isFinite(s) || s < 0) return "";
    if (s < 90) return `${Math.round(s)} s left`;
    return `${Math.round(s / 60)} min left`;
  };

  function badge(status) {
    const s = status === null || status === undefined ? "none" : String(status);
    const cls = { ok: "pass", pass: "pass", done: "pass", warn: "warn", fail: "fail", failed: "fail" }[s] || "neutral";
    return el("span", { class: `badge ${cls}`, text: s === "none" ? "no check" : s });
  }

  function flash(message, kind) {
    const box = $("flash");
    box.textContent = message;
    box.className = `flash ${kind || "info"}`;
    box.hidden = !message;
    if (kind !== "error" && message) {
      window.clearTimeout(flash.timer);
      flash.timer = window.setTimeout(() => {
        box.hidden = true;
      }, 6000);
    }
  }

  class ApiError extends Error {
    constructor(status, message) {
      super(message);
      this.status = status;
    }
  }

  async function errorText(res) {
    try {
      const body = await res.json();
      if (body && typeof body.error === "string") return body.error;
      if (body && body.detail) return typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail);
    } catch (_) {
      /* not JSON */
    }
    return `${res.status} ${res.statusText}`;
  }

  // fetch() with the server's auth: a 401 shows the token field, signs in (cookie) and retries the call.
  async function api(path, opts) {
    for (let attempt = 0; ; attempt++) {
      const res = await fetch(path, { credentials: "same-origin", ...(opts || {}) });
      if (res.status === 401 && attempt < 5) {
        await signIn();
        continue;
      }
      if (!res.ok) throw new ApiError(res.status, await errorText(res));
      return res;
    }
  }
  const apiJson = async (path, opts) => (await api(path, opts)).json();

  function signIn() {
    if (state.signIn) return state.signIn;
    const panel = $("auth");
    panel.hidden = false;
    $("auth-token").focus();
    state.signIn = new Promise((resolve) => {
      const form = $("auth-form");
      const onSubmit = async (ev) => {
        ev.preventDefault();
        $("auth-error").textContent = "";
        const res = await fetch("/api/session", {
          method: "POST",
          credentials: "same-origin",
          headers: { "Content-Type": "application/json" },
          body: JSON.stringify({ token: $("auth-token").value }),
        });
        if (!res.ok) {
          $("auth-error").textContent = await errorText(res);
          return;
        }
        form.removeEventListener("submit", onSubmit);
        $("auth-token").value = "";
        panel.hidden = true;
        state.signIn = null;
        resolve();
      };
      form.addEventListener("submit", onSubmit);
    });
    return state.signIn;
  }

  function report(err) {
    flash(err instanceof Error ? err.message : String(err), "error");
  }

  // ---------------------------------------------------------------- routing

  function route() {
    const hash = window.location.hash.replace(/^#\/?/, "");
    const [name, ...rest] = hash.split("/");
    const view = name || "home";
    state.route = view;
    for (const section of document.querySelectorAll("main > section")) {
      section.hidden = !section.dataset.view.split(" ").includes(view);
    }
    for (const a of document.querySelectorAll("nav a")) {
      a.classList.toggle("current", a.dataset.route === view);
    }
    if (view === "home") {
      loadLibrary().catch(report);
      refreshJobs().then(renderGallery).catch(report);
    } else if (view === "library") loadLibrary().catch(report);
    else if (view === "character") showCharacter(decodeURIComponent(rest.join("/"))).catch(report);
    else if (view === "submit") loadLibrary().then(renderJobCharacters).catch(report);
    else if (view === "jobs") refreshJobs().catch(report);
    else if (view === "gallery") refreshJobs().then(renderGallery).catch(report);
  }

  // ---------------------------------------------------------------- library

  async function loadLibrary() {
    const q = new URLSearchParams();
    const search = $("library-search").value.trim();
    const tag = $("library-tag").value.trim();
    if (search) q.set("search", search);
    if (tag) q.set("tag", tag);
    const qs = q.toString();
    state.characters = await apiJson(`/api/characters${qs ? `?${qs}` : ""}`);
    renderLibrary();
    return state.characters;
  }

  function renderLibrary() {
    const list = $("library-list");
    list.replaceChildren();
    for (const c of state.characters) {
      const thumb = safeUrl(c.thumbnail);
      const tags = el("span", { class: "tags" });
      for (const t of c.tags || []) tags.append(el("span", { class: "tag", text: t }));
      const meta = [`v${c.latest_version ?? "?"}`];
      if (c.variant) meta.push(`variant ${c.variant}`);
      if (c.archived) meta.push("archived");
      if (c.last_used) meta.push(`used ${fmtTime(c.last_used)}`);
      list.append(
        el(
          "a",
          { class: "card character", href: `#/character/${enc(c.id)}`, "data-id": c.id },
          thumb ? el("img", { class: "thumb", src: thumb, alt: "", loading: "lazy" }) : el("span", { class: "thumb none", text: "no crop" }),
          el("strong", { class: "name", text: c.name }),
          el("span", { class: "meta" }, badge(c.quality), " ", meta.join(" · ")),
          el("span", { class: "meta muted", text: (c.encoders || []).join(", ") }),
          tags,
        ),
      );
    }
    $("library-empty").hidden = state.characters.length > 0;
  }

  // ---------------------------------------------------------------- character detail

  async function showCharacter(ref) {
    const d = await apiJson(`/api/characters/${enc(ref)}`);
    state.current = d;
    $("char-name").textContent = d.name;
    $("char-meta").textContent = `id ${d.id} · version ${d.version} · ${(d.references || []).length} reference(s)`;
    $("char-export").href = `/api/characters/${enc(d.id)}/export`;
    $("char-export").setAttribute("download", "");

    const refs = $("char-refs");
    refs.replaceChildren();
    for (const r of d.references || []) {
      const q = r.quality || {};
      const checks = el("ul", { class: "checks-list" });
      for (const c of q.checks || []) {
        const detail = [c.message, c.threshold ? `(${c.threshold})` : ""].filter(Boolean).join(" ");
        checks.append(
          el("li", { class: `check ${c.status}` }, badge(c.status), " ", el("b", { text: c.name }), " ", detail,
            c.fix ? el("div", { class: "fix", text: `fix: ${c.fix}` }) : null),
        );
      }
      const src = safeUrl(r.image);
      refs.append(
        el("div", { class: "card reference" },
          src ? el("img", { class: "thumb", src, alt: "" }) : el("span", { class: "thumb none", text: "no crop" }),
          el("strong", { class: "name", text: r.source_filename }),
          el("span", { class: "meta" }, badge(q.status), ` weight ${Number(r.weight).toFixed(2)}`),
          el("details", { open: q.status === "warn" || q.status === "fail" }, el("summary", { text: "quality checks" }), checks)),
      );
    }

    const pack = safeUrl(d.pack_sheet);
    $("char-pack-box").hidden = !pack;
    if (pack) $("char-pack").src = pack;
    else $("char-pack").removeAttribute("src");

    const tbody = $("char-versions").querySelector("tbody");
    tbody.replaceChildren();
    for (const v of d.versions || []) {
      tbody.append(el("tr", {}, el("td", { text: v.version }), el("td", { text: fmtTime(v.updated) }), el("td", { text: v.change || "" })));
    }
    const hasProfile = d.profile && typeof d.profile === "object" && Object.keys(d.profile).length > 0;
    $("char-profile").textContent = hasProfile ? JSON.stringify(d.profile, null, 2) : "(no profile)";
    $("char-lora-box").hidden = !d.lora;
    $("char-lora").textContent = d.lora ? JSON.stringify(d.lora, null, 2) : "";
  }

  async function deleteCharacter() {
    const d = state.current;
    if (!d || !window.confirm(`Delete character ${d.name} (${d.id})?`)) return;
    await api(`/api/characters/${enc(d.id)}`, { method: "DELETE" });
    flash(`deleted ${d.name}`);
    window.location.hash = "#/library";
  }

  async function addReferences(ev) {
    ev.preventDefault();
    const d = state.current;
    const files = $("addref-photos").files;
    if (!d || !files.length) return;
    const body = new FormData();
    for (const f of files) body.append("photos", f, f.name);
    await apiJson(`/api/characters/${enc(d.id)}/references`, { method: "POST", body });
    $("addref-form").reset();
    flash(`added ${files.length} reference(s) to ${d.name}`);
    await showCharacter(d.id);
  }

  async function makeVariant(ev) {
    ev.preventDefault();
    const d = state.current;
    if (!d) return;
    const body = { name: $("variant-name").value.trim() };
    putIf(body, "wardrobe", $("variant-wardrobe").value.trim());
    putIf(body, "notes", $("variant-notes").value.trim());
    const v = await apiJson(`/api/characters/${enc(d.id)}/variants`, {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(body),
    });
    $("variant-form").reset();
    flash(`made variant ${v.name}`);
    window.location.hash = `#/character/${enc(v.id)}`;
  }

  async function importFlx(ev) {
    ev.preventDefault();
    const file = $("import-file").files[0];
    if (!file) return;
    const body = new FormData();
    body.append("file", file, file.name);
    const r = await apiJson("/api/characters/import", { method: "POST", body });
    $("import-form").reset();
    flash(`${r.status}: ${r.name} v${r.version}`);
    await loadLibrary();
  }

  // ---------------------------------------------------------------- create

  async function createCharacter(ev) {
    ev.preventDefault();
    const button = $("create-submit");
    const body = new FormData();
    body.append("name", $("create-name").value.trim());
    const profile = $("create-profile").value;
    if (profile.trim()) body.append("profile", profile);
    for (const f of $("create-photos").files) body.append("photos", f, f.name);
    const face = $("create-face").value.trim();
    const encoder = $("create-encoder").value.trim();
    if (face) body.append("face", face);
    if (encoder) body.append("encoder", encoder);
    if ($("create-force").checked) body.append("force", "true");
    button.disabled = true;
    button.textContent = "Analysing photos...";
    try {
      const d = await apiJson("/api/characters", { method: "POST", body });
      $("create-form").reset();
      flash(`created ${d.name} v${d.version}`);
      window.location.hash = `#/character/${enc(d.id)}`;
    } finally {
      button.disabled = false;
      button.textContent = "Create character";
    }
  }

  // ---------------------------------------------------------------- job form

  function renderJobCharacters() {
    const box = $("job-characters");
    const checked = new Set([...box.querySelectorAll("input:checked")].map((i) => i.value));
    box.replaceChildren();
    for (const c of state.characters) {
      if (c.archived) continue;
      box.append(
        el("label", { class: "check-item" },
          el("input", { type: "checkbox", value: c.name, checked: checked.has(c.name), onchange: previewJob }), " ", c.name),
      );
    }
    if (!box.children.length) box.append(el("span", { class: "muted", text: "no characters in the library" }));
    previewJob();
  }

  // A job-file alias (letters, digits, '.', '_', '-'; first a letter or digit) from a character name.
  function aliasFor(name, taken) {
    let base = String(name).normalize("NFKD").replace(/[^A-Za-z0-9._-]+/g, "-").replace(/^[^A-Za-z0-9]+/, "").slice(0, 48);
    if (!base) base = "char";
    let alias = base;
    for (let n = 2; taken.has(alias); n++) alias = `${base}-${n}`;
    taken.add(alias);
    return alias;
  }

  function num(id) {
    const v = $(id).value.trim();
    if (v === "") return undefined;
    const n = Number(v);
    return Number.isFinite(n) ? n : undefined;
  }

  function putIf(obj, key, value) {
    if (value !== undefined && value !== null && value !== "") obj[key] = value;
  }

  function buildJob() {
    const kind = $("job-kind").value;
    const names = [...$("job-characters").querySelectorAll("input:checked")].map((i) => i.value);
    const taken = new Set();
    const characters = {};
    const aliases = names.map((n) => {
      const a = aliasFor(n, taken);
      characters[a] = n;
      return a;
    });
    const shot = { id: `${kind}-1`, kind, preset: $("job-preset").value.trim() };
    putIf(shot, "seed", num("job-seed"));
    putIf(shot, "width", num("job-width"));
    putIf(shot, "height", num("job-height"));
    putIf(shot, "steps", num("job-steps"));
    const prompt = $("job-prompt").value;
    if (kind === "still") {
      shot.prompt = prompt;
      if (aliases.length) shot.characters = aliases;
      putIf(shot, "candidates", num("job-candidates"));
      const strength = num("job-identity");
      if (strength !== undefined && strength !== 1) shot.identity_strength = strength;
    } else if (kind === "video") {
      shot.prompt = prompt;
      if (aliases.length) shot.character = aliases[0];
      putIf(shot, "seconds", num("job-seconds"));
      putIf(shot, "motion", $("job-motion").value);
      putIf(shot, "fps", num("job-fps"));
    } else {
      if (aliases.length) shot.character = aliases[0];
      putIf(shot, "segment_seconds", num("job-segment"));
      putIf(shot, "fps", num("job-fps"));
      const minScore = num("job-minscore");
      if (minScore !== undefined) shot.drift = { min_score: minScore };
      shot.shots = $("job-beats")
        .value.split("\n")
        .map((line) => line.trim())
        .filter(Boolean)
        .map((line) => {
          const m = line.match(/^([0-9]+(?:\.[0-9]+)?)\s*\|\s*(.+)$/);
          return m ? { seconds: Number(m[1]), prompt: m[2] } : { prompt: line };
        });
    }
    return { version: 1, name: $("job-name").value.trim(), characters, shots: [shot] };
  }

  function previewJob() {
    const kind = $("job-kind").value;
    for (const box of document.querySelectorAll("#job-form [data-kind]")) box.hidden = box.dataset.kind !== kind;
    $("job-prompt").closest("label").hidden = kind === "sequence";
    $("job-prompt").required = kind !== "sequence";
    $("job-preview").textContent = JSON.stringify(buildJob(), null, 2);
  }

  async function submitJob(ev) {
    ev.preventDefault();
    const doc = buildJob();
    const info = await apiJson("/api/jobs", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(doc),
    });
    state.jobs.set(info.id, info);
    flash(`submitted ${info.name} (${info.id})`);
    window.location.hash = "#/jobs";
    watch(info);
  }

  async function loadPresets() {
    // The page carries the preset names of its release; a server that lists its presets replaces them.
    try {
      const res = await fetch("/api/presets", { credentials: "same-origin" });
      if (!res.ok) return;
      const presets = await res.json();
      if (!Array.isArray(presets) || !presets.length) return;
      const list = $("preset-list");
      list.replaceChildren();
      for (const p of presets) {
        const name = typeof p === "string" ? p : p && p.name;
        if (typeof name === "string") list.append(el("option", { value: name }));
      }
    } catch (_) {
      /* keep the built-in list */
    }
  }

  // ---------------------------------------------------------------- jobs (live)

  async function refreshJobs() {
    const list = await apiJson("/api/jobs");
    for (const b of list) {
      const known = state.jobs.get(b.id);
      state.jobs.set(b.id, known && known.shots && !b.shots ? { ...known, ...b, shots: known.shots } : b);
      if (ACTIVE.has(b.status)) watch(b);
    }
    renderJobs();
    return list;
  }

  function watch(batch) {
    if (!ACTIVE.has(batch.status)) return;
    if (state.sse && !state.streams.has(batch.id)) {
      const es = new EventSource(`/api/jobs/${enc(batch.id)}/events`);
      state.streams.set(batch.id, es);
      const onData = (ev) => {
        try {
          update(JSON.parse(ev.data));
        } catch (_) {
          /* a malformed event is skipped */
        }
      };
      es.addEventListener("progress", onData);
      es.addEventListener("message", onData);
      es.addEventListener("end", (ev) => {
        onData(ev);
        es.close();
        state.streams.delete(batch.id);
      });
      es.onerror = () => {
        // Lost stream (proxy without SSE, auth, restart): close it and fall back to polling the list.
        es.close();
        state.streams.delete(batch.id);
        state.sse = false;
        startPolling();
      };
    } else if (!state.sse) {
      startPolling();
    }
    $("jobs-mode").textContent = state.sse ? "(live)" : "(polling)";
  }

  function startPolling() {
    $("jobs-mode").textContent = "(polling)";
    if (state.polling) return;
    state.polling = window.setInterval(async () => {
      try {
        const list = await apiJson("/api/jobs");
        for (const b of list) update(b);
        if (!list.some((b) => ACTIVE.has(b.status))) {
          window.clearInterval(state.polling);
          state.polling = null;
        }
      } catch (err) {
        report(err);
      }
    }, POLL_MS);
  }

  function update(batch) {
    if (!batch || typeof batch.id !== "string") return;
    const before = state.jobs.get(batch.id);
    state.jobs.set(batch.id, before && before.shots && !batch.shots ? { ...before, ...batch, shots: before.shots } : batch);
    renderJobs();
    if (!ACTIVE.has(batch.status) && before && ACTIVE.has(before.status)) {
      state.outputs.delete(batch.id);
      flash(`${batch.name}: ${batch.status}${batch.error ? ` (${batch.error})` : ""}`, batch.status === "done" ? "info" : "error");
      if (state.route === "gallery" || state.route === "home") renderGallery().catch(report);
    }
  }

  function totals(b) {
    const counts = b.counts || {};
    const total = Object.values(counts).reduce((a, n) => a + (Number(n) || 0), 0) || (b.shots || []).length;
    const finished = ["done", "failed", "skipped", "cancelled"].reduce((a, k) => a + (Number(counts[k]) || 0), 0);
    return { total, finished };
  }

  function sorted(batches) {
    return [...batches].sort((a, b) => String(b.created).localeCompare(String(a.created)));
  }

  function renderJobs() {
    const list = $("jobs-list");
    list.replaceChildren();
    for (const b of sorted(state.jobs.values())) {
      const { total, finished } = totals(b);
      const p = b.progress || {};
      const shotBar = el("progress", { max: Math.max(1, total), value: finished });
      const stepBar = el("progress", { max: Math.max(1, Number(p.steps) || 1), value: Number(p.step) || 0 });
      const counts = Object.entries(b.counts || {}).filter(([, n]) => n).map(([k, n]) => `${n} ${k}`).join(", ");
      const cancel = ACTIVE.has(b.status)
        ? el("button", { type: "button", class: "danger small", onclick: () => cancelJob(b.id).catch(report), text: "Cancel" })
        : null;
      list.append(
        el("div", { class: `job ${b.status}`, "data-id": b.id },
          el("div", { class: "row" }, el("strong", { text: b.name }), badge(b.status), el("span", { class: "muted", text: `${b.id} · ${fmtTime(b.created)}` }), cancel),
          el("div", { class: "row" }, el("span", { class: "label", text: `shots ${finished}/${total}` }), shotBar, el("span", { class: "muted", text: counts })),
          b.status === "running"
            ? el("div", { class: "row" }, el("span", { class: "label", text: `${b.current || "..."} step ${p.step ?? 0}/${p.steps ?? "?"}` }), stepBar, el("span", { class: "muted", text: fmtEta(p.eta_s) }))
            : null,
          b.error ? el("div", { class: "error", text: b.error }) : null),
      );
    }
    $("jobs-empty").hidden = state.jobs.size > 0;
  }

  async function cancelJob(id) {
    const info = await apiJson(`/api/jobs/${enc(id)}/cancel`, { method: "POST" });
    if (info && info.id) update(info);
  }

  // ---------------------------------------------------------------- gallery

  async function outputsOf(batch) {
    if (!state.outputs.has(batch.id) || ACTIVE.has(batch.status)) {
      state.outputs.set(batch.id, await apiJson(`/api/outputs?job=${enc(batch.id)}`));
    }
    return state.outputs.get(batch.id);
  }

  function media(o) {
    const src = safeUrl(o.url);
    const path = String(o.path || "");
    if (!src) return el("span", { class: "muted", text: path });
    if (/\.png$|\.jpe?g$|\.webp$/i.test(path)) return el("a", { href: src, target: "_blank", rel: "noopener" }, el("img", { class: "output", src, alt: path, loading: "lazy" }));
    if (/\.mp4$|\.webm$/i.test(path)) return el("video", { class: "output", src, controls: true, preload: "metadata", muted: true });
    return el("a", { href: src, target: "_blank", rel: "noopener", text: path });
  }

  const isImage = (o) => /\.(png|jpe?g|webp)$/i.test(String(o.path || ""));
  const isJson = (o) => /\.json$/i.test(String(o.path || ""));

  // Score plots, charts, contact sheets and worst-frame sheets are shown beside the renders, not as renders.
  function isPlot(o) {
    if (!isImage(o)) return false;
    if (o.kind === "score" || o.kind === "train") return true;
    return /(plot|chart|sheet|worst|frames|report)[^/]*$/i.test(String(o.path || ""));
  }

  // The score of this very file (a still candidate's own) when its metadata has one, else its shot's.
  function scoreOf(o) {
    const c = o.metadata && o.metadata.consistency;
    if (c && typeof c.score === "number") return c.score;
    return typeof o.score === "number" ? o.score : null;
  }

  function scoreNote(o) {
    const c = o.metadata && o.metadata.consistency;
    if (c && typeof c.skipped === "string") return `not scored: ${c.skipped}`;
    const chars = o.parameters && (o.parameters.characters || o.parameters.character);
    const hasCharacter = Array.isArray(chars) ? chars.length > 0 : Boolean(chars);
    return hasCharacter ? "no score (no face found)" : "no score (no character)";
  }

  async function renderGallery() {
    const list = $("gallery-list");
    const batches = sorted(state.jobs.values()).filter((b) => !ACTIVE.has(b.status) || (b.counts && b.counts.done));
    const blocks = [];
    for (const b of batches) {
      let outputs;
      try {
        outputs = await outputsOf(b);
      } catch (err) {
        blocks.push(el("div", { class: "error", text: `${b.name}: ${err.message}` }));
        continue;
      }
      if (!outputs.length) continue;
      const grid = el("div", { class: "cards" });
      for (const o of outputs.filter((x) => !isPlot(x) && !isJson(x))) {
        const score = fmtScore(scoreOf(o));
        grid.append(
          el("figure", { class: "card output-card", "data-path": o.path },
            media(o),
            el("figcaption", {},
              el("strong", { text: o.shot }), " ", el("span", { class: "muted", text: o.kind }), el("br"),
              el("span", { class: score ? "score" : "score none", text: score ? `consistency ${score}` : scoreNote(o) }),
              el("br"), el("span", { class: "muted small", text: o.path }))),
        );
      }
      for (const o of outputs.filter(isPlot)) {
        const score = fmtScore(scoreOf(o));
        grid.append(
          el("figure", { class: "card plot-card", "data-path": o.path }, media(o),
            el("figcaption", {},
              el("strong", { text: o.shot }), " ", el("span", { class: "muted", text: o.kind }),
              score ? el("span", { class: "score", text: ` ${score}` }) : null, el("br"),
              el("span", { class: "muted small", text: o.path }))),
        );
      }
      const files = outputs.filter(isJson);
      const links = files.length
        ? el("p", { class: "small" }, "reports: ", ...files.flatMap((o, i) => [i ? " · " : "", media(o)]))
        : null;
      blocks.push(el("section", { class: "batch", "data-id": b.id },
        el("h3", {}, b.name, " ", badge(b.status), " ", el("span", { class: "muted small", text: b.id })), grid, links));
    }
    list.replaceChildren(...blocks);
    $("gallery-empty").hidden = blocks.length > 0;
  }

  // ---------------------------------------------------------------- start

  async function start() {
    window.addEventListener("hashchange", route);
    $("library-filter").addEventListener("submit", (ev) => {
      ev.preventDefault();
      loadLibrary().catch(report);
    });
    $("import-form").addEventListener("submit", (ev) => importFlx(ev).catch(report));
    $("create-form").addEventListener("submit", (ev) => createCharacter(ev).catch(report));
    $("addref-form").addEventListener("submit", (ev) => addReferences(ev).catch(report));
    $("char-delete").addEventListener("click", () => deleteCharacter().catch(report));
    $("variant-form").addEventListener("submit", (ev) => makeVariant(ev).catch(report));
    $("job-form").addEventListener("submit", (ev) => submitJob(ev).catch(report));
    $("job-form").addEventListener("input", previewJob);
    $("job-form").addEventListener("change", previewJob);
    previewJob();
    try {
      const health = await (await fetch("/api/health", { credentials: "same-origin" })).json();
      state.auth = Boolean(health.auth);
      $("server-info").textContent = `v${health.version}${health.auth ? " · token auth" : " · local"}`;
    } catch (_) {
      $("server-info").textContent = "server unreachable";
    }
    loadPresets();
    route();
    if (state.route !== "home" && state.route !== "jobs" && state.route !== "gallery") refreshJobs().catch(() => {});
  }

  document.addEventListener("DOMContentLoaded", () => start().catch(report));
})();
