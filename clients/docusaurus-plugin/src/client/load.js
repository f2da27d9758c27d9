/* Loads the chat server's widget.js, then reader.js, once per page load.
 *
 * Both come from the chat server, not from this package, so the widget always speaks the
 * protocol of the server it talks to. They are added after React has hydrated the page (Root's
 * effect calls this): the reader puts its toolbar inside the doc's content, which must not
 * happen while React still expects the server-rendered DOM. */

const LOADED = "__textbookChatLoaded";

/** `serverUrl` ("https://chat.example.org", "/chat") as an absolute URL ending in "/". */
export function serverBase(serverUrl, page = window.location.href) {
  return new URL(serverUrl.replace(/\/*$/, "/"), page);
}

/** The chat socket's URL for a server base URL. */
export function socketUrl(base) {
  const url = new URL("v1/chat", base);
  url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
  return url.href;
}

/** A source link as this locale's page: the server knows the default locale's URLs. */
export function localizedUrl(url, options, page = window.location.href) {
  const { siteBaseUrl, localeBaseUrl } = options;
  if (!url || !siteBaseUrl || !localeBaseUrl || siteBaseUrl === localeBaseUrl) return url;
  try {
    const target = new URL(url, page);
    if (target.origin !== new URL(page).origin) return url;
    if (target.pathname.startsWith(localeBaseUrl) || !target.pathname.startsWith(siteBaseUrl)) return url;
    target.pathname = localeBaseUrl + target.pathname.slice(siteBaseUrl.length);
    return target.href;
  } catch {
    return url;
  }
}

function addScript(src, data) {
  const script = document.createElement("script");
  script.src = src;
  script.async = false;
  for (const [key, value] of Object.entries(data)) if (value) script.dataset[key] = value;
  const loaded = new Promise((resolve, reject) => {
    script.onload = resolve;
    script.onerror = () => reject(new Error(`textbook-chat: could not load ${src}`));
  });
  document.head.append(script);
  return loaded;
}

/** The page's token hook: the site's own `window.getToken` if it has one, else the module's. */
function installGetToken(options, importTokenModule) {
  if (typeof window.getToken === "function") return;
  let fn = null;
  window.getToken = async () => {
    if (!fn) {
      const mod = await importTokenModule();
      fn = typeof mod.default === "function" ? mod.default : mod.getToken;
      if (typeof fn !== "function") throw new Error("the getToken module exports no function");
    }
    return fn({ authUrl: options.authUrl });
  };
}

export async function loadChat(options, importTokenModule) {
  if (window[LOADED]) return;
  window[LOADED] = true;
  installGetToken(options, importTokenModule);
  const base = serverBase(options.serverUrl);
  await addScript(new URL("widget.js", base).href, {
    server: socketUrl(base),
    api: options.apiUrl && new URL(options.apiUrl, window.location.href).href, // default: the server's
    title: options.title,
    label: options.label,
  });
  const chat = window.TextbookChat;
  if (chat && options.localeBaseUrl !== options.siteBaseUrl) {
    chat.sourceUrl = (url) => localizedUrl(url, options);
  }
  if (options.reader) await addScript(new URL("reader.js", base).href, {});
}
