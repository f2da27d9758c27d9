"""The fake server itself: listening, counters for tests, and a blocking `run` for the CLI."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections import deque
from collections.abc import Callable
from typing import Any, Literal

from server.tools.fake_llm.config import FakeLLMConfig, ReceivedRequest, StreamRecord
from server.tools.fake_llm.connection import _Connection, _Pacer
from server.tools.fake_llm.wire import _CHAT_PATHS


class FakeLLM:
    """The fake server: start it, point an OpenAI client at `base_url`, inspect what it saw."""

    def __init__(self, config: FakeLLMConfig | None = None) -> None:
        self._config = config or FakeLLMConfig()
        self._config.validate()
        self.received: deque[ReceivedRequest] = deque(maxlen=1000)
        self.stream_records: deque[StreamRecord] = deque(maxlen=20_000)
        self.requests_total = 0
        self.requests_hung = 0
        self.failures_injected = 0
        self.connections_opened = 0
        self.streams_started = 0
        self.streams_completed = 0
        self.streams_disconnected = 0
        self.streams_broken = 0
        self.open_streams = 0
        self._ids = itertools.count(1)
        self._connections: set[_Connection] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._changed: asyncio.Event | None = None
        self._server: asyncio.Server | None = None
        self._pacer: _Pacer | None = None
        self._address: tuple[str, int] | None = None

    @property
    def config(self) -> FakeLLMConfig:
        """Behaviour for next requests; assigning a new one restarts the `fail_first_n` count."""
        return self._config

    @config.setter
    def config(self, config: FakeLLMConfig) -> None:
        config.validate()
        self._config = config
        self.failures_injected = 0

    @property
    def requests(self) -> list[dict[str, Any]]:
        """Decoded JSON bodies of the last (up to 1,000) requests, oldest first."""
        return [r.body for r in self.received if r.body is not None]

    @property
    def chat_requests(self) -> list[dict[str, Any]]:
        """Bodies of the chat completion requests among `requests`."""
        return [r.body for r in self.received if r.body is not None and r.path in _CHAT_PATHS]

    @property
    def base_url(self) -> str:
        """The OpenAI `base_url`, e.g. http://127.0.0.1:PORT/v1."""
        if self._address is None:
            raise RuntimeError("FakeLLM is not started")
        return f"http://{self._address[0]}:{self._address[1]}/v1"

    @property
    def open_connections(self) -> int:
        """Client connections currently open (idle keep-alive ones included)."""
        return len(self._connections)

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> None:
        """Listen on host:port (0 = any free port)."""
        loop = asyncio.get_running_loop()
        self._pacer = _Pacer(loop)
        self._server = await loop.create_server(lambda: _Connection(self), host, port, backlog=4096)
        self._address = self._server.sockets[0].getsockname()[:2]

    async def stop(self) -> None:
        """Stop listening and drop every connection, hung or streaming ones included."""
        if self._server is None:
            return
        self._server.close()
        for connection in list(self._connections):
            connection.abort()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()
        await asyncio.sleep(0)  # let connection_lost callbacks run
        self._server = None

    async def __aenter__(self) -> FakeLLM:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    async def wait_for(self, predicate: Callable[[], bool], timeout: float = 2.0) -> None:  # noqa: ASYNC109
        """Wait until predicate() holds; re-checked whenever a request or a stream changes state."""
        deadline = asyncio.get_running_loop().time() + timeout
        while not predicate():
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                raise TimeoutError(f"fake LLM: condition not met within {timeout} s")
            if self._changed is None:
                self._changed = asyncio.Event()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), remaining)

    # hooks for _Connection
    def _notify(self) -> None:
        if self._changed is not None:
            self._changed.set()
            self._changed = None

    def _next_id(self) -> int:
        return next(self._ids)

    def _record(self, request: ReceivedRequest) -> None:
        self.received.append(request)
        self.requests_total += 1
        self._notify()

    def _take_failure(self, config: FakeLLMConfig) -> bool:
        if config.fail_first_n is not None and self.failures_injected >= config.fail_first_n:
            return False
        self.failures_injected += 1
        return True

    def _spawn(self, work: Any) -> None:
        task: asyncio.Task[None] = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _connection_opened(self, connection: _Connection) -> None:
        self._connections.add(connection)
        self.connections_opened += 1

    def _connection_closed(self, connection: _Connection) -> None:
        self._connections.discard(connection)
        self._notify()

    def _stream_started(self, record: StreamRecord) -> None:
        self.stream_records.append(record)
        self.streams_started += 1
        self.open_streams += 1
        self._notify()

    def _stream_ended(
        self, record: StreamRecord, outcome: Literal["completed", "disconnected", "broken"]
    ) -> None:
        record.outcome = outcome
        record.ended_at = time.monotonic()
        self.open_streams -= 1
        if outcome == "completed":
            self.streams_completed += 1
        elif outcome == "disconnected":
            self.streams_disconnected += 1
        else:
            self.streams_broken += 1
        self._notify()


def _run_loop(main: Any) -> None:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop comes with uvicorn[standard]
        asyncio.run(main)
    else:
        uvloop.run(main)


def run(host: str = "127.0.0.1", port: int = 8100, config: FakeLLMConfig | None = None) -> None:
    """Serve until interrupted (blocking; for a CLI command). Prints the base URL once listening."""

    async def serve() -> None:
        server = FakeLLM(config)
        await server.start(host, port)
        print(f"fake LLM listening on {server.base_url}", flush=True)
        try:
            await asyncio.Event().wait()
        finally:
            await server.stop()

    with contextlib.suppress(KeyboardInterrupt):
        _run_loop(serve())
