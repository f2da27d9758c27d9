"""Benchmark: the CPU an answer costs beyond its stream (embedding the question, retrieval, the
database, the journal, the model request), the full server against its own code at an earlier
commit, in one run.

Run: .venv/bin/python -m bench.per_answer [--targets full,full#200d362,raw] [--sockets 20]
         [--duration 20] [--warmup 8] [--no-pin]

Every answer is one token long, so an answer's CPU is what it costs beyond its stream. The
sockets ask back to back, every question new (no cache of embeddings or passages hits), after a
warm-up that is not measured (the first questions also load the query model and grow pools);
CPU per answer = the target's CPU time (every thread) / the answers it completed meanwhile, and
the same for every Postgres process. `full#REF` is the server at git REF (a worktree, run by
this interpreter): 200d362 is main before issue #13's work began. Relays (`raw`, `sdk`) do no
retrieval and no database: their figure is what a model request and two frames cost.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path

from bench.first_delta import drive
from bench.harness import (
    Target,
    chat_server,
    code_at,
    fake_model,
    pin_self,
    raise_fd_limit,
    relay,
    run,
    split_cores,
)
from bench.measure import CpuUse, fmt, machine_line, pct, ratio, table

BEFORE_ISSUE_13 = "200d362"


@contextlib.asynccontextmanager
async def target_for(
    name: str, model_url: str, cpus: frozenset[int], log_dir: Path
) -> AsyncIterator[Target]:
    """`full`, `full#REF` (the server at git REF) or a relay kind."""
    kind, _, ref = name.partition("#")
    if kind != "full":
        async with relay(kind, model_url, cpus, log_dir) as target:
            yield target
    elif not ref:
        async with chat_server(model_url, cpus, log_dir) as target:
            yield target
    else:
        async with (
            code_at(ref, log_dir) as tree,
            chat_server(model_url, cpus, log_dir, code=tree) as target,
        ):
            yield target


def cpu_ms_each(share: float, elapsed_s: float, answers: int) -> float | None:
    """Milliseconds of CPU per answer from a share of one core over `elapsed_s`."""
    return share * elapsed_s * 1000 / answers if answers else None


async def main(args: argparse.Namespace) -> None:
    cores = split_cores(not args.no_pin)
    pin_self(cores.client)
    raise_fd_limit(args.sockets * 2 + 1024)
    print(
        f"CPU per answer beyond its stream: {args.sockets} sockets asking new questions back to"
        f" back, answers of one token; {args.warmup:g} s of warm-up, then {args.duration:g} s"
    )
    print(f"{cores.describe()}; Postgres unpinned; {machine_line()}")
    rows: list[list[object]] = []
    per_answer: dict[str, float | None] = {}
    with tempfile.TemporaryDirectory(prefix="bench-per-answer-") as tmp:
        log_dir = Path(tmp)
        async with fake_model(cores.client, log_dir, tokens=1, tps=20.0) as (url, fake):
            for name in args.targets.split(","):
                async with target_for(name, url, cores.target, log_dir) as target:
                    ramp = min(2.0, args.warmup / 2)
                    await drive(target.ws_url, args.sockets, args.warmup, ramp, 1, f"{name}-w")
                    use = CpuUse({"target": target.pid, "fake": fake.pid, "client": os.getpid()})
                    use.reset()
                    began = time.perf_counter()
                    results, errors = await drive(
                        target.ws_url, args.sockets, args.duration, 0.0, 1, f"{name}-m"
                    )
                    elapsed = time.perf_counter() - began
                    cpu = use.read()
                answers = len(results)
                per_answer[name] = cpu_ms_each(cpu["target"], elapsed, answers)
                ttfd = [r.ttfd_ms for r in results if r.ttfd_ms is not None]
                rows.append(
                    [
                        name,
                        f"{answers / elapsed:,.0f}",
                        fmt(per_answer[name], 2),
                        fmt(cpu_ms_each(cpu["postgres"], elapsed, answers), 2),
                        f"{cpu['target']:.0%}",
                        f"{cpu['other']:.0%}",
                        fmt(pct(ttfd, 50)),
                        fmt(pct(ttfd, 99)),
                        sum(errors.values()),
                    ]
                )
    print(
        table(
            [
                "target",
                "answers/s",
                "cpu ms/answer",
                "pg cpu ms/answer",
                "target cpu",
                "other cpu",
                "ttfd p50",
                "ttfd p99",
                "errors",
            ],
            rows,
        )
    )
    if "full" in per_answer:
        print("\nCPU per answer, full server against:")
        others = [n for n in per_answer if n != "full"]
        print(
            table(
                ["target", "full / target"],
                [[n, ratio(per_answer["full"], per_answer[n])] for n in others],
            )
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--targets", default=f"full,full#{BEFORE_ISSUE_13},raw")
    parser.add_argument("--sockets", type=int, default=20)
    parser.add_argument("--duration", type=float, default=20.0, help="seconds measured")
    parser.add_argument("--warmup", type=float, default=8.0, help="seconds not measured")
    parser.add_argument("--no-pin", action="store_true", help="let every process use every CPU")
    run(main(parser.parse_args()))
