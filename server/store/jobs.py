"""Chapter generations in progress, claimed by one process and followed by the others."""

from __future__ import annotations

from server.store.base import StoreBase
from server.store.sessions import PRESENCE_TTL_S

JOURNAL_START_GRACE_S = 5.0  # a claim whose journal has not started by then was abandoned


class ChapterJobQueries(StoreBase):
    """Which process generates which chapter right now, and who else reads it."""

    async def claim_chapter_job(self, key: str, owner: str, journal_id: str) -> str | None:
        """Claim the generation of `key` for `owner` (journaled as `journal_id`) unless a live
        process holds it with a journal that is still running; returns the journal id of whoever
        holds it now, None if nobody does."""
        async with self._conn() as conn:
            held: str | None = await conn.fetchval(
                "INSERT INTO chapter_jobs (key, owner, journal_id) VALUES ($1, $2, $3)"
                " ON CONFLICT (key) DO UPDATE SET owner = $2, journal_id = $3, started_at = now()"
                " WHERE NOT EXISTS (SELECT 1 FROM owners o WHERE o.owner = chapter_jobs.owner"
                "   AND o.heartbeat > now() - make_interval(secs => $4))"
                " OR (chapter_jobs.started_at < now() - make_interval(secs => $5)"
                "   AND NOT EXISTS (SELECT 1 FROM streams s WHERE s.user_id = ''"
                "     AND s.stream_id = chapter_jobs.journal_id AND NOT s.finished))"
                " RETURNING journal_id",
                key, owner, journal_id, PRESENCE_TTL_S, JOURNAL_START_GRACE_S,
            )  # fmt: skip
            if held is None:  # a live process holds it
                held = await conn.fetchval(
                    "SELECT journal_id FROM chapter_jobs WHERE key = $1", key
                )
        return held

    async def release_chapter_job(self, key: str, journal_id: str) -> None:
        """The generation journaled as `journal_id` ended (its result is cached if it finished)."""
        async with self._conn() as conn:
            await conn.execute(
                "DELETE FROM chapter_jobs WHERE key = $1 AND journal_id = $2", key, journal_id
            )

    async def add_job_reader(self, journal_id: str, reader: str, owner: str) -> None:
        """A job on process `owner` reads the generation journaled as `journal_id`."""
        async with self._conn() as conn:
            await conn.execute(
                "INSERT INTO chapter_job_readers (journal_id, reader, owner) VALUES ($1, $2, $3)"
                " ON CONFLICT DO NOTHING",
                journal_id,
                reader,
                owner,
            )

    async def remove_job_reader(self, journal_id: str, reader: str) -> None:
        """That reader stopped."""
        async with self._conn() as conn:
            await conn.execute(
                "DELETE FROM chapter_job_readers WHERE journal_id = $1 AND reader = $2",
                journal_id,
                reader,
            )

    async def job_readers(self, journal_id: str) -> int:
        """How many readers on live processes the generation journaled as `journal_id` has."""
        async with self._conn() as conn:
            count: int = await conn.fetchval(
                "SELECT count(*) FROM chapter_job_readers r JOIN owners o USING (owner)"
                " WHERE r.journal_id = $1 AND o.heartbeat > now() - make_interval(secs => $2)",
                journal_id,
                PRESENCE_TTL_S,
            )
        return count

    async def prune_chapter_jobs(self) -> None:
        """Forget generations and readers whose process is gone."""
        async with self._conn() as conn:
            for table in ("chapter_jobs", "chapter_job_readers"):
                await conn.execute(
                    f"DELETE FROM {table} t WHERE NOT EXISTS (SELECT 1 FROM owners o"
                    " WHERE o.owner = t.owner AND o.heartbeat > now() - make_interval(secs => $1))",
                    PRESENCE_TTL_S,
                )
