"""The load test engine: N concurrent sockets asking, highlighting and reading chapters, measured."""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import dataclasses
import os
import random
import time
from collections.abc import Callable, Sequence

import msgspec
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed, InvalidStatus, WebSocketException

from protocol.codec import encode
from protocol.contract import STREAM_TYPES, StreamContract
from protocol.frames import Ask, Chapter, Selection
from server.tools.client import WireFrame, decode_frame, open_socket
from server.tools.loadtest.config import (
    QUESTIONS,
    SELECTION_QUESTIONS,
    SELECTIONS,
    LoadConfig,
    tokens_for,
)
from server.tools.loadtest.report import KINDS, LoadReport, Recorder, build_report, percentile

LAG_PROBE_S = 0.05
RECENT_TTFD_S = 5.0
# Closes that end streams by design (restart, overload, auth): a stream cut by any other close
# without its terminal frame breaks the "exactly one terminal frame" rule.
CLOSES_THAT_MAY_CUT_STREAMS = frozenset({1006, 1008, 1009, 1011, 1012, 1013, 4401, 4408, 4429})


@dataclasses.dataclass(frozen=True, slots=True)
class Snapshot:
    """The run as of one moment, for live progress."""

    elapsed: float
    open_connections: int
    streams_ok: int
    streams_failed: int
    deltas_per_s: float
    chars_per_s: float
    ttfd_p50_ms: float | None  # over the last RECENT_TTFD_S seconds
    ttfd_p99_ms: float | None
    violations: int
    cpu_fraction: float  # of one core, since the previous snapshot

    def line(self) -> str:
        """One line for a terminal."""
        p50 = "-" if self.ttfd_p50_ms is None else f"{self.ttfd_p50_ms:.0f}"
        p99 = "-" if self.ttfd_p99_ms is None else f"{self.ttfd_p99_ms:.0f}"
        return (
            f"{self.elapsed:6.1f}s open {self.open_connections:5d} ok {self.streams_ok:6d}"
            f" failed {self.streams_failed:5d} deltas/s {self.deltas_per_s:7.0f}"
            f" ttfd p50 {p50} p99 {p99} ms violations {self.violations} cpu {self.cpu_fraction:.0%}"
        )


class StreamTracker:
    """One stream's contract check (protocol/contract.py) and its timings."""

    __slots__ = ("_rec", "contract", "kind", "last_delta_at", "sent_at")

    def __init__(self, rec: Recorder, kind: int, sent_at: float) -> None:
        self._rec = rec
        self.kind = kind  # index into KINDS
        self.sent_at = sent_at
        self.last_delta_at = 0.0
        self.contract = StreamContract()

    @property
    def ended(self) -> bool:
        """Its terminal frame came."""
        return self.contract.ended

    def frame(self, frame: WireFrame, now: float) -> str | None:
        """Account one frame of this stream; the contract violation it shows, if any."""
        ended_before = self.contract.ended
        violation = self.contract.check(frame.type, frame.seq)
        if ended_before:
            return violation
        rec = self._rec
        kind = frame.type
        if kind == "delta":
            if self.last_delta_at == 0.0:
                rec.ttfd_at.append(now - rec.t0)
                rec.ttfd.append(now - self.sent_at)
                rec.ttfd_kind.append(self.kind)
            else:
                rec.gap_at.append(now - rec.t0)
                rec.gap.append(now - self.last_delta_at)
            self.last_delta_at = now
            rec.deltas += 1
            rec.chars += len(frame.text or "")
        elif kind == "done":
            usage = frame.usage
            tokens = None if usage is None else usage.completion_tokens
            rec.stream_done(now, tokens, bool(frame.cached))
        elif kind == "error":
            rec.stream_failed(now, frame.code or "error_without_code")
        return violation


def _connect_failure(exc: BaseException) -> str:
    if isinstance(exc, InvalidStatus):
        return f"http_{exc.response.status_code}"
    if isinstance(exc, ConnectionClosed):
        return f"close_{exc.rcvd.code if exc.rcvd else 1006}"
    if isinstance(exc, TimeoutError):
        return "timeout"
    return type(exc).__name__


class _Run:
    """The state of one run shared by its connection tasks."""

    def __init__(self, config: LoadConfig, tokens: list[str], stop: asyncio.Event | None) -> None:
        self.config = config
        self.tokens = tokens
        self.stop = stop
        self.t0 = time.perf_counter()
        self.end_at = self.t0 + config.duration
        self.rec = Recorder(self.t0)
        self.rng = random.Random(config.seed)
        self.kinds = [i for i, kind in enumerate(KINDS) if config.mix.get(kind, 0) > 0]
        self.weights = [config.mix[KINDS[i]] for i in self.kinds]
        self.asked = 0

    def _question(self, questions: Sequence[str]) -> str:
        question = self.rng.choice(questions)
        if not self.config.new_questions:
            return question
        self.asked += 1
        return f"{question} (reader {self.config.user_prefix}{self.config.seed}-{self.asked})"

    def request(self, stream_id: str) -> tuple[int, bytes]:
        """The next request: its kind and encoded frame."""
        kind = self.rng.choices(self.kinds, self.weights)[0]
        rng, config = self.rng, self.config
        if kind == 0:
            frame: Ask | Chapter = Ask(id=stream_id, question=self._question(QUESTIONS))
        elif kind == 1:
            frame = Ask(
                id=stream_id,
                question=self._question(SELECTION_QUESTIONS),
                selection=Selection(text=rng.choice(SELECTIONS)),
            )
        else:
            frame = Chapter(
                id=stream_id,
                chapter=rng.choice(config.chapters),
                mode=config.chapter_mode,
                language=config.language if config.chapter_mode == "translate" else None,
            )
        return kind, encode(frame)

    async def drive(self, index: int) -> None:
        """One connection: open it at its ramp slot, then stream until the duration ends."""
        config, rec = self.config, self.rec
        await asyncio.sleep(
            self.t0 + config.ramp * index / config.connections - time.perf_counter()
        )
        if time.perf_counter() >= self.end_at:
            return
        token = self.tokens[index % len(self.tokens)]
        began = time.perf_counter()
        try:
            async with asyncio.timeout(config.connect_timeout):
                ws = await open_socket(
                    config.url,
                    token,
                    wait_ready=False,
                    open_timeout=None,
                    compression="deflate" if config.deflate else None,
                )
        except (OSError, TimeoutError, WebSocketException) as exc:
            rec.connect_failed[_connect_failure(exc)] += 1
            return
        try:
            await self._converse(ws, index, began)
        finally:
            await ws.close()

    async def _converse(self, ws: ClientConnection, index: int, began: float) -> None:
        rec = self.rec
        try:
            async with asyncio.timeout(self.config.connect_timeout):
                ready = decode_frame(await ws.recv(decode=False))
        except (TimeoutError, WebSocketException, msgspec.DecodeError) as exc:
            rec.connect_failed[_connect_failure(exc)] += 1
            return
        if ready.type != "ready":
            rec.connect_failed[f"{ready.type}_{ready.code}" if ready.code else ready.type] += 1
            return
        rec.connect.append(time.perf_counter() - began)
        rec.opened += 1
        rec.open_now += 1
        try:
            previous: tuple[str, StreamTracker] | None = None
            number = 0
            while time.perf_counter() < self.end_at:
                number += 1
                stream_id = f"c{index}-{number}"
                kind, payload = self.request(stream_id)
                rec.sent[KINDS[kind]] += 1
                tracker = StreamTracker(rec, kind, time.perf_counter())
                await ws.send(payload, text=True)
                if not await self._read_stream(ws, stream_id, tracker, previous):
                    return
                previous = (stream_id, tracker)
                think = self.config.think
                if think > 0:
                    if time.perf_counter() + think >= self.end_at:
                        break  # a paced reader asks nothing more before the end, never in a burst
                    await asyncio.sleep(think * self.rng.uniform(0.5, 1.5))
        except ConnectionClosed as exc:
            rec.dropped[f"close_{exc.rcvd.code if exc.rcvd else 1006}"] += 1
        finally:
            rec.open_now -= 1

    async def _read_stream(
        self,
        ws: ClientConnection,
        stream_id: str,
        tracker: StreamTracker,
        previous: tuple[str, StreamTracker] | None,
    ) -> bool:
        """Read frames until this stream's terminal frame; False when the socket must be closed."""
        rec, config = self.rec, self.config
        grace_end = self.end_at + config.grace
        deadline = min(tracker.sent_at + config.stream_timeout, grace_end)
        where = f"connection {stream_id.split('-')[0]}"
        try:
            async with asyncio.timeout(deadline - time.perf_counter()):
                while not tracker.ended:
                    raw = await ws.recv(decode=False)
                    now = time.perf_counter()
                    try:
                        frame = decode_frame(raw)
                    except msgspec.DecodeError:
                        rec.violation("bad_frame", f"{where}: {bytes(raw)[:80]!r}")
                        continue
                    frame_id = frame.id
                    if frame_id == stream_id:
                        violation = tracker.frame(frame, now)
                    elif frame_id is None:
                        violation = self._connection_frame(frame)
                    elif previous is not None and frame_id == previous[0]:
                        violation = previous[1].frame(frame, now)
                    else:
                        violation = "unknown_stream"
                    if violation is not None:
                        rec.violation(
                            violation, f"{where} stream {frame_id} {frame.type} seq {frame.seq}"
                        )
        except TimeoutError:
            now = time.perf_counter()
            if now >= grace_end:
                rec.cut += 1
            else:
                rec.stream_failed(now, "timeout")
                rec.dropped["stream_timeout"] += 1
            return False  # its frames may still come; a fresh stream would mistake them
        except ConnectionClosed as exc:
            code = exc.rcvd.code if exc.rcvd else 1006
            rec.stream_failed(time.perf_counter(), f"closed_{code}")
            if code not in CLOSES_THAT_MAY_CUT_STREAMS:
                rec.violation("missing_terminal", f"{where} stream {stream_id} closed {code}")
            raise
        return True

    def _connection_frame(self, frame: WireFrame) -> str | None:
        if frame.type == "error":
            self.rec.connection_errors[frame.code or "error_without_code"] += 1
        elif frame.type in STREAM_TYPES:
            return "missing_id"
        elif frame.type not in ("ready", "pong"):
            return "unknown_type"
        return None

    async def watch(self, progress: Callable[[Snapshot], None] | None) -> None:
        """Measure event loop lag, end the duration early on `stop`, report progress each second."""
        rec = self.rec
        last_at, last_cpu, last_deltas, last_chars = self.t0, time.process_time(), 0, 0
        next_snapshot = self.t0 + 1
        while True:
            expected = time.perf_counter() + LAG_PROBE_S
            await asyncio.sleep(LAG_PROBE_S)
            now = time.perf_counter()
            rec.loop_lag.append(max(0.0, now - expected))
            if self.stop is not None and self.stop.is_set() and now < self.end_at:
                self.end_at = now
            if now < next_snapshot:
                continue
            next_snapshot = max(next_snapshot + 1, now)
            cpu = time.process_time()
            interval = now - last_at
            recent = sorted(
                rec.ttfd[bisect.bisect_left(rec.ttfd_at, now - rec.t0 - RECENT_TTFD_S) :]
            )
            p50, p99 = percentile(recent, 50), percentile(recent, 99)
            snapshot = Snapshot(
                elapsed=now - self.t0,
                open_connections=rec.open_now,
                streams_ok=rec.ok,
                streams_failed=sum(rec.failed.values()),
                deltas_per_s=(rec.deltas - last_deltas) / interval,
                chars_per_s=(rec.chars - last_chars) / interval,
                ttfd_p50_ms=None if p50 is None else p50 * 1000,
                ttfd_p99_ms=None if p99 is None else p99 * 1000,
                violations=sum(rec.violations.values()),
                cpu_fraction=(cpu - last_cpu) / interval,
            )
            last_at, last_cpu, last_deltas, last_chars = now, cpu, rec.deltas, rec.chars
            if progress is not None:
                progress(snapshot)


async def run_load(
    config: LoadConfig,
    *,
    progress: Callable[[Snapshot], None] | None = None,
    stop: asyncio.Event | None = None,
) -> LoadReport:
    """Run one load test; `stop` ends the duration early (streams in flight still finish)."""
    config.validate()
    tokens = await tokens_for(config)
    started_at = time.time()
    cpu_began = time.process_time()
    run = _Run(config, tokens, stop)
    watcher = asyncio.create_task(run.watch(progress))
    try:
        async with asyncio.TaskGroup() as connections:
            for index in range(config.connections):
                connections.create_task(run.drive(index))
    finally:
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher
    wall_s = time.perf_counter() - run.t0
    cpu_s = time.process_time() - cpu_began
    return await asyncio.to_thread(
        build_report,
        run.rec,
        url=config.url,
        started_at=started_at,
        duration_s=run.end_at - run.t0,  # shorter when `stop` ended the run early
        ramp_s=config.ramp,
        wall_s=wall_s,
        cpu_s=cpu_s,
        cores=os.cpu_count() or 1,
        mix=dict(config.mix),
        users=config.distinct_users,
        target_connections=config.connections,
    )
