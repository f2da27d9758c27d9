"""Postgres: all SQL of the project lives in this package and in sql/."""

from __future__ import annotations

from server.store.base import MIGRATIONS_DIR, StoreBase
from server.store.book import BookQueries, CachedChapter, ChapterRow, SectionRow
from server.store.conversations import ConversationQueries, MessageOutcome, Turn
from server.store.insights import InsightQueries
from server.store.jobs import ChapterJobQueries
from server.store.readers import ReaderQueries
from server.store.recovery import Orphan, RecoveryQueries
from server.store.sessions import PresenceQueries, SessionQueries, StreamRecord


class Store(
    BookQueries,
    ConversationQueries,
    SessionQueries,
    PresenceQueries,
    RecoveryQueries,
    ChapterJobQueries,
    ReaderQueries,
    InsightQueries,
):
    """The project's Postgres access; one pool per process."""


__all__ = [
    "MIGRATIONS_DIR",
    "CachedChapter",
    "ChapterRow",
    "MessageOutcome",
    "Orphan",
    "SectionRow",
    "Store",
    "StoreBase",
    "StreamRecord",
    "Turn",
]
