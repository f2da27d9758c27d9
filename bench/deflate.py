"""Benchmark: permessage-deflate on the chat socket (WS_PER_MESSAGE_DEFLATE), what it saves the
reader in bytes and what it costs the server in CPU per frame and memory per socket.

Run: .venv/bin/python -m bench.deflate [--tokens 300] [--answers 200] [--sockets 2000]

The frames are those of real answers: a `start`, a `sources` frame with six passages of the
sample book, one `delta` per token of text from it, and `done`, encoded by the server's codec and
framed by websockets exactly as uvicorn's sans-I/O protocol does (with its deflate parameters:
12-bit windows, memLevel 5, context kept across messages). End to end, the CPU per token with
deflate on is `python -m bench.capacity --targets full,full@WS_PER_MESSAGE_DEFLATE=1,raw`.
"""

from __future__ import annotations

import argparse
import gc
import os
import time

from websockets.extensions.permessage_deflate import PerMessageDeflate
from websockets.frames import Frame, Opcode

from bench.measure import fmt, machine_line, ratio, rss_mb, table
from protocol import codec
from protocol.frames import Delta, Done, Source, Sources, Start, Timings
from server.settings import SAMPLE_BOOK_DIR

WINDOW_BITS = 12  # uvicorn's ServerPerMessageDeflateFactory arguments
COMPRESS_SETTINGS = {"memLevel": 5}


def book_words() -> list[str]:
    words: list[str] = []
    for path in sorted(SAMPLE_BOOK_DIR.rglob("*.md")):
        words += path.read_text(encoding="utf-8").split()
    return words


def answer_frames(words: list[str], tokens: int, offset: int) -> list[bytes]:
    """The frames of one answer, encoded as the server sends them."""
    sid = f"q{offset}"
    passages = [" ".join(words[offset + i * 150 : offset + i * 150 + 150]) for i in range(6)]
    frames = [
        Start(id=sid, seq=1, message_id=f"m-{offset:08d}", conversation_id=f"c-{offset:08d}"),
        Sources(
            id=sid,
            seq=2,
            sources=[
                Source(chapter=f"ch{i}", title=f"Chapter {i}", score=0.5, text=t)
                for i, t in enumerate(passages)
            ],
        ),
    ]
    start = offset + 900
    for n in range(tokens):
        frames.append(Delta(id=sid, seq=3 + n, text=" " + words[(start + n) % len(words)]))
    frames.append(
        Done(
            id=sid,
            seq=3 + tokens,
            finish_reason="stop",
            timings=Timings(first_token_ms=412.5, total_ms=15012.25),
        )
    )
    return [codec.encode(f) for f in frames]


def deflater() -> PerMessageDeflate:
    return PerMessageDeflate(False, False, WINDOW_BITS, WINDOW_BITS, COMPRESS_SETTINGS)


def wire_bytes(answers: list[list[bytes]], deflate: bool) -> tuple[int, float]:
    """Bytes on the wire for every answer on one socket each, and CPU seconds to frame them."""
    total = 0
    began = time.process_time()
    for frames in answers:
        extensions = [deflater()] if deflate else []
        for data in frames:
            frame = Frame(Opcode.TEXT, data)
            total += len(frame.serialize(mask=False, extensions=extensions))
    return total, time.process_time() - began


def memory_per_socket(sockets: int) -> float:
    """KiB of RSS per socket that has negotiated deflate and sent one frame (zlib's state)."""
    gc.collect()
    before = rss_mb(os.getpid())[0]
    kept = []
    for _ in range(sockets):
        extension = deflater()
        Frame(Opcode.TEXT, b'{"type":"ready"}').serialize(mask=False, extensions=[extension])
        kept.append(extension)
    after = rss_mb(os.getpid())[0]
    return (after - before) * 1024 / sockets


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, default=300, help="tokens per answer")
    parser.add_argument("--answers", type=int, default=200)
    parser.add_argument("--sockets", type=int, default=2000, help="for memory per socket")
    args = parser.parse_args()
    words = book_words()
    answers = [answer_frames(words, args.tokens, 37 * i) for i in range(args.answers)]
    frames = sum(len(a) for a in answers)
    tokens = args.tokens * args.answers
    print(f"permessage-deflate on {args.answers} answers of {args.tokens} tokens; {machine_line()}")
    plain, plain_cpu = wire_bytes(answers, deflate=False)
    packed, packed_cpu = wire_bytes(answers, deflate=True)
    rows = [
        ["off", fmt(plain / tokens), fmt(plain_cpu / frames * 1e6), "", ""],
        [
            "on",
            fmt(packed / tokens),
            fmt(packed_cpu / frames * 1e6),
            ratio(packed, plain),
            f"+{fmt((packed_cpu - plain_cpu) / frames * 1e6)}",
        ],
    ]
    print(
        table(
            ["deflate", "bytes/token", "CPU us/frame", "bytes vs off", "CPU us/frame added"],
            rows,
        )
    )
    print(
        f"\nmemory per socket for zlib's state (deflate on, {args.sockets} sockets):"
        f" {fmt(memory_per_socket(args.sockets))} KiB"
    )


if __name__ == "__main__":
    main()
