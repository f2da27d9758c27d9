"""The serving process's set-up (server/web/serve.py)."""

from __future__ import annotations

import os
import subprocess
import sys

# Threads that each allocate through malloc (bytearrays above pymalloc's 512 bytes), then
# glibc's per-arena statistics, which it prints to stderr.
_THREADS_ALLOCATE = """
import ctypes, sys, threading
from server.web.serve import limit_malloc_arenas
if sys.argv[1] == "limit":
    assert limit_malloc_arenas()
kept = []
def allocate():
    kept.extend(bytearray(4096) for _ in range(2000))
threads = [threading.Thread(target=allocate) for _ in range(4)]
for t in threads:
    t.start()
for t in threads:
    t.join()
ctypes.CDLL("libc.so.6").malloc_stats()
"""


def _arenas(mode: str) -> int:
    env = {k: v for k, v in os.environ.items() if k != "MALLOC_ARENA_MAX"}
    done = subprocess.run(
        [sys.executable, "-c", _THREADS_ALLOCATE, mode],
        capture_output=True,
        text=True,
        check=True,
        env=env,
        timeout=60,
    )
    return sum(line.startswith("Arena ") for line in done.stderr.splitlines())


def test_the_serving_process_keeps_one_malloc_arena_for_all_its_threads() -> None:
    assert _arenas("default") > 1, "glibc gives threads arenas of their own"
    assert _arenas("limit") == 1


def test_malloc_arena_max_in_the_environment_wins() -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            "from server.web.serve import limit_malloc_arenas; print(limit_malloc_arenas())",
        ],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "MALLOC_ARENA_MAX": "4"},
        timeout=60,
    )
    assert done.stdout.strip() == "False"
