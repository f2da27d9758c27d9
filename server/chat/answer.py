"""The answer pipeline of one `ask`: retrieve, prompt, stream the model, persist."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from typing import Any

import msgspec

from protocol.frames import Ask, Delta, Source, Sources, Start, Timings, Usage
from server.chat.lifecycle import Outcome
from server.chat.llm import Generation
from server.chat.prompt import Prompt, PromptSource, build_prompt
from server.chat.stream import Stream
from server.cluster.journal import PROCESS_ID
from server.errors import ChatError, DatabaseUnavailable, NotFound
from server.insights.signals import answer_signals, count_unanswerable
from server.metrics import DATABASE, MODEL_FIRST_CHUNK, MODEL_STREAM
from server.retrieval.retriever import Passage
from server.services import Services
from server.store import MessageOutcome, Turn

log = logging.getLogger(__name__)


class AnswerRun:
    """One answer while it streams; saved however it ends (server/chat/lifecycle.py)."""

    def __init__(self, services: Services, user_id: str, ask: Ask) -> None:
        self.services = services
        self.user_id = user_id
        self.ask = ask
        # Written as it streams, UTF-8 in one buffer: a StringIO keeps every token's str object
        # until it is read (~55 bytes a token where the text is four).
        self.text = bytearray()
        self.passages: list[Passage] = []
        self.generation = Generation()
        self.message_id: str | None = None
        self.spans: dict[str, float] = {}  # retrieval_ms, embed_ms, search_ms, db_ms, ...

    async def produce(self, stream: Stream) -> None:
        """Retrieve and open the conversation at once, then stream the model's answer."""
        s = self.services
        # The prompt is not kept here: the model lets it go once it answers (server/chat/llm.py).
        answer = s.model.stream(await self._prompt(stream), self.generation)
        model_started = time.perf_counter()
        paced = stream.paced(answer) if s.model.read_on_tick else answer
        async with contextlib.aclosing(paced) as pieces:
            async for text in pieces:
                if stream.first_chunk_at is None:
                    stream.first_chunk_at = time.perf_counter()
                    self.spans["model_first_chunk_ms"] = (
                        stream.first_chunk_at - model_started
                    ) * 1000.0
                    MODEL_FIRST_CHUNK.observe(stream.first_chunk_at - model_started)
                self.text += text.encode()
                stream.emit(Delta, text=text)
        MODEL_STREAM.observe(time.perf_counter() - model_started)

    async def _prompt(self, stream: Stream) -> Prompt:
        """Admit, retrieve, open the conversation and record the message; emit `start` and
        `sources`; the prompt for the model."""
        s = self.services
        ask = self.ask
        await s.limiter.admit(self.user_id)
        selection = ask.selection.text if ask.selection else None
        chapter_id = ask.chapter or (ask.selection.chapter if ask.selection else None)
        if ask.chapter and not await s.catalog.exists(ask.chapter):
            raise NotFound(f"no chapter {ask.chapter!r}")
        if chapter_id and not await s.catalog.exists(chapter_id):
            chapter_id = None  # a selection's chapter hint the book does not know is only a hint
        try:
            async with asyncio.TaskGroup() as group:
                opening = group.create_task(self._open_conversation())
                retrieving = group.create_task(self._retrieve(selection))
        except* ChatError as failed:
            raise failed.exceptions[0] from None
        conversation_id, history, new_conversation = opening.result()
        self.passages = retrieving.result()
        self.message_id = str(uuid.uuid4())
        t = time.perf_counter()
        await s.store.begin_message(
            message_id=self.message_id,
            conversation_id=conversation_id,
            new_conversation=new_conversation,
            user_id=self.user_id,
            stream_id=stream.id,
            question=ask.question,
            selection=msgspec.to_builtins(ask.selection) if ask.selection else None,
            chapter_id=chapter_id,
            model=s.model.name,
            owner=PROCESS_ID,
        )
        self.spans["db_ms"] += (time.perf_counter() - t) * 1000.0
        DATABASE.observe(self.spans["db_ms"] / 1000.0)
        stream.emit(Start, message_id=self.message_id, conversation_id=conversation_id)
        stream.emit(Sources, sources=[_source(p) for p in self.passages])
        return build_prompt(
            ask.question,
            [PromptSource(p.title, p.section, p.url, p.text) for p in self.passages],
            selection=selection,
            page_url=ask.selection.page_url if ask.selection else None,
            history=history,
        )

    async def _retrieve(self, selection: str | None) -> list[Passage]:
        t = time.perf_counter()
        passages = await self.services.retriever.search(
            self.ask.question,
            selection=selection,
            chapter_id=self.ask.chapter,
            limit=self.services.settings.sources_per_answer,
            spans=self.spans,
        )
        self.spans["retrieval_ms"] = (time.perf_counter() - t) * 1000.0
        return passages

    async def _open_conversation(self) -> tuple[str, list[Turn], bool]:
        t = time.perf_counter()
        s = self.services
        found = await s.store.open_conversation(
            self.user_id, self.ask.conversation_id, s.settings.history_messages
        )
        self.spans["db_ms"] = (time.perf_counter() - t) * 1000.0
        return found

    async def settle(
        self, stream: Stream, outcome: Outcome, error: ChatError | None
    ) -> ChatError | None:
        """Save the message (its partial answer when cut short) before the terminal frame, so a
        client that saw `done` can read it back at once."""
        if self.message_id is None:  # refused before anything was recorded
            return error
        saved = await self._save(stream, outcome, error)
        if not saved and error is None and outcome is Outcome.COMPLETE:
            # `done` promises the answer is saved; without the save the stream fails instead
            return DatabaseUnavailable("the answer could not be saved; ask again")
        return error

    async def _save(self, stream: Stream, outcome: Outcome, error: ChatError | None) -> bool:
        assert self.message_id is not None
        timings = self._timings(stream)
        answer = self.text.decode()
        signals = answer_signals((p.similarity for p in self.passages), answer)
        outcome_row = MessageOutcome(
            status=outcome,
            answer=answer,
            error_code=error.code.value if error else None,
            prompt_tokens=self.generation.prompt_tokens,
            completion_tokens=self.generation.completion_tokens,
            timings={
                "first_token_ms": timings.first_token_ms,
                "total_ms": timings.total_ms,
                **({"retrieval_ms": timings.retrieval_ms} if timings.retrieval_ms else {}),
            },
            best_similarity=signals.best_similarity,
            not_covered=signals.not_covered,
        )
        sources = [_source_row(p) for p in self.passages]
        try:
            # the day's completion tokens (RateLimiter's quota) are added in the same statement
            await self.services.store.finish_message(
                self.message_id, sources, outcome_row, user_id=self.user_id
            )
        except ChatError:
            log.warning("could not save message %s (%s)", self.message_id, outcome)
            return False
        if outcome is Outcome.COMPLETE:
            count_unanswerable(signals, self.services.settings.unanswerable_similarity)
        return True

    def done_fields(self, stream: Stream, outcome: Outcome) -> dict[str, Any]:
        """`done`: why it stopped, its timings and the model's usage."""
        g = self.generation
        usage = (
            Usage(prompt_tokens=g.prompt_tokens or 0, completion_tokens=g.completion_tokens or 0)
            if g.completion_tokens is not None
            else None
        )
        reason = g.finish_reason if outcome is Outcome.COMPLETE else "cancelled"
        return {"finish_reason": reason, "timings": self._timings(stream), "usage": usage}

    def _timings(self, stream: Stream) -> Timings:
        return stream.timings(**self.spans)


def _source(p: Passage) -> Source:
    return Source(
        chapter=p.chapter_id,
        title=p.title,
        section=p.section,
        url=p.url,
        score=round(p.score, 4),
        text=p.text,
    )


def _source_row(p: Passage) -> dict[str, Any]:
    """A source as the message row keeps it (without the passage's text)."""
    row: dict[str, Any] = msgspec.structs.asdict(_source(p))
    del row["text"]
    row["score"] = p.score
    return row
