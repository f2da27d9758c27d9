"""Soak: hundreds of churning sockets against the full server for minutes; memory, fds and tasks.

Run: .venv/bin/python -m bench.soak                  # 3 minutes, 300 sockets
     .venv/bin/python -m bench.soak --minutes 10 --sockets 400 --json soak.json

The server runs as a child (`python -m bench.soak serve`: `textbook-chat serve` with one extra
route, /soak/tasks, answering its asyncio task count), on a scratch database, with the fake model
in another child. Every socket connects, asks 1-4 questions (some cancelled after two deltas, some
dropped mid-stream and resumed on a new socket), closes and connects again. Every 10 s the server's
RSS and open fds (psutil), its task count and its /metrics gauges are sampled and printed. At the
end the sockets close and the server idles; then every answer a client saw end in `done` is
looked up in Postgres (lost = not saved as complete) and the footprint is compared with the one
before the load.
"""

from __future__ import annotations

import os

os.environ.setdefault(
    "OPENBLAS_NUM_THREADS", "1"
)  # as the CLI does, before numpy loads (server/cli.py)

import argparse
import asyncio
import contextlib
import dataclasses
import json
import logging
import random
import re
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import httpx
import psutil
from websockets.exceptions import WebSocketException

from bench.harness import (
    JWT_SECRET,
    fake_model,
    free_port,
    raise_fd_limit,
    run,
    scratch_database,
    server_env,
    spawn,
    split_cores,
    wait_http_ok,
)
from protocol.frames import TERMINAL_TYPES
from server.auth import mint_token
from server.tools.client import ChatClient, open_socket
from server.tools.loadtest.config import QUESTIONS

TASKS_PATH = "/soak/tasks"
_GAUGE = re.compile(r"^(chat_connections_open|chat_streams_live|process_open_fds) (\S+)$", re.M)


# ---- the server child ------------------------------------------------------------------------


class TaskProbe:
    """ASGI wrapper: /soak/tasks answers the event loop's task count; everything else goes on."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"] == TASKS_PATH:
            body = json.dumps({"tasks": len(asyncio.all_tasks())}).encode()
            headers = [(b"content-type", b"application/json")]
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            await send({"type": "http.response.body", "body": body})
            return
        await self.app(scope, receive, send)


async def serve_probed(port: int) -> None:
    """What `textbook-chat serve` does, with the task probe in front of the app."""
    from server.services import Services
    from server.settings import Settings
    from server.web.app import create_app
    from server.web.serve import make_server

    settings = Settings.from_env()
    logging.basicConfig(
        level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    services = await Services.start(settings, loopback=True)
    app = create_app(settings, services=services, close_services=True)
    await make_server(TaskProbe(app), services, "127.0.0.1", port, freeze_gc=True).serve()


# ---- the load --------------------------------------------------------------------------------


@dataclasses.dataclass
class Tally:
    """What the sockets did and saw."""

    connections: int = 0
    asks: int = 0
    done: int = 0
    cancelled: int = 0
    resumed: int = 0
    errors: Counter[str] = dataclasses.field(default_factory=Counter)
    violations: list[str] = dataclasses.field(default_factory=list)
    completed_ids: list[str] = dataclasses.field(default_factory=list)


class Socket:
    """One churning client: connect, ask a few questions, close, again until the end."""

    def __init__(
        self, url: str, index: int, user: str, tally: Tally, rng: random.Random, until: float
    ) -> None:
        self.url, self.index, self.user = url, index, user
        self.tally, self.rng, self.until = tally, rng, until
        self.token = mint_token(JWT_SECRET, user, 24 * 3600)
        self.number = 0

    async def open(self) -> ChatClient:
        chat = ChatClient(await open_socket(self.url, self.token, open_timeout=30, close_timeout=5))
        self.tally.connections += 1
        return chat

    async def run(self) -> None:
        await asyncio.sleep(self.rng.uniform(0, 10))  # ramp up over the first 10 s
        while time.monotonic() < self.until:
            try:
                chat = await self.open()
                try:
                    for _ in range(self.rng.randint(1, 4)):
                        if time.monotonic() >= self.until:
                            break
                        chat = await self.ask(chat)
                        await asyncio.sleep(self.rng.uniform(1.0, 4.0))
                finally:
                    await chat.ws.close()
                    self.tally.violations += chat.violations  # the stream contract, checked
            except (OSError, TimeoutError, ConnectionError, WebSocketException) as exc:
                self.tally.errors[f"socket:{type(exc).__name__}"] += 1
            await asyncio.sleep(self.rng.uniform(0.2, 1.0))

    async def ask(self, chat: ChatClient) -> ChatClient:
        """One question; returns the client to go on with (a new one after a drop)."""
        self.number += 1
        sid = f"k{self.index}-{self.number}"  # unique per user: its streams outlive sockets
        self.tally.asks += 1
        await chat.send(type="ask", id=sid, question=self.rng.choice(QUESTIONS))
        fate = self.rng.random()
        action = "cancel" if fate < 0.1 else "drop" if fate < 0.2 else None
        frames = await self.read(chat, sid, stop_after_deltas=2 if action else None)
        if action == "cancel" and frames[-1]["type"] not in TERMINAL_TYPES:
            await chat.send(type="cancel", id=sid)
            frames += await self.read(chat, sid)
        elif action == "drop" and frames[-1]["type"] not in TERMINAL_TYPES:
            await chat.ws.close()
            self.tally.violations += chat.violations
            chat = await self.open()
            await chat.send(type="resume", id=sid, after_seq=frames[-1]["seq"])
            frames += await self.read(chat, sid)
            self.tally.resumed += 1
        self.check(sid, frames)
        return chat

    async def read(
        self, chat: ChatClient, sid: str, stop_after_deltas: int | None = None
    ) -> list[dict[str, Any]]:
        frames: list[dict[str, Any]] = []
        deltas = 0
        async with asyncio.timeout(120):
            while True:
                frame = await chat.recv(timeout=120)
                if frame.get("id") != sid:
                    continue
                frames.append(frame)
                deltas += frame["type"] == "delta"
                if frame["type"] in TERMINAL_TYPES:
                    return frames
                if stop_after_deltas is not None and deltas >= stop_after_deltas:
                    return frames

    def check(self, sid: str, frames: list[dict[str, Any]]) -> None:
        end = frames[-1]
        if "seq" not in end:  # a refusal (of the ask or the resume), not a stream frame
            self.tally.errors[f"refused:{end.get('code')}"] += 1
            self.tally.violations.append(f"{self.user}/{sid}: refused {end}")
        elif end["type"] == "done":
            if end["finish_reason"] == "cancelled":
                self.tally.cancelled += 1
            else:
                self.tally.done += 1
                if frames[0]["type"] == "start":
                    self.tally.completed_ids.append(frames[0]["message_id"])
        elif end["type"] == "error":
            self.tally.errors[end["code"]] += 1
        else:
            self.tally.violations.append(f"{self.user}/{sid}: no terminal frame")


# ---- sampling --------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Sample:
    """The server at one moment."""

    t: float
    rss_mib: float
    fds: int
    pooled: int  # of those, connections to Postgres and the model (pools grow to their bounds)
    tasks: int
    connections: float
    live_streams: float
    asks: int
    done: int

    def line(self) -> str:
        return (
            f"{self.t:7.0f} {self.rss_mib:9.1f} {self.fds:6d} {self.pooled:6d} {self.tasks:6d}"
            f" {self.connections:8.0f} {self.live_streams:7.0f} {self.asks:7d} {self.done:7d}"
        )


HEADER = "    t_s   rss_MiB    fds pooled  tasks  sockets streams    asks    done"


def pooled_sockets(process: psutil.Process, ports: set[int]) -> int:
    """The process's TCP connections to Postgres or the model."""
    return sum(1 for c in process.net_connections(kind="tcp") if c.raddr and c.raddr.port in ports)


async def sample(
    http: httpx.AsyncClient, process: psutil.Process, t0: float, tally: Tally, ports: set[int]
) -> Sample:
    metrics = (await http.get("/metrics")).text
    gauges = {name: float(value) for name, value in _GAUGE.findall(metrics)}
    tasks = (await http.get(TASKS_PATH)).json()["tasks"]
    return Sample(
        t=time.monotonic() - t0,
        rss_mib=process.memory_info().rss / 2**20,
        fds=process.num_fds(),
        pooled=pooled_sockets(process, ports),
        tasks=int(tasks),
        connections=gauges.get("chat_connections_open", 0.0),
        live_streams=gauges.get("chat_streams_live", 0.0),
        asks=tally.asks,
        done=tally.done,
    )


async def every(seconds: float, action: Callable[[], Awaitable[None]], stop: asyncio.Event) -> None:
    while not stop.is_set():
        await action()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), seconds)


async def lost_messages(dsn: str, ids: list[str]) -> int:
    """How many answers a client saw end in `done` are not saved as complete."""
    conn = await asyncpg.connect(dsn)
    try:
        saved = await conn.fetchval(
            "SELECT count(*) FROM messages WHERE id = ANY($1::uuid[]) AND status = 'complete'", ids
        )
    finally:
        await conn.close()
    return len(ids) - int(saved)


# ---- the run ---------------------------------------------------------------------------------


async def soak(args: argparse.Namespace) -> dict[str, Any]:
    cores = split_cores(pin=not args.no_pin)
    raise_fd_limit(args.sockets * 4 + 1024)
    log_dir = Path(tempfile.mkdtemp(prefix="soak-logs-"))
    print(
        f"soak: {args.minutes} min, {args.sockets} sockets over {args.users} users,"
        f" retention {args.retention} s; {cores.describe()}; logs in {log_dir}"
    )
    async with (
        fake_model(cores.client, log_dir, tokens=args.tokens, tps=args.tps) as (model_url, _),
        scratch_database("soak") as dsn,
    ):
        with tempfile.TemporaryDirectory(prefix="soak-data-") as data_dir:
            port = free_port()
            env = server_env(
                model_url, Path(data_dir), dsn, RESUME_RETENTION_SECONDS=str(args.retention)
            )
            argv = [sys.executable, "-m", "bench.soak", "serve", "--port", str(port)]
            child = await spawn("server", argv, cpus=cores.target, env=env, log_dir=log_dir)
            try:
                await wait_http_ok(child, f"http://127.0.0.1:{port}/readyz")
                return await drive(args, port, child.pid, dsn, model_url)
            finally:
                await child.stop()


async def drive(
    args: argparse.Namespace, port: int, pid: int, dsn: str, model_url: str
) -> dict[str, Any]:
    process = psutil.Process(pid)
    ports = {urlsplit(dsn).port or 5432, urlsplit(model_url).port or 0}
    tally = Tally()
    samples: list[Sample] = []
    url = f"ws://127.0.0.1:{port}/v1/chat"
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as http:
        t0 = time.monotonic()
        before = await sample(http, process, t0, tally, ports)
        print(HEADER)
        print(before.line(), " (before)")

        async def take() -> None:
            samples.append(await sample(http, process, t0, tally, ports))
            print(samples[-1].line(), flush=True)

        stop = asyncio.Event()
        sampler = asyncio.create_task(every(args.sample, take, stop))
        until = t0 + args.minutes * 60
        rng = random.Random(args.seed)
        sockets = [
            Socket(url, i, f"soak-{i % args.users}", tally, random.Random(rng.random()), until)
            for i in range(args.sockets)
        ]
        await asyncio.gather(*(s.run() for s in sockets))
        await asyncio.sleep(
            args.idle
        )  # sockets closed; what the server still holds is the baseline
        stop.set()
        await sampler
        after = await sample(http, process, t0, tally, ports)
        print(after.line(), f" (after {args.idle:.0f} s idle)")
    lost = await lost_messages(dsn, tally.completed_ids)
    half = [s for s in samples if s.t >= samples[-1].t / 2] if samples else []
    slope = (
        (half[-1].rss_mib - half[0].rss_mib) / max((half[-1].t - half[0].t) / 60, 1e-9)
        if len(half) > 1
        else 0.0
    )
    summary = {
        "minutes": args.minutes,
        "sockets": args.sockets,
        "connections_opened": tally.connections,
        "asks": tally.asks,
        "done": tally.done,
        "cancelled": tally.cancelled,
        "resumed": tally.resumed,
        "errors": dict(tally.errors),
        "violations": tally.violations[:20],
        "lost_messages": lost,
        "before": dataclasses.asdict(before),
        "after": dataclasses.asdict(after),
        "peak_rss_mib": max((s.rss_mib for s in samples), default=before.rss_mib),
        "rss_slope_second_half_mib_per_min": round(slope, 2),
        "samples": [dataclasses.asdict(s) for s in samples],
    }
    print(
        f"\n{tally.connections} connections, {tally.asks} asks: {tally.done} done, {tally.cancelled} cancelled,"
        f" {tally.resumed} resumed after a drop, errors {dict(tally.errors) or 'none'},"
        f" {len(tally.violations)} protocol violations, {lost} of {len(tally.completed_ids)} completed answers lost"
    )
    print(
        f"fds {before.fds} -> {after.fds} ({before.pooled} -> {after.pooled} pooled), tasks {before.tasks} -> {after.tasks},"
        f" RSS {before.rss_mib:.0f} -> peak {summary['peak_rss_mib']:.0f} -> {after.rss_mib:.0f} MiB"
        f" (second-half slope {slope:+.2f} MiB/min)"
    )
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.soak", description=__doc__.split("\n\n")[0]
    )
    commands = parser.add_subparsers(dest="command")
    serve = commands.add_parser("serve", help="(internal) the server child with the task probe")
    serve.add_argument("--port", type=int, required=True)
    parser.add_argument("--minutes", type=float, default=3.0)
    parser.add_argument("--sockets", type=int, default=300)
    parser.add_argument("--users", type=int, default=60, help="the sockets share this many users")
    parser.add_argument(
        "--tokens", type=int, default=40, help="tokens per answer of the fake model"
    )
    parser.add_argument("--tps", type=float, default=20.0, help="its tokens per second")
    parser.add_argument("--sample", type=float, default=10.0, help="seconds between samples")
    parser.add_argument(
        "--idle", type=float, default=15.0, help="idle seconds before the last sample"
    )
    parser.add_argument(
        "--retention",
        type=int,
        default=300,
        help="RESUME_RETENTION_SECONDS: finished streams stay in memory this long (default 300)",
    )
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--no-pin", action="store_true", help="do not pin the server to its own core"
    )
    parser.add_argument("--json", type=Path, help="write the samples and the summary here")
    args = parser.parse_args(argv)
    if args.command == "serve":
        run(serve_probed(args.port))
        return 0
    summary = run(soak(args))
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2))
    return 0 if summary["lost_messages"] == 0 and not summary["violations"] else 1


if __name__ == "__main__":
    sys.exit(main())
