"""Measuring for benchmarks: CPU of processes, Postgres and the whole machine, event loop lag,
memory, percentiles and plain-text tables."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import psutil


class CpuMeter:
    """CPU time of some processes between two readings, as a fraction of one core; a process
    named in `trees` counts with its live descendants (e.g. server workers)."""

    def __init__(self, pids: dict[str, int], trees: Sequence[str] = ("target",)) -> None:
        self._roots = {name: psutil.Process(pid) for name, pid in pids.items()}
        self._trees = frozenset(trees)
        self._last: dict[int, float] = {}  # per pid, so a worker that appears counts from 0
        self._at = 0.0
        self.reset()

    def _tree(self, root: psutil.Process, descendants: bool) -> dict[int, float]:
        cpu: dict[int, float] = {}
        for process in [root, *(root.children(recursive=True) if descendants else ())]:
            with contextlib.suppress(psutil.NoSuchProcess):
                times = process.cpu_times()
                cpu[process.pid] = float(times.user + times.system)
        return cpu

    def reset(self) -> None:
        """Start a new interval."""
        self.read()

    def read(self) -> dict[str, float]:
        """Each tree's share of one core since the last reading; starts the next interval."""
        now = time.monotonic()
        wall = max(now - self._at, 1e-9)
        shares: dict[str, float] = {}
        seen: dict[int, float] = {}
        for name, root in self._roots.items():
            tree = self._tree(root, name in self._trees)
            shares[name] = sum(cpu - self._last.get(pid, 0.0) for pid, cpu in tree.items()) / wall
            seen.update(tree)
        self._last, self._at = seen, now
        return shares


class PostgresMeter:
    """CPU of every local `postgres` process (the server's database is not pinned)."""

    def __init__(self) -> None:
        self._last: dict[int, float] = {}
        self._at = time.monotonic()
        self.read()

    def read(self) -> float:
        """Their summed share of one core since the last reading."""
        now, total = time.monotonic(), 0.0
        seen: dict[int, float] = {}
        for proc in psutil.process_iter(["name", "cpu_times"]):
            if proc.info["name"] != "postgres" or proc.info["cpu_times"] is None:
                continue
            cpu = float(proc.info["cpu_times"].user + proc.info["cpu_times"].system)
            seen[proc.pid] = cpu
            total += cpu - self._last.get(proc.pid, cpu)
        share = total / max(now - self._at, 1e-9)
        self._last, self._at = seen, now
        return share


def machine_busy_s() -> float:
    """CPU seconds the whole machine has been busy (all CPUs, neither idle nor waiting on I/O)."""
    t = psutil.cpu_times()
    return float(sum(t) - t.idle - getattr(t, "iowait", 0.0))


class MachineMeter:
    """CPU busy time of the whole machine, to tell what ran besides this benchmark."""

    def __init__(self) -> None:
        self._busy, self._at = machine_busy_s(), time.monotonic()

    def read(self) -> float:
        """Busy cores since the last reading."""
        busy, now = machine_busy_s(), time.monotonic()
        share = (busy - self._busy) / max(now - self._at, 1e-9)
        self._busy, self._at = busy, now
        return share


class LagProbe:
    """This process's event loop lag, sampled every 20 ms, kept with timestamps."""

    def __init__(self) -> None:
        self.samples: list[tuple[float, float]] = []

    async def run(self) -> None:
        """Sample until cancelled."""
        while True:
            expected = time.perf_counter() + 0.02
            await asyncio.sleep(0.02)
            now = time.perf_counter()
            self.samples.append((now, max(0.0, now - expected)))

    def p99_ms(self, start: float, end: float) -> float | None:
        """p99 lag in [start, end) (perf_counter seconds)."""
        return pct([lag * 1000 for at, lag in self.samples if start <= at < end], 99)


class CpuUse:
    """Per-process CPU of ours, every postgres process, and the rest of the machine, per interval."""

    def __init__(self, pids: dict[str, int]) -> None:
        self._ours = CpuMeter(pids)  # only "target" with its descendants: the others are leaves
        self._postgres = PostgresMeter()
        self._machine = MachineMeter()

    def reset(self) -> None:
        """Start a new interval."""
        self._ours.reset()
        self._postgres.read()
        self._machine.read()

    def read(self) -> dict[str, float]:
        """Shares of one core since the last reading: each pid, `postgres`, `other`."""
        shares = self._ours.read()
        shares["postgres"] = self._postgres.read()
        shares["other"] = max(0.0, self._machine.read() - sum(shares.values()))
        return shares


def rss_mb(pid: int) -> tuple[float, float]:
    """Resident and unique (USS) memory of a process, in MiB."""
    info = psutil.Process(pid).memory_full_info()
    return info.rss / 2**20, info.uss / 2**20


def pct(values: Sequence[float] | np.ndarray[Any, Any], q: float) -> float | None:
    """The q-th percentile (0–100), None when there are no values."""
    if len(values) == 0:
        return None
    return float(np.percentile(np.asarray(values, dtype=np.float64), q))


def fmt(value: float | None, digits: int = 1) -> str:
    """A number for a table cell; `-` for none."""
    return "-" if value is None else f"{value:,.{digits}f}"


def ratio(a: float | None, b: float | None) -> str:
    """a / b as `2.5x`; `-` when either is missing or b is zero."""
    if a is None or b is None or b == 0:
        return "-"
    return f"{a / b:.2f}x"


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A plain text table: the first column left-aligned, the rest right-aligned."""
    cells = [[str(h) for h in headers], *([str(c) for c in row] for row in rows)]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = []
    for n, row in enumerate(cells):
        parts = [row[0].ljust(widths[0])] + [
            c.rjust(w) for c, w in zip(row[1:], widths[1:], strict=True)
        ]
        lines.append("  ".join(parts).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def machine_line() -> str:
    """CPU count and the load average, so a noisy run shows as one."""
    load = os.getloadavg()
    return f"{os.cpu_count()} CPUs, load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} at start"
