"""The answer pipeline of one `ask`: retrieve, prompt, stream the model, persist."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from typing import Any

from protocol.frames import Ask, Delta, Done, Error, Source, Sources, Start, Timings, Usage
from server.chat.llm import Generation
from server.chat.prompt import PromptSource, build_prompt
from server.chat.stream import Stream
from server.errors import ChatError, DatabaseUnavailable, InternalError, NotFound, error_fields
from server.metrics import DATABASE, FIRST_DELTA, MODEL_FIRST_CHUNK, MODEL_STREAM, STREAMS
from server.retrieval.retriever import Passage
from server.services import Services
from server.store import MessageOutcome, Turn

log = logging.getLogger(__name__)


class AnswerRun:
    """State of one answer while it streams; persisted however it ends."""

    def __init__(self, services: Services, user_id: str, ask: Ask) -> None:
        self.services = services
        self.user_id = user_id
        self.ask = ask
        self.pieces: list[str] = []
        self.passages: list[Passage] = []
        self.generation = Generation()
        self.message_id: str | None = None
        self.retrieval_ms: float | None = None
        self.first_token_ms: float | None = None
        self.spans: dict[str, float] = {}

    async def __call__(self, stream: Stream) -> None:
        try:
            await self._answer(stream)
        except asyncio.CancelledError:
            _uncancel()
            await self._end(stream, "interrupted" if stream.interrupted else "cancelled", None)
        except ChatError as exc:
            await self._end(stream, "failed", exc)
        except Exception:
            log.exception("answer %s failed", stream.id)
            await self._end(stream, "failed", InternalError("internal error"))

    async def _answer(self, stream: Stream) -> None:
        s = self.services
        ask = self.ask
        await s.limiter.admit(self.user_id)
        selection = ask.selection.text if ask.selection else None
        chapter_id = ask.chapter or (ask.selection.chapter if ask.selection else None)
        if ask.chapter and not await s.catalog.exists(ask.chapter):
            raise NotFound(f"no chapter {ask.chapter!r}")
        if chapter_id and not await s.catalog.exists(chapter_id):
            chapter_id = (
                None  # a selection's chapter hint that the book does not know is only a hint
            )

        async def retrieve() -> list[Passage]:
            t = time.perf_counter()
            passages = await s.retriever.search(
                ask.question,
                selection=selection,
                chapter_id=ask.chapter,
                limit=s.settings.sources_per_answer,
                spans=self.spans,
            )
            self.retrieval_ms = (time.perf_counter() - t) * 1000.0
            return passages

        async def open_conversation() -> tuple[str, list[Turn]]:
            t = time.perf_counter()
            found = await s.store.open_conversation(
                self.user_id, ask.conversation_id, ask.question, s.settings.history_messages
            )
            self.spans["db_ms"] = (time.perf_counter() - t) * 1000.0
            return found

        conversation, passages = await _both(open_conversation(), retrieve())
        conversation_id, history = conversation
        self.passages = passages
        self.message_id = str(uuid.uuid4())
        t = time.perf_counter()
        await s.store.begin_message(
            message_id=self.message_id,
            conversation_id=conversation_id,
            user_id=self.user_id,
            stream_id=stream.id,
            question=ask.question,
            selection=_selection_json(ask),
            chapter_id=chapter_id,
            model=s.model.name,
        )
        self.spans["db_ms"] += (time.perf_counter() - t) * 1000.0
        DATABASE.observe(self.spans["db_ms"] / 1000.0)
        stream.emit(Start, message_id=self.message_id, conversation_id=conversation_id)
        stream.emit(Sources, sources=[_source(p) for p in passages])
        prompt = build_prompt(
            ask.question,
            [PromptSource(p.title, p.section, p.url, p.text) for p in passages],
            selection=selection,
            page_url=ask.selection.page_url if ask.selection else None,
            history=history,
        )
        model_started = time.perf_counter()
        async for text in s.model.stream(prompt, self.generation):
            if self.first_token_ms is None:
                stream.first_chunk_at = time.perf_counter()
                self.spans["model_first_chunk_ms"] = (
                    stream.first_chunk_at - model_started
                ) * 1000.0
                MODEL_FIRST_CHUNK.observe(stream.first_chunk_at - model_started)
                self.first_token_ms = stream.elapsed_ms()
                FIRST_DELTA.labels("answer").observe(self.first_token_ms / 1000.0)
            self.pieces.append(text)
            stream.emit(Delta, text=text)
        MODEL_STREAM.observe(time.perf_counter() - model_started)
        await self._end(stream, "complete", None)

    async def _end(self, stream: Stream, status: str, error: ChatError | None) -> None:
        timings = Timings(
            first_token_ms=round(
                self.first_token_ms if self.first_token_ms is not None else stream.elapsed_ms(), 2
            ),
            total_ms=round(stream.elapsed_ms(), 2),
            retrieval_ms=round(self.retrieval_ms, 2) if self.retrieval_ms is not None else None,
            server_added_ms=round(stream.server_added_ms, 3)
            if stream.server_added_ms is not None
            else None,
            **{k: round(v, 3) for k, v in self.spans.items()},
        )
        STREAMS.labels("answer", status).inc()
        g = self.generation
        usage = (
            Usage(prompt_tokens=g.prompt_tokens or 0, completion_tokens=g.completion_tokens or 0)
            if g.completion_tokens is not None
            else None
        )
        # Saved before the terminal frame: a client that saw `done` can rely on the history.
        saved = self.message_id is None or await self._persist(status, error, timings)
        if not saved and error is None and status == "complete":
            # `done` promises the answer is saved; without the save the stream fails instead
            error = DatabaseUnavailable("the answer could not be saved; ask again")
        if error is not None:
            stream.emit(Error, **error_fields(error))
        else:
            reason = "cancelled" if status in ("cancelled", "interrupted") else g.finish_reason
            stream.emit(Done, finish_reason=reason, timings=timings, usage=usage)

    async def _persist(self, status: str, error: ChatError | None, timings: Timings) -> bool:
        assert self.message_id is not None
        outcome = MessageOutcome(
            status=status,
            answer="".join(self.pieces),
            error_code=error.code.value if error else None,
            prompt_tokens=self.generation.prompt_tokens,
            completion_tokens=self.generation.completion_tokens,
            timings={k: v for k, v in _timings_dict(timings).items() if v is not None},
        )
        try:
            await self.services.store.finish_message(
                self.message_id, [_source_dict(p) for p in self.passages], outcome
            )
            await self.services.limiter.record(self.user_id, self.generation.completion_tokens)
        except ChatError:
            log.warning("could not save message %s (%s)", self.message_id, status)
            return False
        return True


async def _both(a: Any, b: Any) -> tuple[Any, Any]:
    """Run two awaitables concurrently; if one fails, cancel the other and raise its error."""
    task_a, task_b = asyncio.ensure_future(a), asyncio.ensure_future(b)
    try:
        return await task_a, await task_b
    finally:
        for t in (task_a, task_b):
            if not t.done():
                t.cancel()
        await asyncio.gather(task_a, task_b, return_exceptions=True)


def _uncancel() -> None:
    task = asyncio.current_task()
    if task is not None:
        task.uncancel()


def _source(p: Passage) -> Source:
    return Source(
        chapter=p.chapter_id,
        title=p.title,
        section=p.section,
        url=p.url,
        score=round(p.score, 4),
        text=p.text,
    )


def _source_dict(p: Passage) -> dict[str, Any]:
    return {
        "chapter": p.chapter_id,
        "title": p.title,
        "section": p.section,
        "url": p.url,
        "score": p.score,
    }


def _selection_json(ask: Ask) -> dict[str, Any] | None:
    if ask.selection is None:
        return None
    sel = ask.selection
    return {"text": sel.text, "page_url": sel.page_url, "chapter": sel.chapter}


def _timings_dict(t: Timings) -> dict[str, float | None]:
    return {
        "first_token_ms": t.first_token_ms,
        "total_ms": t.total_ms,
        "retrieval_ms": t.retrieval_ms,
    }
