"""uvicorn, configured for the chat socket, with a drain before it closes connections."""

from __future__ import annotations

import asyncio
import ctypes
import gc
import logging
import os
import socket
from typing import Any

import prometheus_client
import uvicorn

from protocol.codes import CloseCode
from protocol.limits import MAX_FRAME_BYTES
from server.chat.connection import Connection
from server.services import Services
from server.settings import Settings
from server.web.protocols import GuardedConfig, GuardedWebSocketProtocol, connection_cap

log = logging.getLogger(__name__)

_M_ARENA_MAX = -8  # glibc's malloc.h


def limit_malloc_arenas() -> bool:
    """One glibc malloc arena for the serving process unless MALLOC_ARENA_MAX says otherwise;
    True when it was set here.

    glibc gives threads arenas of their own (up to 8 per core): the embedding, database and
    `to_thread` threads then leave memory freed on one arena that the loop's thread cannot
    reuse. Measured (`bench.memory`): 42 KiB per active stream instead of 66-88, 11 KiB per idle
    socket instead of 14; CPU per answer unchanged within noise. There is no library for a
    mallopt call."""
    if "MALLOC_ARENA_MAX" in os.environ:  # glibc read it itself at start
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc (musl, macOS): nothing to tune
        return False
    return bool(libc.mallopt(_M_ARENA_MAX, 1))


class DrainingServer(uvicorn.Server):
    """On SIGTERM: stop accepting, let streams finish until the drain deadline, close sockets
    with 1012 so clients resume elsewhere, persist every frame, then stop as uvicorn does."""

    def __init__(self, config: uvicorn.Config, services: Services, *, freeze_gc: bool) -> None:
        super().__init__(config)
        self.services = services
        self.freeze_gc = freeze_gc

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.freeze_gc:
            # Everything made at start (modules, the embedding model, the BM25 vocabulary:
            # ~180k objects) lives as long as the process; a full collection walking them
            # stalled the event loop for over 100 ms, and so every stream's next delta. Frozen,
            # it walks what the connections made since. Only for a process that is the server:
            # frozen objects' cycles are never collected.
            gc.collect()
            gc.freeze()

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        for server in self.servers:
            server.close()  # stop accepting
        registry = self.services.registry
        left = await registry.drain(self.services.settings.drain_s)
        if left:
            log.info("drain deadline passed with %d streams running; they stay resumable", left)
        connections: list[Connection] = registry.connections()
        for connection in connections:
            connection.close(CloseCode.SERVICE_RESTART, "server restarting: reconnect and resume")
        await self.services.journal.flush()
        await super().shutdown(sockets)


def make_server(
    app: Any,
    services: Services,
    host: str,
    port: int,
    *,
    freeze_gc: bool = False,
    **overrides: Any,
) -> DrainingServer:
    """The uvicorn server for `app`, with the socket limits the protocol promises."""
    s = services.settings
    options: dict[str, Any] = {
        "host": host,
        "port": port,
        "ws": GuardedWebSocketProtocol,
        "ws_max_size": MAX_FRAME_BYTES,
        "ws_per_message_deflate": s.ws_per_message_deflate,
        "ws_ping_interval": s.ws_ping_interval_s,
        "ws_ping_timeout": s.ws_ping_timeout_s,
        "log_level": s.log_level.lower(),
        "lifespan": "on",
        "timeout_graceful_shutdown": 5,
        # X-Forwarded-For/-Proto only from TRUSTED_PROXIES; uvicorn's own default believes
        # any local process (127.0.0.1, or FORWARDED_ALLOW_IPS), which is anyone on the host.
        "proxy_headers": bool(s.trusted_proxies),
        "forwarded_allow_ips": list(s.trusted_proxies),
        **overrides,
    }
    config = GuardedConfig(
        app,
        max_connections=connection_cap(s.max_connections),
        handshake_timeout_s=s.handshake_timeout_s,
        **options,
    )
    return DrainingServer(config, services, freeze_gc=freeze_gc)


async def run(
    settings: Settings,
    host: str,
    port: int,
    *,
    loopback: bool,
    replica: bool = False,
    sock: socket.socket | None = None,
    worker: int = 0,
) -> int:
    """Build the services and serve until stopped (`sock`: a socket bound by the parent of
    `--workers`; `replica`: serve from a private copy of the embedded index; `worker`: its
    number, which offsets METRICS_PORT)."""
    from server.web.app import create_app

    limit_malloc_arenas()  # before the services start their threads
    services = await Services.start(settings, loopback=loopback, replica=replica)
    metrics_server = None
    try:
        if settings.metrics_port:
            # prometheus_client's own exposition server, on a thread of its own
            metrics_server, _ = prometheus_client.start_http_server(
                settings.metrics_port + worker, addr=settings.metrics_host
            )
        app = create_app(settings, services=services, close_services=True)
        server = make_server(app, services, host, port, freeze_gc=True)
        await server.serve(sockets=[sock] if sock is not None else None)
    except BaseException:
        await services.close()  # the lifespan may never have run (e.g. the port was taken)
        raise
    finally:
        if metrics_server is not None:
            await asyncio.to_thread(metrics_server.shutdown)
    return 0
