"""Load test results: what a run observed, percentiles, the report as JSON, and its PNG chart."""

from __future__ import annotations

import math
from array import array
from collections import Counter
from collections.abc import Sequence
from typing import Any

import msgspec
import numpy as np

KINDS = ("ask", "selection", "chapter")
HIST_BASE_S = 1e-5  # the smallest latency a histogram tells apart: 10 µs
HIST_RATIO = 1.01  # each bin 1% wider than the one before, so percentiles are within 1%
_LOG_RATIO = math.log(HIST_RATIO)
SATURATED_CORE_FRACTION = 0.8
MAX_VIOLATION_EXAMPLES = 20


def percentile(sorted_values: Sequence[float], q: float) -> float | None:
    """The q-th percentile (0–100) of sorted values, interpolated as numpy does; None when empty."""
    n = len(sorted_values)
    if n == 0:
        return None
    position = (n - 1) * q / 100
    low = math.floor(position)
    high = min(low + 1, n - 1)
    return sorted_values[low] + (sorted_values[high] - sorted_values[low]) * (position - low)


def histogram_bin(seconds: float) -> int:
    """The histogram bin of a latency."""
    return max(0, math.floor(math.log(max(seconds, HIST_BASE_S) / HIST_BASE_S) / _LOG_RATIO))


def bin_value_ms(index: int) -> float:
    """The latency a bin stands for (its geometric middle), in milliseconds."""
    return float(HIST_BASE_S * HIST_RATIO ** (index + 0.5) * 1000)


def histogram_percentile(counts: dict[int, int], q: float) -> float | None:
    """The q-th percentile (0–100, nearest rank) of a latency histogram, in milliseconds."""
    total = sum(counts.values())
    if total == 0:
        return None
    rank = max(1, math.ceil(total * q / 100))
    seen = 0
    for index in sorted(counts):
        seen += counts[index]
        if seen >= rank:
            return bin_value_ms(index)
    raise AssertionError("unreachable: ranks are within the total")


class Recorder:
    """Everything a run observes, in flat arrays (seconds since the run began) and counters."""

    def __init__(self, t0: float) -> None:
        self.t0 = t0  # time.perf_counter() at the start of the run
        self.ttfd_at, self.ttfd, self.ttfd_kind = array("d"), array("d"), array("B")
        self.gap_at, self.gap = array("d"), array("d")
        self.end_at, self.end_ok = array("d"), array("B")
        self.connect, self.loop_lag = array("d"), array("d")
        self.deltas = self.chars = self.completion_tokens = self.with_usage = 0
        self.ok = self.cut = self.cached = 0
        self.failed: Counter[str] = Counter()
        self.sent: Counter[str] = Counter()
        self.opened = self.open_now = 0
        self.connect_failed: Counter[str] = Counter()
        self.dropped: Counter[str] = Counter()
        self.connection_errors: Counter[str] = Counter()
        self.violations: Counter[str] = Counter()
        self.violation_examples: list[str] = []

    def stream_done(self, now: float, completion_tokens: int | None, cached: bool) -> None:
        """A stream ended with `done`."""
        self.ok += 1
        self.end_at.append(now - self.t0)
        self.end_ok.append(1)
        if completion_tokens is not None:
            self.completion_tokens += completion_tokens
            self.with_usage += 1
        self.cached += cached

    def stream_failed(self, now: float, reason: str) -> None:
        """A stream ended with `error` (its code) or was cut short (why)."""
        self.failed[reason] += 1
        self.end_at.append(now - self.t0)
        self.end_ok.append(0)

    def violation(self, kind: str, detail: str) -> None:
        """The server broke the stream contract."""
        self.violations[kind] += 1
        if len(self.violation_examples) < MAX_VIOLATION_EXAMPLES:
            self.violation_examples.append(f"{kind}: {detail}")


class Quantiles(msgspec.Struct, frozen=True):
    """Percentiles of a latency, in milliseconds (None when nothing was measured)."""

    count: int
    p50: float | None = None
    p95: float | None = None
    p99: float | None = None
    max: float | None = None


def quantiles_ms(values_s: Any) -> Quantiles:
    """Quantiles of latencies given in seconds (any array-like)."""
    values = np.asarray(values_s, dtype=np.float64)
    if values.size == 0:
        return Quantiles(count=0)
    p50, p95, p99 = (float(v) * 1000 for v in np.percentile(values, [50, 95, 99]))
    return Quantiles(
        count=int(values.size), p50=p50, p95=p95, p99=p99, max=float(values.max()) * 1000
    )


class Bucket(msgspec.Struct, frozen=True):
    """One second of the run; `gaps` is a histogram (bin -> count, see HIST_RATIO)."""

    second: int
    deltas: int
    streams_ok: int
    streams_failed: int
    ttfd_p50_ms: float | None
    ttfd_p99_ms: float | None
    gap_p50_ms: float | None
    gap_p99_ms: float | None
    gaps: dict[int, int]


class Connections(msgspec.Struct, frozen=True):
    """Sockets: opened, refused before `ready`, ended early (close code, or `stream_timeout`)."""

    target: int
    opened: int
    failed: dict[str, int]
    dropped: dict[str, int]
    connect_ms: Quantiles


class Streams(msgspec.Struct, frozen=True):
    """Streams: ended with `done`, failed (by error code or how they were cut), cut at the end."""

    ok: int
    failed: dict[str, int]
    cut_at_end: int
    cached: int
    sent_by_kind: dict[str, int]


class Throughput(msgspec.Struct, frozen=True):
    """What reached the clients; rates over the whole run, `steady` over the seconds after the ramp."""

    deltas: int
    chars: int
    completion_tokens: int
    streams_with_usage: int
    deltas_per_s: float
    chars_per_s: float
    tokens_per_s: float
    steady_deltas_per_s: float | None


class CpuUse(msgspec.Struct, frozen=True):
    """The load generator's own CPU: process CPU time / wall time, as a fraction of one core."""

    cpu_s: float
    wall_s: float
    core_fraction: float
    cores: int
    loop_lag_p99_ms: float | None
    loop_lag_max_ms: float | None


class TtfdSamples(msgspec.Struct, frozen=True):
    """Every stream's time to first delta: when it arrived (s into the run), ms, request kind."""

    at_s: list[float]
    ms: list[float]
    kind: list[str]


class LoadReport(msgspec.Struct, frozen=True, kw_only=True):
    """The outcome of one load test run."""

    url: str
    started_at: float  # unix time
    duration_s: float
    ramp_s: float
    wall_s: float
    mix: dict[str, float]
    users: int
    connections: Connections
    streams: Streams
    ttfd_ms: Quantiles
    ttfd_ms_by_kind: dict[str, Quantiles]
    gap_ms: Quantiles
    throughput: Throughput
    violations: dict[str, int]
    violation_examples: list[str]
    connection_errors: dict[str, int]
    cpu: CpuUse
    warnings: list[str]
    timeline: list[Bucket]
    ttfd_samples: TtfdSamples

    def to_json(self) -> bytes:
        """The report as JSON."""
        return msgspec.json.encode(self)

    @classmethod
    def from_json(cls, data: bytes | str) -> LoadReport:
        """A report read back from `to_json`."""
        return msgspec.json.decode(data, type=cls)

    def ttfds_between(self, start_s: float, end_s: float) -> list[float]:
        """Times to first delta (ms) that arrived in [start_s, end_s) seconds into the run."""
        samples = self.ttfd_samples
        return [
            ms for at, ms in zip(samples.at_s, samples.ms, strict=True) if start_s <= at < end_s
        ]

    def gaps_between(self, start_s: int, end_s: int) -> dict[int, int]:
        """The histogram of delta gaps in whole seconds [start_s, end_s) of the run."""
        merged: Counter[int] = Counter()
        for bucket in self.timeline:
            if start_s <= bucket.second < end_s:
                merged.update(bucket.gaps)
        return dict(merged)

    def summary_text(self) -> str:
        """The report for people, a few lines."""
        c, s, t = self.connections, self.streams, self.throughput
        lines = [
            f"connections: {c.opened}/{c.target} opened, failed {_counts(c.failed)}, ended early {_counts(c.dropped)}; connect+ready ms {_q(c.connect_ms)}",
            f"streams: {s.ok} ok, failed {_counts(s.failed)}, {s.cut_at_end} cut at the end, {s.cached} cached; sent {_counts(s.sent_by_kind)}",
            f"time to first delta ms: {_q(self.ttfd_ms)}",
            *(f"  {kind}: {_q(q)}" for kind, q in self.ttfd_ms_by_kind.items() if q.count),
            f"gap between deltas ms: {_q(self.gap_ms)}",
            f"delivered: {t.deltas_per_s:,.0f} deltas/s"
            + (f" (steady {t.steady_deltas_per_s:,.0f})" if t.steady_deltas_per_s else "")
            + f", {t.chars_per_s:,.0f} chars/s, {t.tokens_per_s:,.0f} completion tokens/s"
            f" ({t.streams_with_usage} streams reported usage)",
            f"contract violations: {_counts(self.violations)}",
            *(f"  {example}" for example in self.violation_examples),
            f"connection-level errors: {_counts(self.connection_errors)}",
            f"load generator CPU: {self.cpu.core_fraction:.0%} of one core ({self.cpu.cpu_s:.1f} s over {self.cpu.wall_s:.1f} s, {self.cpu.cores} cores), event loop lag p99 {_ms(self.cpu.loop_lag_p99_ms)} max {_ms(self.cpu.loop_lag_max_ms)}",
            *(f"WARNING: {w}" for w in self.warnings),
        ]
        return "\n".join(lines)


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) or "none"


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def _q(q: Quantiles) -> str:
    return f"p50 {_ms(q.p50)} p95 {_ms(q.p95)} p99 {_ms(q.p99)} max {_ms(q.max)} (n={q.count})"


def _timeline(rec: Recorder, seconds: int) -> list[Bucket]:
    ttfd_at, ttfd = np.frombuffer(rec.ttfd_at), np.frombuffer(rec.ttfd)
    gap_at, gap = np.frombuffer(rec.gap_at), np.frombuffer(rec.gap)
    end_at, end_ok = np.frombuffer(rec.end_at), np.frombuffer(rec.end_ok, dtype=np.uint8)
    edges = np.arange(seconds + 1, dtype=np.float64)
    deltas = np.histogram(np.concatenate([ttfd_at, gap_at]), edges)[0]
    ok = np.histogram(end_at[end_ok == 1], edges)[0]
    failed = np.histogram(end_at[end_ok == 0], edges)[0]
    ttfd_sec, gap_sec = ttfd_at.astype(np.int64), gap_at.astype(np.int64)
    gap_bins = np.floor(np.log(np.maximum(gap, HIST_BASE_S) / HIST_BASE_S) / _LOG_RATIO)
    buckets = []
    for second in range(seconds):
        ttfd_here = np.sort(ttfd[ttfd_sec == second]) * 1000
        in_second = gap_sec == second
        gap_here = np.sort(gap[in_second]) * 1000
        bins, counts = np.unique(gap_bins[in_second].astype(np.int64), return_counts=True)
        buckets.append(
            Bucket(
                second=second,
                deltas=int(deltas[second]),
                streams_ok=int(ok[second]),
                streams_failed=int(failed[second]),
                ttfd_p50_ms=_pct(ttfd_here, 50),
                ttfd_p99_ms=_pct(ttfd_here, 99),
                gap_p50_ms=_pct(gap_here, 50),
                gap_p99_ms=_pct(gap_here, 99),
                gaps={int(b): int(n) for b, n in zip(bins, counts, strict=True)},
            )
        )
    return buckets


def _pct(sorted_values: Any, q: float) -> float | None:
    value = percentile(sorted_values, q)
    return None if value is None else float(value)


def build_report(
    rec: Recorder,
    *,
    url: str,
    started_at: float,
    duration_s: float,
    ramp_s: float,
    wall_s: float,
    cpu_s: float,
    cores: int,
    mix: dict[str, float],
    users: int,
    target_connections: int,
) -> LoadReport:
    """Percentiles, rates, the timeline and warnings from what a run recorded."""
    timeline = _timeline(rec, max(1, math.ceil(wall_s)))
    steady = [b.deltas for b in timeline if ramp_s <= b.second and b.second + 1 <= duration_s]
    ttfd = np.frombuffer(rec.ttfd)
    kinds = np.frombuffer(rec.ttfd_kind, dtype=np.uint8)
    lag = quantiles_ms(np.frombuffer(rec.loop_lag))
    core_fraction = cpu_s / wall_s if wall_s > 0 else 0.0
    warnings = []
    if core_fraction > SATURATED_CORE_FRACTION:
        warnings.append(
            f"the load generator used {core_fraction:.0%} of one core: it is saturated; results understate the server"
        )
    if rec.violations:
        warnings.append(f"{sum(rec.violations.values())} contract violations")
    return LoadReport(
        url=url,
        started_at=started_at,
        duration_s=duration_s,
        ramp_s=ramp_s,
        wall_s=wall_s,
        mix=mix,
        users=users,
        connections=Connections(
            target=target_connections,
            opened=rec.opened,
            failed=dict(rec.connect_failed),
            dropped=dict(rec.dropped),
            connect_ms=quantiles_ms(np.frombuffer(rec.connect)),
        ),
        streams=Streams(
            ok=rec.ok,
            failed=dict(rec.failed),
            cut_at_end=rec.cut,
            cached=rec.cached,
            sent_by_kind=dict(rec.sent),
        ),
        ttfd_ms=quantiles_ms(ttfd),
        ttfd_ms_by_kind={kind: quantiles_ms(ttfd[kinds == i]) for i, kind in enumerate(KINDS)},
        gap_ms=quantiles_ms(np.frombuffer(rec.gap)),
        throughput=Throughput(
            deltas=rec.deltas,
            chars=rec.chars,
            completion_tokens=rec.completion_tokens,
            streams_with_usage=rec.with_usage,
            deltas_per_s=rec.deltas / wall_s if wall_s > 0 else 0.0,
            chars_per_s=rec.chars / wall_s if wall_s > 0 else 0.0,
            tokens_per_s=rec.completion_tokens / wall_s if wall_s > 0 else 0.0,
            steady_deltas_per_s=sum(steady) / len(steady) if steady else None,
        ),
        violations=dict(rec.violations),
        violation_examples=list(rec.violation_examples),
        connection_errors=dict(rec.connection_errors),
        cpu=CpuUse(
            cpu_s=cpu_s,
            wall_s=wall_s,
            core_fraction=core_fraction,
            cores=cores,
            loop_lag_p99_ms=lag.p99,
            loop_lag_max_ms=lag.max,
        ),
        warnings=warnings,
        timeline=timeline,
        ttfd_samples=TtfdSamples(
            at_s=list(rec.ttfd_at),
            ms=[v * 1000 for v in rec.ttfd],
            kind=[KINDS[k] for k in rec.ttfd_kind],
        ),
    )
