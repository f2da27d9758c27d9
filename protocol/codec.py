"""The one codec of protocol v1: decoders and encoders built once, shared by every connection."""

from __future__ import annotations

from typing import Any

import msgspec

from protocol import languages
from protocol.frames import ClientFrame, ServerFrame
from protocol.limits import STREAM_ID_MAX


class DecodeError(ValueError):
    """A client frame that is not valid JSON or does not match the schema."""


_client_decoder: msgspec.json.Decoder[ClientFrame] = msgspec.json.Decoder(ClientFrame)
_server_decoder: msgspec.json.Decoder[ServerFrame] = msgspec.json.Decoder(ServerFrame)
_encoder = msgspec.json.Encoder()


def decode_client(data: str | bytes) -> ClientFrame:
    """Decode one client frame; raise DecodeError naming the offending field."""
    try:
        return _client_decoder.decode(data)
    except msgspec.ValidationError as exc:
        raise DecodeError(readable(exc)) from None
    except msgspec.DecodeError as exc:
        raise DecodeError(f"malformed JSON: {exc}") from None
    except RecursionError:
        raise DecodeError("JSON nested too deeply") from None


def readable(exc: msgspec.ValidationError) -> str:
    """msgspec's message, with the no-NUL and language patterns said in words."""
    message = str(exc)
    where = message.partition(" - at ")[2]
    at = f" - at {where}" if where else ""
    if "x00]*$'" in message:
        return "NUL characters (\\u0000) are not allowed" + at
    if repr(languages.PATTERN) in message:  # msgspec quotes the pattern as Python does
        return "not a language we translate into (a code such as `ur` or `ur-PK`)" + at
    return message


def invalid_frame_id(text: str) -> str | None:
    """The `id` of a frame that failed to decode, when it has a usable one, so the error can
    name the stream."""
    try:
        value = msgspec.json.decode(text)
    except (msgspec.DecodeError, RecursionError):
        return None
    if isinstance(value, dict):
        sid = value.get("id")
        if isinstance(sid, str) and 0 < len(sid) <= STREAM_ID_MAX:
            return sid
    return None


def decode_server(data: str | bytes) -> ServerFrame:
    """Decode one server frame (for clients and tests)."""
    return _server_decoder.decode(data)


def encode(frame: Any) -> bytes:
    """Encode any frame to JSON bytes."""
    return _encoder.encode(frame)


def schema() -> dict[str, Any]:
    """JSON Schema of every client and server frame."""
    (client, server), components = msgspec.json.schema_components([ClientFrame, ServerFrame])
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "textbook-chat protocol v1",
        "client_frame": client,
        "server_frame": server,
        "$defs": components,
    }
