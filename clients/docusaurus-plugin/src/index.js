/* docusaurus-plugin-textbook-chat: the textbook-chat widget and chapter reader on every doc page.
 *
 *   plugins: [["docusaurus-plugin-textbook-chat", { serverUrl: "https://chat.example.org" }]]
 *
 * This file runs in Node at build time and needs nothing but Node: it checks the options, hands
 * them to the browser as the plugin's global data, points the `@textbook-chat/get-token` alias at
 * the module that returns the reader's token, and adds two theme components (theme/): Root loads
 * the widget from the chat server once React has hydrated the page, and DocItem/Content marks each
 * doc's content with its doc id, the chapter id the server knows it by. */
"use strict";

const fs = require("fs");
const path = require("path");

const NAME = "docusaurus-plugin-textbook-chat";
const BETTER_AUTH_TOKEN = path.join(__dirname, "client", "betterAuthToken.js");
const KNOWN = new Set(["id", "serverUrl", "apiUrl", "getToken", "authUrl", "title", "label", "reader", "docsPluginId"]);

function fail(message) {
  throw new Error(`${NAME}: ${message}`);
}

/** A URL the browser can resolve: absolute http(s), or a path on the book's own origin. */
function checkUrl(name, value, required) {
  if (value === undefined && !required) return undefined;
  if (typeof value !== "string" || !value.trim()) fail(`option "${name}" must be a URL such as "https://chat.example.org" or a path such as "/chat"`);
  const url = value.trim();
  if (url.startsWith("/") && !url.startsWith("//")) return url.replace(/\/+$/, "") || "/";
  let parsed;
  try {
    parsed = new URL(url);
  } catch {
    fail(`option "${name}" is not a URL: ${JSON.stringify(value)}`);
  }
  if (parsed.protocol !== "http:" && parsed.protocol !== "https:") fail(`option "${name}" must be http(s), not ${parsed.protocol}`);
  return url.replace(/\/+$/, "");
}

/** A string, or one string per locale ({en: "Ask the book", ur: "…"}). */
function checkText(name, value) {
  if (value === undefined || typeof value === "string") return value;
  const ok = value && typeof value === "object" && !Array.isArray(value) && Object.values(value).every((v) => typeof v === "string");
  if (!ok) fail(`option "${name}" must be a string or an object of strings by locale`);
  return value;
}

function validateOptions({ options }) {
  const given = options || {};
  const unknown = Object.keys(given).filter((key) => !KNOWN.has(key));
  if (unknown.length) fail(`unknown option(s) ${unknown.join(", ")}; known: ${[...KNOWN].filter((k) => k !== "id").join(", ")}`);
  if (given.getToken !== undefined && (typeof given.getToken !== "string" || !given.getToken.trim())) {
    fail('option "getToken" must be a module path, e.g. "./src/chat-token.js" or "@site/src/chat-token"');
  }
  if (given.reader !== undefined && typeof given.reader !== "boolean") fail('option "reader" must be true or false');
  if (given.docsPluginId !== undefined && typeof given.docsPluginId !== "string") fail('option "docsPluginId" must be a string');
  return {
    id: given.id ?? "default",
    serverUrl: checkUrl("serverUrl", given.serverUrl, true),
    apiUrl: checkUrl("apiUrl", given.apiUrl, false),
    authUrl: checkUrl("authUrl", given.authUrl, false),
    getToken: given.getToken && given.getToken.trim(),
    title: checkText("title", given.title),
    label: checkText("label", given.label),
    reader: given.reader ?? true,
    docsPluginId: given.docsPluginId ?? "default",
  };
}

/** Whether `name` is in a node_modules folder at or above `dir` (its package.json is not exported). */
function installed(name, dir) {
  for (;;) {
    if (fs.existsSync(path.join(dir, "node_modules", name, "package.json"))) return true;
    if (dir === path.dirname(dir)) return false;
    dir = path.dirname(dir);
  }
}

/** The file of the token module: `@site/…` and `./…` are the site's, anything else a package. */
function tokenModule(siteDir, spec) {
  if (!spec) {
    if (!installed("better-auth", siteDir)) {
      fail(
        'the default token comes from Better-Auth (authClient.token(), with its JWT plugin), but "better-auth" is not installed in this site: ' +
          'install it, or set the option "getToken" to a module whose default export returns the reader\'s JWT',
      );
    }
    return BETTER_AUTH_TOKEN;
  }
  const local = spec.startsWith("@site/") ? path.join(siteDir, spec.slice("@site/".length)) : spec.startsWith(".") ? path.resolve(siteDir, spec) : null;
  try {
    return require.resolve(local || spec, { paths: [siteDir] });
  } catch {
    for (const ext of [".js", ".mjs", ".jsx", ".ts", ".tsx"]) {
      if (local && fs.existsSync(local + ext)) return local + ext;
    }
    return fail(`option "getToken": cannot find the module ${JSON.stringify(spec)} (from ${siteDir})`);
  }
}

/** The default locale's base URL (siteConfig.baseUrl is this build's locale's, e.g. /book/ur/). */
function defaultBaseUrl({ baseUrl, i18n }) {
  const configured = i18n.localeConfigs && i18n.localeConfigs[i18n.defaultLocale];
  if (configured && configured.baseUrl) return configured.baseUrl; // where Docusaurus computes it
  const suffix = `${i18n.currentLocale}/`;
  return i18n.currentLocale !== i18n.defaultLocale && baseUrl.endsWith(suffix) ? baseUrl.slice(0, -suffix.length) : baseUrl;
}

const forLocale = (text, locale) => (text && typeof text === "object" ? text[locale] ?? text[locale.split("-")[0]] : text);

module.exports = function textbookChatPlugin(context, options) {
  const opts = options; // already checked by validateOptions, which Docusaurus calls first
  const { siteDir, i18n } = context;
  const locale = i18n.currentLocale;
  const localeConfig = (i18n.localeConfigs && i18n.localeConfigs[locale]) || {};
  const tokenFile = tokenModule(siteDir, opts.getToken);
  // What the browser needs; the token module travels as a webpack alias, not as data.
  const browserOptions = {
    serverUrl: opts.serverUrl,
    apiUrl: opts.apiUrl,
    authUrl: opts.authUrl,
    title: forLocale(opts.title, locale),
    label: forLocale(opts.label, locale),
    reader: opts.reader,
    docsPluginId: opts.docsPluginId,
    locale,
    defaultLocale: i18n.defaultLocale,
    direction: localeConfig.direction || "ltr",
    // Source links come from the server as the default locale's URLs (under siteConfig.baseUrl);
    // on another locale's pages they are moved under that locale's base URL (context.baseUrl).
    siteBaseUrl: defaultBaseUrl(context),
    localeBaseUrl: context.baseUrl,
  };
  const absolute = /^https?:/.test(opts.serverUrl) ? new URL(opts.serverUrl).origin : null;
  return {
    name: NAME,
    getThemePath() {
      return path.join(__dirname, "theme");
    },
    async contentLoaded({ actions }) {
      actions.setGlobalData(browserOptions);
    },
    configureWebpack() {
      return { resolve: { alias: { "@textbook-chat/get-token": tokenFile } } };
    },
    injectHtmlTags() {
      // The widget loads after hydration; opening the connection early saves a round trip then.
      return absolute ? { headTags: [{ tagName: "link", attributes: { rel: "preconnect", href: absolute } }] } : {};
    },
  };
};

module.exports.validateOptions = validateOptions;
