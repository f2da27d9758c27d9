"""`textbook-chat loadtest`: the command line around `server.tools.loadtest.engine.run_load`."""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
from pathlib import Path

from server.errors import ConfigError
from server.tools.loadtest import chart
from server.tools.loadtest.config import (
    DEFAULT_URL,
    DEFAULT_USER_PREFIX,
    LoadConfig,
    parse_mix,
    parse_users,
)
from server.tools.loadtest.engine import Snapshot, run_load


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
    parser.add_argument(
        "--deflate", action="store_true", help="offer permessage-deflate, as browsers do"
    )
    parser.add_argument(
        "--new-questions",
        action="store_true",
        help="every question unlike any before (none answered from the server's caches)",
    )
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
        deflate=args.deflate,
        new_questions=args.new_questions,
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
        await asyncio.to_thread(chart.write_png, report, args.png)
    return 1 if report.streams.ok == 0 or report.violations else 0


def main(argv: list[str] | None = None) -> int:
    """`textbook-chat loadtest ...`; returns the exit status."""
    args = _arguments().parse_args(argv)
    try:
        if args.png is not None:
            chart.check_available()
        try:
            import uvloop
        except ImportError:
            return asyncio.run(_main(args))
        return uvloop.run(_main(args))
    except ConfigError as exc:
        print(f"textbook-chat {exc}", file=sys.stderr)
        return 2
