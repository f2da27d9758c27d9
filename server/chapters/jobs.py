"""Chapter jobs: one generation of a chapter shared by every reader who asked for the same thing,
on this process or another. A process claims the job in Postgres and journals its text as a
stream of no user; the other processes follow that journal and register as its readers."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Callable, Coroutine
from typing import Any

from protocol import codec
from protocol.frames import Delta, Done, Error, Timings, Usage
from server.chat.llm import Generation
from server.cluster.bus import CHAPTER
from server.cluster.journal import PROCESS_ID, FrameJournal
from server.cluster.replay import StoredStream, Watcher
from server.errors import ChatError, InternalError, RemoteError, UpstreamUnavailable
from server.store import Store

log = logging.getLogger(__name__)

JOB_USER = ""  # no token has an empty subject: no reader can resume a job's journal
MAX_CLAIMS = 3
READERS_POLL_S = 2.0  # how often an owner nobody reads here asks who reads elsewhere

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
        self.log: JobLog | None = None  # set when this process generates it (not follows it)
        self.task: asyncio.Task[None] | None = None
        self.reaper: asyncio.Task[None] | None = None  # stops it once nobody reads anywhere
        self.reader_left = asyncio.Event()  # a reader on another process stopped
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
            frame = error.frame(self.id, seq)
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

    def replayed(self, stream: StoredStream) -> None:
        pass


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
            try:
                held = await self._store.claim_chapter_job(job.key, PROCESS_ID, journal_id)
            except asyncio.CancelledError:  # the claim may have been made all the same
                await asyncio.shield(self._release(job.key, journal_id))
                raise
            if held == journal_id:
                await self._generate(job, journal_id, generate)
                return
            if held is not None and await self._follow(job, held):
                return
        raise UpstreamUnavailable(
            "this chapter is being generated by another server that could not be followed; ask again",
            retryable=True,
        )

    async def readers(self, journal_id: str) -> int:
        """Readers on other live processes of the job journaled as `journal_id`."""
        return await self._store.job_readers(journal_id)

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
            await asyncio.shield(self._release(job.key, journal_id))

    async def _release(self, key: str, journal_id: str) -> None:
        with contextlib.suppress(ChatError):
            await self._store.release_chapter_job(key, journal_id)

    async def _follow(self, job: ChapterJob, journal_id: str) -> bool:
        """Copy the holder's journaled output into `job`; False when the holder stopped before
        any of it was copied (so the job can be claimed again)."""
        reader = uuid.uuid4().hex
        wakeup = _Wakeup()
        stored: StoredStream | None = None
        try:
            await self._store.add_job_reader(journal_id, reader, PROCESS_ID)
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
            await asyncio.shield(self._stop_reading(journal_id, reader))

    async def _stop_reading(self, journal_id: str, reader: str) -> None:
        with contextlib.suppress(ChatError):
            await self._store.remove_job_reader(journal_id, reader)
            await self._store.notify(CHAPTER, journal_id)


class ChapterHub:
    """Running chapter jobs by cache key: concurrent identical requests generate once."""

    def __init__(self, share: JobShare) -> None:
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
        """A stream stopped reading; when nobody reads any more, anywhere, the generation stops."""
        job.subscribers -= 1
        if job.subscribers > 0 or job.task is None or job.task.done() or job.reaper is not None:
            return
        if job.log is None:  # following another process, or not started: only we read it
            job.task.cancel()
        else:
            job.reaper = asyncio.create_task(self._reap(job), name=f"reaper:{job.key[:12]}")

    def on_notice(self, journal_id: str) -> None:
        """A reader on another process stopped reading a job of this one."""
        for job in self._jobs.values():
            if job.log is not None and job.log.id == journal_id:
                job.reader_left.set()

    async def _reap(self, job: ChapterJob) -> None:
        """Stop the job once nobody reads it, here or on a live process elsewhere."""
        assert job.log is not None and job.task is not None
        try:
            while job.subscribers <= 0:
                job.reader_left.clear()
                try:
                    elsewhere = await self._share.readers(job.log.id)
                except ChatError:
                    elsewhere = 1  # unknown: go on (a finished chapter is cached)
                if elsewhere == 0:
                    if job.subscribers <= 0:
                        job.task.cancel()
                    break
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(job.reader_left.wait(), READERS_POLL_S)
        finally:
            job.reaper = None

    async def _run(self, job: ChapterJob, generate: Generate) -> None:
        try:
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
            if job.reaper is not None:
                job.reaper.cancel()
            if self._jobs.get(job.key) is job:
                del self._jobs[job.key]

    async def close(self) -> None:
        """Stop every running job."""
        tasks = [t for j in self._jobs.values() for t in (j.task, j.reaper) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
