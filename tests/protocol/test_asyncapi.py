"""The AsyncAPI 3.0 document of the chat socket (protocol/asyncapi.py).

No maintained PyPI package ships the official AsyncAPI 3.0 JSON Schema, so the structure is
checked here against the rules of the 3.0.0 specification the document relies on: the required
fields, every `$ref` resolving, operations naming only their channel's messages, and each
payload a JSON Schema that accepts exactly the frames the server's decoder accepts.
"""

from __future__ import annotations

import json
import re
import typing
from collections.abc import Iterator
from typing import Any

import jsonschema
import jsonschema_rs
import msgspec
import pytest

from protocol import asyncapi, codec
from protocol.codes import CLOSES, ERRORS, CloseCode, ErrorCode
from protocol.frames import (
    Ask,
    ClientFrame,
    Done,
    Limits,
    Ready,
    Selection,
    ServerFrame,
    Source,
    Sources,
    Timings,
    error_frame,
)
from protocol.limits import DEFAULT_LIMITS

DOC = asyncapi.document(host="chat.example.com", protocol="wss")
CLIENT = typing.get_args(ClientFrame)
SERVER = typing.get_args(ServerFrame)
EXTENSION = re.compile(r"^x-[\w\d.\-_]+$")
COMPONENT_KEY = re.compile(r"^[\w\d.\-_]+$")


def _refs(node: Any, path: str = "#") -> Iterator[tuple[str, str]]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref" and isinstance(value, str):
                yield path, value
            else:
                yield from _refs(value, f"{path}/{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _refs(value, f"{path}/{i}")


def _resolve(ref: str) -> Any:
    assert ref.startswith("#/"), ref
    node: Any = DOC
    for part in ref[2:].split("/"):
        node = node[part.replace("~1", "/").replace("~0", "~")]
    return node


def _payload_validator(tag: str) -> jsonschema_rs.Validator:
    """The message's payload schema, with the document's components to resolve against."""
    payload = _resolve(f"#/components/messages/{tag}")["payload"]
    schema = {**payload, "components": DOC["components"]}  # `#/components/…` refs resolve here
    return jsonschema_rs.validator_for(schema)


def test_the_required_structure_of_asyncapi_3_0() -> None:
    assert DOC["asyncapi"] == "3.0.0"
    assert {"title", "version"} <= set(DOC["info"])
    server = DOC["servers"]["chat"]
    assert (server["host"], server["protocol"]) == ("chat.example.com", "wss")
    assert "pathname" not in server
    for name, channel in DOC["channels"].items():
        assert COMPONENT_KEY.match(name)
        assert channel["address"] == "/v1/chat"
        binding = channel["bindings"]["ws"]
        assert binding["method"] in ("GET", "POST") and binding["bindingVersion"] == "0.1.0"
        assert binding["headers"]["type"] == "object" and "properties" in binding["headers"]
        assert all(key in {"x-close-codes"} for key in channel if key.startswith("x-"))
        assert all(EXTENSION.match(key) for key in channel if key.startswith("x-"))
    for name, operation in DOC["operations"].items():
        assert COMPONENT_KEY.match(name)
        assert operation["action"] in ("send", "receive"), name
        assert set(operation["channel"]) == {"$ref"}
    for kind, items in DOC["components"].items():
        assert all(COMPONENT_KEY.match(key) for key in items), kind
    scheme = DOC["components"]["securitySchemes"]["bearer"]
    assert (scheme["type"], scheme["scheme"]) == ("http", "bearer")
    json.dumps(DOC)  # plain JSON, as served


def test_every_ref_resolves() -> None:
    refs = list(_refs(DOC))
    assert len(refs) > 50
    for where, ref in refs:
        assert _resolve(ref) is not None, (where, ref)


def test_operations_name_only_messages_of_their_channel() -> None:
    """AsyncAPI 3.0: an operation's (and its reply's) messages MUST be its channel's."""
    for name, operation in DOC["operations"].items():
        channel_ref = operation["channel"]["$ref"]
        for part in (operation, operation.get("reply", {})):
            for message in part.get("messages", []):
                assert message["$ref"].startswith(channel_ref + "/messages/"), (name, message)
        if "reply" in operation:
            assert operation["reply"]["channel"]["$ref"] == channel_ref


def test_the_server_receives_every_client_frame_and_sends_every_server_frame() -> None:
    tags = {frame.__struct_config__.tag for frame in (*CLIENT, *SERVER)}
    assert set(DOC["components"]["messages"]) == tags
    assert set(DOC["channels"]["chat"]["messages"]) == tags
    received = {
        op["messages"][0]["$ref"].rsplit("/", 1)[1]
        for op in DOC["operations"].values()
        if op["action"] == "receive"
    }
    assert received == {frame.__struct_config__.tag for frame in CLIENT}
    sent = [op for op in DOC["operations"].values() if op["action"] == "send"]
    assert {m["$ref"].rsplit("/", 1)[1] for op in sent for m in op["messages"]} == {
        frame.__struct_config__.tag for frame in SERVER
    }
    assert [
        m["$ref"].rsplit("/", 1)[1] for m in DOC["operations"]["ping"]["reply"]["messages"]
    ] == ["pong"]


def test_stream_frames_are_correlated_by_their_id() -> None:
    messages = DOC["components"]["messages"]
    for tag in ("ask", "chapter", "cancel", "resume", "start", "sources", "delta", "done", "error"):
        assert messages[tag]["correlationId"] == {"$ref": "#/components/correlationIds/stream"}
    for tag in ("auth", "ping", "ready", "pong"):
        assert "correlationId" not in messages[tag]


def test_every_error_code_and_close_code_is_described() -> None:
    error = DOC["components"]["messages"]["error"]["description"]
    for code, rule in ERRORS.items():
        assert f"`{code.value}`" in error and rule.meaning in error
    closes = {item["code"]: item["meaning"] for item in DOC["channels"]["chat"]["x-close-codes"]}
    assert closes == {int(code): CLOSES[code] for code in CloseCode}
    assert set(CLOSES) == set(CloseCode)
    codes = DOC["components"]["schemas"]["ErrorCode"]["enum"]
    assert sorted(codes) == sorted(code.value for code in ErrorCode)


def test_payload_schemas_are_json_schema_draft_07() -> None:
    """AsyncAPI's default schema format is a superset of draft 07."""
    for tag, message in DOC["components"]["messages"].items():
        payload = _resolve(message["payload"]["$ref"])
        jsonschema.Draft7Validator.check_schema(payload)
        assert payload["properties"]["type"] == {"enum": [tag]}
        assert "discriminator" not in payload  # AsyncAPI's is a string, msgspec's an object


SERVER_FRAMES: list[Any] = [
    Ready(session_id="s", user_id="u", expires_at=1, limits=Limits(max_streams=8)),
    Sources(id="a", seq=2, sources=[Source(chapter="c", title="t", score=0.5, text="x")]),
    Done(id="a", seq=9, finish_reason="stop", timings=Timings(first_token_ms=1.0, total_ms=2.0)),
    error_frame(ErrorCode.RATE_LIMITED, "slow down", id="a", seq=1, retry_after=3.0),
    error_frame(ErrorCode.TOKEN_EXPIRED, "expired"),
]


@pytest.mark.parametrize("frame", SERVER_FRAMES, ids=lambda f: f.__struct_config__.tag)
def test_server_frames_the_server_encodes_match_their_payload(frame: Any) -> None:
    validator = _payload_validator(frame.__struct_config__.tag)
    validator.validate(msgspec.json.decode(codec.encode(frame)))


# Client frames, valid and not: the payload schema and the server's decoder must agree on each
# (blank questions and selections excepted: JSON Schema cannot say "not only whitespace").
CLIENT_SAMPLES = [
    {"type": "ask", "id": "a", "question": "What is ROS?"},
    {"type": "ask", "id": "a", "question": "Why?", "selection": {"text": "zmp", "chapter": "c"}},
    {"type": "ask", "id": "", "question": "Why?"},
    {"type": "ask", "id": "a" * 65, "question": "Why?"},
    {"type": "ask", "id": "a", "question": "x" * (4001)},
    {"type": "ask", "id": "a"},
    {"type": "chapter", "id": "c", "chapter": "intro", "mode": "translate", "language": "ur"},
    {"type": "chapter", "id": "c", "chapter": "intro", "mode": "translate", "language": "zh-Hant"},
    {"type": "chapter", "id": "c", "chapter": "intro", "mode": "translate", "language": "ur\n"},
    {"type": "chapter", "id": "c", "chapter": "intro", "mode": "translate", "language": "u"},
    {"type": "chapter", "id": "c", "chapter": "intro", "mode": "translate", "language": "xx"},
    {"type": "chapter", "id": "c", "chapter": "intro", "mode": "translate", "language": "UR-pk"},
    {"type": "ask", "id": "a", "question": "What is a\u0000?"},
    {"type": "chapter", "id": "c", "chapter": "intro", "mode": "summarize"},
    {"type": "resume", "id": "r", "after_seq": 0},
    {"type": "resume", "id": "r", "after_seq": -1},
    {"type": "cancel", "id": "r"},
    {"type": "ping"},
    {"type": "ping", "nonce": "n" * 129},
    {"type": "auth", "token": "x.y.z"},
    {"type": "auth", "token": ""},
]


@pytest.mark.parametrize("frame", CLIENT_SAMPLES, ids=lambda f: json.dumps(f)[:60])
def test_client_payloads_accept_what_the_decoder_accepts(frame: dict[str, Any]) -> None:
    try:
        codec.decode_client(json.dumps(frame))
        decoded = True
    except codec.DecodeError:
        decoded = False
    assert _payload_validator(frame["type"]).is_valid(frame) == decoded


def test_the_document_follows_the_code() -> None:
    """Generated, not written: the frames' limits and the auth timeout come from protocol/."""
    ask = DOC["components"]["schemas"]["Ask"]["properties"]
    assert (
        ask["question"]["maxLength"]
        == msgspec.json.schema(Ask)["$defs"]["Ask"]["properties"]["question"]["maxLength"]
    )
    assert DOC["components"]["schemas"]["Selection"] == {
        **msgspec.json.schema(Selection)["$defs"]["Selection"]
    }
    assert f"{DEFAULT_LIMITS.auth_timeout_s:g} s" in DOC["info"]["description"]
    assert asyncapi.document(host="h", pathname="/chat-api")["servers"]["chat"]["pathname"] == (
        "/chat-api"
    )
