"""Stream journal (resume from any process) and per-user rate windows and usage."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from server.store.base import StoreBase, add_usage_sql


@dataclasses.dataclass(frozen=True, slots=True)
class StreamRecord:
    """A journaled stream as the `streams` table has it."""

    key: str
    owner: str
    last_seq: int
    finished: bool


class SessionQueries(StoreBase):
    """What live sessions need to share across processes."""

    async def write_journal(
        self,
        starts: list[tuple[str, str, str, str]],
        frames: list[tuple[str, int, bytes]],
        progress: list[tuple[str, str, str, int, bool]],
        owner: str,
        notices: Sequence[tuple[str, str]] = (),
    ) -> None:
        """Persist a batch: new streams, their frames, and how far each got; the `notices`
        (channel, payload) go out when it commits."""
        # One statement per kind of change, whatever the number of streams: a busy server
        # journals hundreds of streams every flush.
        latest = {(u, sid): (u, sid, key, kind) for u, sid, key, kind in starts}
        started = list(zip(*latest.values(), strict=True)) if latest else []
        async with self._conn() as conn, conn.transaction():
            if started:
                users, ids, keys, kinds = started
                await conn.execute(
                    "DELETE FROM stream_frames f USING streams s,"
                    " unnest($1::text[], $2::text[]) AS n(user_id, stream_id)"
                    " WHERE s.user_id = n.user_id AND s.stream_id = n.stream_id"
                    " AND f.stream_key = s.stream_key",
                    users, ids,
                )  # fmt: skip
                await conn.execute(
                    "INSERT INTO streams (user_id, stream_id, stream_key, kind, owner)"
                    " SELECT n.user_id, n.stream_id, n.key, n.kind, $5"
                    " FROM unnest($1::text[], $2::text[], $3::text[], $4::text[])"
                    "  AS n(user_id, stream_id, key, kind)"
                    " ON CONFLICT (user_id, stream_id) DO UPDATE SET stream_key = excluded.stream_key,"
                    " kind = excluded.kind, owner = excluded.owner, last_seq = 0, finished = false,"
                    " created_at = now(), updated_at = now()",
                    users, ids, keys, kinds, owner,
                )  # fmt: skip
            if frames:
                # A batch retried because its commit's answer was lost (a restart) is written
                # again, with the next frames in the same run: the longer run wins, so a retry
                # never fails on its own earlier write (and so never drops what came after it).
                keys, firsts, lasts, texts = zip(*_runs(frames), strict=True)
                await conn.execute(
                    "INSERT INTO stream_frames (stream_key, first_seq, last_seq, frames)"
                    " SELECT * FROM unnest($1::text[], $2::int[], $3::int[], $4::text[])"
                    " ON CONFLICT (stream_key, first_seq) DO UPDATE"
                    " SET last_seq = excluded.last_seq, frames = excluded.frames"
                    " WHERE excluded.last_seq > stream_frames.last_seq",
                    keys, firsts, lasts, texts,
                )  # fmt: skip
            for channel, payload in notices:
                await conn.execute("SELECT pg_notify($1, $2)", channel, payload)
            if progress:
                keys, users, ids, seqs, ended = zip(*progress, strict=True)
                await conn.execute(
                    "UPDATE streams s SET last_seq = p.seq, finished = p.ended, updated_at = now()"
                    " FROM unnest($1::text[], $2::text[], $3::text[], $4::int[], $5::bool[])"
                    "  AS p(key, user_id, stream_id, seq, ended)"
                    " WHERE s.user_id = p.user_id AND s.stream_id = p.stream_id"
                    " AND s.stream_key = p.key",
                    keys, users, ids, seqs, ended,
                )  # fmt: skip

    async def notify(self, channel: str, payload: str) -> None:
        """Send a notification to every listening server process."""
        async with self._conn() as conn:
            await conn.execute("SELECT pg_notify($1, $2)", channel, payload)

    async def stream_record(
        self, user_id: str, stream_id: str, max_age_s: float
    ) -> StreamRecord | None:
        """A user's stream touched within `max_age_s`, or None."""
        async with self._conn() as conn:
            row = await conn.fetchrow(
                "SELECT stream_key, owner, last_seq, finished FROM streams WHERE user_id = $1 AND stream_id = $2"
                " AND updated_at > now() - make_interval(secs => $3)",
                user_id, stream_id, max_age_s,
            )  # fmt: skip
        if row is None:
            return None
        return StreamRecord(row["stream_key"], row["owner"], row["last_seq"], row["finished"])

    async def stream_frames(
        self, key: str, after_seq: int, *, limit_runs: int | None = None
    ) -> list[tuple[int, str]]:
        """Stored frames of one stream after `after_seq`, in order (from at most `limit_runs`
        journal rows)."""
        async with self._conn() as conn:
            rows = await conn.fetch(
                "SELECT first_seq, frames FROM stream_frames WHERE stream_key = $1 AND last_seq > $2"
                " ORDER BY first_seq LIMIT $3",
                key,
                after_seq,
                limit_runs,
            )
        out = []
        for row in rows:
            for offset, frame in enumerate(row["frames"].split("\n")):
                seq = row["first_seq"] + offset
                if seq > after_seq:
                    out.append((seq, frame))
        return out

    async def prune_streams(self, finished_age_s: float, abandoned_age_s: float) -> int:
        """Forget finished streams older than `finished_age_s` and unfinished ones nobody updated."""
        async with self._conn() as conn, conn.transaction():
            keys = await conn.fetch(
                "DELETE FROM streams WHERE (finished AND updated_at < now() - make_interval(secs => $1))"
                " OR updated_at < now() - make_interval(secs => $2) RETURNING stream_key",
                finished_age_s, abandoned_age_s,
            )  # fmt: skip
            await conn.execute(
                "DELETE FROM stream_frames WHERE stream_key = ANY($1::text[])",
                [k["stream_key"] for k in keys],
            )
            # Frames journaled after their stream was erased with its reader's data (a process
            # that still held some for a slow socket): a stream's row is always written with or
            # before its first frames, so frames without one belong to nobody.
            await conn.execute(
                "DELETE FROM stream_frames f WHERE NOT EXISTS"
                " (SELECT 1 FROM streams s WHERE s.stream_key = f.stream_key)"
            )
        return len(keys)

    async def count_request(self, user_id: str) -> tuple[int, int, float]:
        """Count a request in the user's current minute; return (requests this minute,
        completion tokens today, seconds left in the minute)."""
        async with self._conn() as conn:
            row = await conn.fetchrow(
                "WITH hit AS (INSERT INTO rate_windows (user_id, window_start, requests)"
                " VALUES ($1, date_trunc('minute', now()), 1) ON CONFLICT (user_id, window_start)"
                " DO UPDATE SET requests = rate_windows.requests + 1 RETURNING requests)"
                " SELECT (SELECT requests FROM hit) AS requests,"
                " COALESCE((SELECT completion_tokens FROM usage_daily WHERE user_id = $1"
                " AND day = (now() AT TIME ZONE 'utc')::date), 0) AS tokens,"
                " extract(epoch FROM date_trunc('minute', now()) + interval '1 minute' - now()) AS left_s",
                user_id,
            )
        assert row is not None
        return int(row["requests"]), int(row["tokens"]), float(row["left_s"])

    async def add_usage(self, user_id: str, completion_tokens: int) -> None:
        """Add to the user's completion tokens for today (UTC)."""
        if completion_tokens <= 0:
            return
        async with self._conn() as conn:
            await conn.execute(add_usage_sql("$1", "$2"), user_id, completion_tokens)

    async def prune_rate_windows(self) -> None:
        """Forget minute windows that are over."""
        async with self._conn() as conn:
            await conn.execute(
                "DELETE FROM rate_windows WHERE window_start < now() - interval '5 minutes'"
            )


PRESENCE_TTL_S = 30.0  # a process that has not heartbeated for this long counts as gone


class PresenceQueries(StoreBase):
    """Per-user connections and streams of every live server process."""

    async def heartbeat(self, owner: str, rows: list[tuple[str, int, int]]) -> int:
        """Mark this process alive and replace its per-user counts (user, connections, streams);
        returns how many other processes are alive."""
        async with self._conn() as conn, conn.transaction():
            await conn.execute(
                "INSERT INTO owners (owner) VALUES ($1) ON CONFLICT (owner) DO UPDATE SET heartbeat = now()",
                owner,
            )
            await conn.execute("DELETE FROM presence WHERE owner = $1", owner)
            if rows:
                await conn.executemany(
                    "INSERT INTO presence (owner, user_id, connections, streams) VALUES ($1, $2, $3, $4)",
                    [(owner, *row) for row in rows],
                )
            others: int = await conn.fetchval(
                "SELECT count(*) FROM owners WHERE owner <> $1 AND heartbeat > now() - make_interval(secs => $2)",
                owner,
                PRESENCE_TTL_S,
            )
        return others

    async def presence_elsewhere(self, owner: str, user_id: str) -> tuple[int, int]:
        """(connections, live streams) of this user on other live processes."""
        async with self._conn() as conn:
            row = await conn.fetchrow(
                "SELECT coalesce(sum(p.connections), 0) AS c, coalesce(sum(p.streams), 0) AS s"
                " FROM presence p JOIN owners o USING (owner) WHERE p.user_id = $1 AND p.owner <> $2"
                " AND o.heartbeat > now() - make_interval(secs => $3)",
                user_id, owner, PRESENCE_TTL_S,
            )  # fmt: skip
        assert row is not None
        return int(row["c"]), int(row["s"])

    async def drop_owner(self, owner: str) -> None:
        """This process stops: forget its counts."""
        async with self._conn() as conn:
            await conn.execute("DELETE FROM owners WHERE owner = $1", owner)


def _runs(frames: list[tuple[str, int, bytes]]) -> list[tuple[str, int, int, str]]:
    """Consecutive frames of each stream as (key, first_seq, last_seq, frames joined by newlines)."""
    runs: list[tuple[str, int, int, str]] = []
    by_key: dict[str, list[tuple[int, bytes]]] = {}
    for key, seq, frame in frames:
        by_key.setdefault(key, []).append((seq, frame))
    for key, items in by_key.items():
        start = 0
        for i in range(1, len(items) + 1):
            if i == len(items) or items[i][0] != items[i - 1][0] + 1:
                run = items[start:i]
                text = b"\n".join(f for _, f in run).decode()  # one decode per run, not per frame
                runs.append((key, run[0][0], run[-1][0], text))
                start = i
    return runs
