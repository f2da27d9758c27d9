"""Chapter streams: a chapter personalized or translated, its sections generated concurrently
and streamed strictly in order, cached when finished, and shared by identical requests
(server/chapter_jobs.py)."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import logging
import uuid
from collections.abc import Callable
from typing import Any

from protocol import languages
from protocol.frames import Chapter as ChapterFrame
from protocol.frames import Delta, Start, Usage
from protocol.profile import Profile
from server.auth import Identity
from server.chapters.jobs import ChapterHub, ChapterJob
from server.chapters.rewrite import (
    Section,
    first_placeholders,
    personalize_prompt,
    profile_fingerprint,
    restore_code,
    split_chapter,
    translate_prompt,
)
from server.chat.lifecycle import Outcome
from server.chat.llm import ChatModel, Generation
from server.chat.stream import Stream
from server.cluster.limits import RateLimiter
from server.errors import (
    ChatError,
    InvalidMessage,
    NotFound,
    UpstreamUnavailable,
)
from server.profiles import reader_profile
from server.store import CachedChapter, ChapterRow, Store

log = logging.getLogger(__name__)

SECTION_CONCURRENCY = 6
CACHE_DELTA_CHARS = 2048


@dataclasses.dataclass(frozen=True, slots=True)
class ChapterRequest:
    """Everything that decides a chapter's text, and so its cache key."""

    chapter: ChapterRow
    mode: str
    language: str
    profile: Profile | None
    model: str

    def key_fields(self) -> dict[str, str]:
        return {
            "chapter_id": self.chapter.id,
            "content_hash": self.chapter.content_hash,
            "mode": self.mode,
            "language": self.language,
            "profile_hash": profile_fingerprint(self.profile) if self.mode == "personalize" else "",
            "model": self.model,
        }

    def key(self) -> str:
        return hashlib.sha256("\0".join(self.key_fields().values()).encode()).hexdigest()


async def generate_sections(
    sections: list[Section],
    prompts: list[Any],
    model: ChatModel,
    publish: Callable[[str], None],
    usage: Generation,
    concurrency: int = SECTION_CONCURRENCY,
) -> None:
    """Run the sections' completions concurrently (bounded) and publish their text in order."""
    slots = asyncio.Semaphore(concurrency)
    outputs: list[asyncio.Queue[str | None]] = [asyncio.Queue() for _ in sections]
    firsts = first_placeholders(sections)

    async def run(i: int) -> None:
        generation = Generation()
        async with slots:
            async for piece in restore_code(
                model.stream(prompts[i], generation), sections[i], firsts[i]
            ):
                outputs[i].put_nowait(piece)
        usage.prompt_tokens = (usage.prompt_tokens or 0) + (generation.prompt_tokens or 0)
        usage.completion_tokens = (usage.completion_tokens or 0) + (
            generation.completion_tokens or 0
        )
        if generation.finish_reason == "length":
            usage.finish_reason = "length"
        outputs[i].put_nowait(None)

    try:
        async with asyncio.TaskGroup() as group:
            for i in range(len(sections)):
                group.create_task(run(i))
            for i, queue in enumerate(outputs):
                tail = ""
                while (piece := await queue.get()) is not None:
                    publish(piece)
                    tail = piece
                if i + 1 < len(sections) and not tail.endswith("\n\n"):
                    publish("\n" if tail.endswith("\n") else "\n\n")  # each section ends a block
    except* ChatError as group:
        raise group.exceptions[0] from None


class ChapterRun:
    """One `chapter` stream: from the cache, from a running identical job, or a new job."""

    def __init__(
        self,
        store: Store,
        model: ChatModel | None,
        hub: ChapterHub,
        limiter: RateLimiter,
        identity: Identity,
        frame: ChapterFrame,
    ) -> None:
        self.store = store
        self.model = model
        self.hub = hub
        self.limiter = limiter
        self.identity = identity
        self.frame = frame
        self.usage = Generation()
        self.cached = False

    async def produce(self, stream: Stream) -> None:
        """From the cache, or from the generation this request shares with identical ones."""
        await self.limiter.admit(self.identity.user_id)
        request = await self._request()
        language = request.language if request.mode == "translate" else None
        stream.emit(Start, message_id=str(uuid.uuid4()), direction=languages.direction(language))
        key = request.key()
        if request.mode == "personalize":  # erased with the reader's data (server/readers/)
            await self.store.note_chapter_reader(self.identity.user_id, key)
        cached = await self.store.get_cached_chapter(key)
        if cached is not None:
            for i in range(0, len(cached.body), CACHE_DELTA_CHARS):
                stream.emit(Delta, text=cached.body[i : i + CACHE_DELTA_CHARS])
            self.usage = Generation(
                cached.finish_reason, cached.prompt_tokens, cached.completion_tokens
            )
            self.cached = True
            return
        job = self.hub.join(key, lambda job: self._generate(job, request, key))
        try:
            sent = 0
            while True:
                if sent < len(job.pieces):
                    text = "".join(job.pieces[sent:])
                    sent = len(job.pieces)
                    stream.emit(Delta, text=text)
                    continue
                if job.finished:
                    break
                await job.changed()
        finally:
            self.hub.leave(job)
        if job.error is not None:
            raise job.error
        self.usage = job.usage

    async def settle(
        self, stream: Stream, outcome: Outcome, error: ChatError | None
    ) -> ChatError | None:
        """Nothing to save per stream: a finished chapter was cached by its generation."""
        return error

    def done_fields(self, stream: Stream, outcome: Outcome) -> dict[str, Any]:
        """`done`: why it stopped, its timings, the usage and whether it came from the cache."""
        if outcome is not Outcome.COMPLETE:
            return {"finish_reason": "cancelled", "timings": stream.timings()}
        g = self.usage
        return {
            "finish_reason": g.finish_reason,
            "usage": Usage(g.prompt_tokens or 0, g.completion_tokens or 0),
            "timings": stream.timings(),
            "cached": self.cached,
        }

    async def _request(self) -> ChapterRequest:
        frame = self.frame
        if self.model is None:
            raise UpstreamUnavailable(
                "chapter personalization and translation need a language model: configure OPENAI_API_KEY or OPENAI_BASE_URL",
                retryable=False,
            )
        if frame.mode == "translate" and not frame.language:
            raise InvalidMessage("`language` is required for mode translate (e.g. 'ur')")
        chapter = await self.store.get_chapter(frame.chapter)
        if chapter is None:
            raise NotFound(f"no chapter {frame.chapter!r}")
        profile = None
        if frame.mode == "personalize":
            profile = await reader_profile(self.store, self.identity.user_id, self.identity.claims)
            if profile is None:
                raise NotFound(
                    "a reader profile is needed to personalize a chapter: PUT /v1/profile first"
                )
        language = (frame.language or "").lower() if frame.mode == "translate" else ""
        return ChapterRequest(chapter, frame.mode, language, profile, self.model.name)

    async def _generate(self, job: ChapterJob, request: ChapterRequest, key: str) -> None:
        try:
            await self._generate_sections(job, request, key)
        finally:
            await self.limiter.record(self.identity.user_id, job.usage.completion_tokens)

    async def _generate_sections(self, job: ChapterJob, request: ChapterRequest, key: str) -> None:
        assert self.model is not None
        sections = split_chapter(request.chapter.markdown)
        if request.mode == "personalize":
            assert request.profile is not None
            prompts = [personalize_prompt(s, request.profile) for s in sections]
        else:
            prompts = [translate_prompt(s, request.language) for s in sections]
        await generate_sections(sections, prompts, self.model, job.publish, job.usage)
        g = job.usage
        body = CachedChapter(
            "".join(job.pieces), g.prompt_tokens or 0, g.completion_tokens or 0, g.finish_reason
        )
        try:
            await self.store.put_cached_chapter(key, request.key_fields(), body)
        except ChatError:
            log.warning("could not cache chapter %s", request.chapter.id)
