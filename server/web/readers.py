"""The reader's own data over HTTP (Bearer JWT): rate answers, rename and delete conversations,
export everything, erase everything. Another reader's message or conversation is a 404.

`ENDPOINTS` joins the API's table in server/web/http.py."""

from __future__ import annotations

import msgspec
from starlette.responses import Response

from protocol.api import (
    Conversation,
    ConversationRename,
    ConversationsDeleted,
    RatingRequest,
    RatingSaved,
    ReaderErased,
    ReaderExport,
)
from protocol.codes import ErrorCode
from server.errors import InvalidMessage
from server.metrics import RATINGS
from server.readers.erase import erase_reader, with_streams_stopped
from server.readers.export import export_markdown, reader_export
from server.readers.scope import Scope
from server.web.endpoint import Call, Endpoint, Reply

_encoder = msgspec.json.Encoder()


async def rate_answer(call: Call) -> RatingSaved:
    """Rate one of your finished answers, or change its rating.

    `comment` is optional (up to 2,000 characters). 404 for another reader's message; 422 while
    the answer is still being written.
    """
    wanted: RatingRequest = call.body
    comment = (wanted.comment or "").strip() or None
    saved = await call.services.store.rate_message(
        call.reader.user_id, call.request.path_params["id"], wanted.value, comment
    )
    RATINGS.labels(wanted.value).inc()
    return msgspec.convert(saved, RatingSaved, from_attributes=True)


async def withdraw_rating(call: Call) -> Reply:
    """Withdraw your rating of one of your answers (204 also when there was none)."""
    await call.services.store.withdraw_rating(call.reader.user_id, call.request.path_params["id"])
    RATINGS.labels("withdrawn").inc()
    return Reply(204)


async def rename_conversation(call: Call) -> Conversation:
    """Give one of your conversations a new title."""
    rename: ConversationRename = call.body
    row = await call.services.store.rename_conversation(
        call.reader.user_id, call.request.path_params["id"], rename.title.strip()
    )
    return msgspec.convert(row, Conversation)


async def delete_conversation(call: Call) -> ConversationsDeleted:
    """Delete one of your conversations, with its messages and ratings.

    Answers still streaming in it are cancelled first, on whichever server process runs them.
    """
    services, user = call.services, call.reader.user_id
    conversation_id = call.request.path_params["id"]
    streams = await services.store.conversation_streams(user, conversation_id)
    deleted, stopped = await with_streams_stopped(
        services,
        user,
        Scope.of_ids(streams),
        lambda: services.store.delete_conversations(user, conversation_id),
    )
    return ConversationsDeleted(deleted=deleted, cancelled_streams=stopped)


async def delete_conversations(call: Call) -> ConversationsDeleted:
    """Delete all your conversations (your history).

    Answers still streaming are cancelled first; the profile stays.
    """
    services, user = call.services, call.reader.user_id
    deleted, stopped = await with_streams_stopped(
        services,
        user,
        Scope(kind="answer"),
        lambda: services.store.delete_conversations(user, None),
    )
    return ConversationsDeleted(deleted=deleted, cancelled_streams=stopped)


async def erase_me(call: Call) -> ReaderErased:
    """Delete everything kept about you, in one transaction.

    Conversations, messages, ratings, profile, chapters personalized for you, journaled streams
    and usage counters; streams still running are cancelled first. Idempotent: the second time
    every count is zero.
    """
    deleted, stopped = await erase_reader(call.services, call.reader.user_id, call.reader.claims)
    return ReaderErased(deleted=deleted, cancelled_streams=stopped)


async def export_me(call: Call) -> ReaderExport | Response:
    """Your conversations, messages, ratings and profile in one document.

    `?format=json` (default), or `?format=markdown` for a file to read (`text/markdown`).
    """
    kind = call.request.query_params.get("format", "json")
    if kind not in ("json", "markdown"):
        raise InvalidMessage("format: expected json or markdown")
    document = await reader_export(call.services.store, call.reader.user_id)
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


DB = ErrorCode.DATABASE_UNAVAILABLE
NOT_FOUND = ErrorCode.NOT_FOUND
BAD = ErrorCode.INVALID_MESSAGE
MESSAGE = "/v1/messages/{id}/rating"
ONE = "/v1/conversations/{id}"

ENDPOINTS: tuple[Endpoint, ...] = (
    Endpoint("PUT", MESSAGE, rate_answer, {200: RatingSaved}, auth=True, body=RatingRequest, errors=(NOT_FOUND, DB)),
    Endpoint("DELETE", MESSAGE, withdraw_rating, {204: None}, auth=True, errors=(NOT_FOUND, DB)),
    Endpoint("PATCH", ONE, rename_conversation, {200: Conversation}, auth=True, body=ConversationRename, errors=(NOT_FOUND, DB)),
    Endpoint("DELETE", ONE, delete_conversation, {200: ConversationsDeleted}, auth=True, errors=(NOT_FOUND, DB)),
    Endpoint("DELETE", "/v1/conversations", delete_conversations, {200: ConversationsDeleted}, auth=True, errors=(DB,)),
    Endpoint("DELETE", "/v1/me", erase_me, {200: ReaderErased}, auth=True, errors=(DB,)),
    Endpoint("GET", "/v1/me/export", export_me, {200: ReaderExport}, auth=True, errors=(BAD, DB)),
)  # fmt: skip
