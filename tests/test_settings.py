"""Settings from the environment: every default declared once, wrong values named by variable."""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest

from protocol.limits import DEFAULT_LIMITS
from server.errors import ConfigError
from server.settings import Settings, env_name

SECRET = "s" * 32


def read(tmp_path: Path, **env: str) -> Settings:
    return Settings.from_env({"DATA_DIR": str(tmp_path), **env})


def test_nothing_configured_gives_the_documented_defaults(tmp_path: Path) -> None:
    s = read(tmp_path)
    assert s.data_dir == tmp_path
    assert s.max_streams_per_connection == DEFAULT_LIMITS.max_streams == 8
    assert s.auth_timeout_s == DEFAULT_LIMITS.auth_timeout_s == 10.0
    assert (s.resume_grace_s, s.resume_retention_s, s.drain_s) == (30.0, 300.0, 20.0)
    assert s.embedding_provider == "local" and s.log_level == "INFO"
    assert s.embedding_runtime == "onnx-int8"
    assert s.accepted_algorithms == ("HS256",)
    assert not s.model_configured and not s.auth_configured


def test_every_field_has_its_variable() -> None:
    names = {env_name(f.name) for f in msgspec.structs.fields(Settings)}
    assert {"RESUME_GRACE_SECONDS", "MODEL_TIMEOUT_SECONDS", "JWKS_URL", "DATA_DIR"} <= names
    assert env_name("drain_s") == "DRAIN_SECONDS"


def test_values_are_converted_and_normalised(tmp_path: Path) -> None:
    s = read(
        tmp_path,
        MAX_STREAMS_PER_CONNECTION=" 4 ",
        RESUME_GRACE_SECONDS="2.5",
        LOG_LEVEL="debug",
        EMBEDDING_PROVIDER="OpenAI",
        EMBEDDING_RUNTIME="NumPy",
        OPENAI_API_KEY="k",
        ALLOWED_ORIGINS="https://a.example.com/, http://localhost:3000",
        JWT_SECRET=SECRET,
        JWKS_URL="https://auth.example.com/api/auth/jwks",
    )
    assert s.max_streams_per_connection == 4 and s.resume_grace_s == 2.5
    assert s.log_level == "DEBUG" and s.embedding_provider == "openai"
    assert s.embedding_runtime == "numpy"
    assert s.allowed_origins == ("https://a.example.com", "http://localhost:3000")
    assert s.accepted_algorithms == ("HS256", "EdDSA", "ES256", "RS256")


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({"MAX_STREAMS_PER_CONNECTION": "0"}, "MAX_STREAMS_PER_CONNECTION"),
        ({"MAX_STREAMS_PER_CONNECTION": "many"}, "MAX_STREAMS_PER_CONNECTION"),
        ({"RESUME_GRACE_SECONDS": "-1"}, "RESUME_GRACE_SECONDS"),
        ({"LOG_LEVEL": "chatty"}, "LOG_LEVEL"),
        ({"EMBEDDING_PROVIDER": "magic"}, "EMBEDDING_PROVIDER"),
        ({"EMBEDDING_PROVIDER": "openai"}, "EMBEDDING_PROVIDER"),
        ({"EMBEDDING_RUNTIME": "gpu"}, "EMBEDDING_RUNTIME"),
        ({"DATABASE_URL": "mysql://x"}, "DATABASE_URL"),
        ({"JWKS_URL": "http://auth.example.com/jwks"}, "JWKS_URL"),
        ({"JWT_SECRET": "short"}, "JWT_SECRET"),
        ({"JWT_ALGORITHMS": "none"}, "JWT_ALGORITHMS"),
        ({"JWT_ALGORITHMS": "HS256", "JWKS_URL": "https://a/jwks"}, "JWT_ALGORITHMS"),
        ({"ALLOWED_ORIGINS": "book.example.com"}, "ALLOWED_ORIGINS"),
        ({"ALLOWED_ORIGINS": "https://book.example.com/docs"}, "ALLOWED_ORIGINS"),
        ({"BOOK_DIR": "/no/such/book"}, "BOOK_DIR"),
    ],
)
def test_a_wrong_value_names_its_variable(
    tmp_path: Path, env: dict[str, str], variable: str
) -> None:
    with pytest.raises(ConfigError, match=f"^{variable}: "):
        read(tmp_path, **env)


def test_http_jwks_is_allowed_on_loopback(tmp_path: Path) -> None:
    s = read(tmp_path, JWKS_URL="http://127.0.0.1:3000/api/auth/jwks")
    assert s.auth_configured and s.accepted_algorithms == ("EdDSA", "ES256", "RS256")


def test_replace_validates_again(tmp_path: Path) -> None:
    s = read(tmp_path)
    assert s.replace(drain_s=1.0).drain_s == 1.0
    with pytest.raises(ValueError, match="JWT_SECRET"):
        s.replace(jwt_secret="short")
