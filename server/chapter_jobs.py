"""Chapter jobs: one generation of a chapter shared by every reader who asked for the same thing,
on this process or another. A process claims the job in Postgres and journals its text as a
stream nobody owns; the other processes follow that journal."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Callable, Coroutine
from typing import Any

from protocol import codec
from protocol.frames import Delta, Done, Error, Timings, Usage
from server.bus import CHAPTER, SEP
from server.errors import ChatError, InternalError, RemoteError, UpstreamUnavailable
from server.journal import PROCESS_ID, FrameJournal
from server.llm import Generation
from server.replay import StoredStream, Watcher
from server.store import Store

log = logging.getLogger(__name__)

JOB_USER = ""  # no token has an empty subject: no reader can resume a job's journal
MAX_CLAIMS = 3

Generate = Callable[["ChapterJob"], Coroutine[Any, Any, None]]


class ChapterJob:
    """One generation of a chapter, shared by every stream that asked for the same thing."""

    def __init__(self, key: str) -> None:
        self.key = key
        self.pieces: list[str] = []
        self.finished = False
        self.error: ChatError | None = None
        self.usage = Generation(prompt_tokens=0, completion_tokens=0)
        self.subscribers = 0
        self.remote: set[str] = set()  # readers on other processes, while this one generates
        self.log: JobLog | None = None  # set while this process generates it for others too
        self.task: asyncio.Task[None] | None = None
        self._changed = asyncio.Event()

    def publish(self, piece: str) -> None:
        """Append generated text and wake the readers."""
        self.pieces.append(piece)
        if self.log is not None:
            self.log.piece(piece)
        self._wake()

    def finish(self, error: ChatError | None = None, *, cancelled: bool = False) -> None:
        """Mark the job done (or failed, or stopped) and wake the readers."""
        self.finished = True
        self.error = error
        if self.log is not None:
            self.log.end(self.usage, error, cancelled=cancelled)
        self._wake()

    async def changed(self) -> None:
        """Wait until something is published or the job ends."""
        await self._changed.wait()

    def _wake(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()


class JobLog:
    """A chapter job's output journaled as a stream, for the processes following it."""

    user_id = JOB_USER
    kind = "chapter-job"

    def __init__(self, journal: FrameJournal, journal_id: str) -> None:
        self.id = self.key = journal_id
        self.ended = False
        self._journal = journal
        self._seq = 0
        journal.started(self)

    def piece(self, text: str) -> None:
        """Journal generated text."""
        self._write(Delta(id=self.id, seq=self._seq + 1, text=text))

    def end(self, usage: Generation, error: ChatError | None, *, cancelled: bool) -> None:
        """Journal how the job ended."""
        self.ended = True
        seq = self._seq + 1
        frame: Done | Error
        if cancelled:
            frame = Done(id=self.id, seq=seq, finish_reason="cancelled", timings=_NO_TIMINGS)
        elif error is not None:
            frame = Error(
                code=error.code,
                message=error.message,
                retryable=error.retryable,
                id=self.id,
                seq=seq,
            )
        else:
            frame = Done(
                id=self.id,
                seq=seq,
                finish_reason="length" if usage.finish_reason == "length" else "stop",
                timings=_NO_TIMINGS,
                usage=Usage(usage.prompt_tokens or 0, usage.completion_tokens or 0),
            )
        self._write(frame)

    def _write(self, frame: Delta | Done | Error) -> None:
        self._seq += 1
        self._journal.frame(self, self._seq, codec.encode(frame).decode())


_NO_TIMINGS = Timings(first_token_ms=0.0, total_ms=0.0)


class _Wakeup:
    def __init__(self) -> None:
        self.arrived = asyncio.Event()

    def wake(self, stream: StoredStream) -> None:
        self.arrived.set()


class JobShare:
    """Claims chapter jobs in Postgres for this process, or follows the process that holds one."""

    def __init__(
        self, store: Store, journal: FrameJournal, watcher: Watcher | None, retention_s: float
    ) -> None:
        self._store = store
        self._journal = journal
        self._watcher = watcher
        self._retention_s = retention_s

    async def run(self, job: ChapterJob, generate: Generate) -> None:
        """Fill `job`: generate it here if no live process does, else follow the one that does."""
        for _ in range(MAX_CLAIMS):
            journal_id = uuid.uuid4().hex
            held = await self._store.claim_chapter_job(job.key, PROCESS_ID, journal_id)
            if held == journal_id:
                await self._generate(job, journal_id, generate)
                return
            if held is not None and await self._follow(job, held):
                return
        raise UpstreamUnavailable(
            "this chapter is being generated by another server that could not be followed; ask again",
            retryable=True,
        )

    async def _generate(self, job: ChapterJob, journal_id: str, generate: Generate) -> None:
        job.log = JobLog(self._journal, journal_id)
        try:
            cached = await self._store.get_cached_chapter(job.key)
            if cached is not None:  # finished elsewhere since this request missed the cache
                job.usage = Generation(
                    cached.finish_reason, cached.prompt_tokens, cached.completion_tokens
                )
                job.publish(cached.body)
                return
            await generate(job)
        finally:
            with contextlib.suppress(ChatError):
                await self._store.release_chapter_job(job.key, journal_id)

    async def _follow(self, job: ChapterJob, journal_id: str) -> bool:
        """Copy the holder's journaled output into `job`; False when the holder stopped before
        any of it was copied (so the job can be claimed again)."""
        follower = uuid.uuid4().hex
        await self._store.notify(CHAPTER, SEP.join(("join", journal_id, follower)))
        wakeup = _Wakeup()
        stored: StoredStream | None = None
        try:
            stored = await StoredStream.open(
                self._store, JOB_USER, journal_id, 0, self._retention_s, wakeup, self._watcher
            )
            if stored is None:
                return False
            while True:
                data = stored.take()
                if data is None:
                    await wakeup.arrived.wait()
                    wakeup.arrived.clear()
                    continue
                frame = codec.decode_server(data)
                if isinstance(frame, Delta):
                    job.publish(frame.text)
                elif isinstance(frame, Error):
                    raise RemoteError(frame.code, frame.message, retryable=frame.retryable)
                elif isinstance(frame, Done):
                    if frame.finish_reason != "cancelled":
                        used = frame.usage or Usage(0, 0)
                        job.usage = Generation(
                            frame.finish_reason, used.prompt_tokens, used.completion_tokens
                        )
                        return True
                    if job.pieces:
                        raise UpstreamUnavailable(
                            "the generation this chapter shared was stopped; ask again",
                            retryable=True,
                        )
                    return False
        finally:
            if stored is not None:
                stored.close()
            with contextlib.suppress(ChatError):
                await self._store.notify(CHAPTER, SEP.join(("leave", journal_id, follower)))


class ChapterHub:
    """Running chapter jobs by cache key: concurrent identical requests generate once."""

    def __init__(self, share: JobShare | None = None) -> None:
        self._jobs: dict[str, ChapterJob] = {}
        self._share = share

    def join(self, key: str, generate: Generate) -> ChapterJob:
        """The running job for `key`, started with `generate` if there is none."""
        job = self._jobs.get(key)
        if job is None:
            job = ChapterJob(key)
            self._jobs[key] = job
            job.task = asyncio.create_task(self._run(job, generate), name=f"chapter:{key[:12]}")
        job.subscribers += 1
        return job

    def leave(self, job: ChapterJob) -> None:
        """A stream stopped reading; when nobody reads any more, the generation stops."""
        job.subscribers -= 1
        self._stop_if_unread(job)

    def on_notice(self, payload: str) -> None:
        """A process started or stopped following a job this process generates."""
        kind, journal_id, follower = payload.split(SEP)
        for job in list(self._jobs.values()):
            if job.log is not None and job.log.id == journal_id:
                if kind == "join":
                    job.remote.add(follower)
                else:
                    job.remote.discard(follower)
                    self._stop_if_unread(job)

    def _stop_if_unread(self, job: ChapterJob) -> None:
        if job.subscribers <= 0 and not job.remote and job.task is not None:
            job.task.cancel()

    async def _run(self, job: ChapterJob, generate: Generate) -> None:
        try:
            if self._share is None:
                await generate(job)
            else:
                await self._share.run(job, generate)
            job.finish()
        except asyncio.CancelledError:
            job.finish(UpstreamUnavailable("the chapter generation was stopped"), cancelled=True)
        except ChatError as exc:
            job.finish(exc)
        except Exception:
            log.exception("chapter job failed")
            job.finish(InternalError("internal error"))
        finally:
            if self._jobs.get(job.key) is job:
                del self._jobs[job.key]

    async def close(self) -> None:
        """Stop every running job."""
        tasks = [j.task for j in self._jobs.values() if j.task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
