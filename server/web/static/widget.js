/* textbook-chat widget: a floating chat panel for a Docusaurus book, no build step.
 *   <script src="https://chat.example.org/widget.js" data-server="wss://chat.example.org/v1/chat" defer></script>
 * The page provides `window.getToken()` (async, returns a JWT). Everything the model or the book
 * says goes through renderMarkdown, which escapes all HTML before it applies Markdown. */
(() => {
  "use strict";
  if (window.TextbookChat) return;

  // ---- Markdown: escape everything first, then a small subset

  const ESC = { "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" };
  const escapeHtml = (s) => String(s).replace(/[&<>"']/g, (c) => ESC[c]);

  /** An absolute http(s) URL for `raw` (relative ones resolve against the page), else null. */
  function safeUrl(raw) {
    if (typeof raw !== "string" || !raw || /[\u0000-\u0020\u007f]/.test(raw)) return null;
    try {
      const url = new URL(raw, document.baseURI);
      return url.protocol === "http:" || url.protocol === "https:" ? url.href : null;
    } catch {
      return null;
    }
  }

  const PH = /\u0000(\d+)\u0000/g;
  const LINK = /(!?)\[([^\[\]\n]*)\]\(([^()\s]*(?:\([^()\s]*\)[^()\s]*)*)(?:\s+"[^"\n]*")?\)/g;

  // Inline Markdown of raw text: code spans, escapes and links are set aside as finished HTML
  // (placeholders), the rest is escaped, then emphasis is applied to the escaped text.
  function inlineHtml(raw, stash, links) {
    const keep = (html) => "\u0000" + (stash.push(html) - 1) + "\u0000";
    let s = raw.replace(/(`+)([\s\S]*?[^`])\1(?!`)/g, (m, t, code) =>
      keep("<code>" + escapeHtml(code.replace(/^ ([\s\S]*) $/, "$1")) + "</code>"),
    );
    s = s.replace(/\\([\\`*_{}\[\]()#+\-.!|~<>])/g, (m, c) => keep(escapeHtml(c)));
    if (links) {
      s = s.replace(LINK, (m, bang, text, url) => {
        const label = inlineHtml(text || (bang ? "image" : url), stash, false);
        const href = safeUrl(url.replace(/^<|>$/g, ""));
        return keep(href ? `<a href="${escapeHtml(href)}" rel="noopener noreferrer nofollow">${label}</a>` : label);
      });
    }
    return escapeHtml(s)
      .replace(/\*\*(?=\S)([\s\S]*?\S)\*\*/g, "<strong>$1</strong>")
      .replace(/(^|[^\w])__(?=\S)([\s\S]*?\S)__(?!\w)/g, "$1<strong>$2</strong>")
      .replace(/\*(?=[^\s*])([^*]*?[^\s*])\*/g, "<em>$1</em>")
      .replace(/\*(?=[^\s*])([^*])\*/g, "<em>$1</em>")
      .replace(/(^|[^\w])_(?=[^\s_])([^_]*?[^\s_]|[^\s_])_(?!\w)/g, "$1<em>$2</em>")
      .replace(/~~(?=\S)([\s\S]*?\S)~~/g, "<del>$1</del>");
  }

  function inline(raw) {
    const stash = [];
    let html = inlineHtml(raw, stash, true);
    for (let n = 0; n < 4 && html.includes("\u0000"); n++) html = html.replace(PH, (m, i) => stash[+i]);
    return html;
  }

  const plain = (raw) =>
    raw.replace(LINK, "$2").replace(/[`*_~]|\\(?=.)/g, "").replace(/\s*\{#[\w-]+\}\s*$/, "").trim();

  const FENCE = /^( {0,3})(`{3,}|~{3,})\s*([^`\s]*)[^`]*$/;
  const HEADING = /^ {0,3}(#{1,6})(?:[ \t]+(.*?))?(?:[ \t]+#+)?[ \t]*$/;
  const HR = /^ {0,3}([-*_])(?:[ \t]*\1){2,}[ \t]*$/;
  const LIST = /^( *)([-*+]|\d{1,9}[.)])(?:[ \t]+|$)/;
  const TABLE_SEP = /^\s*\|?\s*:?-+:?\s*(\|\s*:?-+:?\s*)*\|?\s*$/;
  const ADMONITION = /^ {0,3}:::\s*([\w-]+)\s*(.*)$/;
  const JSX_LINE = /^\s*<\/?[A-Za-z][\w.:-]*(\s[^<>]*)?\/?>\s*$/;
  const blank = (l) => !l || !l.trim();
  const startsBlock = (l) =>
    FENCE.test(l) || HEADING.test(l) || HR.test(l) || LIST.test(l) || /^ {0,3}(>|:::)/.test(l);
  const cells = (l) =>
    l.trim().replace(/^\|/, "").replace(/(^|[^\\])\|$/, "$1").split(/(?<!\\)\|/).map((c) => c.trim());

  function slug(text, seen) {
    let id = plain(text).toLowerCase().replace(/[^\p{L}\p{N}\s_-]/gu, "").trim().replace(/\s/g, "-") || "section";
    if (seen.has(id)) id += "-" + seen.get(id);
    seen.set(id, (seen.get(id) || 0) + 1);
    return id;
  }

  function blocks(lines, o) {
    const out = [];
    const D = o.dir ? ' dir="auto"' : "";
    let para = [];
    const flush = () => {
      if (para.length) out.push(o.tight ? inline(para.join("\n")) : `<p${D}>${inline(para.join("\n"))}</p>`);
      para = [];
    };
    for (let i = 0; i < lines.length; ) {
      const line = lines[i];
      let m;
      if (blank(line)) {
        flush();
        i++;
      } else if ((m = line.match(FENCE))) {
        flush();
        const close = new RegExp(`^ {0,3}${m[2][0] === "`" ? "`" : "~"}{${m[2].length},}\\s*$`);
        const body = [];
        for (i++; i < lines.length && !close.test(lines[i]); i++) body.push(lines[i].replace(new RegExp(`^ {0,${m[1].length}}`), ""));
        i++;
        const lang = m[3].replace(/[^\w+-]/g, "");
        out.push(`<pre dir="ltr"><code${lang ? ` class="language-${lang}"` : ""}>${escapeHtml(body.join("\n"))}</code></pre>`);
      } else if ((m = line.match(HEADING))) {
        flush();
        let text = m[2] || "";
        const custom = text.match(/\s*\{#([\w-]+)\}\s*$/);
        if (custom) text = text.slice(0, custom.index);
        const level = Math.min(6, m[1].length + (o.headingOffset || 0));
        const id = o.ids ? ` id="${escapeHtml(custom ? custom[1] : slug(text, o.seen))}"` : "";
        out.push(`<h${level}${id}${D}>${inline(text)}</h${level}>`);
        i++;
      } else if (HR.test(line)) {
        flush();
        out.push("<hr>");
        i++;
      } else if ((m = line.match(ADMONITION))) {
        flush();
        const body = [];
        let depth = 1;
        for (i++; i < lines.length; i++) {
          if (ADMONITION.test(lines[i])) depth++;
          else if (/^ {0,3}:::\s*$/.test(lines[i]) && --depth === 0) break;
          body.push(lines[i]);
        }
        i++;
        const kind = m[1].toLowerCase().replace(/[^a-z-]/g, "");
        const label = m[2].replace(/^\[(.*)\]$/, "$1").trim();
        const title = label ? inline(label) : escapeHtml(kind.toUpperCase());
        out.push(`<aside class="tc-admonition tc-admonition-${kind}"><p class="tc-admonition-title"${D}>${title}</p>${blocks(body, { ...o, tight: false })}</aside>`);
      } else if (/^ {0,3}>/.test(line)) {
        flush();
        const body = [];
        for (; i < lines.length && /^ {0,3}>/.test(lines[i]); i++) body.push(lines[i].replace(/^ {0,3}> ?/, ""));
        out.push(`<blockquote${D}>${blocks(body, { ...o, tight: false })}</blockquote>`);
      } else if ((m = line.match(LIST)) && (!para.length || m[2] === "1." || /^[-*+]$/.test(m[2]))) {
        flush();
        i = list(lines, i, o, out);
      } else if (line.includes("|") && i + 1 < lines.length && lines[i + 1].includes("|") && TABLE_SEP.test(lines[i + 1])) {
        flush();
        const head = cells(line).map((c) => `<th${D}>${inline(c)}</th>`).join("");
        const rows = [];
        for (i += 2; i < lines.length && !blank(lines[i]) && lines[i].includes("|"); i++) {
          rows.push("<tr>" + cells(lines[i]).map((c) => `<td${D}>${inline(c)}</td>`).join("") + "</tr>");
        }
        out.push(`<div class="tc-table"><table><thead><tr>${head}</tr></thead><tbody>${rows.join("")}</tbody></table></div>`);
      } else if (o.book && JSX_LINE.test(line)) {
        flush(); // MDX components (<Tabs>, <TabItem …>) are layout, not text: drop the tag line
        i++;
      } else {
        para.push(line.trim());
        i++;
      }
    }
    flush();
    return out.join("");
  }

  function list(lines, i, o, out) {
    const first = lines[i].match(LIST);
    const ordered = /\d/.test(first[2]);
    const items = [];
    let item = null;
    let loose = false;
    for (; i < lines.length; i++) {
      const line = lines[i];
      const m = line.match(LIST);
      if (m && (!item || m[1].length < item.indent)) {
        if (/\d/.test(m[2]) !== ordered || (item && HR.test(line))) break;
        item = { indent: m[0].length, lines: [line.slice(m[0].length)] };
        items.push(item);
      } else if (blank(line)) {
        let j = i + 1;
        while (j < lines.length && blank(lines[j])) j++;
        const next = lines[j] || "";
        const nm = next.match(LIST);
        if (j >= lines.length || !(next.search(/\S/) >= item.indent || (nm && /\d/.test(nm[2]) === ordered && nm[1].length < item.indent))) break;
        loose = true;
        item.lines.push("");
      } else if (line.search(/\S/) >= item.indent) {
        item.lines.push(line.slice(item.indent));
      } else if (!blank(item.lines[item.lines.length - 1]) && !startsBlock(line)) {
        item.lines.push(line.trim()); // lazy continuation of the item's paragraph
      } else {
        break;
      }
    }
    const tag = ordered ? "ol" : "ul";
    const start = ordered && parseInt(first[2], 10) !== 1 ? ` start="${parseInt(first[2], 10)}"` : "";
    const lis = items.map((it) => `<li${o.dir ? ' dir="auto"' : ""}>${blocks(it.lines, { ...o, tight: !loose })}</li>`);
    out.push(`<${tag}${start}>${lis.join("")}</${tag}>`);
    return i;
  }

  /** HTML for Markdown text; every character of `text` is escaped before any markup is added.
   * Options: headingOffset (n levels down), ids (heading anchors), book (drop MDX tag lines). */
  function renderMarkdown(text, options = {}) {
    const lines = String(text ?? "").replace(/\u0000/g, "\uFFFD").replace(/\r\n?/g, "\n").split("\n");
    return blocks(lines, { dir: true, seen: new Map(), ...options });
  }

  // ---- the protocol client: one socket, reconnects, resumes every unfinished stream

  const newId = (prefix = "w") =>
    prefix + "-" + (crypto.randomUUID ? crypto.randomUUID() : Date.now().toString(36) + Math.random().toString(36).slice(2));

  class ChatClient {
    constructor(url) {
      this.url = url;
      this.streams = new Map(); // id → {frame, handler, lastSeq, socket, sent}
      this.listeners = new Set();
      this.state = "idle";
      this.detail = "";
      this.attempt = 0;
      this.authFailures = 0;
      this.ws = null;
      this.tokenCache = null;
      this.stats = { connects: 0, readies: 0, resumes: 0 };
      addEventListener("online", () => (this.state === "offline" || this.state === "reconnecting") && this.connect());
      addEventListener("offline", () => this.state === "reconnecting" && this._setState("offline"));
    }

    onState(fn) {
      this.listeners.add(fn);
      fn(this.state, this.detail);
    }

    _setState(state, detail = "") {
      this.state = state;
      this.detail = detail;
      for (const fn of this.listeners) fn(state, detail);
    }

    /** A JWT from the page's `window.getToken()` hook (a string, or an object with `token`). */
    async token(fresh = false) {
      if (!fresh && this.tokenCache) return this.tokenCache;
      if (typeof window.getToken !== "function") throw new Error("this page defines no window.getToken()");
      const got = await window.getToken();
      const token = typeof got === "string" ? got : got && got.token;
      if (!token) throw new Error("window.getToken() returned no token");
      this.tokenCache = token;
      return token;
    }

    connect() {
      clearTimeout(this.retryTimer);
      if (this.ws) return;
      this._setState("connecting");
      this.stats.connects++;
      let ws;
      try {
        ws = new WebSocket(this.url);
      } catch {
        this._setState("error", "The chat server address is not valid.");
        return;
      }
      this.ws = ws;
      ws.onopen = async () => {
        try {
          const token = await this.token(this.authFailures > 0);
          if (ws === this.ws) ws.send(JSON.stringify({ type: "auth", token }));
        } catch (err) {
          if (ws !== this.ws) return;
          this.ws = null;
          ws.close(4000);
          this._setState("error", "Could not sign in to the chat: " + err.message);
        }
      };
      ws.onmessage = (ev) => {
        if (ws !== this.ws) return;
        this.lastFrameAt = Date.now();
        let frame;
        try {
          frame = JSON.parse(ev.data);
        } catch {
          return;
        }
        this._frame(frame);
      };
      ws.onclose = (ev) => ws === this.ws && this._closed(ev.code);
    }

    /** Start a stream (`ask` or `chapter`); `handler` gets each of its frames exactly once. */
    request(frame, handler, { sent = false } = {}) {
      const s = { frame, handler, lastSeq: 0, socket: null, sent, resent: sent };
      this.streams.set(frame.id, s);
      if (this.state === "open") this._send(s);
      else this.connect();
      return frame.id;
    }

    cancel(id) {
      const s = this.streams.get(id);
      if (!s) return;
      if (s.socket && s.socket === this.ws) this.ws.send(JSON.stringify({ type: "cancel", id }));
      else if (!s.sent) {
        this.streams.delete(id);
        s.handler({ type: "done", id, finish_reason: "cancelled", timings: {} });
      } else s.cancelled = true; // sent on a lost socket: cancel once it is resumed
    }

    /** Close the socket as a network failure would (used by the tests and the ping watchdog). */
    dropConnection() {
      const ws = this.ws;
      if (!ws) return;
      this.ws = null;
      ws.close(4000, "reconnecting");
      this._closed(1006);
    }

    _send(s) {
      const ws = this.ws;
      s.socket = ws;
      if (s.sent) {
        this.stats.resumes++;
        s.resuming = true;
        ws.send(JSON.stringify({ type: "resume", id: s.frame.id, after_seq: s.lastSeq }));
        if (s.cancelled) ws.send(JSON.stringify({ type: "cancel", id: s.frame.id }));
      } else {
        s.sent = true;
        ws.send(JSON.stringify(s.frame));
      }
    }

    _frame(f) {
      if (f.type === "ready") {
        this.stats.readies++;
        this.attempt = 0;
        this.authFailures = 0;
        this._setState("open");
        this._scheduleRefresh(f.expires_at);
        this._schedulePing();
        for (const s of this.streams.values()) if (s.socket !== this.ws) this._send(s);
        return;
      }
      if (f.type === "pong") return;
      if (f.type === "error" && !f.id) {
        if (f.code === "token_expired") this._refresh();
        else if (f.code !== "unauthorized") this.detail = f.message;
        return;
      }
      const s = this.streams.get(f.id);
      if (!s) return;
      if (typeof f.seq === "number") {
        if (f.seq <= s.lastSeq) return; // already seen before a reconnect
        s.lastSeq = f.seq;
      }
      if (f.type === "error" && f.code === "not_found" && s.resuming && s.lastSeq === 0 && !s.resent) {
        s.resent = true; // the server never got the request before the socket dropped: send it again
        s.sent = false;
        this._send(s);
        return;
      }
      s.resuming = false;
      if (f.type === "done" || f.type === "error") this.streams.delete(f.id);
      s.handler(f);
    }

    _closed(code) {
      this.ws = null;
      clearTimeout(this.refreshTimer);
      clearTimeout(this.pingTimer);
      for (const s of this.streams.values()) s.socket = null;
      if (code === 4401 || code === 4408) {
        this.tokenCache = null;
        if (++this.authFailures > 2) {
          this._setState("error", "The chat could not sign you in.");
          return;
        }
      } else if (code === 1008 || code === 1009 || code === 4429) {
        this._setState("error", code === 4429 ? "Too many chat windows are open." : "The chat server closed the connection.");
        return;
      } else if (code === 1000 && !this.streams.size) {
        this._setState("idle"); // closed for idleness: reconnect when there is something to send
        return;
      }
      const base = Math.min(30000, 500 * 2 ** this.attempt++);
      const delay = base / 2 + (Math.random() * base) / 2;
      this._setState(navigator.onLine === false ? "offline" : "reconnecting", Date.now() + delay);
      this.retryTimer = setTimeout(() => this._retry(), delay);
    }

    // An automatic retry the browser says must fail only burns the backoff: "online" calls
    // connect() instead. Explicit connects (the first, "Retry now") always try.
    _retry() {
      if (navigator.onLine === false) this._setState("offline");
      else this.connect();
    }

    _scheduleRefresh(expiresAt) {
      clearTimeout(this.refreshTimer);
      const left = expiresAt * 1000 - Date.now();
      const delay = Math.max(left > 10000 ? 5000 : 500, left - Math.min(60000, left * 0.2));
      this.refreshTimer = setTimeout(() => this._refresh(), delay);
    }

    async _refresh() {
      const ws = this.ws;
      try {
        const token = await this.token(true);
        if (ws && ws === this.ws && ws.readyState === WebSocket.OPEN) ws.send(JSON.stringify({ type: "auth", token }));
      } catch {
        this.refreshTimer = setTimeout(() => this._refresh(), 5000);
      }
    }

    // Browsers hide protocol pings; an unanswered `ping` frame reveals a half-open socket.
    _schedulePing() {
      clearTimeout(this.pingTimer);
      this.pingTimer = setTimeout(() => {
        const ws = this.ws;
        if (!ws || ws.readyState !== WebSocket.OPEN) return;
        if (!this.streams.size) return this._schedulePing(); // idle sockets may time out
        const sentAt = Date.now();
        ws.send(JSON.stringify({ type: "ping" }));
        this.pingTimer = setTimeout(() => {
          if (ws === this.ws && this.lastFrameAt < sentAt) this.dropConnection();
          else this._schedulePing();
        }, 10000);
      }, 25000);
    }
  }

  // ---- page context

  const script = document.currentScript || document.querySelector('script[src*="widget.js"]');
  const attr = (name) => (script && script.getAttribute("data-" + name)) || "";
  const scriptUrl = new URL((script && script.src) || location.href, location.href);
  const serverUrl = attr("server") || `${scriptUrl.protocol === "https:" ? "wss" : "ws"}://${scriptUrl.host}/v1/chat`;
  const apiBase = (attr("api") || serverUrl.replace(/^ws/, "http").replace(/\/v1\/chat\/?$/, "")).replace(/\/$/, "");
  const storeKey = "textbook-chat:" + serverUrl;

  /** The chapter a node belongs to: data-chapter, then the meta tag, then Docusaurus's html class. */
  function chapterFor(node) {
    const el = node && (node.nodeType === 1 ? node : node.parentElement);
    const marked = (el && el.closest("[data-chapter]")) || document.querySelector("[data-chapter]");
    const meta = document.querySelector('meta[name="textbook-chat:chapter"]');
    const docusaurus = document.documentElement.className.match(/(?:^|\s)docs-doc-id-(\S+)/);
    return (marked && marked.dataset.chapter) || (meta && meta.content) || (docusaurus && docusaurus[1]) || undefined;
  }

  async function api(path, init = {}) {
    const client = TextbookChat.client;
    const call = async (fresh) =>
      fetch(apiBase + path, {
        ...init,
        headers: { ...(init.headers || {}), Authorization: "Bearer " + (await client.token(fresh)) },
      });
    let res = await call(false);
    if (res.status === 401) res = await call(true);
    return res;
  }

  // Storage may be disabled: then the conversation just does not survive a page load.
  const store = {
    get(key, session = false) {
      try {
        return JSON.parse((session ? sessionStorage : localStorage).getItem(storeKey + ":" + key));
      } catch {
        return null;
      }
    },
    set(key, value, session = false) {
      try {
        const s = session ? sessionStorage : localStorage;
        value == null ? s.removeItem(storeKey + ":" + key) : s.setItem(storeKey + ":" + key, JSON.stringify(value));
      } catch {}
    },
  };

  const client = new ChatClient(serverUrl);
  const TextbookChat = { version: 1, client, serverUrl, apiBase, api, store, renderMarkdown, escapeHtml, safeUrl, chapterFor, newId };
  // Where a source link goes; a page may replace it (the Docusaurus plugin keeps the reader's locale).
  TextbookChat.sourceUrl = (url) => url;
  window.TextbookChat = TextbookChat;

  const el = (tag, props = {}, ...children) => {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(props)) {
      if (k === "text") node.textContent = v;
      else if (k === "class") node.className = v;
      else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
      else if (v !== false && v !== null && v !== undefined) node.setAttribute(k, v === true ? "" : v);
    }
    node.append(...children.filter(Boolean));
    return node;
  };
  TextbookChat.el = el;

  // ---- the floating panel

  const truncate = (s, n) => (s.length > n ? s.slice(0, n - 1) + "…" : s);
  const speakable = (md) => plain(md.replace(/^```.*$/gm, "").replace(/^[#>|\s-]+/gm, " ")).replace(/\s+/g, " ");

  /** One answer in the log: its Markdown text, re-rendered at most every 60 ms while it streams. */
  class AnswerView {
    constructor() {
      this.text = "";
      this.spoken = 0;
      this.body = el("div", { class: "tc-body tc-md", dir: "auto" }, el("span", { class: "tc-typing", text: "Thinking…" }));
      this.sources = el("nav", { class: "tc-sources", "aria-label": "Sources", hidden: true });
      this.meta = el("p", { class: "tc-meta", hidden: true });
      this.rating = el("div");
      this.el = el("article", { class: "tc-msg tc-bot", "aria-busy": "true" }, this.body, this.sources, this.meta, this.rating);
    }

    /** Helpful / Not helpful under a finished answer (message `id`), and an optional comment. */
    feedback(id, saved) {
      if (!id) return;
      let value = saved && saved.value;
      const note = el("span", { class: "tc-rate-note", role: "status" });
      const box = el("textarea", { rows: "2", maxlength: "2000", dir: "auto", "aria-label": "Comment (optional)" });
      box.value = (saved && saved.comment) || "";
      const save = async (v) => {
        const body = JSON.stringify({ value: v, comment: box.value.trim() || null });
        const res = await api(`/v1/messages/${id}/rating`, v ? { method: "PUT", headers: { "Content-Type": "application/json" }, body } : { method: "DELETE" }).catch(() => null);
        if (!res || !res.ok) return (note.textContent = "Not saved; try again.");
        value = v;
        show();
        note.textContent = v ? "Thanks!" : "Rating withdrawn.";
      };
      const form = el("form", { class: "tc-comment", onsubmit: (e) => (e.preventDefault(), save(value)) },
        box, el("button", { type: "submit", class: "tc-link" }, "Send comment"));
      const buttons = [["up", "Helpful", "👍"], ["down", "Not helpful", "👎"]].map(([v, label, icon]) =>
        el("button", { type: "button", class: "tc-rate-btn", "data-value": v, "aria-label": label, title: label, onclick: () => save(value === v ? null : v) }, icon));
      const show = () => {
        for (const b of buttons) b.setAttribute("aria-pressed", String(b.dataset.value === value));
        form.hidden = !value;
      };
      show();
      this.rating.replaceChildren(el("div", { class: "tc-rate", role: "group", "aria-label": "Rate this answer" }, ...buttons, note), form);
    }

    reset() {
      this.rating.replaceChildren();
      this.body.replaceChildren(el("span", { class: "tc-typing", text: "Thinking…" }));
      this.text = "";
      this.spoken = 0;
      this.meta.hidden = true;
      this.el.setAttribute("aria-busy", "true");
    }

    add(text) {
      this.text += text;
      this.timer = this.timer || setTimeout(() => this.render(), 60);
    }

    render() {
      clearTimeout(this.timer);
      this.timer = null;
      if (this.text) this.body.innerHTML = renderMarkdown(this.text, { headingOffset: 2 });
    }

    setSources(sources) {
      const seen = new Set();
      const items = [];
      for (const s of sources || []) {
        const key = s.url || s.chapter + "|" + s.section;
        if (seen.has(key) || items.length >= 6) continue;
        seen.add(key);
        const label = s.section && s.section !== s.title ? `${s.title} › ${s.section}` : s.title || s.chapter;
        const href = safeUrl(TextbookChat.sourceUrl(s.url, s));
        items.push(el("li", { dir: "auto" }, href ? el("a", { href, text: label }) : el("span", { text: label })));
      }
      this.sources.replaceChildren(el("h3", { text: "Sources" }), el("ol", {}, ...items));
      this.sources.hidden = !items.length;
    }

    finish(note, action) {
      this.render();
      if (!this.text) this.body.replaceChildren();
      this.el.removeAttribute("aria-busy");
      this.meta.replaceChildren(el("span", { text: note || "" }), action || "");
      this.meta.hidden = !note;
    }
  }

  class Panel {
    constructor() {
      const btn = (props, text) => el("button", { type: "button", ...props }, text);
      this.active = null;
      this.selection = null;
      this.candidate = null;
      this.launcher = btn({ class: "tc-launcher", "aria-expanded": "false", "aria-controls": "tc-panel", onclick: () => this.toggle() }, attr("label") || "Ask the book");
      this.statusText = el("span");
      this.retry = btn({ class: "tc-link", onclick: () => this.reconnect() }, "Retry now");
      this.status = el("div", { class: "tc-status", role: "status", hidden: true }, this.statusText, this.retry);
      this.history = el("div");
      this.hint = el("p", { class: "tc-hint", text: "Ask anything about the book, or highlight a passage on the page and choose “Ask about this”." });
      this.log = el("div", { class: "tc-log", tabindex: "0", role: "region", "aria-label": "Conversation" }, this.history, this.hint);
      this.live = el("div", { class: "tc-sr-only", "aria-live": "polite" });
      this.quoteText = el("span", { class: "tc-quote-text", dir: "auto" });
      this.quote = el("div", { class: "tc-quote", hidden: true }, el("span", { text: "Asking about:" }), this.quoteText, btn({ class: "tc-icon", "aria-label": "Remove the highlighted passage", onclick: () => this.setSelection(null) }, "×"));
      this.input = el("textarea", { id: "tc-input", rows: "2", maxlength: "4000", dir: "auto", placeholder: "Ask a question about the book…" });
      this.send = el("button", { type: "submit", class: "tc-send" }, "Ask");
      this.stop = btn({ class: "tc-stop", hidden: true, onclick: () => this.stopActive() }, "Stop");
      this.form = el("form", { class: "tc-form", onsubmit: (e) => (e.preventDefault(), this.submit()) },
        el("label", { for: "tc-input", class: "tc-sr-only", text: "Your question" }), this.input, this.send, this.stop);
      const head = el("div", { class: "tc-head" },
        el("h2", { id: "tc-title", text: attr("title") || "Ask the book" }),
        btn({ class: "tc-link", onclick: () => this.newConversation() }, "New chat"),
        (this.clearBtn = btn({ class: "tc-link", "aria-expanded": "false", onclick: () => this.confirmClear(true) }, "Clear history")),
        btn({ class: "tc-icon", "aria-label": "Close chat", onclick: () => this.close() }, "×"));
      this.eraseAll = el("input", { type: "checkbox" });
      this.confirmText = el("p", { id: "tc-confirm-text", text: "Delete all your conversations? This cannot be undone." });
      this.cancelClear = btn({ class: "tc-link", onclick: () => this.confirmClear(false) }, "Cancel");
      this.confirm = el("div", { class: "tc-confirm", role: "alertdialog", "aria-labelledby": "tc-confirm-text", hidden: true, onkeydown: (e) => e.key === "Escape" && (e.stopPropagation(), this.confirmClear(false)) },
        this.confirmText, el("label", {}, this.eraseAll, " Also delete my profile and all my data"),
        el("p", {}, btn({ class: "tc-danger", onclick: () => this.clearHistory() }, "Delete"), this.cancelClear));
      this.panel = el("section", { id: "tc-panel", class: "tc-panel", role: "dialog", "aria-labelledby": "tc-title", hidden: true },
        head, this.confirm, this.status, this.log, this.quote, this.form, this.live);
      this.askSel = btn({ class: "tc-ask-selection", hidden: true, "aria-keyshortcuts": "Alt+Shift+A", onmousedown: (e) => e.preventDefault(), onclick: () => this.askAboutSelection() }, "Ask about this");
      this.root = el("div", { class: "tc-root", "data-state": "idle" }, this.panel, this.launcher, this.askSel);
      // Styles come from widget.css beside this script; the widget shows once they apply.
      this.root.hidden = true;
      const css = el("link", { rel: "stylesheet", href: new URL("widget.css", scriptUrl).href });
      css.onload = css.onerror = () => (this.root.hidden = false);
      document.head.append(css);
      document.body.append(this.root);

      this.input.addEventListener("keydown", (e) => {
        if (e.key === "Enter" && !e.shiftKey && !e.isComposing) (e.preventDefault(), this.submit());
      });
      this.panel.addEventListener("keydown", (e) => e.key === "Escape" && (e.stopPropagation(), this.close()));
      document.addEventListener("keydown", (e) => {
        if (e.altKey && e.shiftKey && e.code === "KeyA" && this.candidate) (e.preventDefault(), this.askAboutSelection());
      });
      const later = () => setTimeout(() => this.onSelection(), 0);
      document.addEventListener("mouseup", later);
      document.addEventListener("keyup", later);
      document.addEventListener("selectionchange", () => {
        const sel = getSelection();
        if (!sel || sel.isCollapsed) this.showAskSel(null);
      });
      client.onState((state, detail) => this.showState(state, detail));
      if (store.get("open", true) || (store.get("pending", true) || []).length) this.open(false);
    }

    toggle() {
      this.panel.hidden ? this.open() : this.close();
    }

    open(focus = true) {
      this.panel.hidden = false;
      this.launcher.setAttribute("aria-expanded", "true");
      store.set("open", 1, true);
      if (focus) this.input.focus();
      if (client.state === "idle") client.connect();
      if (!this.loaded) {
        this.loaded = true;
        this.loadHistory().then(() => this.resumePending());
      }
    }

    close() {
      const hadFocus = this.panel.contains(document.activeElement);
      this.panel.hidden = true;
      this.launcher.setAttribute("aria-expanded", "false");
      store.set("open", null, true);
      if (hadFocus) this.launcher.focus();
    }

    reconnect() {
      client.attempt = 0;
      client.authFailures = 0;
      client.connect();
    }

    showState(state, detail) {
      clearInterval(this.countdown);
      this.root.dataset.state = state;
      const text = {
        connecting: () => "Connecting…",
        reconnecting: () => `Connection lost. Reconnecting in ${Math.max(1, Math.ceil((detail - Date.now()) / 1000))} s…`,
        offline: () => "You are offline. The chat reconnects when the network is back.",
        error: () => detail || "The chat is unavailable.",
      }[state];
      this.status.hidden = !text;
      this.retry.hidden = state === "connecting" || !text;
      this.retry.textContent = state === "error" ? "Retry" : "Retry now";
      if (!text) return;
      this.statusText.textContent = text();
      if (state === "reconnecting") this.countdown = setInterval(() => (this.statusText.textContent = text()), 1000);
    }

    setSelection(sel) {
      this.selection = sel;
      this.quote.hidden = !sel;
      this.quoteText.textContent = sel ? `“${truncate(sel.text, 200)}”` : "";
      this.input.placeholder = sel ? "Ask about the highlighted passage…" : "Ask a question about the book…";
    }

    onSelection() {
      const sel = getSelection();
      if (!sel || sel.isCollapsed || !sel.rangeCount) return this.showAskSel(null);
      const range = sel.getRangeAt(0);
      const text = sel.toString().replace(/[ \t]+/g, " ").trim().slice(0, 8000);
      if (text.length < 2 || this.root.contains(range.commonAncestorContainer)) return this.showAskSel(null);
      const rects = range.getClientRects();
      const r = rects.length ? rects[rects.length - 1] : range.getBoundingClientRect();
      const chapter = chapterFor(range.startContainer);
      this.showAskSel({ text, page_url: location.href.slice(0, 2048), ...(chapter ? { chapter: chapter.slice(0, 256) } : {}) });
      this.askSel.style.top = `${r.bottom + scrollY + 8}px`;
      this.askSel.style.left = `${Math.max(8, Math.min(r.right + scrollX - 60, scrollX + innerWidth - 140))}px`;
    }

    showAskSel(candidate) {
      this.candidate = candidate;
      this.askSel.hidden = !candidate;
    }

    askAboutSelection() {
      if (!this.candidate) return;
      this.setSelection(this.candidate);
      this.showAskSel(null);
      this.open();
    }

    confirmClear(open) {
      this.confirm.hidden = !open;
      this.clearBtn.setAttribute("aria-expanded", String(open));
      (open ? this.cancelClear : this.clearBtn).focus();
    }

    /** Delete the reader's history (or all their data) on the server, then here. */
    async clearHistory() {
      const res = await api(this.eraseAll.checked ? "/v1/me" : "/v1/conversations", { method: "DELETE" }).catch(() => null);
      if (!res || !res.ok) return (this.confirmText.textContent = "Not deleted; try again.");
      store.set("pending", null, true);
      // the streaming answer is gone too: its end, if it comes later, must not speak over this
      clearInterval(this.speaker);
      if (this.active) client.streams.delete(this.active.id), (this.active = null), this.setBusy(false);
      this.newConversation();
      this.confirmClear(false);
      this.live.textContent = "Your history was deleted.";
      this.input.focus();
    }

    newConversation() {
      store.set("conversation", null);
      this.history.replaceChildren();
      this.log.replaceChildren(this.history, this.hint);
      this.input.focus();
    }

    submit() {
      if (this.active) return;
      const question = this.input.value.trim() || (this.selection ? "Explain this passage." : "");
      if (!question) return this.input.focus();
      this.input.value = "";
      const frame = { type: "ask", id: newId("ask"), question };
      const conversation = store.get("conversation");
      if (conversation) frame.conversation_id = conversation;
      if (this.selection) frame.selection = this.selection;
      this.setSelection(null);
      this.log.append(this.userMessage(question, frame.selection));
      this.start(frame, new AnswerView());
    }

    userMessage(question, selection) {
      return el("article", { class: "tc-msg tc-user", dir: "auto" }, el("span", { text: question }),
        selection && el("blockquote", { dir: "auto", text: truncate(selection.text, 300) }));
    }

    /** Send (or, after a page load, resume) an ask and show it in `view`. */
    start(frame, view, resumed = false) {
      if (!view.el.isConnected) this.log.append(view.el);
      this.active = { id: frame.id, view };
      this.setBusy(true);
      const pending = (store.get("pending", true) || []).filter((p) => p.id !== frame.id);
      store.set("pending", [...pending, frame], true);
      clearInterval(this.speaker);
      this.speaker = setInterval(() => this.speak(view, false), 1500);
      client.request(frame, (f) => this.onFrame(frame, view, f), { sent: resumed });
      this.scroll();
    }

    onFrame(frame, view, f) {
      const nearBottom = this.log.scrollHeight - this.log.scrollTop - this.log.clientHeight < 60;
      if (f.type === "start") {
        view.messageId = f.message_id;
        if (f.conversation_id) store.set("conversation", f.conversation_id);
      } else if (f.type === "sources") view.setSources(f.sources);
      else if (f.type === "delta") view.add(f.text);
      else if (f.type === "done") {
        const note = { cancelled: "Stopped.", length: "The answer was cut short." }[f.finish_reason];
        this.end(frame, view, note);
      } else if (f.type === "error") this.failed(frame, view, f);
      if (nearBottom) this.scroll();
    }

    failed(frame, view, f) {
      const again = () => {
        if (this.active && this.active.id !== frame.id) return; // another question is running
        clearTimeout(this.rateTimer);
        view.reset();
        this.start({ ...frame, id: newId("ask") }, view);
      };
      if (f.code === "rate_limited") {
        const wait = Math.max(1, Math.ceil(f.retry_after || 10));
        if (wait <= 120) {
          // Wait as the server asks, then ask again; Stop gives up instead.
          this.end(frame, view, `Too many questions right now: asking again in ${wait} s.`, null, true);
          this.active = { id: frame.id, view, waiting: true };
          this.setBusy(true);
          this.rateTimer = setTimeout(again, wait * 1000);
          return;
        }
        const at = new Date(Date.now() + wait * 1000).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
        return this.end(frame, view, `You have reached the question limit; try again after ${at}.`);
      }
      this.end(frame, view, f.message || "Something went wrong.", f.retryable ? el("button", { type: "button", class: "tc-link", onclick: again }, "Try again") : null);
    }

    end(frame, view, note, action, keepActive = false) {
      clearInterval(this.speaker);
      view.finish(note, action);
      if (!keepActive) view.feedback(view.messageId);
      this.speak(view, true, note);
      store.set("pending", (store.get("pending", true) || []).filter((p) => p.id !== frame.id), true);
      if (!keepActive && this.active && this.active.id === frame.id) {
        this.active = null;
        this.setBusy(false);
      }
    }

    setBusy(busy) {
      this.send.disabled = busy;
      this.stop.hidden = !busy;
      if (!busy && document.activeElement === this.stop) this.input.focus();
    }

    stopActive() {
      if (!this.active) return;
      if (!this.active.waiting) return client.cancel(this.active.id);
      clearTimeout(this.rateTimer); // waiting out a rate limit: give up instead
      this.active = null;
      this.setBusy(false);
    }

    // The live region gets whole sentences every 1.5 s, not every token.
    speak(view, final, note) {
      const rest = view.text.slice(view.spoken);
      let cut = final ? rest.length : -1;
      if (!final) {
        const re = /[.!?۔؟](?=\s)|\n\n/g;
        for (let m; (m = re.exec(rest)); ) cut = m.index + m[0].length;
      }
      const said = cut > 0 ? speakable(rest.slice(0, cut)) : "";
      if (cut > 0) view.spoken += cut;
      const words = [said, final && note].filter(Boolean).join(" ");
      if (words) this.live.textContent = words;
    }

    scroll() {
      this.log.scrollTop = this.log.scrollHeight;
    }

    async loadHistory() {
      const conversation = store.get("conversation");
      if (!conversation) return;
      try {
        const res = await api(`/v1/conversations/${encodeURIComponent(conversation)}/messages`);
        if (res.status === 404) return store.set("conversation", null);
        if (!res.ok) return;
        const pending = new Set((store.get("pending", true) || []).map((p) => p.id));
        const notes = { cancelled: "Stopped.", failed: "This answer failed.", interrupted: "This answer was interrupted.", streaming: "Still being written…" };
        for (const m of (await res.json()).messages || []) {
          if (pending.has(m.stream_id)) continue;
          const view = new AnswerView();
          view.text = m.answer || "";
          view.setSources(m.sources);
          view.finish(notes[m.status]);
          if (m.status !== "streaming") view.feedback(m.id, m.rating);
          this.history.append(this.userMessage(m.question, m.selection), view.el);
        }
        this.scroll();
      } catch {
        /* no history over a broken network: the chat itself still works */
      }
    }

    resumePending() {
      for (const frame of store.get("pending", true) || []) {
        this.log.append(this.userMessage(frame.question, frame.selection));
        this.start(frame, new AnswerView(), true);
      }
    }
  }

  const mount = () => (TextbookChat.panel = new Panel());
  if (document.body) mount();
  else addEventListener("DOMContentLoaded", mount);
})();
