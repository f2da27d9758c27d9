"""Benchmark: where the full server's CPU goes while it streams, by py-spy.

Run: .venv/bin/python -m bench.profile [--streams 150] [--tokens 300] [--tps 20] [--seconds 20]
         [--new-questions] [--raw out.txt]

The server runs pinned to CPU 0 with the fake model and the load on CPU 1, as in bench.capacity.
Once the streams are running, py-spy samples the server's Python stacks (idle time excluded);
each sample is charged to the first part of the server found walking its stack from the frame
that was running, so the shares add up to 100% of the time Python code ran: the model's stream
read (the openai SDK, its aiohttp transport, our SSE reader), the socket's writes (websockets,
uvicorn), the stream and its outbox, the journal, Postgres, metrics, retrieval, and the event
loop's own work.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import re
import shutil
import sys
import tempfile
from pathlib import Path

from bench.harness import (
    JWT_SECRET,
    chat_server,
    fake_model,
    pin_self,
    raise_fd_limit,
    run,
    split_cores,
)
from bench.measure import machine_line, table
from server.tools.loadtest.config import LoadConfig
from server.tools.loadtest.engine import run_load

# (part, path fragments of the frames that belong to it), matched from the running frame up
PARTS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("metrics (prometheus_client)", ("prometheus_client/",)),
    ("Postgres (asyncpg)", ("asyncpg/",)),
    ("frame journal", ("server/cluster/journal.py",)),
    ("retrieval and embeddings", ("server/retrieval/", "qdrant", "onnxruntime", "numpy/")),
    ("model stream read: aiohttp", ("aiohttp/",)),
    ("model stream read: openai SDK, httpx2", ("openai/", "httpx2/", "httpcore", "anyio/")),
    ("model stream read: our SSE reader", ("server/chat/llm.py",)),
    ("socket writes: websockets, uvicorn", ("websockets/", "uvicorn/", "server/web/")),
    ("stream, outbox, connection", ("server/chat/", "protocol/")),
    ("chapters", ("server/chapters/",)),
    ("msgspec, json", ("msgspec/", "json/")),
    (
        "event loop: uvloop in C (socket reads and writes, timers, callbacks)",
        ("asyncio/", "uvloop/"),
    ),
)
_FRAME = re.compile(r"\((?P<file>[^():]+)(?::\d+)?\)$")


# A thread pool's idle worker waiting for work (py-spy sees it as running)
_IDLE = ("_worker (concurrent/futures/thread.py:81)", "_worker (concurrent/futures/thread.py:83)")


def charge(raw: str) -> collections.Counter[str]:
    """Samples per part from py-spy's raw (collapsed) output: `frame;frame;... count`."""
    parts: collections.Counter[str] = collections.Counter()
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit() or stack.endswith(_IDLE):
            continue
        part = "other"
        for frame in reversed(stack.split(";")):  # from the running frame up
            found = _FRAME.search(frame)
            path = found.group("file") if found else frame
            part = next((name for name, keys in PARTS if any(k in path for k in keys)), "")
            if part:
                break
        parts[part or "other"] += int(count)
    return parts


async def main(args: argparse.Namespace) -> None:
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    cores = split_cores(True)
    pin_self(cores.client)
    raise_fd_limit(args.streams * 2 + 2048)
    print(
        f"py-spy on the full server: {args.streams} streams of {args.tokens} tokens at"
        f" {args.tps:g} tokens/s{', new questions' if args.new_questions else ''};"
        f" {cores.describe()}; {machine_line()}"
    )
    with tempfile.TemporaryDirectory(prefix="bench-profile-") as tmp:
        log_dir = Path(tmp)
        async with (
            fake_model(cores.client, log_dir, tokens=args.tokens, tps=args.tps) as (url, _),
            chat_server(url, cores.target, log_dir) as target,
        ):
            warm = args.tokens / args.tps / 2  # half an answer: streams at every stage
            config = LoadConfig(
                url=target.ws_url,
                connections=args.streams,
                duration=warm + args.seconds + 5,
                ramp=warm,
                secret=JWT_SECRET,
                user_prefix="profile-",
                grace=10.0,
                stream_timeout=120.0,
                seed=1,
                new_questions=args.new_questions,
            )
            load = asyncio.create_task(run_load(config))
            await asyncio.sleep(warm)
            out = log_dir / "profile.txt"
            spy = await asyncio.create_subprocess_exec(
                py_spy, "record", "--pid", str(target.pid), "--duration", str(round(args.seconds)),
                "--rate", "250", "--format", "raw", "--output", str(out),
                *(["--native"] if args.native else ["--nonblocking"]),
                stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
            )  # fmt: skip
            _, err = await spy.communicate()
            report = await load
            if spy.returncode != 0:
                raise SystemExit(f"py-spy failed: {err.decode(errors='replace')[-500:]}")
            raw = out.read_text()
            if args.raw is not None:
                args.raw.write_text(raw)
    parts = charge(raw)
    total = sum(parts.values()) or 1
    print(
        f"load: {report.streams.ok} streams done, {report.throughput.deltas} deltas,"
        f" violations {sum(report.violations.values())}; {total} samples"
    )
    rows = [[name, f"{100 * n / total:.1f}%"] for name, n in parts.most_common()]
    print(table(["part of the server", "share of its CPU"], rows))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--streams", type=int, default=150)
    parser.add_argument("--tokens", type=int, default=300)
    parser.add_argument("--tps", type=float, default=20.0)
    parser.add_argument("--seconds", type=int, default=20, help="how long py-spy samples")
    parser.add_argument("--new-questions", action="store_true")
    parser.add_argument(
        "--native", action="store_true", help="C frames too (uvloop, libuv, syscalls); pauses it"
    )
    parser.add_argument("--raw", type=Path, default=None, help="keep py-spy's collapsed stacks")
    run(main(parser.parse_args()))
