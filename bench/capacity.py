"""Benchmark: the most concurrent 20 tokens/s streams each target carries with the p99 gap between
deltas <= 100 ms — the full server against two minimal relays, on the same fake model, in one run.

Run: .venv/bin/python -m bench.capacity [--levels 50,100,150,200,300,400,600,800,1000]
         [--targets full,sdk,raw] [--step 6] [--gap-limit 100] [--tokens 100] [--tps 20]
         [--new-questions] [--no-pin]
     .venv/bin/python -m bench.capacity --targets full,full:2 --no-pin   # serve --workers 2
     .venv/bin/python -m bench.capacity --tps 100 --targets full,full@DELTA_TICK_MS=0,raw

Load comes from `server.tools.loadtest.engine.run_load` (ask 80% / selection 20%, each socket asking again as
soon as its stream ends). The stream count steps up without a pause: each level adds sockets in a
new run_load, every run ends together, so a target never drains between levels. Gaps are taken
only from each level's steady window (from `settle` s after the step began to its end). A target
stops stepping once it delivers under 75% of the deltas its level should get. The load tester asks
16 fixed questions (and 32 selection pairs), so the server's caches of embeddings and passages
hit after the first few streams: this measures streaming. With --new-questions every question is
new (none cached): the cost of answers, embedding and retrieval included.
Prints a table per target and the capacity ratios full/sdk and full/raw.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import statistics
import tempfile
import time
from pathlib import Path

import msgspec

from bench.harness import (
    JWT_SECRET,
    Cores,
    Target,
    chat_server,
    fake_model,
    pin_self,
    raise_fd_limit,
    relay,
    run,
    split_cores,
)
from bench.measure import CpuUse, LagProbe, fmt, machine_line, pct, ratio, table
from server.settings import Settings
from server.tools.loadtest.config import LoadConfig
from server.tools.loadtest.engine import Snapshot, run_load
from server.tools.loadtest.report import LoadReport, histogram_percentile

DEFAULT_LEVELS = (50, 100, 150, 200, 300, 400, 600, 800, 1000)
DEFAULT_DELTA_TICK_MS = next(
    f.default for f in msgspec.structs.fields(Settings) if f.name == "delta_tick_ms"
)
OVERLOAD_DELIVERY = 0.75  # below this share of the expected deltas/s the target is past capacity
# fake + load generator CPU on their core(s) beyond which gaps may be the client's
CLIENT_BUSY = 0.9
NOISY_OTHER_CPU = 0.3  # other processes on the machine used more than this share of a core


@dataclasses.dataclass(slots=True)
class Level:
    """One step of the ramp: its stream count, its steady window and what was measured in it."""

    streams: int
    step: tuple[float, float]  # seconds after the ramp began: when the level's sockets opened
    window: tuple[float, float]  # its steady part, where gaps are measured
    cpu: dict[str, float] = dataclasses.field(default_factory=dict)
    loop_lag_p99_ms: float | None = None
    gap_p50_ms: float | None = None
    gap_p99_ms: float | None = None
    gaps: int = 0
    ttfd_p99_ms: float | None = None
    deltas_per_s: float = 0.0
    failed: int = 0
    # delta frames due per stream per second: the tokens/s, or fewer where the target merges a
    # fast model's tokens on its delta tick (DELTA_TICK_MS)
    frames_per_s: float = 20.0

    def passes(self, gap_limit_ms: float) -> bool:
        """Gap p99 within the limit, nothing failed, and (nearly) every delta delivered."""
        return (
            self.gap_p99_ms is not None
            and self.gap_p99_ms <= gap_limit_ms
            and self.failed == 0
            and self.deltas_per_s >= 0.9 * self.streams * self.frames_per_s
        )

    @property
    def cpu_us_per_delta(self) -> float | None:
        """Target CPU per delta delivered, in microseconds (stream starts amortised in)."""
        if not self.deltas_per_s or "target" not in self.cpu:
            return None
        return self.cpu["target"] / self.deltas_per_s * 1e6

    def client_busy(self, client_cores: int) -> bool:
        """The fake model and load generator were near the limit of their cores."""
        return self.cpu.get("fake", 0) + self.cpu.get("loadgen", 0) >= CLIENT_BUSY * client_cores


async def ramp_target(
    target: Target,
    fake_pid: int,
    levels: tuple[int, ...],
    *,
    step_s: float,
    settle_s: float,
    ramp_s: float,
    tps: float,
    deflate: bool = False,
    new_questions: bool = False,
    frames_per_s: float | None = None,
) -> list[Level]:
    """Step the stream count up against one target; measure each level's steady window."""
    stop = asyncio.Event()
    meter = CpuUse({"target": target.pid, "fake": fake_pid, "loadgen": os.getpid()})
    lag = LagProbe()
    lag_task = asyncio.create_task(lag.run())
    latest_rate: dict[int, float] = {}
    total = step_s * len(levels)
    began_wall, began = time.time(), time.perf_counter()
    runs: list[asyncio.Task[LoadReport]] = []
    measured: list[Level] = []
    previous = 0
    try:
        for i, streams in enumerate(levels):
            await asyncio.sleep(max(0.0, began + i * step_s - time.perf_counter()))

            def progress(snapshot: Snapshot, index: int = i) -> None:
                latest_rate[index] = snapshot.deltas_per_s

            config = LoadConfig(
                url=target.ws_url,
                connections=streams - previous,
                duration=total - i * step_s,
                ramp=ramp_s,
                secret=JWT_SECRET,
                user_prefix=f"cap{i}-",
                grace=15.0,
                stream_timeout=60.0,
                seed=i,
                deflate=deflate,
                new_questions=new_questions,
            )
            runs.append(asyncio.create_task(run_load(config, progress=progress, stop=stop)))
            previous = streams
            level = Level(
                streams,
                (i * step_s, (i + 1) * step_s),
                (i * step_s + settle_s, (i + 1) * step_s),
                frames_per_s=frames_per_s or tps,
            )
            await asyncio.sleep(max(0.0, began + level.window[0] - time.perf_counter()))
            meter.reset()
            await asyncio.sleep(max(0.0, began + level.window[1] - time.perf_counter()))
            level.cpu = meter.read()
            level.loop_lag_p99_ms = lag.p99_ms(began + level.window[0], began + level.window[1])
            measured.append(level)
            if sum(latest_rate.values()) < OVERLOAD_DELIVERY * streams * level.frames_per_s:
                break  # clearly past capacity: more sockets only prolong the run
        stop.set()
        reports = await asyncio.gather(*runs)
    finally:
        stop.set()
        lag_task.cancel()
        await asyncio.gather(lag_task, *runs, return_exceptions=True)
    for level in measured:
        _fill(level, reports, began_wall)
    violations = sum(sum(r.violations.values()) for r in reports)
    if violations:
        examples = [e for r in reports for e in r.violation_examples][:5]
        print(f"  {target.name}: {violations} contract violations, e.g. {examples}")
    return measured


def _fill(level: Level, reports: list[LoadReport], began_wall: float) -> None:
    """Gap and TTFD percentiles, delivery and failures of a level's window, over every run."""
    gaps: dict[int, int] = {}
    ttfds: list[float] = []
    deltas = failed = 0
    start, end = level.window
    for report in reports:
        offset = report.started_at - began_wall  # this run's second 0, in ramp time
        first, last = round(start - offset), round(end - offset)
        if last <= 0:
            continue
        for b, n in report.gaps_between(first, last).items():
            gaps[b] = gaps.get(b, 0) + n
        # first deltas cluster where sockets open: TTFD is taken over the whole step
        ttfds.extend(report.ttfds_between(level.step[0] - offset, level.step[1] - offset))
        for bucket in report.timeline:
            if first <= bucket.second < last:
                deltas += bucket.deltas
                failed += bucket.streams_failed
    level.gaps = sum(gaps.values())
    level.gap_p50_ms = histogram_percentile(gaps, 50)
    level.gap_p99_ms = histogram_percentile(gaps, 99)
    level.ttfd_p99_ms = pct(ttfds, 99)
    seconds = round(end) - round(start)  # the timeline is in whole seconds
    level.deltas_per_s = deltas / max(seconds, 1)
    level.failed = failed


def capacity(levels: list[Level], gap_limit_ms: float) -> int | None:
    """The largest passing level below the first failing one."""
    best = None
    for level in levels:
        if not level.passes(gap_limit_ms):
            break
        best = level.streams
    return best


def streams_per_core(levels: list[Level], tps: float) -> float | None:
    """Streams one core could carry at the CPU cost per token measured below saturation: a
    figure other processes on the machine barely move."""
    cost = cost_per_token(levels, tps)
    return 1e6 / (cost * tps) if cost else None


def cost_per_token(levels: list[Level], tps: float) -> float | None:
    """Median target CPU per token due (us) over the levels that delivered what was due and
    did not saturate the target's core: comparable whatever the deltas carried."""
    costs = [
        lv.cpu["target"] / (lv.streams * tps) * 1e6
        for lv in levels
        if "target" in lv.cpu
        and lv.cpu["target"] < 0.85
        # delivered: every token (merged into fewer frames by the server's delta tick)
        and lv.deltas_per_s >= 0.9 * lv.streams * lv.frames_per_s
    ]
    return statistics.median(costs) if costs else None


def print_levels(
    name: str, levels: list[Level], gap_limit: float, tps: float, cores: Cores
) -> None:
    """The table of one target."""
    rows = []
    for lv in levels:
        verdict = "ok" if lv.passes(gap_limit) else "FAIL"
        if lv.client_busy(len(cores.client)):
            verdict += " (client core busy)"
        if lv.cpu.get("other", 0) > NOISY_OTHER_CPU:
            verdict += " (machine busy)"
        rows.append(
            [
                lv.streams,
                fmt(lv.gap_p50_ms),
                fmt(lv.gap_p99_ms),
                fmt(lv.ttfd_p99_ms, 0),
                f"{lv.deltas_per_s:,.0f}/{lv.streams * lv.frames_per_s:,.0f}",
                lv.failed,
                f"{lv.cpu.get('target', 0):.0%}",
                f"{lv.cpu.get('fake', 0):.0%}",
                f"{lv.cpu.get('loadgen', 0):.0%}",
                f"{lv.cpu.get('postgres', 0):.0%}",
                f"{lv.cpu.get('other', 0):.0%}",
                fmt(lv.loop_lag_p99_ms),
                fmt(lv.cpu_us_per_delta, 0),
                verdict,
            ]
        )
    headers = [
        "streams",
        "gap p50",
        "gap p99",
        "ttfd p99",
        "deltas/s got/due",
        "failed",
        "target cpu",
        "fake cpu",
        "loadgen cpu",
        "pg cpu",
        "other cpu",
        "lag p99",
        "cpu us/delta",
        "verdict",
    ]
    print(
        f"\n{name} (ms; cpu as share of one core; pg = every postgres process; other = the rest"
        " of the machine; lag = load generator's event loop; cpu us/delta = target CPU per"
        " delta delivered)"
    )
    print(table(headers, rows))


async def main(args: argparse.Namespace) -> None:
    levels = tuple(int(n) for n in args.levels.split(","))
    cores = split_cores(not args.no_pin)
    pin_self(cores.client)
    raise_fd_limit(max(levels) * 2 + 1024)
    print(
        f"capacity at {args.tps:g} tokens/s, {args.tokens} tokens per answer; gap limit p99 <= {args.gap_limit:g} ms"
    )
    print(f"{cores.describe()}; Postgres unpinned; {machine_line()}")
    print(
        f"levels {levels}, {args.step:g} s each; a level's sockets open over {args.ramp:g} s;"
        f" gaps from {args.settle:g} s into each step to its end; ttfd over the whole step"
    )
    results: dict[str, int | None] = {}
    per_core: dict[str, float | None] = {}
    levels_of: dict[str, list[Level]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-capacity-") as tmp:
        log_dir = Path(tmp)
        async with fake_model(cores.client, log_dir, tokens=args.tokens, tps=args.tps) as (
            model_url,
            fake,
        ):
            for name in args.targets.split(","):
                if name.startswith("full"):
                    spec, _, settings = name.partition("@")  # full:2@DELTA_TICK_MS=0
                    workers = int(spec.partition(":")[2] or 1)
                    env = dict(kv.split("=", 1) for kv in settings.split("+") if kv)
                    # the load offers compression to a server that has it on, as browsers do
                    deflate = env.get("WS_PER_MESSAGE_DEFLATE", "").lower() in ("1", "true")
                    tick_ms = float(env.get("DELTA_TICK_MS", DEFAULT_DELTA_TICK_MS))
                    frames_per_s = min(args.tps, 1000 / tick_ms) if tick_ms else args.tps
                    target_cm = chat_server(
                        model_url, cores.target, log_dir, workers=workers, **env
                    )
                else:
                    target_cm = relay(name, model_url, cores.target, log_dir)
                    deflate = False
                    frames_per_s = args.tps
                deflate = name.startswith("full") and env.get("WS_PER_MESSAGE_DEFLATE") in (
                    "1",
                    "true",
                )
                async with target_cm as target:
                    measured = await ramp_target(
                        target,
                        fake.pid,
                        levels,
                        step_s=args.step,
                        settle_s=args.settle,
                        ramp_s=args.ramp,
                        tps=args.tps,
                        deflate=deflate,
                        new_questions=args.new_questions,
                        frames_per_s=frames_per_s,
                    )
                print_levels(name, measured, args.gap_limit, args.tps, cores)
                results[name] = capacity(measured, args.gap_limit)
                levels_of[name] = measured
                per_core[name] = streams_per_core(measured, args.tps)
    print("\ncapacity: most streams with gap p99 within the limit; streams/core from CPU per token")
    rows = []
    for name, found in results.items():
        rows.append(
            [
                name,
                "none" if found is None else found,
                ratio(found, results.get("full")) if name != "full" else "",
                fmt(per_core[name], 0),
                ratio(per_core[name], per_core.get("full")) if name != "full" else "",
            ]
        )
    print(table(["target", "streams", "vs full", "streams/core", "vs full"], rows))
    cost = {name: cost_per_token(levels_of[name], args.tps) for name in levels_of}
    base = cost.get("raw") or cost.get("sdk")
    print("\nCPU per token (target CPU / tokens due, median of the levels it kept up with):")
    print(
        table(
            ["target", "cpu us/token", "vs raw relay"],
            [[n, fmt(c, 0), ratio(c, cost.get("raw"))] for n, c in cost.items()],
        )
    )
    if base is None:
        print("(add raw to --targets for the ratio against the self-parsing relay)")
    if not any(name.startswith("full:") for name in results):
        print(
            "serve --workers N: measure with --targets full,full:2 --no-pin"
            " (both processes need both CPUs, shared with the fake model and the load generator)"
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--levels", default=",".join(str(n) for n in DEFAULT_LEVELS))
    parser.add_argument(
        "--targets",
        default="full,sdk,raw",
        help="full, full:N (serve --workers N), full@SETTING=VALUE+... (a setting changed), sdk, raw",
    )
    parser.add_argument("--step", type=float, default=6.0, help="seconds per level")
    parser.add_argument(
        "--ramp", type=float, default=2.5, help="seconds a level's sockets open over"
    )
    parser.add_argument("--settle", type=float, default=3.0, help="seconds before a level's window")
    parser.add_argument("--gap-limit", type=float, default=100.0, help="p99 gap limit, ms")
    parser.add_argument("--tokens", type=int, default=100)
    parser.add_argument("--tps", type=float, default=20.0)
    parser.add_argument(
        "--new-questions",
        action="store_true",
        help="every question new (no cached embedding or passages): the per-answer cost",
    )
    parser.add_argument("--no-pin", action="store_true", help="let every process use every CPU")
    run(main(parser.parse_args()))
