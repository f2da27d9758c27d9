/* textbook-chat chapter reader: the current chapter personalized for the reader, or translated,
 * rendered as it streams, with a way back to the original. Load it after widget.js:
 *   <script src="https://chat.example.org/reader.js" defer></script>
 * The chapter is the element marked data-textbook-reader (else [data-chapter], Docusaurus's
 * .theme-doc-markdown, or the page's article); its id comes from TextbookChat.chapterFor. */
(() => {
  "use strict";
  const TC = window.TextbookChat;
  if (!TC || TC.reader !== undefined) return;
  const { el, client, renderMarkdown } = TC;
  // Urdu first: the book's readers asked for it; the rest are the most requested after it.
  const LANGUAGES = [
    ["ur", "اردو (Urdu)"],
    ["ar", "العربية (Arabic)"],
    ["fa", "فارسی (Persian)"],
    ["hi", "हिन्दी (Hindi)"],
    ["bn", "বাংলা (Bengali)"],
    ["zh", "中文 (Chinese)"],
    ["es", "Español (Spanish)"],
    ["fr", "Français (French)"],
    ["de", "Deutsch (German)"],
    ["tr", "Türkçe (Turkish)"],
  ];
  const LEVELS = ["beginner", "intermediate", "advanced"];

  const findTarget = () =>
    document.querySelector("[data-textbook-reader]") ||
    document.querySelector(".theme-doc-markdown") ||
    document.querySelector("[data-chapter]:not(html):not(body)") ||
    document.querySelector("main article, article");

  class Reader {
    constructor(target, chapter) {
      this.target = target;
      this.chapter = chapter;
      this.original = null;
      this.id = null;
      const btn = (text, onclick, props = {}) => el("button", { type: "button", onclick, ...props }, text);
      this.personalize = btn("Personalize for me", () => this.run("personalize"));
      this.language = el("select", { id: "tc-language" }, ...LANGUAGES.map(([value, text]) => el("option", { value, text })));
      // A page in one of the languages (a book's Urdu locale, say) offers that language first.
      const pageLanguage = (document.documentElement.lang || "").split("-")[0].toLowerCase();
      if (LANGUAGES.some(([value]) => value === pageLanguage)) this.language.value = pageLanguage;
      this.translate = btn("Translate", () => this.run("translate", this.language.value));
      this.stop = btn("Stop", () => this.cancel(true), { hidden: true });
      this.back = btn("Show original", () => this.restore(), { hidden: true, class: "tc-primary" });
      this.status = el("span", { class: "tc-reader-status", role: "status" });
      this.form = this.profileForm();
      this.bar = el("div", { class: "tc-reader", role: "group", "aria-label": "Read this chapter your way" },
        this.personalize, el("label", { for: "tc-language", text: "Translate to" }), this.language, this.translate,
        this.stop, this.back, this.status, this.form);
      this.output = el("div", { class: "tc-reader-output tc-md" });
      target.before(this.bar);
    }

    run(mode, language) {
      this.cancel(false);
      this.form.hidden = true;
      this.mode = mode;
      this.lang = language;
      this.text = "";
      const id = (this.id = TC.newId("chapter"));
      const frame = { type: "chapter", id, chapter: this.chapter, mode, ...(language ? { language } : {}) };
      const name = language && this.language.selectedOptions[0] ? this.language.selectedOptions[0].textContent : "";
      this.say(mode === "translate" ? `Translating into ${name}…` : "Rewriting this chapter for you…");
      this.busy(true);
      client.request(frame, (f) => id === this.id && this.onFrame(f));
    }

    onFrame(f) {
      if (f.type === "start") this.show(f.direction === "rtl" ? "rtl" : "ltr");
      else if (f.type === "delta") {
        this.text += f.text;
        this.timer = this.timer || setTimeout(() => this.render(), 120);
      } else if (f.type === "done") {
        this.finish();
        const what = this.mode === "translate" ? "Translated" : "Personalized for you";
        this.say(f.finish_reason === "cancelled" ? "Stopped: the rest of the chapter was not rewritten." : what + (f.cached ? " (saved copy)." : "."));
      } else if (f.type === "error") {
        this.finish();
        if (!this.text) this.restore(false);
        if (f.code === "not_found" && this.mode === "personalize") {
          this.say("Personalizing needs a short profile first.");
          this.form.hidden = false;
          this.form.querySelector("textarea").focus();
        } else this.say(f.message || "The chapter could not be rewritten.");
      }
    }

    show(direction) {
      if (!this.original) this.original = Array.from(this.target.childNodes);
      this.output.dir = direction;
      this.output.lang = this.lang || document.documentElement.lang || "";
      this.output.setAttribute("aria-busy", "true");
      this.output.replaceChildren();
      this.target.replaceChildren(this.output);
      this.back.hidden = false;
    }

    render() {
      clearTimeout(this.timer);
      this.timer = null;
      this.output.innerHTML = renderMarkdown(this.text, { ids: true, book: true });
    }

    finish() {
      this.render();
      this.output.removeAttribute("aria-busy");
      this.id = null;
      this.busy(false);
    }

    cancel(say) {
      if (this.id) client.cancel(this.id);
      if (this.id && say) this.say("Stopped.");
      this.id = null;
      clearTimeout(this.timer);
      this.timer = null;
      this.output.removeAttribute("aria-busy");
      this.busy(false);
    }

    restore(focus = true) {
      this.cancel(false);
      if (this.original) this.target.replaceChildren(...this.original);
      this.original = null;
      this.back.hidden = true;
      this.say("");
      if (focus) this.personalize.focus();
    }

    busy(on) {
      this.stop.hidden = !on;
      this.personalize.disabled = this.translate.disabled = on;
    }

    say(text) {
      this.status.textContent = text;
    }

    profileForm() {
      const field = (id, label, control) => [el("label", { for: id, text: label }), control];
      const area = (id, placeholder) => el("textarea", { id, rows: "2", maxlength: "2000", required: true, placeholder });
      const sw = area("tc-software", "e.g. Python web developer, some C++");
      const hw = area("tc-hardware", "e.g. Arduino projects, no robots yet");
      const level = el("select", { id: "tc-level" }, ...LEVELS.map((v) => el("option", { value: v, text: v })));
      const error = el("p", { class: "tc-profile-error", role: "alert" });
      const form = el("form", { class: "tc-profile", hidden: true, "aria-label": "Your profile" },
        el("p", { text: "A few words about you, and the chapter is rewritten to match." }),
        ...field("tc-software", "Software background", sw),
        ...field("tc-hardware", "Hardware background", hw),
        ...field("tc-level", "Level", level),
        el("div", {}, el("button", { type: "submit", class: "tc-primary" }, "Save and personalize")),
        error);
      form.addEventListener("submit", async (e) => {
        e.preventDefault();
        error.textContent = "";
        const body = { software_background: sw.value.trim(), hardware_background: hw.value.trim(), level: level.value };
        try {
          const res = await TC.api("/v1/profile", { method: "PUT", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) });
          if (!res.ok) {
            const detail = await res.json().catch(() => ({}));
            error.textContent = (detail.error && detail.error.message) || `The profile was not saved (HTTP ${res.status}).`;
            return;
          }
        } catch {
          error.textContent = "The profile was not saved: the server could not be reached.";
          return;
        }
        form.hidden = true;
        this.run("personalize");
      });
      return form;
    }
  }

  // Docusaurus swaps pages without a reload: mount again when the chapter element changes.
  function mount() {
    const current = TC.reader;
    const target = findTarget();
    if (current && current.bar.isConnected && current.target === target) return;
    const chapter = target && TC.chapterFor(target);
    if (current) current.cancel(false), current.bar.remove();
    TC.reader = target && chapter ? new Reader(target, chapter) : null;
  }
  const start = () => {
    TC.reader = null;
    mount();
    let pending = false;
    new MutationObserver(() => {
      if (!pending) (pending = true), requestAnimationFrame(() => ((pending = false), mount()));
    }).observe(document.body, { childList: true, subtree: true });
  };
  if (document.readyState === "loading") addEventListener("DOMContentLoaded", start);
  else start();
})();
