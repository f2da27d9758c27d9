"""JWT verification: HS256 with a shared secret, or JWKS (Better-Auth) fetched without blocking."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import re
import secrets
import time
from pathlib import Path
from typing import Any

import httpx
import jwt

from server.errors import ConfigError, TokenExpired, Unauthorized
from server.settings import Settings

log = logging.getLogger(__name__)

MAX_TOKEN_BYTES = 16_384
LEEWAY_S = 5
JWKS_REFETCH_MIN_INTERVAL_S = 1.0
DEV_SECRET_FILE = "dev-jwt-secret"


@dataclasses.dataclass(frozen=True, slots=True)
class Identity:
    """Who a verified token says the peer is, and until when."""

    user_id: str
    expires_at: int
    claims: dict[str, Any]


class JwksCache:
    """Keys of a JWKS URL by `kid`. An unknown `kid` refetches at once: an issuer that rotates
    (Better-Auth publishes the new key beside the old) signs with the new key straight away.

    One fetch at a time, shared by every verification waiting on it, and at most one per
    JWKS_REFETCH_MIN_INTERVAL_S: tokens with made-up kids cost the JWKS server one request a
    second at most, while a reader whose kid is new waits for the next fetch instead of being
    refused."""

    def __init__(self, url: str, http: httpx.AsyncClient) -> None:
        self._url = url
        self._http = http
        self._keys: dict[str | None, jwt.PyJWK] = {}
        self._lock = asyncio.Lock()
        self._fetch_started = float("-inf")

    async def key(self, kid: str | None) -> jwt.PyJWK:
        """The key for `kid`; raises Unauthorized when the JWKS has no such key."""
        if kid not in self._keys:
            arrived = time.monotonic()
            async with self._lock:
                # A fetch that started before this token arrived may predate its key, so only a
                # fetch started since then can prove the kid unknown; waiters queued behind one
                # fetch share it.
                if kid not in self._keys and self._fetch_started < arrived:
                    wait = self._fetch_started + JWKS_REFETCH_MIN_INTERVAL_S - time.monotonic()
                    if wait > 0:
                        await asyncio.sleep(wait)
                    await self._refresh()
        if kid in self._keys:
            return self._keys[kid]
        if kid is None and len(self._keys) == 1:
            return next(iter(self._keys.values()))
        raise Unauthorized("token signed with an unknown key")

    async def _refresh(self) -> None:
        self._fetch_started = time.monotonic()
        try:
            response = await self._http.get(self._url, timeout=5.0)
            response.raise_for_status()
            keyset = jwt.PyJWKSet.from_dict(response.json())
        except (httpx.HTTPError, ValueError, jwt.PyJWKSetError) as exc:
            log.warning("JWKS fetch from %s failed: %s", self._url, type(exc).__name__)
            return
        self._keys = {k.key_id: k for k in keyset.keys}


class TokenVerifier:
    """Verifies bearer tokens; the accepted algorithms come from configuration, never from the token."""

    def __init__(
        self, settings: Settings, secret: str | None, http: httpx.AsyncClient | None = None
    ) -> None:
        self._secret = secret
        self._algorithms = settings.accepted_algorithms
        self._issuer = settings.jwt_issuer
        self._audience = settings.jwt_audience
        self._jwks = JwksCache(settings.jwks_url, http) if settings.jwks_url and http else None

    async def verify(self, token: str) -> Identity:
        """Verify a token; raise Unauthorized or TokenExpired."""
        if len(token) > MAX_TOKEN_BYTES:
            raise Unauthorized("token too large")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise Unauthorized("malformed token") from None
        alg = header.get("alg")
        if alg not in self._algorithms:
            raise Unauthorized("token algorithm not accepted")
        key: Any
        if alg.startswith("HS"):
            if self._secret is None:
                raise Unauthorized("token algorithm not accepted")
            key = self._secret
        elif self._jwks is not None:
            key = (await self._jwks.key(header.get("kid"))).key
        else:
            raise Unauthorized("token algorithm not accepted")
        options: dict[str, Any] = {
            "require": ["exp", "sub"],
            "verify_aud": self._audience is not None,
        }
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=[alg],
                issuer=self._issuer,
                audience=self._audience,
                leeway=LEEWAY_S,
                options=options,  # type: ignore[arg-type]
            )
        except jwt.ExpiredSignatureError:
            raise TokenExpired("token expired") from None
        except jwt.PyJWTError as exc:
            raise Unauthorized(f"invalid token: {_reason(exc)}") from None
        except (TypeError, ValueError):  # an algorithm that does not fit the key of its kid
            raise Unauthorized("invalid token: algorithm does not match the key") from None
        sub = claims.get("sub")
        if not isinstance(sub, str) or not sub or len(sub) > 255 or _CONTROL.search(sub):
            raise Unauthorized("invalid token: bad sub")
        if not _is_text(claims):
            raise Unauthorized("invalid token: claims that are not valid UTF-8 text")
        exp = claims["exp"]
        if not isinstance(exp, int | float) or not 0 < exp < 2**53:
            raise Unauthorized("invalid token: bad exp")
        return Identity(user_id=sub, expires_at=int(exp), claims=claims)


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _is_text(value: Any) -> bool:
    """No string anywhere in the claims holds a lone surrogate (JSON allows the escape; UTF-8, and
    so Postgres and every encoder after it, does not)."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return False
        return True
    if isinstance(value, dict):
        return all(_is_text(k) and _is_text(v) for k, v in value.items())
    if isinstance(value, list):
        return all(_is_text(v) for v in value)
    return True


def _reason(exc: jwt.PyJWTError) -> str:
    if isinstance(exc, jwt.InvalidIssuerError):
        return "wrong issuer"
    if isinstance(exc, jwt.InvalidAudienceError):
        return "wrong audience"
    if isinstance(exc, jwt.ImmatureSignatureError):
        return "not yet valid"
    if isinstance(exc, jwt.MissingRequiredClaimError):
        return f"missing {exc.claim}"
    if isinstance(exc, jwt.InvalidSignatureError):
        return "bad signature"
    return "could not verify"


def signing_secret(settings: Settings, *, loopback: bool, create: bool = True) -> str | None:
    """The HS256 secret: JWT_SECRET, else a dev secret under DATA_DIR (only without auth config, on loopback)."""
    if settings.jwt_secret:
        return settings.jwt_secret
    if settings.jwks_url:
        return None
    if not loopback:
        raise ConfigError(
            "JWT_SECRET: set JWT_SECRET or JWKS_URL to serve beyond loopback (no dev secret there)"
        )
    path = settings.data_dir / DEV_SECRET_FILE
    if path.exists():
        return path.read_text().strip()
    if not create:
        return None
    return _write_dev_secret(path)


def _write_dev_secret(path: Path) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    value = secrets.token_urlsafe(48)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(value)
    return value


def mint_token(
    secret: str,
    sub: str,
    ttl_s: int,
    *,
    issuer: str | None = None,
    audience: str | None = None,
    extra: dict[str, Any] | None = None,
) -> str:
    """An HS256 token for `sub`, valid for `ttl_s` seconds."""
    now = int(time.time())
    claims: dict[str, Any] = {"sub": sub, "iat": now, "exp": now + ttl_s, **(extra or {})}
    if issuer:
        claims["iss"] = issuer
    if audience:
        claims["aud"] = audience
    return jwt.encode(claims, secret, algorithm="HS256")
