"""Which of a reader's streams a deletion concerns, and the notice that tells every server
process to cancel and forget them (server/cluster/bus.py ERASE)."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Collection

import msgspec

from server.chat.registry import StreamRegistry
from server.chat.stream import Stream
from server.cluster.bus import MAX_PAYLOAD
from server.cluster.journal import PROCESS_ID

log = logging.getLogger(__name__)


class _Notice(msgspec.Struct, frozen=True):
    origin: str  # the process deleting, which does its own part directly
    user: str
    all: bool = False
    kind: str | None = None
    ids: list[str] = []


@dataclasses.dataclass(frozen=True, slots=True)
class Scope:
    """All of a reader's streams, those of one kind, or those with given ids."""

    everything: bool = False
    kind: str | None = None
    stream_ids: frozenset[str] = frozenset()

    @classmethod
    def of_ids(cls, ids: Collection[str]) -> Scope:
        """The streams with these ids."""
        return cls(stream_ids=frozenset(ids))

    def matches(self, stream_id: str, kind: str) -> bool:
        """True for a stream this deletion concerns."""
        return self.everything or kind == self.kind or stream_id in self.stream_ids

    def matches_stream(self, stream: Stream) -> bool:
        """True for a stream (in this process) this deletion concerns."""
        return self.matches(stream.id, stream.kind)

    @property
    def empty(self) -> bool:
        """Concerns no stream at all."""
        return not self.everything and self.kind is None and not self.stream_ids

    def notices(self, user_id: str) -> list[str]:
        """Payloads for every other process, each under Postgres's limit."""
        if self.everything or self.kind is not None:
            notice = _Notice(PROCESS_ID, user_id, self.everything, self.kind)
            return [msgspec.json.encode(notice).decode()]
        out: list[str] = []
        batch: list[str] = []
        size = len(user_id) + 128
        for sid in sorted(self.stream_ids):
            cost = len(msgspec.json.encode(sid)) + 1
            if batch and size + cost > MAX_PAYLOAD:
                out.append(msgspec.json.encode(_Notice(PROCESS_ID, user_id, ids=batch)).decode())
                batch, size = [], len(user_id) + 128
            batch.append(sid)
            size += cost
        if batch:
            out.append(msgspec.json.encode(_Notice(PROCESS_ID, user_id, ids=batch)).decode())
        return out


_decoder = msgspec.json.Decoder(_Notice)


def erase_notice(registry: StreamRegistry, payload: str) -> None:
    """Another process deletes a reader's data: cancel and forget their streams here."""
    try:
        notice = _decoder.decode(payload)
    except msgspec.DecodeError:
        log.warning("ignoring a malformed erase notice")
        return
    if notice.origin == PROCESS_ID:
        return
    scope = Scope(notice.all, notice.kind, frozenset(notice.ids))
    registry.erase(notice.user, scope.matches_stream)
