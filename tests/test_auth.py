"""JWT verification: HS256, JWKS (EdDSA, ES256, RS256) with kid rotation, and the refusals."""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from server.auth import TokenVerifier, mint_token, signing_secret
from server.errors import ConfigError, TokenExpired, Unauthorized
from server.settings import Settings
from tests.conftest import AppServer

SECRET = "s" * 40
ISSUER = "https://auth.example.com"


class Jwks:
    """A JWKS endpoint whose key set the test can rotate."""

    def __init__(self) -> None:
        self.keys: dict[str, Any] = {}
        self.fetches = 0

    def add(self, kid: str, private_key: Any, alg: str) -> None:
        jwk = jwt.algorithms.get_default_algorithms()[alg].to_jwk(
            private_key.public_key(), as_dict=True
        )
        self.keys[kid] = {**jwk, "kid": kid, "alg": alg, "use": "sig"}

    async def endpoint(self, request: Request) -> JSONResponse:
        self.fetches += 1
        return JSONResponse({"keys": list(self.keys.values())})


@pytest.fixture
async def jwks() -> AsyncIterator[tuple[Jwks, str]]:
    keys = Jwks()
    app = Starlette(routes=[Route("/api/auth/jwks", keys.endpoint)])
    async with AppServer(app) as server:
        yield keys, f"{server.http_url}/api/auth/jwks"


def _settings(tmp_path: Path, **env: str) -> Settings:
    return Settings.from_env({"DATA_DIR": str(tmp_path), **env})


def _sign(key: Any, alg: str, kid: str | None, **claims: Any) -> str:
    now = int(time.time())
    body = {"sub": "user-1", "iat": now, "exp": now + 900, "iss": ISSUER, "aud": ISSUER, **claims}
    body = {k: v for k, v in body.items() if v is not None}
    return jwt.encode(body, key, algorithm=alg, headers={"kid": kid} if kid else None)


async def test_hs256_accepts_and_refuses(tmp_path: Path) -> None:
    verifier = TokenVerifier(_settings(tmp_path, JWT_SECRET=SECRET), SECRET)
    identity = await verifier.verify(mint_token(SECRET, "alice", 60))
    assert identity.user_id == "alice" and identity.expires_at > time.time()
    with pytest.raises(TokenExpired):
        await verifier.verify(mint_token(SECRET, "alice", -60))
    with pytest.raises(Unauthorized, match="bad signature"):
        await verifier.verify(mint_token("o" * 40, "alice", 60))
    with pytest.raises(Unauthorized):
        await verifier.verify(
            jwt.encode({"sub": "a", "exp": time.time() + 60}, None, algorithm="none")
        )
    with pytest.raises(Unauthorized, match="missing sub"):
        await verifier.verify(jwt.encode({"exp": int(time.time()) + 60}, SECRET, algorithm="HS256"))
    with pytest.raises(Unauthorized, match="missing exp"):
        await verifier.verify(jwt.encode({"sub": "a"}, SECRET, algorithm="HS256"))
    with pytest.raises(Unauthorized, match="not yet valid"):
        await verifier.verify(mint_token(SECRET, "a", 60, extra={"nbf": int(time.time()) + 600}))
    with pytest.raises(Unauthorized, match="too large"):
        await verifier.verify("x" * 20_000)
    tampered = mint_token(SECRET, "alice", 60).split(".")
    tampered[1] = jwt.utils.base64url_encode(b'{"sub":"admin","exp":9999999999}').decode()
    with pytest.raises(Unauthorized):
        await verifier.verify(".".join(tampered))


async def test_issuer_and_audience_checked_when_configured(tmp_path: Path) -> None:
    settings = _settings(tmp_path, JWT_SECRET=SECRET, JWT_ISSUER=ISSUER, JWT_AUDIENCE=ISSUER)
    verifier = TokenVerifier(settings, SECRET)
    assert (await verifier.verify(_sign(SECRET, "HS256", None))).user_id == "user-1"
    with pytest.raises(Unauthorized, match="wrong issuer"):
        await verifier.verify(_sign(SECRET, "HS256", None, iss="https://other"))
    with pytest.raises(Unauthorized, match="wrong audience"):
        await verifier.verify(_sign(SECRET, "HS256", None, aud="https://other"))


@pytest.mark.parametrize(
    ("alg", "make_key"),
    [
        ("EdDSA", ed25519.Ed25519PrivateKey.generate),
        ("ES256", lambda: ec.generate_private_key(ec.SECP256R1())),
        ("RS256", lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048)),
    ],
)
async def test_jwks_algorithms_and_rotation(
    tmp_path: Path, jwks: tuple[Jwks, str], alg: str, make_key: Any
) -> None:
    keys, url = jwks
    first = make_key()
    keys.add("k1", first, alg)
    settings = _settings(tmp_path, JWKS_URL=url, JWT_ISSUER=ISSUER, JWT_AUDIENCE=ISSUER)
    async with httpx.AsyncClient() as http:
        verifier = TokenVerifier(settings, None, http)
        assert (await verifier.verify(_sign(first, alg, "k1"))).user_id == "user-1"
        assert keys.fetches == 1
        await verifier.verify(_sign(first, alg, "k1"))
        assert keys.fetches == 1  # cached
        # rotation: a new kid triggers one refetch, at once
        second = make_key()
        keys.add("k2", second, alg)
        assert (await verifier.verify(_sign(second, alg, "k2"))).user_id == "user-1"
        assert keys.fetches == 2
        with pytest.raises(Unauthorized, match="unknown key"):
            await verifier.verify(_sign(make_key(), alg, "k3"))
        with pytest.raises(Unauthorized):
            await verifier.verify(_sign(make_key(), alg, "k1"))  # right kid, wrong key


async def test_algorithm_confusion_is_refused(tmp_path: Path, jwks: tuple[Jwks, str]) -> None:
    keys, url = jwks
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    keys.add("k1", private, "RS256")
    public_pem = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    # HS256 "signed" with the server's public key, as an attacker who downloaded the JWKS would
    b64 = jwt.utils.base64url_encode
    head = b64(b'{"alg":"HS256","kid":"k1","typ":"JWT"}').decode()
    body = b64(b'{"sub":"admin","exp":9999999999}').decode()
    mac = hmac.new(public_pem, f"{head}.{body}".encode(), hashlib.sha256).digest()
    forged = f"{head}.{body}.{b64(mac).decode()}"
    async with httpx.AsyncClient() as http:
        verifier = TokenVerifier(_settings(tmp_path, JWKS_URL=url), None, http)
        with pytest.raises(Unauthorized, match="algorithm not accepted"):
            await verifier.verify(forged)


def test_dev_secret_only_on_loopback_without_auth_config(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    secret = signing_secret(settings, loopback=True)
    assert secret and signing_secret(settings, loopback=True) == secret
    assert (tmp_path / "dev-jwt-secret").stat().st_mode & 0o777 == 0o600
    with pytest.raises(ConfigError, match="JWT_SECRET"):
        signing_secret(settings, loopback=False)
    assert signing_secret(settings.replace(jwt_secret=SECRET), loopback=False) == SECRET
    assert signing_secret(settings.replace(jwks_url="https://x/jwks"), loopback=True) is None
