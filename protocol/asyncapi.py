"""The AsyncAPI 3.0 document of the chat socket, generated from the frames (`protocol.frames`)
and the code tables (`protocol.codes`); pure.

The document describes the server: it `receive`s every client frame (each an operation whose
reply names the frames that answer it) and `send`s the server frames. Each frame is a message
whose payload is the JSON Schema msgspec derives from the frame's Struct, the same types the
server decodes and encodes with.
"""

from __future__ import annotations

import inspect
import typing
from typing import Any

import msgspec

from protocol.codes import CLOSES, ERRORS
from protocol.frames import (
    PROTOCOL_VERSION,
    Ask,
    Auth,
    Cancel,
    Chapter,
    ClientFrame,
    Delta,
    Done,
    Error,
    Ping,
    Pong,
    Ready,
    Resume,
    ServerFrame,
    Sources,
    Start,
)
from protocol.limits import DEFAULT_LIMITS, MAX_FRAME_BYTES

CHANNEL = "chat"
ADDRESS = "/v1/chat"
REF_TEMPLATE = "#/components/schemas/{name}"
SECURITY_SCHEME = "bearer"

# The frames that answer each client frame, in the order they may come.
REPLIES: dict[type[Any], tuple[type[Any], ...]] = {
    Auth: (Ready, Error),
    Ask: (Start, Sources, Delta, Done, Error),
    Chapter: (Start, Delta, Done, Error),
    Cancel: (Done, Error),
    Resume: (Start, Sources, Delta, Done, Error),
    Ping: (Pong,),
}

OVERVIEW = f"""\
The chat socket of textbook-chat, protocol v{PROTOCOL_VERSION}: one WebSocket per reader
connection, JSON text frames, each an object with a string `type`.

**Authentication.** Send `Authorization: Bearer <jwt>` on the upgrade request, or send
`{{"type":"auth","token":…}}` as the first frame within {DEFAULT_LIMITS.auth_timeout_s:g} s. The
server answers `ready`. `auth` again with a fresh token for the same reader refreshes the session.

**Streams.** `ask` and `chapter` start a stream under a client-chosen `id`; every frame of it
carries that `id` and `seq` 1, 2, 3…, and exactly one `done` or `error` ends it. A stream outlives
its socket: after a reconnect, `resume` with the last `seq` seen replays the rest exactly once.

**Errors.** A malformed frame gets `error {{code: "invalid_message"}}` naming the field, and the
socket stays open. Frames over {MAX_FRAME_BYTES} bytes close it (1009); binary frames are refused.
"""


def document(*, host: str, protocol: str = "ws", pathname: str = "") -> dict[str, Any]:
    """The AsyncAPI 3.0 document, for a server at `host` (`ws` or `wss`) under `pathname`."""
    client = typing.get_args(ClientFrame)
    server = typing.get_args(ServerFrame)
    missing = set(client) - set(REPLIES)
    if missing:
        raise ValueError(f"no replies declared for {sorted(t.__name__ for t in missing)}")
    _, schemas = msgspec.json.schema_components([*client, *server], ref_template=REF_TEMPLATE)
    channel_ref = {"$ref": f"#/channels/{CHANNEL}"}

    def message_ref(frame: type[Any]) -> dict[str, str]:
        return {"$ref": f"#/channels/{CHANNEL}/messages/{_tag(frame)}"}

    operations: dict[str, Any] = {}
    for frame in client:
        summary, description = _docs(frame)
        operations[_tag(frame)] = {
            "action": "receive",
            "channel": channel_ref,
            "summary": summary,
            **({"description": description} if description else {}),
            "messages": [message_ref(frame)],
            "reply": {"channel": channel_ref, "messages": [message_ref(f) for f in REPLIES[frame]]},
        }
    operations["serverFrames"] = {
        "action": "send",
        "channel": channel_ref,
        "summary": "Every frame the server sends.",
        "description": "Stream frames in reply to `ask`, `chapter` and `resume`; `ready` after "
        "authentication; `error` without an `id` for the connection (e.g. `token_expired`).",
        "messages": [message_ref(frame) for frame in server],
    }
    server_object: dict[str, Any] = {
        "host": host,
        "protocol": protocol,
        "title": "textbook-chat",
        "security": [{"$ref": f"#/components/securitySchemes/{SECURITY_SCHEME}"}],
    }
    if pathname:
        server_object["pathname"] = pathname
    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": "textbook-chat socket",
            "version": str(PROTOCOL_VERSION),
            "description": OVERVIEW,
        },
        "defaultContentType": "application/json",
        "servers": {"chat": server_object},
        "channels": {CHANNEL: _channel([*client, *server])},
        "operations": operations,
        "components": {
            "schemas": schemas,
            "messages": {_tag(frame): _message(frame) for frame in (*client, *server)},
            "correlationIds": {
                "stream": {
                    "description": "The client-chosen stream `id` every frame of a stream carries.",
                    "location": "$message.payload#/id",
                }
            },
            "securitySchemes": {
                SECURITY_SCHEME: {
                    "type": "http",
                    "scheme": "bearer",
                    "bearerFormat": "JWT",
                    "description": "The reader's JWT: `Authorization: Bearer <jwt>` on the upgrade "
                    'request, or the first frame `{"type":"auth","token":<jwt>}` within '
                    f"{DEFAULT_LIMITS.auth_timeout_s:g} s (else close 4408).",
                }
            },
        },
    }


def _channel(frames: list[type[Any]]) -> dict[str, Any]:
    closes = "\n".join(f"| {int(code)} | {meaning} |" for code, meaning in CLOSES.items())
    return {
        "address": ADDRESS,
        "title": "The chat socket",
        "description": "One connection per reader; the server closes it with one of these codes:"
        f"\n\n| close code | meaning |\n| --- | --- |\n{closes}",
        "messages": {
            _tag(frame): {"$ref": f"#/components/messages/{_tag(frame)}"} for frame in frames
        },
        "bindings": {
            "ws": {
                "method": "GET",
                "headers": {
                    "type": "object",
                    "properties": {
                        "Authorization": {
                            "type": "string",
                            "pattern": "^[Bb]earer .+",
                            "description": "The reader's JWT; else send `auth` as the first frame.",
                        }
                    },
                },
                "bindingVersion": "0.1.0",
            }
        },
        "x-close-codes": [
            {"code": int(code), "name": code.name.lower(), "meaning": meaning}
            for code, meaning in CLOSES.items()
        ],
    }


def _message(frame: type[Any]) -> dict[str, Any]:
    summary, description = _docs(frame)
    if frame is Error:
        description = (description + "\n\n" if description else "") + _error_codes()
    message: dict[str, Any] = {
        "name": _tag(frame),
        "title": frame.__name__,
        "summary": summary,
        **({"description": description} if description else {}),
        "contentType": "application/json",
        "payload": {"$ref": REF_TEMPLATE.format(name=frame.__name__)},
    }
    if "id" in frame.__struct_fields__:
        message["correlationId"] = {"$ref": "#/components/correlationIds/stream"}
    return message


def _error_codes() -> str:
    rows = [
        f"| `{code.value}` | {'yes' if rule.retryable else 'no'} | "
        f"{int(rule.close_code) if rule.close_code else ''} | {rule.meaning} |"
        for code, rule in ERRORS.items()
    ]
    header = "| code | retryable | then closes | meaning |\n| --- | --- | --- | --- |"
    return "\n".join([header, *rows])


def _tag(frame: type[Any]) -> str:
    tag: str = frame.__struct_config__.tag
    return tag


def _docs(frame: type[Any]) -> tuple[str, str]:
    summary, _, rest = (inspect.getdoc(frame) or frame.__name__).partition("\n")
    return summary.strip(), rest.strip()
