"""The JWKS cache against a real JWKS endpoint on loopback: a rotated-in key is accepted at once,
and tokens with made-up kids cannot make it hammer the endpoint."""

from __future__ import annotations

import asyncio
import math
import secrets
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from server.auth import JWKS_REFETCH_MIN_INTERVAL_S, TokenVerifier
from server.errors import Unauthorized
from server.settings import Settings
from tests.conftest import AppServer

ISSUER = "http://127.0.0.1:3000"


class Issuer:
    """An issuer that rotates as Better-Auth does: a new key is published beside the old ones."""

    def __init__(self) -> None:
        self.private: dict[str, ed25519.Ed25519PrivateKey] = {}
        self.published: list[dict[str, Any]] = []
        self.fetches = 0

    def rotate(self) -> str:
        kid = secrets.token_urlsafe(16)
        key = ed25519.Ed25519PrivateKey.generate()
        self.private[kid] = key
        jwk = jwt.algorithms.OKPAlgorithm.to_jwk(key.public_key(), as_dict=True)
        self.published.append({**jwk, "kid": kid, "alg": "EdDSA"})
        return kid

    def token(self, kid: str, key: ed25519.Ed25519PrivateKey | None = None) -> str:
        now = int(time.time())
        claims = {"sub": "reader", "iat": now, "exp": now + 600, "iss": ISSUER, "aud": ISSUER}
        return jwt.encode(claims, key or self.private[kid], algorithm="EdDSA", headers={"kid": kid})

    async def endpoint(self, request: Request) -> JSONResponse:
        self.fetches += 1
        return JSONResponse({"keys": list(self.published)})


@pytest.fixture
async def issuer() -> AsyncIterator[tuple[Issuer, str]]:
    keys = Issuer()
    app = Starlette(routes=[Route("/api/auth/jwks", keys.endpoint)])
    async with AppServer(app) as server:
        yield keys, f"{server.http_url}/api/auth/jwks"


@pytest.fixture
async def verifier(tmp_path: Path, issuer: tuple[Issuer, str]) -> AsyncIterator[TokenVerifier]:
    settings = Settings.from_env(
        {
            "DATA_DIR": str(tmp_path),
            "JWKS_URL": issuer[1],
            "JWT_ISSUER": ISSUER,
            "JWT_AUDIENCE": ISSUER,
        }
    )
    async with httpx.AsyncClient() as http:
        yield TokenVerifier(settings, None, http)


def _spam(keys: Issuer) -> str:
    """A validly shaped token under a kid the issuer never published."""
    return keys.token(secrets.token_urlsafe(16), ed25519.Ed25519PrivateKey.generate())


async def _refused(verifier: TokenVerifier, token: str) -> bool:
    try:
        await verifier.verify(token)
    except Unauthorized as exc:
        return "unknown key" in exc.message
    return False


async def test_a_rotated_in_key_is_accepted_at_once(
    issuer: tuple[Issuer, str], verifier: TokenVerifier
) -> None:
    keys, _ = issuer
    old = keys.rotate()
    assert (await verifier.verify(keys.token(old))).user_id == "reader"
    assert keys.fetches == 1
    await verifier.verify(keys.token(old))
    assert keys.fetches == 1, "a known kid is served from the cache"
    new = keys.rotate()
    assert (await verifier.verify(keys.token(new))).user_id == "reader"
    assert keys.fetches == 2
    assert (await verifier.verify(keys.token(old))).user_id == "reader", "the old key still works"
    assert keys.fetches == 2


async def test_readers_of_a_new_key_share_one_fetch(
    issuer: tuple[Issuer, str], verifier: TokenVerifier
) -> None:
    keys, _ = issuer
    await verifier.verify(keys.token(keys.rotate()))
    new = keys.rotate()
    results = await asyncio.gather(*(verifier.verify(keys.token(new)) for _ in range(50)))
    assert {r.user_id for r in results} == {"reader"}
    assert keys.fetches == 2


async def test_a_burst_of_unknown_kids_costs_at_most_two_fetches(
    issuer: tuple[Issuer, str], verifier: TokenVerifier
) -> None:
    keys, _ = issuer
    await verifier.verify(keys.token(keys.rotate()))
    # one fetch for the burst, and at most one more for those that arrived after it started
    refused = await asyncio.gather(*(_refused(verifier, _spam(keys)) for _ in range(100)))
    assert all(refused)
    assert 2 <= keys.fetches <= 3


async def test_sustained_kid_spam_is_held_to_the_floor_and_a_rotation_still_gets_in(
    issuer: tuple[Issuer, str], verifier: TokenVerifier
) -> None:
    keys, _ = issuer
    await verifier.verify(keys.token(keys.rotate()))
    started = time.monotonic()
    spam: list[asyncio.Task[bool]] = []
    reader: asyncio.Task[Any] | None = None
    for wave in range(30):
        spam += [asyncio.create_task(_refused(verifier, _spam(keys))) for _ in range(20)]
        if wave == 15:  # a real rotation in the middle of the flood
            rotated = keys.rotate()
            reader = asyncio.create_task(verifier.verify(keys.token(rotated)))
        await asyncio.sleep(0.1)
    assert all(await asyncio.gather(*spam)), "every made-up kid is refused"
    assert reader is not None and (await reader).user_id == "reader"
    elapsed = time.monotonic() - started
    # fetches start at least the floor apart: one at the start plus one per floor since
    floor_bound = 1 + math.ceil(elapsed / JWKS_REFETCH_MIN_INTERVAL_S) + 1
    assert keys.fetches <= floor_bound, (keys.fetches, elapsed, len(spam))


async def test_a_failing_jwks_is_not_hammered_either(tmp_path: Path) -> None:
    fetches = 0

    async def broken(request: Request) -> JSONResponse:
        nonlocal fetches
        fetches += 1
        return JSONResponse({"error": "down"}, status_code=503)

    app = Starlette(routes=[Route("/jwks", broken)])
    async with AppServer(app) as server, httpx.AsyncClient() as http:
        settings = Settings.from_env(
            {"DATA_DIR": str(tmp_path), "JWKS_URL": f"{server.http_url}/jwks"}
        )
        verifier = TokenVerifier(settings, None, http)
        keys = Issuer()
        refused = await asyncio.gather(*(_refused(verifier, _spam(keys)) for _ in range(100)))
    assert all(refused)
    assert 1 <= fetches <= 2
