"""`textbook-chat loadtest`: N concurrent sockets asking, highlighting and reading chapters, measured."""

from __future__ import annotations

import argparse
import asyncio
import bisect
import contextlib
import dataclasses
import os
import random
import shlex
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path

import msgspec
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus, WebSocketException

from protocol.codec import encode
from protocol.frames import Ask, Chapter, Mode, Selection
from server.errors import ConfigError
from server.loadtest_report import KINDS, LoadReport, Recorder, build_report, percentile, write_png

STREAM_TYPES = frozenset({"start", "sources", "delta", "done", "error"})
TERMINAL_TYPES = frozenset({"done", "error"})
LAG_PROBE_S = 0.05
DEFAULT_URL = "ws://127.0.0.1:8000/v1/chat"
DEFAULT_USER_PREFIX = "loadtest-"
RECENT_TTFD_S = 5.0
# Closes that end streams by design (restart, overload, auth): a stream cut by any other close
# without its terminal frame breaks the "exactly one terminal frame" rule.
CLOSES_THAT_MAY_CUT_STREAMS = frozenset({1006, 1008, 1009, 1011, 1012, 1013, 4401, 4408, 4429})


# Written for this tool (not from any book): what readers of a physical AI / humanoid robotics
# textbook ask, and passages they might highlight.
QUESTIONS = (
    "What is physical AI and how is it different from a chatbot?",
    "Why do humanoid robots need whole-body control?",
    "How does a ROS 2 node publish sensor data to other nodes?",
    "What is the difference between a ROS 2 topic, a service and an action?",
    "Which quality of service settings matter for camera streams in ROS 2?",
    "How does an IMU help a walking robot keep its balance?",
    "What does the zero moment point say about bipedal walking?",
    "Why fuse lidar and camera data instead of using one sensor?",
    "What is a vision-language-action model?",
    "How is a robot policy trained in simulation and moved to real hardware?",
    "What is the sim-to-real gap and how do engineers narrow it?",
    "Why is latency a safety problem for robot control loops?",
    "How do depth cameras estimate distance?",
    "What makes grasping unknown objects hard for a humanoid hand?",
    "How does reinforcement learning teach a robot to walk?",
    "What role does a world model play in embodied intelligence?",
)
SELECTIONS = (
    "A humanoid robot keeps its balance by moving its center of mass so that the point where "
    "the ground pushes back stays inside the area covered by its feet.",
    "In ROS 2 a node is a single process with one job; nodes talk over named topics, and any "
    "number of them may publish or subscribe to the same topic.",
    "Quality of service profiles let a subscriber choose between reliable delivery, which "
    "retries lost messages, and best effort, which drops them to keep latency low.",
    "An inertial measurement unit combines accelerometers and gyroscopes to report how the body "
    "of the robot is accelerating and rotating many hundred times per second.",
    "Vision-language-action models take camera images and an instruction in plain words and "
    "output motor commands directly, learning the mapping from demonstrations.",
    "Physical AI systems must act under uncertainty: their sensors are noisy, their models are "
    "incomplete, and the world changes while they think.",
    "Domain randomization varies textures, lighting, masses and friction in simulation so that "
    "a policy trained there treats the real world as one more variation.",
    "A service in ROS 2 is a request and a single response, while an action is a long-running "
    "goal that sends feedback along the way and can be cancelled.",
)
SELECTION_QUESTIONS = (
    "Explain this passage in simpler words.",
    "Why does this matter for a humanoid robot?",
    "Give a concrete example of this.",
    "What would go wrong if this were ignored?",
)


@dataclasses.dataclass(frozen=True, slots=True)
class LoadConfig:
    """One load test: where, how many sockets, for how long, asking what."""

    url: str = DEFAULT_URL
    connections: int = 100
    duration: float = 30.0
    ramp: float = 0.0  # seconds over which the connections open, evenly
    think: float = 0.0  # mean pause between a stream's end and the next request (±50%)
    mix: dict[str, float] = dataclasses.field(default_factory=lambda: {"ask": 80, "selection": 20})
    chapters: tuple[str, ...] = ()
    chapter_mode: Mode = "translate"
    language: str = "ur"
    secret: str | None = None  # HS256 secret to mint tokens with
    token_command: str | None = None  # shell command printing a token; `{user}` is replaced
    users: int | None = None  # distinct users; None = one per connection
    user_prefix: str = DEFAULT_USER_PREFIX
    issuer: str | None = None
    audience: str | None = None
    grace: float = 30.0  # how long streams in flight at the end may take to finish
    stream_timeout: float = 120.0
    connect_timeout: float = 10.0
    seed: int | None = None

    def validate(self) -> None:
        """Raise ConfigError for a run that cannot be done."""
        if self.connections < 1 or self.duration <= 0 or self.ramp < 0 or self.think < 0:
            raise ConfigError("loadtest: connections >= 1, duration > 0, ramp and think >= 0")
        if self.ramp >= self.duration:
            raise ConfigError("loadtest: --ramp must be shorter than --duration")
        if set(self.mix) - set(KINDS) or any(w < 0 for w in self.mix.values()):
            raise ConfigError(f"loadtest: mix takes non-negative weights of {', '.join(KINDS)}")
        if sum(self.mix.values()) <= 0:
            raise ConfigError("loadtest: the mix needs a positive weight")
        if self.mix.get("chapter", 0) > 0 and not self.chapters:
            raise ConfigError("loadtest: a chapter share in the mix needs --chapters")
        if (self.secret is None) == (self.token_command is None):
            raise ConfigError(
                "loadtest: give exactly one of --secret (or JWT_SECRET) and --token-command"
            )
        if self.users is not None and self.users < 1:
            raise ConfigError("loadtest: --users must be at least 1")

    @property
    def distinct_users(self) -> int:
        """How many users the connections are spread over."""
        return self.connections if self.users is None else min(self.users, self.connections)


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


class WireUsage(msgspec.Struct, gc=False):
    """The part of `done.usage` the load test counts."""

    completion_tokens: int = 0


class WireFrame(msgspec.Struct, gc=False):
    """The fields of a server frame the load test reads; msgspec skips the rest unparsed."""

    type: str = ""
    id: str | None = None
    seq: int | None = None
    code: str | None = None
    text: str | None = None
    usage: WireUsage | None = None
    cached: bool | None = None


_decode_frame = msgspec.json.Decoder(WireFrame).decode


class StreamTracker:
    """One stream's contract check and timings: seq 1, 2, 3…, `start` first, one terminal frame."""

    __slots__ = ("_rec", "ended", "kind", "last_delta_at", "sent_at", "seq", "started")

    def __init__(self, rec: Recorder, kind: int, sent_at: float) -> None:
        self._rec = rec
        self.kind = kind  # index into KINDS
        self.sent_at = sent_at
        self.last_delta_at = 0.0
        self.seq = 0
        self.started = self.ended = False

    def frame(self, frame: WireFrame, now: float) -> str | None:
        """Account one frame of this stream; the contract violation it shows, if any."""
        kind = frame.type
        if self.ended:
            return "extra_terminal" if kind in TERMINAL_TYPES else "frame_after_terminal"
        if kind not in STREAM_TYPES:
            return "unknown_type"
        violation = None
        seq = frame.seq
        if seq is None:
            violation = "seq_missing"
            seq = self.seq + 1
        elif seq != self.seq + 1:
            violation = "seq_not_from_1" if self.seq == 0 else "seq_not_consecutive"
        self.seq = seq  # resynchronise, so one skipped number counts once
        rec = self._rec
        if kind == "delta":
            if not self.started:
                violation = violation or "delta_before_start"
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
        elif kind == "start":
            if self.started:
                violation = violation or "start_twice"
            self.started = True
        elif kind == "sources":
            if not self.started:
                violation = violation or "sources_before_start"
        elif kind == "done":
            self.ended = True
            usage = frame.usage
            tokens = None if usage is None else usage.completion_tokens
            rec.stream_done(now, tokens, bool(frame.cached))
            if not self.started:
                violation = violation or "done_before_start"
        else:  # error: may come without `start` (e.g. rate_limited before anything began)
            self.ended = True
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

    def request(self, stream_id: str) -> tuple[int, bytes]:
        """The next request: its kind and encoded frame."""
        kind = self.rng.choices(self.kinds, self.weights)[0]
        rng, config = self.rng, self.config
        if kind == 0:
            frame: Ask | Chapter = Ask(id=stream_id, question=rng.choice(QUESTIONS))
        elif kind == 1:
            frame = Ask(
                id=stream_id,
                question=rng.choice(SELECTION_QUESTIONS),
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
                ws = await connect(
                    config.url,
                    additional_headers={"Authorization": f"Bearer {token}"},
                    compression=None,
                    proxy=None,
                    ping_interval=None,  # the server pings; websockets answers on its own
                    close_timeout=2,
                    max_size=2**22,
                    open_timeout=None,
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
                ready = _decode_frame(await ws.recv(decode=False))
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
                if think > 0 and time.perf_counter() + think < self.end_at:
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
                        frame = _decode_frame(raw)
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


async def _token_from_command(command: str, user: str, limit: asyncio.Semaphore) -> str:
    async with limit:
        process = await asyncio.create_subprocess_shell(
            command.replace("{user}", shlex.quote(user)),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            out, err = await process.communicate()
        except asyncio.CancelledError:  # another user's command failed: leave no process behind
            process.kill()
            await process.wait()
            raise
    token = out.decode().strip()
    if process.returncode != 0 or not token:
        detail = err.decode(errors="replace").strip()[-200:]
        raise ConfigError(
            f"--token-command for {user} exited {process.returncode} with {'no token' if not token else 'a token'}: {detail}"
        )
    return token


def _mint_all(config: LoadConfig, users: list[str]) -> list[str]:
    from server.auth import mint_token

    assert config.secret is not None
    ttl = int(config.ramp + config.duration + config.grace) + 600
    return [
        mint_token(config.secret, user, ttl, issuer=config.issuer, audience=config.audience)
        for user in users
    ]


async def tokens_for(config: LoadConfig) -> list[str]:
    """One token per distinct user: minted, or printed by the token command (8 at a time)."""
    users = [f"{config.user_prefix}{i}" for i in range(config.distinct_users)]
    if config.token_command is None:
        return await asyncio.to_thread(_mint_all, config, users)
    limit = asyncio.Semaphore(8)
    tasks = [
        asyncio.create_task(_token_from_command(config.token_command, u, limit)) for u in users
    ]
    try:
        return list(await asyncio.gather(*tasks))
    finally:
        for task in tasks:
            task.cancel()


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


def parse_mix(text: str) -> dict[str, float]:
    """`ask=70,selection=20,chapter=10` as weights."""
    mix: dict[str, float] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        kind, _, weight = part.partition("=")
        try:
            mix[kind.strip()] = float(weight)
        except ValueError:
            raise ConfigError(f"--mix: {part!r} is not kind=weight") from None
    return mix


def parse_users(text: str) -> int | None:
    """`per-connection` (None), `shared` (1) or a count."""
    if text == "per-connection":
        return None
    if text == "shared":
        return 1
    try:
        return int(text)
    except ValueError:
        raise ConfigError("--users: per-connection, shared or a number") from None


def _arguments() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="textbook-chat loadtest",
        description="Drive concurrent chat sockets against a server and report latency, throughput and contract violations. Exits 1 when no stream completed or the server broke the contract.",
    )
    parser.add_argument("--url", default=DEFAULT_URL, help="WebSocket URL (default %(default)s)")
    parser.add_argument("-c", "--connections", type=int, default=100)
    parser.add_argument("--duration", type=float, default=30.0, help="seconds (default 30)")
    parser.add_argument("--ramp", type=float, default=0.0, help="seconds to open all connections")
    parser.add_argument("--think", type=float, default=0.0, help="mean seconds between streams")
    parser.add_argument(
        "--mix", default="ask=80,selection=20", help="e.g. ask=70,selection=20,chapter=10"
    )
    parser.add_argument(
        "--chapters", default="", help="chapter ids for chapter requests, comma-separated"
    )
    parser.add_argument("--chapter-mode", choices=("translate", "personalize"), default="translate")
    parser.add_argument("--language", default="ur", help="language of translated chapters")
    parser.add_argument(
        "--secret", default=None, help="HS256 secret to mint tokens (default: JWT_SECRET)"
    )
    parser.add_argument(
        "--token-command", default=None, help="shell command printing a token for {user}"
    )
    parser.add_argument(
        "--users", default="per-connection", help="per-connection, shared or a number"
    )
    parser.add_argument("--user-prefix", default=DEFAULT_USER_PREFIX)
    parser.add_argument("--issuer", default=os.environ.get("JWT_ISSUER"))
    parser.add_argument("--audience", default=os.environ.get("JWT_AUDIENCE"))
    parser.add_argument(
        "--grace", type=float, default=30.0, help="seconds for streams in flight at the end"
    )
    parser.add_argument("--stream-timeout", type=float, default=120.0)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--json", type=Path, default=None, help="write the report as JSON here")
    parser.add_argument("--png", type=Path, default=None, help="write the charts here")
    parser.add_argument("--quiet", action="store_true", help="no progress lines")
    return parser


def config_from_args(args: argparse.Namespace) -> LoadConfig:
    """A LoadConfig from parsed command-line arguments."""
    secret = args.secret
    if secret is None and args.token_command is None:
        secret = os.environ.get("JWT_SECRET") or None
    return LoadConfig(
        url=args.url,
        connections=args.connections,
        duration=args.duration,
        ramp=args.ramp,
        think=args.think,
        mix=parse_mix(args.mix),
        chapters=tuple(c.strip() for c in args.chapters.split(",") if c.strip()),
        chapter_mode=args.chapter_mode,
        language=args.language,
        secret=secret,
        token_command=args.token_command,
        users=parse_users(args.users),
        user_prefix=args.user_prefix,
        issuer=args.issuer,
        audience=args.audience,
        grace=args.grace,
        stream_timeout=args.stream_timeout,
        seed=args.seed,
    )


async def _main(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGINT, stop.set)  # Ctrl-C ends the run early, still reported

    def show(snapshot: Snapshot) -> None:
        print(snapshot.line(), file=sys.stderr, flush=True)

    try:
        report = await run_load(config, progress=None if args.quiet else show, stop=stop)
    finally:
        loop.remove_signal_handler(signal.SIGINT)
    print(report.summary_text())
    if args.json is not None:
        await asyncio.to_thread(args.json.write_bytes, report.to_json())
    if args.png is not None:
        await asyncio.to_thread(write_png, report, args.png)
    return 1 if report.streams.ok == 0 or report.violations else 0


def main(argv: list[str] | None = None) -> int:
    """`textbook-chat loadtest ...`; returns the exit status."""
    args = _arguments().parse_args(argv)
    try:
        try:
            import uvloop
        except ImportError:
            return asyncio.run(_main(args))
        return uvloop.run(_main(args))
    except ConfigError as exc:
        print(f"textbook-chat {exc}", file=sys.stderr)
        return 2
