"""The plugin's build-time side in Node, without a build: its options, the token module it picks and
what it hands the browser. It needs nothing but Node.js (no packages)."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
from pathlib import Path
from typing import Any

import pytest

from tests.browser.docusaurus_site import DOCS_URL, SITE_DIR
from tests.conftest import ROOT

PLUGIN = ROOT / "clients" / "docusaurus-plugin" / "src" / "index.js"

# Calls the plugin as Docusaurus does (validateOptions, then the plugin with a context) and prints
# what it returns, or the error it throws.
SCRIPT = """
const plugin = require(process.argv[1]);
const { options, context } = JSON.parse(process.argv[2]);
(async () => {
  try {
    const checked = plugin.validateOptions({ options, validate: () => { throw new Error("unused"); } });
    const instance = plugin({ baseUrl: "/book/", ...context }, checked);
    let data;
    await instance.contentLoaded({ actions: { setGlobalData: (d) => (data = d) } });
    const webpack = instance.configureWebpack();
    console.log(JSON.stringify({ data, token: webpack.resolve.alias["@textbook-chat/get-token"], tags: instance.injectHtmlTags() }));
  } catch (error) {
    console.log(JSON.stringify({ error: error.message }));
  }
})();
"""


async def run_plugin(site: Path, options: dict[str, Any], locale: str = "en") -> dict[str, Any]:
    if shutil.which("node") is None:
        pytest.skip("Node.js is not installed")
    i18n = {
        "defaultLocale": "en",
        "currentLocale": locale,
        "locales": ["en", "ur"],
        "localeConfigs": {"en": {"direction": "ltr"}, "ur": {"direction": "rtl"}},
    }
    context = {"siteDir": str(site), "i18n": i18n}
    if locale != "en":
        context["baseUrl"] = f"/book/{locale}/"
    argument = json.dumps({"options": options, "context": context})
    proc = await asyncio.create_subprocess_exec(
        "node", "-e", SCRIPT, str(PLUGIN), argument, stdout=asyncio.subprocess.PIPE
    )
    out, _ = await proc.communicate()
    assert proc.returncode == 0
    result: dict[str, Any] = json.loads(out)
    return result


@pytest.fixture
def site(tmp_path: Path) -> Path:
    """A site folder with Better-Auth installed (only its package.json is looked for)."""
    (tmp_path / "node_modules" / "better-auth").mkdir(parents=True)
    (tmp_path / "node_modules" / "better-auth" / "package.json").write_text("{}")
    return tmp_path


@pytest.mark.parametrize(
    ("options", "error"),
    [
        ({}, 'option "serverUrl" must be a URL'),
        ({"serverUrl": "ftp://chat.example.org"}, "must be http(s)"),
        ({"serverUrl": "//chat.example.org"}, "is not a URL"),
        ({"serverUrl": "/chat", "sever": 1}, "unknown option(s) sever; known: serverUrl"),
        ({"serverUrl": "/chat", "title": ["a"]}, 'option "title" must be a string or an object'),
        ({"serverUrl": "/chat", "getToken": "./src/missing.js"}, "cannot find the module"),
    ],
)
async def test_wrong_options_are_refused_saying_what_is_wrong(
    site: Path, options: dict[str, Any], error: str
) -> None:
    result = await run_plugin(site, options)
    assert result.keys() == {"error"} and error in result["error"]
    assert result["error"].startswith("docusaurus-plugin-textbook-chat: ")


async def test_the_default_token_is_better_auths_and_needs_it_installed(
    site: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    result = await run_plugin(site, {"serverUrl": "https://chat.example.org/"})
    assert result["token"] == str(PLUGIN.parent / "client" / "betterAuthToken.js")
    assert result["data"]["serverUrl"] == "https://chat.example.org"  # no trailing slash
    assert result["tags"] == {
        "headTags": [
            {
                "tagName": "link",
                "attributes": {"rel": "preconnect", "href": "https://chat.example.org"},
            }
        ]
    }
    bare = tmp_path_factory.mktemp("bare-site")
    refused = await run_plugin(bare, {"serverUrl": "https://chat.example.org"})
    assert '"better-auth" is not installed' in refused["error"] and '"getToken"' in refused["error"]


@pytest.mark.parametrize(
    "spec", ["./src/chat-token", "@site/src/chat-token", "./src/chat-token.js"]
)
async def test_a_token_module_of_the_sites_own(site: Path, spec: str) -> None:
    (site / "src").mkdir()
    (site / "src" / "chat-token.js").write_text("export default async () => 'jwt';\n")
    shutil.rmtree(site / "node_modules")  # Better-Auth is not needed then
    result = await run_plugin(site, {"serverUrl": "/chat", "getToken": spec})
    assert result["token"] == str(site / "src" / "chat-token.js")
    assert result["tags"] == {}  # a path on the book's origin: nothing to preconnect to


async def test_locale_pages_get_their_title_direction_and_base_urls(site: Path) -> None:
    options = {"serverUrl": "/chat", "title": {"en": "Ask the book", "ur": "کتاب سے پوچھیں"}}
    english = (await run_plugin(site, options))["data"]
    urdu = (await run_plugin(site, options, locale="ur"))["data"]
    assert (english["title"], english["direction"]) == ("Ask the book", "ltr")
    assert (urdu["title"], urdu["direction"], urdu["locale"]) == ("کتاب سے پوچھیں", "rtl", "ur")
    # Source links (the default locale's URLs) move from siteBaseUrl to localeBaseUrl.
    assert (english["siteBaseUrl"], english["localeBaseUrl"]) == ("/book/", "/book/")
    assert (urdu["siteBaseUrl"], urdu["localeBaseUrl"]) == ("/book/", "/book/ur/")
    assert english["reader"] is True and english["docsPluginId"] == "default"


def test_the_readme_shows_the_dependency_and_config_entry_the_tests_build() -> None:
    section = (ROOT / "README.md").read_text().split("\n## Embedding in Docusaurus\n", 1)[1]
    section = section.split("\n## ", 1)[0]
    blocks = dict(re.findall(r"```(jsonc|js|sh)\n(.*?)\n```", section, re.S))
    package = json.loads((SITE_DIR / "package.json").read_text())
    shown = dict(re.findall(r'^\s*"([^"]+)": "([^"]+)"$', blocks["jsonc"], re.M))
    assert shown == {"docusaurus-plugin-textbook-chat": "file:../../clients/docusaurus-plugin"}
    assert shown.items() <= package["dependencies"].items()
    # the config entry is a verbatim excerpt of the site's docusaurus.config.js
    source = [line.strip() for line in (SITE_DIR / "docusaurus.config.js").read_text().splitlines()]
    excerpt = [line.strip() for line in blocks["js"].splitlines() if not line.startswith("//")]
    assert any(source[i : i + len(excerpt)] == excerpt for i in range(len(source)))
    assert f"--base-url {DOCS_URL} " in blocks["sh"]  # as the tests ingest the book
