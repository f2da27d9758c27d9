"""Chapter generations in progress, claimed by one process and followed by the others."""

from __future__ import annotations

from server.store.base import StoreBase
from server.store.sessions import PRESENCE_TTL_S


class ChapterJobQueries(StoreBase):
    """Which process generates which chapter right now."""

    async def claim_chapter_job(self, key: str, owner: str, journal_id: str) -> str | None:
        """Claim the generation of `key` for `owner` (journaled as `journal_id`) unless a live
        process holds it; returns the journal id of whoever holds it now, None if nobody does."""
        async with self._conn() as conn:
            held: str | None = await conn.fetchval(
                "INSERT INTO chapter_jobs (key, owner, journal_id) VALUES ($1, $2, $3)"
                " ON CONFLICT (key) DO UPDATE SET owner = $2, journal_id = $3, started_at = now()"
                " WHERE chapter_jobs.owner = $2 OR NOT EXISTS (SELECT 1 FROM owners o"
                "  WHERE o.owner = chapter_jobs.owner AND o.heartbeat > now() - make_interval(secs => $4))"
                " RETURNING journal_id",
                key, owner, journal_id, PRESENCE_TTL_S,
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

    async def prune_chapter_jobs(self) -> None:
        """Forget generations whose process is gone."""
        async with self._conn() as conn:
            await conn.execute(
                "DELETE FROM chapter_jobs j WHERE NOT EXISTS (SELECT 1 FROM owners o"
                " WHERE o.owner = j.owner AND o.heartbeat > now() - make_interval(secs => $1))",
                PRESENCE_TTL_S,
            )
