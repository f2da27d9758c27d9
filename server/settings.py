"""Configuration from the environment, declared once and validated once at start.

Each field of `Settings` is one variable: its name upper-cased, with `_s` read as `_SECONDS`
(`resume_grace_s` is `RESUME_GRACE_SECONDS`). Types, bounds and defaults are the field's own;
msgspec converts and checks them, and a wrong value stops the server with one line naming the
variable.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

import msgspec
import platformdirs
from msgspec import Meta

from protocol.limits import DEFAULT_LIMITS
from server.errors import ConfigError

ASYMMETRIC_ALGORITHMS = ("EdDSA", "ES256", "RS256")
KNOWN_ALGORITHMS = frozenset(
    {"HS256", "HS384", "HS512", "EdDSA", "ES256", "ES384", "RS256", "RS384", "RS512", "PS256"}
)
SAMPLE_BOOK_DIR = Path(__file__).parent / "sample_book" / "docs"

Count = Annotated[int, Meta(ge=0, le=1_000_000)]
Seconds = Annotated[float, Meta(ge=0, le=86_400)]
PositiveSeconds = Annotated[float, Meta(ge=1, le=86_400)]


class Settings(msgspec.Struct, frozen=True, kw_only=True):
    """Everything the server reads from its environment."""

    data_dir: Path
    database_url: str | None = None
    # Connections per process, and how long a query queues for one: under a load the server
    # accepts, a busy pool must slow answers down, never fail them.
    database_pool_size: Annotated[int, Meta(ge=2, le=500)] = 20
    database_wait_s: Annotated[float, Meta(ge=1, le=600)] = 30.0
    qdrant_url: str | None = None
    qdrant_api_key: str | None = None
    qdrant_collection: str = "textbook_chunks"
    openai_api_key: str | None = None
    openai_base_url: str | None = None
    chat_model: str = "gpt-4o-mini"
    embedding_provider: Literal["local", "openai"] = "local"
    embedding_model: str | None = None
    embedding_dimensions: Annotated[int, Meta(ge=1, le=65_536)] | None = None
    embedding_runtime: Literal["onnx-int8", "onnx", "numpy"] = "onnx-int8"
    jwt_secret: str | None = None
    jwks_url: str | None = None
    jwt_issuer: str | None = None
    jwt_audience: str | None = None
    jwt_algorithms: tuple[str, ...] = ()  # empty: chosen from what is configured
    allowed_origins: tuple[str, ...] = ()
    trusted_proxies: tuple[str, ...] = ()  # whose X-Forwarded-For/-Proto is believed
    metrics_token: str | None = None  # /metrics wants it as a bearer token
    metrics_port: Annotated[int, Meta(ge=0, le=65_535)] = 0  # /metrics on its own port instead
    metrics_host: str = "127.0.0.1"
    book_dir: Path = SAMPLE_BOOK_DIR
    max_streams_per_connection: Annotated[int, Meta(ge=1, le=256)] = DEFAULT_LIMITS.max_streams
    max_streams_per_user: Annotated[int, Meta(ge=1, le=1_000_000)] = 16
    max_connections_per_user: Annotated[int, Meta(ge=1, le=1_000_000)] = 8
    max_connections: Annotated[int, Meta(ge=0, le=10_000_000)] = 0  # 0: from the open-files limit
    handshake_timeout_s: Annotated[float, Meta(gt=0, le=300)] = 10.0
    requests_per_minute: Count = 30  # 0 disables
    completion_tokens_per_day: Annotated[int, Meta(ge=0, le=10**12)] = 200_000  # 0 disables
    resume_grace_s: Annotated[float, Meta(ge=0, le=3600)] = 30.0
    resume_retention_s: Seconds = 300.0
    idle_timeout_s: PositiveSeconds = DEFAULT_LIMITS.idle_timeout_s
    ws_ping_interval_s: Annotated[float, Meta(ge=1, le=3600)] = 20.0
    ws_ping_timeout_s: Annotated[float, Meta(ge=1, le=3600)] = 20.0
    ws_per_message_deflate: bool = False  # see README "Performance": CPU per frame vs bytes
    drain_s: Annotated[float, Meta(ge=0, le=3600)] = 20.0
    token_expiry_grace_s: Annotated[float, Meta(ge=0, le=300)] = DEFAULT_LIMITS.token_expiry_grace_s
    slow_client_s: Annotated[float, Meta(ge=1, le=600)] = 10.0
    # a stream's deltas reach its reader at most this often; 0 sends each token as its own frame
    delta_tick_ms: Annotated[float, Meta(ge=0, le=1000)] = 30.0
    auth_timeout_s: Annotated[float, Meta(ge=1, le=300)] = DEFAULT_LIMITS.auth_timeout_s
    history_messages: Annotated[int, Meta(ge=0, le=50)] = 6
    sources_per_answer: Annotated[int, Meta(ge=1, le=20)] = 6
    max_answer_tokens: Annotated[int, Meta(ge=16, le=32_768)] = 1024
    model_timeout_s: Annotated[float, Meta(ge=1, le=3600)] = 60.0
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    # The authors' insights (server/insights/): a token is an author's when its claim
    # `admin_claim` is `admin_role` (or a list, or comma-separated string, holding it).
    admin_claim: Annotated[str, Meta(min_length=1, max_length=200)] = "role"
    admin_role: Annotated[str, Meta(min_length=1, max_length=200)] = "admin"
    insights_min_readers: Annotated[int, Meta(ge=1, le=1000)] = 3  # k-anonymity
    # Best dense cosine below which the book had nothing close to a question; calibrated on the
    # two corpora with `textbook-chat eval-retrieval --gaps eval/off_book.jsonl` (README).
    unanswerable_similarity: Annotated[float, Meta(ge=0, le=1)] = 0.35

    def __post_init__(self) -> None:
        _check(self)

    @property
    def model_configured(self) -> bool:
        """True when an OpenAI-compatible model is reachable by configuration."""
        return bool(self.openai_api_key or self.openai_base_url)

    @property
    def auth_configured(self) -> bool:
        """True when a real secret or JWKS is configured (no dev secret)."""
        return bool(self.jwt_secret or self.jwks_url)

    @property
    def accepted_algorithms(self) -> tuple[str, ...]:
        """JWT_ALGORITHMS, or what the configured keys can verify."""
        if self.jwt_algorithms:
            return self.jwt_algorithms
        algs = (("HS256",) if self.jwt_secret else ()) + (
            ASYMMETRIC_ALGORITHMS if self.jwks_url else ()
        )
        return algs or ("HS256",)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Read and validate settings; raise ConfigError naming the variable on a wrong value."""
        e = os.environ if env is None else env
        raw: dict[str, Any] = {}
        for field in msgspec.structs.fields(cls):
            value = e.get(env_name(field.name), "").strip()
            if not value:
                continue
            if field.name == "trusted_proxies":
                raw[field.name] = [_network(v.strip()) for v in value.split(",") if v.strip()]
            elif field.name in _LISTS:
                raw[field.name] = [v.strip().rstrip("/") for v in value.split(",") if v.strip()]
            elif field.name in _UPPER:
                raw[field.name] = value.upper()
            elif field.name in _LOWER:
                raw[field.name] = value.lower()
            else:
                raw[field.name] = value
        raw.setdefault("data_dir", str(platformdirs.user_data_path("textbook-chat")))
        try:
            return msgspec.convert(raw, cls, strict=False, dec_hook=_decode_path)
        except msgspec.ValidationError as exc:
            raise ConfigError(_explain(exc)) from None

    def replace(self, **changes: Any) -> Settings:
        """A copy with some fields changed, validated again."""
        return msgspec.structs.replace(self, **changes)


_LISTS = frozenset({"jwt_algorithms", "allowed_origins", "trusted_proxies"})
_UPPER = frozenset({"log_level"})
_LOWER = frozenset({"embedding_provider", "embedding_runtime"})


def env_name(field: str) -> str:
    """The environment variable of a settings field."""
    return re.sub(r"_S$", "_SECONDS", field.upper())


def _network(value: str) -> str:
    """`10.0.0.1` as `10.0.0.1/32`; anything else as it came, for `_check` to name."""
    try:
        return str(ipaddress.ip_network(value))
    except ValueError:
        return value


def _decode_path(kind: type, value: Any) -> Any:
    if kind is Path and isinstance(value, str):
        return Path(value).expanduser()
    raise NotImplementedError


def _explain(exc: msgspec.ValidationError) -> str:
    """`EMBEDDING_DIMENSIONS: Expected `int` <= 65536` from msgspec's `... - at `$.field``."""
    message = str(exc)
    found = re.search(r" - at `\$\.(\w+)", message)
    if found is None:
        return message
    return f"{env_name(found.group(1))}: {message[: found.start()]}"


def _fail(field: str, why: str) -> None:
    # msgspec reports a ValueError from __post_init__ as a ValidationError of the whole struct;
    # the field's name goes first so `_explain` can name the variable.
    raise ValueError(f"{env_name(field)}: {why}")


def _check(s: Settings) -> None:
    """What the fields' types cannot say: URL schemes, key sizes, combinations."""
    for field, schemes in (
        ("database_url", ("postgres", "postgresql")),
        ("qdrant_url", ("http", "https")),
        ("openai_base_url", ("http", "https")),
        ("jwks_url", ("http", "https")),
    ):
        value = getattr(s, field)
        if value is not None:
            parts = urlsplit(value)
            if parts.scheme not in schemes or not (parts.netloc or parts.query):
                _fail(field, f"expected a {'/'.join(schemes)}:// URL")
    if s.jwks_url and urlsplit(s.jwks_url).scheme == "http" and not _is_loopback_url(s.jwks_url):
        _fail("jwks_url", "must use https unless it points at a loopback address")
    if s.embedding_provider == "openai" and not s.model_configured:
        _fail("embedding_provider", "'openai' needs OPENAI_API_KEY or OPENAI_BASE_URL")
    if s.jwt_secret is not None and len(s.jwt_secret.encode()) < 32:
        _fail(
            "jwt_secret", "must be at least 32 bytes (HS256 keys shorter than that are guessable)"
        )
    for alg in s.jwt_algorithms:
        if alg not in KNOWN_ALGORITHMS:
            _fail("jwt_algorithms", f"unknown algorithm {alg!r}")
        if alg.startswith("HS") and not s.jwt_secret and s.jwks_url:
            _fail("jwt_algorithms", f"{alg} needs JWT_SECRET")
    for origin in s.allowed_origins:
        parts = urlsplit(origin)
        if parts.scheme not in ("http", "https") or not parts.netloc or parts.path.strip("/"):
            _fail("allowed_origins", f"{origin!r} is not an origin like https://book.example.com")
    for network in s.trusted_proxies:
        try:
            ipaddress.ip_network(network)
        except ValueError:
            _fail(
                "trusted_proxies",
                f"{network!r} is not an IP address or network like 10.0.0.0/24",
            )
    if not s.book_dir.is_dir():
        _fail("book_dir", f"{s.book_dir} is not a directory")


def _is_loopback_url(url: str) -> bool:
    return is_loopback_host(urlsplit(url).hostname or "")


def is_loopback_host(host: str) -> bool:
    """True for localhost and loopback addresses."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
