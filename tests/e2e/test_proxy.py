"""Three `serve` nodes on one PostgreSQL behind HAProxy running deploy/haproxy/haproxy.cfg as is,
reached over TLS as a reader's browser reaches them: the reader's address crosses the proxy (and
only the proxy's word is taken for it), a drained node's reader resumes on another node with
nothing lost or doubled, a killed node is routed around, and a quiet socket outlives the ping
interval."""

from __future__ import annotations

import asyncio
import dataclasses
import re
import signal
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from ssl import SSLContext
from typing import Any

import httpx
import pytest
import websockets

from protocol.frames import TERMINAL_TYPES
from server.services import Services
from server.tools.client import SOCKET_OPTIONS, ChatClient, deltas
from server.tools.fake_llm import FakeLLM
from tests.conftest import ROOT, model_config, token_for
from tests.e2e.haproxy import CONFIG, HAProxy, haproxy_missing, run_haproxy
from tests.processes import serve_copy

ORIGIN = "https://book.example.org"
DRAIN_S = 10  # long enough to watch the proxy take the node out while its socket still streams
PING_S = 20  # WS_PING_INTERVAL_SECONDS, left at its default: the config's timeouts are set by it
# 600 words at 25 tokens/s take 24 s: the stream is still running when the drain deadline ends it
REPLY = " ".join(f"step{i}" for i in range(600))


@dataclasses.dataclass
class Node:
    """One `serve` process; `name` is its server line in haproxy.cfg."""

    name: str
    port: int
    proc: asyncio.subprocess.Process
    log: Path


@asynccontextmanager
async def three_nodes(
    tmp: Path, index: Path, database_url: str, llm: FakeLLM
) -> AsyncIterator[list[Node]]:
    """Three nodes on one database, each on its own copy of the index, trusting the proxy."""

    @asynccontextmanager
    async def node(name: str) -> AsyncIterator[Node]:
        async with serve_copy(
            tmp / name,
            index,
            tmp / f"{name}.log",
            DATABASE_URL=database_url,
            OPENAI_BASE_URL=llm.base_url,
            DRAIN_SECONDS=str(DRAIN_S),
            TRUSTED_PROXIES="127.0.0.1",  # where HAProxy connects from
            FORWARDED_ALLOW_IPS="*",  # uvicorn's own variable would believe anyone: not read
            ALLOWED_ORIGINS=ORIGIN,
            LOG_LEVEL="INFO",  # uvicorn's line per accepted socket names the client's address
        ) as (port, proc):
            yield Node(name, port, proc, tmp / f"{name}.log")

    async with AsyncExitStack() as stack:
        nodes = await asyncio.gather(
            *(stack.enter_async_context(node(f"node{i}")) for i in (1, 2, 3))
        )
        yield list(nodes)


class Readers:
    """Sockets as a reader's browser opens them (TLS to the proxy, an Origin), each from its own
    loopback address: the node that took one is the node that logged that address."""

    def __init__(self, proxy: HAProxy, nodes: list[Node]) -> None:
        self.proxy = proxy
        self.nodes = nodes
        self._last = 9

    def address(self) -> str:
        """A loopback address no socket of this test used before."""
        self._last += 1
        assert self._last < 255
        return f"127.0.0.{self._last}"

    @asynccontextmanager
    async def open(
        self,
        user: str,
        address: str,
        *,
        url: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> AsyncIterator[ChatClient]:
        """An authenticated socket through the proxy (or straight to `url`); `ready` consumed.
        Like a browser's, it sends no pings of its own (SOCKET_OPTIONS): only the node's."""
        ssl: SSLContext | None = None if url else self.proxy.client_ssl
        async with websockets.connect(
            url or self.proxy.ws_url,
            additional_headers={"Authorization": f"Bearer {token_for(user)}", **(headers or {})},
            origin=websockets.Origin(ORIGIN),
            ssl=ssl,
            local_addr=(address, 0),
            **{**SOCKET_OPTIONS, "open_timeout": 15},
        ) as ws:
            client = ChatClient(ws)
            ready = await client.recv()
            assert ready["type"] == "ready", ready
            yield client
        client.assert_contract()

    async def landed(self, address: str, within: float = 10.0) -> Node:
        """The one node that accepted the socket from `address`."""
        accepted = re.compile(
            rf'(?<![\d.]){re.escape(address)}:\d+ - "WebSocket /v1/chat" \[accepted\]'
        )
        deadline = time.monotonic() + within
        while True:
            found = [n for n in self.nodes if accepted.search(await _text(n.log))]
            if found or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.05)
        assert len(found) == 1, f"{address} accepted by {[n.name for n in found]}"
        return found[0]

    async def open_and_close(self, user: str) -> Node:
        """A reader connects through the proxy and gets `ready`; where it landed."""
        address = self.address()
        async with self.open(user, address):
            pass
        return await self.landed(address)


async def _text(path: Path) -> str:
    return await asyncio.to_thread(path.read_text, errors="replace")


def test_readme_shows_the_config_as_tested() -> None:
    readme = (ROOT / "README.md").read_text()
    shown = re.findall(r"```haproxy\n(.*?)```", readme, re.S)
    assert len(shown) == 1 and shown[0] in CONFIG.read_text(), "README and haproxy.cfg differ"
    assert "backend nodes" in shown[0] and "timeout tunnel" in shown[0]


@pytest.mark.slow
@pytest.mark.skipif(haproxy_missing() is not None, reason=haproxy_missing() or "")
async def test_three_nodes_behind_haproxy(
    tmp_path: Path, tmp_data_dir: Path, database_url: str, services: Services, fake_llm: FakeLLM
) -> None:
    index = tmp_data_dir / "main" / "qdrant"  # built by the `services` fixture
    with model_config(fake_llm, reply=REPLY, tokens_per_second=25):
        async with (
            three_nodes(tmp_path, index, database_url, fake_llm) as nodes,
            run_haproxy([n.port for n in nodes], tmp_path / "haproxy.log") as proxy,
            AsyncExitStack() as stack,
        ):
            readers = Readers(proxy, nodes)
            await _client_address_only_from_the_proxy(readers)
            drained, idle_node, idle, idle_since = await _drain_then_resume_elsewhere(
                readers, services, stack
            )
            (killed,) = [n for n in nodes if n not in (drained, idle_node)]
            await _killed_node_is_routed_around(readers, killed, idle_node)
            # The quiet socket has had no frame since `ready`, only the node's pings: the proxy's
            # idle timeout is above the ping interval, so it is still open and answers.
            await asyncio.sleep(max(0.0, idle_since + PING_S + 5 - time.monotonic()))
            await idle.send(type="ping", nonce="still-here")
            assert (await idle.recv_type("pong"))["nonce"] == "still-here"


async def _client_address_only_from_the_proxy(readers: Readers) -> None:
    # Through the proxy the node sees the reader's address (it is connected to the proxy's),
    # and a reader claiming another one is not believed: the proxy replaces the header.
    honest, liar = readers.address(), readers.address()
    async with readers.open("addr-honest", honest):
        pass
    async with readers.open("addr-liar", liar, headers={"X-Forwarded-For": "203.0.113.7"}):
        pass
    await readers.landed(honest)
    await readers.landed(liar)
    # Straight to a node from an address that is not the proxy's, the header is ignored.
    node = readers.nodes[0]
    direct = readers.address()
    async with readers.open(
        "addr-direct",
        direct,
        url=f"ws://127.0.0.1:{node.port}/v1/chat",
        headers={"X-Forwarded-For": "203.0.113.8", "X-Forwarded-Proto": "https"},
    ):
        pass
    # (each node logs the address before it answers the upgrade, so the lines are there now)
    logs = "".join([await _text(n.log) for n in readers.nodes])
    assert "203.0.113." not in logs, "a forged X-Forwarded-For was believed"
    assert await readers.landed(direct) is node


async def _drain_then_resume_elsewhere(
    readers: Readers, services: Services, stack: AsyncExitStack
) -> tuple[Node, Node, ChatClient, float]:
    """SIGTERM the node holding a stream: returns it, and a quiet socket left open on another."""
    user = "drained-reader"
    address = readers.address()
    async with readers.open(user, address) as chat:
        drained = await readers.landed(address)
        await chat.send(type="ask", id="long", question="How does a humanoid keep its balance?")
        seen: list[dict[str, Any]] = []
        while sum(1 for f in seen if f["type"] == "delta") < 5:
            frame = await chat.recv()
            if frame.get("id") == "long":
                seen.append(frame)

        # a socket that stays quiet until the end of the test, on a node that is not drained
        for attempt in range(6):
            idle_address = readers.address()
            idle = await stack.enter_async_context(readers.open(f"quiet-{attempt}", idle_address))
            idle_since = time.monotonic()
            idle_node = await readers.landed(idle_address)
            if idle_node is not drained:
                break
        assert idle_node is not drained, "every quiet socket went to the node holding the stream"

        async with httpx.AsyncClient(timeout=5) as kept:
            ready = await kept.get(f"http://127.0.0.1:{drained.port}/readyz")
            assert ready.status_code == 200
            drained.proc.send_signal(signal.SIGTERM)
            await _readyz_fails(drained, kept)
        # Sockets opened now never reach it (a connection it refuses is retried on another node),
        # and once its health check has marked it down it is not tried at all.
        for i in range(3):
            assert await readers.open_and_close(f"during-drain-{i}") is not drained
        await readers.proxy.wait_state(drained.name, "DOWN")
        for i in range(3, 6):
            assert await readers.open_and_close(f"during-drain-{i}") is not drained
        # Marked down, the node still streams to the sockets it holds (the proxy does not cut
        # them): the reader's socket ends with the node's own 1012 at the drain deadline.
        rest_of_socket, code = await chat.until_closed()
    assert code == 1012
    seen += [f for f in rest_of_socket if f.get("id") == "long"]
    assert not any(f["type"] in TERMINAL_TYPES for f in seen), "the stream outlived the drain"

    # The reader reconnects through the proxy, lands on another node and resumes there.
    address = readers.address()
    async with readers.open(user, address) as chat:
        assert await readers.landed(address) is not drained
        await chat.send(type="resume", id="long", after_seq=seen[-1]["seq"])
        resumed = await chat.stream("long", timeout=30)
    stream = seen + resumed
    assert [f["seq"] for f in stream] == list(range(1, len(stream) + 1)), "each seq exactly once"
    assert [f["type"] in TERMINAL_TYPES for f in stream].count(True) == 1
    assert stream[-1]["type"] == "done" and stream[-1]["finish_reason"] == "cancelled"
    text = deltas(stream)
    assert text and REPLY.startswith(text), "the model's text, in order, nothing doubled"
    saved = await services.store.list_messages(user, stream[0]["conversation_id"])
    assert saved[0]["answer"] == text and saved[0]["status"] == "interrupted"

    await asyncio.wait_for(drained.proc.wait(), 30)
    assert drained.proc.returncode in (0, -signal.SIGTERM)
    return drained, idle_node, idle, idle_since


async def _readyz_fails(node: Node, kept: httpx.AsyncClient, within: float = 10.0) -> None:
    """After SIGTERM: a new connection to the node is refused, and /readyz on a connection kept
    alive from before (a monitor's, a proxy's pooled one) answers 503 draining."""
    url = f"http://127.0.0.1:{node.port}/readyz"
    deadline = time.monotonic() + within
    async with httpx.AsyncClient(timeout=2) as fresh:
        while True:
            try:
                await fresh.get(url, headers={"Connection": "close"})
            except httpx.ConnectError:
                break
            assert time.monotonic() < deadline, f"{node.name} still accepts connections"
            await asyncio.sleep(0.05)
    answer = await kept.get(url)
    assert answer.status_code == 503 and answer.json()["status"] == "draining"


async def _killed_node_is_routed_around(readers: Readers, killed: Node, left: Node) -> None:
    killed.proc.kill()
    await killed.proc.wait()
    # Before any check noticed, and after: every new reader gets in, on the one node left.
    for i in range(4):
        assert await readers.open_and_close(f"after-kill-{i}") is left
    await readers.proxy.wait_state(killed.name, "DOWN")
    address = readers.address()
    async with readers.open("after-kill-asks", address) as chat:
        assert await readers.landed(address) is left
        frames = await chat.ask("q", "What is the zero-moment point? [[fake:tps=0]]")
    assert frames[-1]["type"] == "done" and frames[-1]["finish_reason"] == "stop"
    assert deltas(frames) == REPLY
