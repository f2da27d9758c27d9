/* The demo page: a dev token from /dev/token (served only on loopback without auth configured),
 * and the chapter's Markdown rendered by the widget's escaping renderer. */
(() => {
  "use strict";
  let cached = null;
  if (typeof window.getToken !== "function") {
    window.getToken = async () => {
      if (cached && cached.until > Date.now()) return cached.token;
      const res = await fetch("/dev/token", { cache: "no-store" });
      if (!res.ok) {
        throw new Error(res.status === 404 ? "this server has auth configured, so the page must define window.getToken()" : `dev token: HTTP ${res.status}`);
      }
      const body = await res.json();
      cached = { token: body.token, until: Date.now() + (body.expires_in - 120) * 1000 };
      return body.token;
    };
  }
  addEventListener("DOMContentLoaded", () => {
    const source = document.querySelector(".demo-source");
    if (!source || !window.TextbookChat) return;
    source.parentElement.innerHTML = window.TextbookChat.renderMarkdown(source.textContent, { ids: true, book: true });
    const anchor = location.hash && document.getElementById(decodeURIComponent(location.hash.slice(1)));
    if (anchor) anchor.scrollIntoView();
  });
})();
