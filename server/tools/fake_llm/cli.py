"""Command line of the fake: `serve` and `probe`."""

from __future__ import annotations

import argparse

from server.tools.fake_llm.config import FakeLLMConfig
from server.tools.fake_llm.probe import CapacityResult, measure_capacity
from server.tools.fake_llm.server import _run_loop, run


def main(argv: list[str] | None = None) -> None:
    """`python -m server.tools.fake_llm serve|probe`."""
    parser = argparse.ArgumentParser(prog="textbook-chat fake-llm")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the fake until interrupted")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8100)
    serve.add_argument("--tokens", type=int, default=40)
    serve.add_argument("--tps", type=float, default=0.0)
    serve.add_argument("--first-token-delay", type=float, default=0.0)
    serve.add_argument(
        "--fail-status", type=int, default=None, help="answer chat requests with this HTTP error"
    )
    serve.add_argument(
        "--fail-first-n", type=int, default=None, help="only the first N requests fail"
    )
    serve.add_argument("--break-after", type=int, default=None, help="cut streams after N tokens")
    serve.add_argument("--echo", action="store_true", help="answer with the last user message")
    probe = commands.add_parser("probe", help="measure paced streams one core sustains")
    probe.add_argument("--levels", default="500,1000,2000,4000")
    probe.add_argument("--tps", type=float, default=20.0)
    probe.add_argument("--tokens", type=int, default=100)
    args = parser.parse_args(argv)
    if args.command == "serve":
        config = FakeLLMConfig(
            tokens_per_answer=args.tokens,
            tokens_per_second=args.tps,
            first_token_delay=args.first_token_delay,
            fail_status=args.fail_status,
            fail_first_n=args.fail_first_n,
            break_after_tokens=args.break_after,
            echo=args.echo,
        )
        run(args.host, args.port, config)
        return
    levels = tuple(int(n) for n in args.levels.split(","))
    results: list[CapacityResult] = []

    async def measure() -> None:
        results.extend(await measure_capacity(levels, args.tps, args.tokens))

    _run_loop(measure())
    print("streams completed server_cpu client_cpu late_p50_ms late_p99_ms")
    for r in results:
        print(
            f"{r.streams:7d} {r.completed:9d} {r.server_cpu:10.2f} {r.client_cpu:10.2f}"
            f" {r.lateness_p50_ms:11.1f} {r.lateness_p99_ms:11.1f}"
        )
