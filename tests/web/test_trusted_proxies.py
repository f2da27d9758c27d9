"""TRUSTED_PROXIES: whose X-Forwarded-For / X-Forwarded-Proto the server believes (by default
nobody's); the proxy topology itself is tested in tests/e2e/test_proxy.py."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest

from server.errors import ConfigError
from server.services import Services
from server.settings import Settings
from server.web.serve import make_server


def test_trusted_proxies_are_addresses_or_networks(tmp_path: Path) -> None:
    def parse(value: str) -> Settings:
        return Settings.from_env({"DATA_DIR": str(tmp_path), "TRUSTED_PROXIES": value})

    assert Settings.from_env({"DATA_DIR": str(tmp_path)}).trusted_proxies == ()
    assert parse(" 10.0.0.5, 192.168.0.0/16 ,::1,").trusted_proxies == (
        "10.0.0.5/32",
        "192.168.0.0/16",
        "::1/128",
    )
    for wrong in ("proxy.internal", "10.0.0.5/8", "*", "10.0.0.300"):
        with pytest.raises(ConfigError, match="TRUSTED_PROXIES"):
            parse(wrong)


async def _client_seen(services: Services, peer: str, **settings: Any) -> tuple[str, str]:
    """The client address and scheme an app behind make_server's uvicorn gets, for a request from
    `peer` carrying forged forwarding headers."""
    changed = dataclasses.replace(services, settings=services.settings.replace(**settings))
    seen: dict[str, Any] = {}

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        seen.update(client=scope["client"][0], scheme=scope["scheme"])

    config = make_server(app, changed, "127.0.0.1", 0).config
    config.load()
    scope = {
        "type": "http",
        "scheme": "http",
        "client": (peer, 40000),
        "headers": [(b"x-forwarded-for", b"203.0.113.9"), (b"x-forwarded-proto", b"https")],
    }
    await config.loaded_app(scope, None, None)
    return seen["client"], seen["scheme"]


async def test_forwarded_headers_only_from_trusted_proxies(services: Services) -> None:
    # by default nobody is believed, not even a local process (uvicorn's own default trusts those)
    assert await _client_seen(services, "127.0.0.1") == ("127.0.0.1", "http")
    proxies = {"trusted_proxies": ("10.0.0.0/24",)}
    assert await _client_seen(services, "10.0.0.7", **proxies) == ("203.0.113.9", "https")
    assert await _client_seen(services, "10.0.1.7", **proxies) == ("10.0.1.7", "http")
