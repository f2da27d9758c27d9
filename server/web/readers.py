"""The reader's own data over HTTP (Bearer JWT): rate answers, rename and delete conversations,
export everything, erase everything. Another reader's message or conversation is a 404."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import msgspec
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from protocol.api import (
    ConversationRename,
    ConversationsDeleted,
    RatingRequest,
    RatingSaved,
    ReaderErased,
    RenamedConversation,
)
from server.auth import Identity
from server.errors import ChatError, InvalidMessage
from server.metrics import RATINGS
from server.readers.erase import erase_reader, with_streams_stopped
from server.readers.export import export_markdown, reader_export
from server.readers.scope import Scope
from server.web.http import _bearer, error_body, error_response, services_of

MAX_BODY_BYTES = 16_384
S = TypeVar("S")
_encoder = msgspec.json.Encoder()

Handler = Callable[[Request, Identity], Awaitable[Response]]


def _authenticated(handler: Handler) -> Callable[[Request], Awaitable[Response]]:
    async def endpoint(request: Request) -> Response:
        try:
            return await handler(request, await _bearer(request))
        except ChatError as exc:
            return error_response(exc)
        except _TooLarge:
            return JSONResponse(
                error_body(InvalidMessage(f"body larger than {MAX_BODY_BYTES} bytes")), 413
            )

    endpoint.__doc__ = handler.__doc__
    endpoint.__name__ = handler.__name__
    return endpoint


class _TooLarge(Exception):
    pass


async def _body(request: Request, kind: type[S]) -> S:
    body = await request.body()
    if len(body) > MAX_BODY_BYTES:
        raise _TooLarge
    if b"\\u0000" in body:
        raise InvalidMessage("NUL characters (\\u0000) are not allowed")
    try:
        return msgspec.json.decode(body, type=kind)
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        raise InvalidMessage(f"invalid body: {exc}") from None


def _json(value: Any, status: int = 200) -> Response:
    return Response(_encoder.encode(value), status_code=status, media_type="application/json")


@_authenticated
async def rate(request: Request, identity: Identity) -> Response:
    """PUT: rate one of your finished answers, or change the rating. DELETE: withdraw it."""
    store = services_of(request).store
    message_id = request.path_params["id"]
    if request.method == "DELETE":
        await store.withdraw_rating(identity.user_id, message_id)
        RATINGS.labels("withdrawn").inc()
        return Response(status_code=204)
    wanted = await _body(request, RatingRequest)
    comment = (wanted.comment or "").strip() or None
    saved = await store.rate_message(identity.user_id, message_id, wanted.value, comment)
    RATINGS.labels(wanted.value).inc()
    return _json(msgspec.convert(saved, RatingSaved, from_attributes=True))


@_authenticated
async def conversation(request: Request, identity: Identity) -> Response:
    """PATCH: rename one of your conversations. DELETE: delete it with its messages and ratings
    (answers still streaming in it are cancelled first)."""
    services = services_of(request)
    conversation_id = request.path_params["id"]
    if request.method == "PATCH":
        rename = await _body(request, ConversationRename)
        row = await services.store.rename_conversation(
            identity.user_id, conversation_id, rename.title.strip()
        )
        return _json(msgspec.convert(row, RenamedConversation))
    streams = await services.store.conversation_streams(identity.user_id, conversation_id)
    deleted, stopped = await with_streams_stopped(
        services,
        identity.user_id,
        Scope.of_ids(streams),
        lambda: services.store.delete_conversations(identity.user_id, conversation_id),
    )
    return _json(ConversationsDeleted(deleted=deleted, cancelled_streams=stopped))


@_authenticated
async def delete_conversations(request: Request, identity: Identity) -> Response:
    """Delete all your conversations (your history); answers still streaming are cancelled first."""
    services = services_of(request)
    deleted, stopped = await with_streams_stopped(
        services,
        identity.user_id,
        Scope(kind="answer"),
        lambda: services.store.delete_conversations(identity.user_id, None),
    )
    return _json(ConversationsDeleted(deleted=deleted, cancelled_streams=stopped))


@_authenticated
async def erase(request: Request, identity: Identity) -> Response:
    """Delete everything kept about you: conversations, messages, ratings, profile, chapters
    personalized for you, journaled streams, usage counters. One transaction; idempotent."""
    deleted, stopped = await erase_reader(services_of(request), identity.user_id, identity.claims)
    return _json(ReaderErased(deleted=deleted, cancelled_streams=stopped))


@_authenticated
async def export(request: Request, identity: Identity) -> Response:
    """Your conversations in one document: `?format=json` (default) or `?format=markdown`."""
    kind = request.query_params.get("format", "json")
    if kind not in ("json", "markdown"):
        raise InvalidMessage("format: expected json or markdown")
    document = await reader_export(services_of(request).store, identity.user_id)
    suffix = "md" if kind == "markdown" else "json"
    headers = {
        "Content-Disposition": f'attachment; filename="textbook-chat-export.{suffix}"',
        "Cache-Control": "no-store",
    }
    if kind == "markdown":
        return Response(
            export_markdown(document), media_type="text/markdown; charset=utf-8", headers=headers
        )
    return Response(_encoder.encode(document), media_type="application/json", headers=headers)


ROUTES = [
    Route("/v1/messages/{id}/rating", rate, methods=["PUT", "DELETE"]),
    Route("/v1/conversations", delete_conversations, methods=["DELETE"]),
    Route("/v1/conversations/{id}", conversation, methods=["PATCH", "DELETE"]),
    Route("/v1/me", erase, methods=["DELETE"]),
    Route("/v1/me/export", export, methods=["GET"]),
]
