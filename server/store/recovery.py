"""Messages and streams of processes that died mid-answer (server/cluster/recovery.py)."""

from __future__ import annotations

import dataclasses
import uuid

from server.store.base import StoreBase
from server.store.sessions import PRESENCE_TTL_S


@dataclasses.dataclass(frozen=True, slots=True)
class Orphan:
    """A message left `streaming` by a process that is gone, and where its journal is."""

    message_id: str
    owner: str
    stream_key: str | None  # None when nothing of it reached the journal
    last_seq: int
    finished: bool


class RecoveryQueries(StoreBase):
    """Messages and streams of processes that died mid-answer."""

    async def process_owners(self) -> list[str]:
        """Processes that own streaming messages, or are still listed as alive."""
        async with self._conn() as conn:
            rows = await conn.fetch(
                "SELECT owner FROM owners UNION SELECT DISTINCT owner FROM messages"
                " WHERE status = 'streaming' AND owner IS NOT NULL"
            )
        return [r["owner"] for r in rows]

    async def orphaned_messages(self, me: str, dead: list[str], limit: int = 500) -> list[Orphan]:
        """Streaming messages whose process is not this one and is gone: in `dead`, or without a
        heartbeat for PRESENCE_TTL_S."""
        async with self._conn() as conn:
            rows = await conn.fetch(
                "SELECT m.id::text AS id, m.owner, s.stream_key, coalesce(s.last_seq, 0) AS last_seq,"
                " coalesce(s.finished, false) AS finished FROM messages m"
                " LEFT JOIN streams s ON s.user_id = m.user_id AND s.stream_id = m.stream_id"
                "  AND s.owner = m.owner AND s.created_at >= m.created_at - interval '1 minute'"
                " WHERE m.status = 'streaming' AND m.owner IS NOT NULL AND m.owner <> $1"
                " AND (m.owner = ANY($2::text[]) OR NOT EXISTS (SELECT 1 FROM owners o"
                "  WHERE o.owner = m.owner AND o.heartbeat > now() - make_interval(secs => $3)))"
                " ORDER BY m.created_at LIMIT $4",
                me, dead, PRESENCE_TTL_S, limit,
            )  # fmt: skip
        return [
            Orphan(r["id"], r["owner"], r["stream_key"], r["last_seq"], r["finished"]) for r in rows
        ]

    async def interrupt_orphan(
        self, message_id: str, answer: str, end: tuple[str, int, str] | None
    ) -> bool:
        """Save an orphan as interrupted with `answer`, and journal `end` (key, seq, frame) as
        its stream's terminal frame; False when another process got to it first."""
        async with self._conn() as conn, conn.transaction():
            claimed = await conn.fetchval(
                "UPDATE messages SET status = 'interrupted', answer = $2, finished_at = now()"
                " WHERE id = $1 AND status = 'streaming' RETURNING id",
                uuid.UUID(message_id), answer,
            )  # fmt: skip
            if claimed is None:
                return False
            if end is not None:
                key, seq, frame = end
                ended = await conn.fetchval(
                    "UPDATE streams SET last_seq = $2, finished = true, updated_at = now()"
                    " WHERE stream_key = $1 AND NOT finished RETURNING stream_key",
                    key, seq,
                )  # fmt: skip
                if ended is not None:
                    await conn.execute(
                        "INSERT INTO stream_frames (stream_key, first_seq, last_seq, frames)"
                        " VALUES ($1, $2, $2, $3)",
                        key, seq, frame,
                    )  # fmt: skip
        return True
