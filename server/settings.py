"""Configuration from the environment, validated once at start."""

from __future__ import annotations

import dataclasses
import ipaddress
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from urllib.parse import urlsplit

import platformdirs

from server.errors import ConfigError

ASYMMETRIC_ALGORITHMS = ("EdDSA", "ES256", "RS256")
KNOWN_ALGORITHMS = frozenset(
    {"HS256", "HS384", "HS512", "EdDSA", "ES256", "ES384", "RS256", "RS384", "RS512", "PS256"}
)
_Getter = Callable[[str], str | None]
SAMPLE_BOOK_DIR = Path(__file__).parent / "sample_book" / "docs"


@dataclasses.dataclass(frozen=True, slots=True)
class Settings:
    """Everything the server reads from its environment."""

    data_dir: Path
    database_url: str | None = None
    qdrant_url: str | None = None
    qdrant_api_key: str | None = None
    qdrant_collection: str = "textbook_chunks"
    openai_api_key: str | None = None
    openai_base_url: str | None = None
    chat_model: str = "gpt-4o-mini"
    embedding_provider: str = "local"
    embedding_model: str | None = None
    embedding_dimensions: int | None = None
    jwt_secret: str | None = None
    jwks_url: str | None = None
    jwt_issuer: str | None = None
    jwt_audience: str | None = None
    jwt_algorithms: tuple[str, ...] = ()
    allowed_origins: tuple[str, ...] = ()
    trusted_proxies: tuple[str, ...] = ()
    book_dir: Path = SAMPLE_BOOK_DIR
    max_streams_per_connection: int = 8
    max_streams_per_user: int = 16
    max_connections_per_user: int = 8
    requests_per_minute: int = 30
    completion_tokens_per_day: int = 200_000
    resume_grace_s: float = 30.0
    resume_retention_s: float = 300.0
    idle_timeout_s: float = 600.0
    ws_ping_interval_s: float = 20.0
    ws_ping_timeout_s: float = 20.0
    drain_s: float = 20.0
    token_expiry_grace_s: float = 5.0
    slow_client_s: float = 10.0
    auth_timeout_s: float = 10.0
    history_messages: int = 6
    sources_per_answer: int = 6
    max_answer_tokens: int = 1024
    model_timeout_s: float = 60.0
    log_level: str = "INFO"

    @property
    def model_configured(self) -> bool:
        """True when an OpenAI-compatible model is reachable by configuration."""
        return bool(self.openai_api_key or self.openai_base_url)

    @property
    def auth_configured(self) -> bool:
        """True when a real secret or JWKS is configured (no dev secret)."""
        return bool(self.jwt_secret or self.jwks_url)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Read and validate settings; raise ConfigError naming the variable on a wrong value."""
        e = os.environ if env is None else env

        def get(name: str) -> str | None:
            value = e.get(name, "").strip()
            return value or None

        data_dir = Path(
            get("DATA_DIR") or platformdirs.user_data_path("textbook-chat")
        ).expanduser()
        database_url = _url(get, "DATABASE_URL", ("postgres", "postgresql"))
        qdrant_url = _url(get, "QDRANT_URL", ("http", "https"))
        openai_base_url = _url(get, "OPENAI_BASE_URL", ("http", "https"))
        jwks_url = _url(get, "JWKS_URL", ("http", "https"))
        if jwks_url and urlsplit(jwks_url).scheme == "http" and not _is_loopback_url(jwks_url):
            raise ConfigError("JWKS_URL: must use https unless it points at a loopback address")

        provider = (get("EMBEDDING_PROVIDER") or "local").lower()
        if provider not in ("local", "openai"):
            raise ConfigError(f"EMBEDDING_PROVIDER: must be 'local' or 'openai', not {provider!r}")
        openai_api_key = get("OPENAI_API_KEY")
        if provider == "openai" and not (openai_api_key or openai_base_url):
            raise ConfigError(
                "EMBEDDING_PROVIDER: 'openai' needs OPENAI_API_KEY or OPENAI_BASE_URL"
            )

        jwt_secret = get("JWT_SECRET")
        if jwt_secret is not None and len(jwt_secret.encode()) < 32:
            raise ConfigError(
                "JWT_SECRET: must be at least 32 bytes (HS256 keys shorter than that are guessable)"
            )
        algorithms = _algorithms(get("JWT_ALGORITHMS"), jwt_secret, jwks_url)

        origins = tuple(
            o.strip().rstrip("/") for o in (get("ALLOWED_ORIGINS") or "").split(",") if o.strip()
        )
        for origin in origins:
            parts = urlsplit(origin)
            if parts.scheme not in ("http", "https") or not parts.netloc or parts.path:
                raise ConfigError(
                    f"ALLOWED_ORIGINS: {origin!r} is not an origin like https://book.example.com"
                )

        trusted_proxies = _networks(get, "TRUSTED_PROXIES")

        book_dir = Path(get("BOOK_DIR") or SAMPLE_BOOK_DIR).expanduser()
        if not book_dir.is_dir():
            raise ConfigError(f"BOOK_DIR: {book_dir} is not a directory")

        return cls(
            data_dir=data_dir,
            database_url=database_url,
            qdrant_url=qdrant_url,
            qdrant_api_key=get("QDRANT_API_KEY"),
            qdrant_collection=get("QDRANT_COLLECTION") or "textbook_chunks",
            openai_api_key=openai_api_key,
            openai_base_url=openai_base_url,
            chat_model=get("CHAT_MODEL") or "gpt-4o-mini",
            embedding_provider=provider,
            embedding_model=get("EMBEDDING_MODEL"),
            embedding_dimensions=_int(get, "EMBEDDING_DIMENSIONS", 0, 0, 65_536) or None,
            jwt_secret=jwt_secret,
            jwks_url=jwks_url,
            jwt_issuer=get("JWT_ISSUER"),
            jwt_audience=get("JWT_AUDIENCE"),
            jwt_algorithms=algorithms,
            allowed_origins=origins,
            trusted_proxies=trusted_proxies,
            book_dir=book_dir,
            max_streams_per_connection=_int(get, "MAX_STREAMS_PER_CONNECTION", 8, 1, 256),
            max_streams_per_user=_int(get, "MAX_STREAMS_PER_USER", 16, 1, 1_000_000),
            max_connections_per_user=_int(get, "MAX_CONNECTIONS_PER_USER", 8, 1, 1_000_000),
            requests_per_minute=_int(get, "REQUESTS_PER_MINUTE", 30, 0, 1_000_000),
            completion_tokens_per_day=_int(get, "COMPLETION_TOKENS_PER_DAY", 200_000, 0, 10**12),
            resume_grace_s=float(_int(get, "RESUME_GRACE_SECONDS", 30, 0, 3600)),
            resume_retention_s=float(_int(get, "RESUME_RETENTION_SECONDS", 300, 0, 86_400)),
            idle_timeout_s=float(_int(get, "IDLE_TIMEOUT_SECONDS", 600, 1, 86_400)),
            ws_ping_interval_s=float(_int(get, "WS_PING_INTERVAL_SECONDS", 20, 1, 3600)),
            ws_ping_timeout_s=float(_int(get, "WS_PING_TIMEOUT_SECONDS", 20, 1, 3600)),
            drain_s=float(_int(get, "DRAIN_SECONDS", 20, 0, 3600)),
            token_expiry_grace_s=float(_int(get, "TOKEN_EXPIRY_GRACE_SECONDS", 5, 0, 300)),
            slow_client_s=float(_int(get, "SLOW_CLIENT_SECONDS", 10, 1, 600)),
            auth_timeout_s=float(_int(get, "AUTH_TIMEOUT_SECONDS", 10, 1, 300)),
            history_messages=_int(get, "HISTORY_MESSAGES", 6, 0, 50),
            sources_per_answer=_int(get, "SOURCES_PER_ANSWER", 6, 1, 20),
            max_answer_tokens=_int(get, "MAX_ANSWER_TOKENS", 1024, 16, 32_768),
            model_timeout_s=float(_int(get, "MODEL_TIMEOUT_SECONDS", 60, 1, 3600)),
            log_level=_choice(get, "LOG_LEVEL", "INFO", ("DEBUG", "INFO", "WARNING", "ERROR")),
        )


def _url(get: _Getter, name: str, schemes: tuple[str, ...]) -> str | None:
    value = get(name)
    if value is None:
        return None
    parts = urlsplit(value)
    if parts.scheme not in schemes or not (parts.netloc or parts.query):
        raise ConfigError(f"{name}: expected a {'/'.join(schemes)}:// URL")
    return value


def _networks(get: _Getter, name: str) -> tuple[str, ...]:
    """Comma-separated addresses or networks, normalised (`10.0.0.1` is `10.0.0.1/32`)."""
    networks: list[str] = []
    for item in (get(name) or "").split(","):
        if not item.strip():
            continue
        try:
            networks.append(str(ipaddress.ip_network(item.strip())))
        except ValueError:
            raise ConfigError(
                f"{name}: {item.strip()!r} is not an IP address or network like 10.0.0.0/24"
            ) from None
    return tuple(networks)


def _int(get: _Getter, name: str, default: int, lo: int, hi: int) -> int:
    raw = get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name}: expected an integer, got {raw!r}") from None
    if not lo <= value <= hi:
        raise ConfigError(f"{name}: must be between {lo} and {hi}, got {value}")
    return value


def _choice(get: _Getter, name: str, default: str, choices: tuple[str, ...]) -> str:
    value = (get(name) or default).upper()
    if value not in choices:
        raise ConfigError(f"{name}: must be one of {', '.join(choices)}")
    return value


def _algorithms(raw: str | None, secret: str | None, jwks_url: str | None) -> tuple[str, ...]:
    if raw is None:
        algs: tuple[str, ...] = (("HS256",) if secret else ()) + (
            ASYMMETRIC_ALGORITHMS if jwks_url else ()
        )
        return algs or ("HS256",)
    algs = tuple(a.strip() for a in raw.split(",") if a.strip())
    for alg in algs:
        if alg not in KNOWN_ALGORITHMS:
            raise ConfigError(f"JWT_ALGORITHMS: unknown algorithm {alg!r}")
        if alg.startswith("HS") and not secret and jwks_url:
            raise ConfigError(f"JWT_ALGORITHMS: {alg} needs JWT_SECRET")
    return algs


def _is_loopback_url(url: str) -> bool:
    host = urlsplit(url).hostname or ""
    return is_loopback_host(host)


def is_loopback_host(host: str) -> bool:
    """True for localhost and loopback addresses."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
