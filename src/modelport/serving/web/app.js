// modelport's web chat: talks to the server it came from through two OpenAI routes only,
// GET v1/models (the model's name) and POST v1/chat/completions with stream: true.
// Paths are relative, so the page also works when the app is mounted under a prefix.
// Model output only ever becomes text nodes (never innerHTML): a model can write "<script>".
"use strict";

(() => {
  const KEY_STORE = "modelport.apiKey";
  const SETTINGS_STORE = "modelport.settings";
  const MAX_BUSY_RETRIES = 20;           // 503 answers in a row before the page gives up
  const FINISH_LABELS = {
    stop: "",                            // the model ended its answer: nothing to say
    length: "max tokens reached",
    context: "context full",
    cancelled: "cancelled by the server",
    content_filter: "content filter",
  };

  const $ = (id) => document.getElementById(id);
  const ui = {
    model: $("model-name"), newChat: $("new-chat"), settings: $("settings"),
    system: $("system-prompt"), temperature: $("temperature"), maxTokens: $("max-tokens"),
    forgetKey: $("forget-key"), conversation: $("conversation"), hint: $("empty-hint"),
    status: $("status"), keyForm: $("key-form"), keyInput: $("api-key"),
    composer: $("composer"), prompt: $("prompt"), send: $("send"), stop: $("stop"),
  };

  let modelId = null;                    // from v1/models
  let history = [];                      // [{role, content}] of this conversation, system prompt excluded
  let inFlight = null;                   // AbortController of the request running now
  let conversation = 0;                  // bumped by "New chat": a late answer stays out of the new one

  // ---- storage (localStorage can be unavailable: private windows, file:// pages) ----------------

  const store = {
    get(key) { try { return localStorage.getItem(key); } catch { return null; } },
    set(key, value) { try { localStorage.setItem(key, value); } catch { /* kept for this page only */ } },
    remove(key) { try { localStorage.removeItem(key); } catch { /* nothing stored */ } },
  };
  let sessionKey = store.get(KEY_STORE);

  function loadSettings() {
    try {
      const saved = JSON.parse(store.get(SETTINGS_STORE) || "{}");
      if (typeof saved.system === "string") ui.system.value = saved.system;
      if (typeof saved.temperature === "number") ui.temperature.value = saved.temperature;
      if (typeof saved.maxTokens === "number") ui.maxTokens.value = saved.maxTokens;
    } catch { /* a damaged entry: defaults */ }
  }

  function saveSettings() {
    store.set(SETTINGS_STORE, JSON.stringify(
      { system: ui.system.value, temperature: temperature(), maxTokens: maxTokens() }));
  }

  function temperature() {
    const t = Number.parseFloat(ui.temperature.value);
    return Number.isFinite(t) ? Math.min(Math.max(t, 0), 2) : 0.7;
  }

  function maxTokens() {
    const n = Number.parseInt(ui.maxTokens.value, 10);
    return Number.isFinite(n) && n >= 1 ? n : 512;
  }

  // ---- display ------------------------------------------------------------------------------------

  function setStatus(text, kind = "") {
    ui.status.textContent = text;
    ui.status.className = "status" + (kind ? " " + kind : "");
  }

  function nearBottom() {
    const c = ui.conversation;
    return c.scrollHeight - c.scrollTop - c.clientHeight < 48;
  }

  function follow(wasNearBottom) {
    if (wasNearBottom) ui.conversation.scrollTop = ui.conversation.scrollHeight;
  }

  /** A message bubble; its text is one Text node that streamed pieces are appended to. */
  function addMessage(role, content) {
    ui.hint.hidden = true;
    const stay = nearBottom();
    const box = document.createElement("article");
    box.className = "msg " + role;
    const who = document.createElement("h2");
    who.className = "who";
    who.textContent = role === "user" ? "You" : role === "error" ? "Error" : "Assistant";
    const body = document.createElement("div");
    body.className = "text";
    const text = document.createTextNode(content);
    body.append(text);
    box.append(who, body);
    if (role === "error") box.setAttribute("role", "alert");
    ui.conversation.append(box);
    follow(stay || role === "user");
    return { box, body, text };
  }

  function appendText(message, piece) {
    const stay = nearBottom();
    message.text.appendData(piece);
    follow(stay);
  }

  function setStats(message, line, title) {
    let stats = message.box.querySelector(".stats");
    if (!stats) {
      stats = document.createElement("p");
      stats.className = "stats";
      message.box.append(stats);
    }
    stats.textContent = line;
    if (title) stats.title = title;
  }

  function setBusy(busy) {
    ui.send.disabled = busy;
    ui.stop.disabled = !busy;
    ui.composer.classList.toggle("busy", busy);
  }

  // ---- HTTP ---------------------------------------------------------------------------------------

  class ApiError extends Error {}

  function headers() {
    const h = { "Content-Type": "application/json", Accept: "application/json, text/event-stream" };
    if (sessionKey) h.Authorization = "Bearer " + sessionKey;
    return h;
  }

  async function errorMessage(res) {
    const text = await res.text().catch(() => "");
    try {
      const body = JSON.parse(text);
      const err = body.error ?? body.detail ?? body;
      if (typeof err === "string") return `${res.status}: ${err}`;
      if (err && typeof err.message === "string") return `${res.status}: ${err.message}`;
    } catch { /* not JSON */ }
    return `${res.status} ${res.statusText}${text ? ": " + text.slice(0, 300) : ""}`;
  }

  /** Seconds from a Retry-After header (seconds or an HTTP date), 1 to 60; 2 when absent. */
  function retryAfter(res) {
    const value = res.headers.get("Retry-After");
    let seconds = Number.parseFloat(value);
    if (!Number.isFinite(seconds) && value) seconds = (Date.parse(value) - Date.now()) / 1000;
    return Math.min(Math.max(Number.isFinite(seconds) ? Math.ceil(seconds) : 2, 1), 60);
  }

  function sleep(ms, signal) {
    return new Promise((resolve, reject) => {
      const timer = setTimeout(resolve, ms);
      signal?.addEventListener("abort", () => { clearTimeout(timer); reject(signal.reason); }, { once: true });
    });
  }

  /** Resolves once the user has typed an API key (stored for the next visit), rejects on stop. */
  function askForKey(signal, refused) {
    ui.keyForm.hidden = false;
    setStatus(refused ? "The server refused this API key: enter another." : "This server needs an API key.", "error");
    ui.keyInput.value = "";
    ui.keyInput.focus();
    return new Promise((resolve, reject) => {
      const done = (event) => {
        event.preventDefault();
        const key = ui.keyInput.value.trim();
        if (!key) return;
        ui.keyForm.removeEventListener("submit", done);
        ui.keyForm.hidden = true;
        sessionKey = key;
        store.set(KEY_STORE, key);
        ui.forgetKey.hidden = false;
        setStatus("");
        ui.prompt.focus();
        resolve();
      };
      ui.keyForm.addEventListener("submit", done);
      signal?.addEventListener("abort", () => {
        ui.keyForm.removeEventListener("submit", done);
        ui.keyForm.hidden = true;
        reject(signal.reason);
      }, { once: true });
    });
  }

  /** fetch with the key; 401 asks for a key and tries again, 503 waits Retry-After and tries again. */
  async function call(path, init, signal) {
    for (let busy = 0; ; ) {
      const res = await fetch(path, { ...init, headers: headers(), signal });
      if (res.status === 401) {
        await askForKey(signal, Boolean(sessionKey));
        continue;
      }
      if (res.status === 503 && busy < MAX_BUSY_RETRIES) {
        busy += 1;
        for (let left = retryAfter(res); left > 0; left -= 1) {
          setStatus(`server busy, retrying in ${left} s (try ${busy} of ${MAX_BUSY_RETRIES})`, "busy");
          await sleep(1000, signal);
        }
        setStatus("retrying…", "busy");
        continue;
      }
      if (!res.ok) throw new ApiError(await errorMessage(res));
      return res;
    }
  }

  /** The `data:` payloads of a server-sent event stream, read from fetch's ReadableStream. */
  async function* sseData(body) {
    const reader = body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    const events = function* (final) {
      // An event ends at a blank line; CRLF and CR line ends count as LF.
      buffer = buffer.replace(/\r\n/g, "\n");
      if (!final && buffer.endsWith("\r")) return;
      buffer = buffer.replace(/\r/g, "\n");
      let end;
      while ((end = buffer.indexOf("\n\n")) >= 0 || (final && buffer.trim())) {
        const block = end >= 0 ? buffer.slice(0, end) : buffer;
        buffer = end >= 0 ? buffer.slice(end + 2) : "";
        const data = block.split("\n").filter((l) => l.startsWith("data:"))
          .map((l) => l.slice(l.startsWith("data: ") ? 6 : 5)).join("\n");
        if (data) yield data;
      }
    };
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += decoder.decode(value, { stream: true });
        yield* events(false);
      }
      buffer += decoder.decode();
      yield* events(true);
    } finally {
      reader.releaseLock();
    }
  }

  // ---- the conversation ---------------------------------------------------------------------------

  async function loadModel() {
    try {
      const res = await call("v1/models", { method: "GET" });
      const body = await res.json();
      const models = Array.isArray(body.data) ? body.data : [];
      if (!models.length) throw new ApiError("the server lists no model");
      modelId = String(models[0].id);
      ui.model.textContent = modelId;
      document.title = modelId + " · modelport chat";
    } catch (err) {
      ui.model.textContent = "unavailable";
      setStatus("Cannot list the server's models: " + err.message, "error");
    }
  }

  function messagesToSend() {
    const system = ui.system.value.trim();
    return system ? [{ role: "system", content: system }, ...history] : [...history];
  }

  function statsLine(s, streaming = false) {
    const parts = [];
    const tokens = s.usage?.completion_tokens ?? s.pieces;
    parts.push(`${tokens} token${tokens === 1 ? "" : "s"}`);
    // Generation speed as bench/run.py measures it: tokens after the first over the time they took.
    const seconds = s.last !== null && s.first !== null ? (s.last - s.first) / 1000 : 0;
    if (tokens > 1 && seconds > 0) parts.push(`${((tokens - 1) / seconds).toFixed(1)} tok/s`);
    if (s.first !== null) parts.push(`first token ${Math.round(s.first - s.start)} ms`);
    if (streaming) return parts.join(" · ") + " …";
    const reason = s.stopped ? "stopped" : FINISH_LABELS[s.finish] ?? s.finish ?? "ended without a finish reason";
    if (reason) parts.push(reason);
    return parts.join(" · ");
  }

  function serverTitle(s) {
    const t = s.timings;
    if (!t) return "";
    const fmt = (x) => (typeof x === "number" ? x.toFixed(1) : "?");
    return `server: prompt ${fmt(t.prompt_ms)} ms, generation ${fmt(t.predicted_ms)} ms, ` +
      `${fmt(t.predicted_per_second)} tok/s` +
      (s.usage ? `; prompt ${s.usage.prompt_tokens} tokens` : "");
  }

  async function send(content) {
    const controller = new AbortController();
    const mine = conversation;
    inFlight = controller;
    setBusy(true);
    setStatus("");
    history.push({ role: "user", content });
    const question = addMessage("user", content);
    const answer = addMessage("assistant", "");
    answer.box.setAttribute("aria-busy", "true");     // read out once, when complete
    const s = { start: performance.now(), first: null, last: null, pieces: 0, finish: null,
                usage: null, timings: null, stopped: false, text: "" };
    const body = {
      model: modelId ?? undefined, messages: messagesToSend(), stream: true,
      stream_options: { include_usage: true }, temperature: temperature(), max_tokens: maxTokens(),
    };
    let failure = null;
    try {
      const res = await call("v1/chat/completions", { method: "POST", body: JSON.stringify(body) },
                             controller.signal);
      setStatus("");
      for await (const data of sseData(res.body)) {
        if (data === "[DONE]") break;
        const chunk = JSON.parse(data);
        if (chunk.error) throw new ApiError(chunk.error.message ?? JSON.stringify(chunk.error));
        for (const choice of chunk.choices ?? []) {
          const piece = choice.delta?.content;
          if (piece) {
            const now = performance.now();
            if (s.first === null) s.first = now;
            s.last = now;
            s.pieces += 1;
            s.text += piece;
            appendText(answer, piece);
          }
          if (choice.finish_reason) s.finish = choice.finish_reason;
        }
        if (chunk.usage) s.usage = chunk.usage;
        if (chunk.timings) s.timings = chunk.timings;
        setStats(answer, s.first === null ? "waiting for the first token…" : statsLine(s, true));
      }
    } catch (err) {
      if (controller.signal.aborted) s.stopped = true;
      else failure = err;
    } finally {
      answer.box.removeAttribute("aria-busy");
      if (inFlight === controller) inFlight = null;
      setBusy(false);
    }
    if (mine !== conversation) return;                    // "New chat" was pressed meanwhile
    if (s.text || (!failure && !s.stopped)) {               // an empty answer that ended normally is an answer
      history.push({ role: "assistant", content: s.text });
      if (!s.text) answer.box.classList.add("empty");
      answer.box.dataset.finish = s.stopped ? "stopped" : s.finish ?? "none";
      setStats(answer, statsLine(s), serverTitle(s));
    } else {
      answer.box.remove();
      history.pop();                                      // nothing answered it
      question.box.classList.add("unsent");
      if (!ui.prompt.value) ui.prompt.value = content;                           // to send again
    }
    if (failure) {
      const what = failure instanceof ApiError ? failure.message
        : failure instanceof TypeError ? "cannot reach the server (" + failure.message + ")"
        : String(failure.message ?? failure);
      addMessage("error", what);
      setStatus("");
    } else if (s.stopped) {
      setStatus("Stopped.");
    }
  }

  function stop() {
    inFlight?.abort();
  }

  function newChat() {
    stop();
    conversation += 1;
    history = [];
    for (const el of [...ui.conversation.children]) if (el !== ui.hint) el.remove();
    ui.hint.hidden = false;
    setStatus("");
    ui.prompt.focus();
  }

  function submit() {
    const content = ui.prompt.value;
    if (!content.trim()) return;
    if (inFlight) {
      setStatus("Wait for the answer, or stop it first.");
      return;
    }
    ui.prompt.value = "";
    send(content);
  }

  // ---- wiring -------------------------------------------------------------------------------------

  ui.composer.addEventListener("submit", (event) => { event.preventDefault(); submit(); });
  ui.prompt.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      submit();
    }
  });
  document.addEventListener("keydown", (event) => {
    if (event.key === "Escape" && inFlight) stop();
  });
  ui.stop.addEventListener("click", stop);
  ui.newChat.addEventListener("click", newChat);
  ui.forgetKey.addEventListener("click", () => {
    sessionKey = null;
    store.remove(KEY_STORE);
    ui.forgetKey.hidden = true;
    setStatus("API key forgotten.");
  });
  for (const input of [ui.system, ui.temperature, ui.maxTokens]) input.addEventListener("change", saveSettings);

  ui.forgetKey.hidden = !sessionKey;
  loadSettings();
  loadModel();
  ui.prompt.focus();
})();
