"""The load tester: statistics, the contract checker, and short runs against the live server."""

from __future__ import annotations

import asyncio
import json
import math
import random
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import numpy as np
import pytest
import websockets
from websockets.asyncio.server import ServerConnection

from server.errors import ConfigError
from server.tools.client import WireFrame, WireUsage
from server.tools.fake_llm import FakeLLM
from server.tools.loadtest.chart import write_png
from server.tools.loadtest.config import LoadConfig, parse_mix, parse_users, tokens_for
from server.tools.loadtest.engine import Snapshot, StreamTracker, run_load
from server.tools.loadtest.report import (
    LoadReport,
    Recorder,
    build_report,
    histogram_bin,
    histogram_percentile,
    percentile,
)
from tests.conftest import JWT_SECRET, ROOT, LiveServer, free_port, model_config

CHAPTER = "ros2-basics/ros2-nodes-and-topics"


@pytest.fixture
def paced_llm(fake_llm: FakeLLM) -> Iterator[FakeLLM]:
    """The fake model at 100 tokens/s, 20 tokens an answer, so streams have gaps; restored after."""
    with model_config(fake_llm, tokens_per_answer=20, tokens_per_second=100):
        yield fake_llm


# ---- statistics ----------------------------------------------------------------------------


def test_percentile_interpolates_like_numpy() -> None:
    assert percentile([], 50) is None
    assert percentile([7.0], 99) == 7.0
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.5
    assert percentile([1.0, 2.0, 3.0, 4.0], 100) == 4.0
    values = sorted(random.Random(1).expovariate(1.0) for _ in range(1001))
    for q in (50, 95, 99):
        assert percentile(values, q) == pytest.approx(float(np.percentile(values, q)))


def test_histogram_percentiles_are_within_one_percent() -> None:
    rng = random.Random(2)
    values = [rng.lognormvariate(-3, 1) for _ in range(20_000)]
    counts: dict[int, int] = {}
    for v in values:
        counts[histogram_bin(v)] = counts.get(histogram_bin(v), 0) + 1
    exact = sorted(values)
    for q in (50, 99):
        approx = histogram_percentile(counts, q)
        assert approx is not None
        assert approx == pytest.approx(exact[math.ceil(len(exact) * q / 100) - 1] * 1000, rel=0.01)
    assert histogram_percentile({}, 50) is None


def _frame(kind: str, seq: int | None, text: str | None = None, **fields: object) -> WireFrame:
    return WireFrame(type=kind, id="s1", seq=seq, text=text, **fields)  # type: ignore[arg-type]


def _feed(frames: list[tuple[float, WireFrame]]) -> tuple[Recorder, list[str | None]]:
    rec = Recorder(t0=0.0)
    tracker = StreamTracker(rec, kind=0, sent_at=0.0)
    return rec, [tracker.frame(frame, at) for at, frame in frames]


def test_tracker_times_first_delta_and_gaps_and_counts_usage() -> None:
    rec, violations = _feed(
        [
            (0.1, _frame("start", 1)),
            (0.15, _frame("sources", 2)),
            (0.3, _frame("delta", 3, "Hello")),
            (0.35, _frame("delta", 4, " wor")),
            (0.5, _frame("delta", 5, "ld")),
            (0.6, _frame("done", 6, usage=WireUsage(completion_tokens=3), cached=True)),
        ]
    )
    assert violations == [None] * 6
    assert list(rec.ttfd) == [pytest.approx(0.3)]
    assert list(rec.gap) == [pytest.approx(0.05), pytest.approx(0.15)]
    assert list(rec.gap_at) == [pytest.approx(0.35), pytest.approx(0.5)]
    assert (rec.deltas, rec.chars, rec.ok, rec.completion_tokens, rec.cached) == (3, 11, 1, 3, 1)


@pytest.mark.parametrize(
    ("frames", "expected"),
    [
        (
            [("start", 1), ("delta", 2), ("delta", 4), ("done", 5)],
            [None, None, "seq_not_consecutive", None],
        ),
        ([("start", 2), ("done", 3)], ["seq_not_from_1", None]),
        ([("start", 1), ("delta", None), ("done", 3)], [None, "seq_missing", None]),
        ([("start", 1), ("done", 2), ("error", 3)], [None, None, "extra_terminal"]),
        ([("start", 1), ("done", 2), ("delta", 3)], [None, None, "frame_after_terminal"]),
        ([("delta", 1), ("done", 2)], ["delta_before_start", "done_before_start"]),
        ([("start", 1), ("thinking", 2), ("done", 2)], [None, "unknown_type", None]),
        ([("start", 1), ("start", 2), ("done", 3)], [None, "start_twice", None]),
        ([("error", 1)], [None]),  # an error may end a stream that never started
    ],
)
def test_contract_checker(frames: list[tuple[str, int | None]], expected: list[str | None]) -> None:
    _, violations = _feed(
        [(0.1 * i, _frame(kind, seq, "x")) for i, (kind, seq) in enumerate(frames)]
    )
    assert violations == expected


def test_report_timeline_rates_json_and_saturation_warning(tmp_path: Path) -> None:
    rec = Recorder(t0=0.0)
    for second in range(4):
        tracker = StreamTracker(rec, kind=second % 3, sent_at=second + 0.0)
        for i, kind in enumerate(("start", "delta", "delta", "delta", "done")):
            tracker.frame(
                WireFrame(type=kind, id="s", seq=i + 1, text="ab"), second + 0.1 + 0.2 * i
            )
    report = build_report(
        rec,
        url="ws://x/v1/chat",
        started_at=0.0,
        duration_s=4.0,
        ramp_s=1.0,
        wall_s=4.0,
        cpu_s=3.6,
        cores=2,
        mix={"ask": 1.0},
        users=1,
        target_connections=1,
    )
    assert [b.deltas for b in report.timeline] == [3, 3, 3, 3]
    assert [b.streams_ok for b in report.timeline] == [1, 1, 1, 1]
    assert report.throughput.deltas_per_s == 3.0 and report.throughput.steady_deltas_per_s == 3.0
    assert report.ttfd_ms.p50 == pytest.approx(300.0)
    assert report.gap_ms.p99 == pytest.approx(200.0) and report.gap_ms.count == 8
    assert sum(report.gaps_between(1, 3).values()) == 4
    assert report.ttfds_between(1.0, 3.0) == [pytest.approx(300.0)] * 2
    assert any("saturated" in w for w in report.warnings)
    assert "saturated" in report.summary_text()
    assert LoadReport.from_json(report.to_json()) == report
    write_png(report, tmp_path / "chart.png")
    assert (tmp_path / "chart.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_config_parsing_and_validation() -> None:
    assert parse_mix("ask=70, selection=20,chapter=10") == {
        "ask": 70,
        "selection": 20,
        "chapter": 10,
    }
    assert (parse_users("per-connection"), parse_users("shared"), parse_users("7")) == (None, 1, 7)
    with pytest.raises(ConfigError):
        parse_mix("ask")
    for bad in (
        LoadConfig(secret="s", mix={"chapter": 1}),  # no chapter ids
        LoadConfig(secret="s", mix={"poem": 1}),
        LoadConfig(),  # neither a secret nor a token command
        LoadConfig(secret="s", ramp=30, duration=30),
    ):
        with pytest.raises(ConfigError):
            bad.validate()
    assert LoadConfig(secret="s", connections=10, users=3).distinct_users == 3


async def test_a_failing_token_command_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="exited 3"):
        await tokens_for(LoadConfig(token_command="echo nope >&2; exit 3", connections=1))


# ---- against the live server ---------------------------------------------------------------


async def test_short_mixed_run_against_the_live_server(
    live: LiveServer, paced_llm: FakeLLM, tmp_path: Path
) -> None:
    snapshots: list[Snapshot] = []
    config = LoadConfig(
        url=live.ws_url,
        connections=5,
        duration=2.0,
        ramp=0.5,
        mix={"ask": 50, "selection": 25, "chapter": 25},
        chapters=(CHAPTER,),
        secret=JWT_SECRET,
        user_prefix="lt-mixed-",
        grace=15,
        seed=3,
    )
    report = await run_load(config, progress=snapshots.append)

    assert report.connections.opened == 5 and report.connections.failed == {}
    assert report.streams.ok > 0 and report.streams.failed == {}
    assert set(report.streams.sent_by_kind) == {"ask", "selection", "chapter"}
    assert report.violations == {}, report.violation_examples
    assert report.ttfd_ms.p50 is not None and report.ttfd_ms.p99 is not None
    assert report.ttfd_ms.count == report.streams.ok
    assert report.gap_ms.count > 0 and report.throughput.deltas > report.streams.ok
    assert report.throughput.completion_tokens > 0
    assert snapshots and snapshots[-1].streams_ok > 0
    path = tmp_path / "report.json"
    path.write_bytes(report.to_json())
    assert LoadReport.from_json(path.read_bytes()) == report
    assert json.loads(path.read_text())["streams"]["ok"] == report.streams.ok
    await asyncio.to_thread(write_png, report, tmp_path / "report.png")
    assert (tmp_path / "report.png").stat().st_size > 1000


async def test_cli_with_token_command_runs_it_once_per_user(
    live: LiveServer, paced_llm: FakeLLM, tmp_path: Path
) -> None:
    calls = tmp_path / "calls.txt"
    mint = (
        "import sys, time, jwt; open(sys.argv[2], 'a').write(sys.argv[1] + '\\n'); "
        "print(jwt.encode({'sub': sys.argv[1], 'exp': int(time.time()) + 600}, sys.argv[3], algorithm='HS256'))"
    )
    command = f'{sys.executable} -c "{mint}" {{user}} {calls} {JWT_SECRET}'
    process = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "server.cli", "loadtest", "--url", live.ws_url),
        *("-c", "3", "--duration", "1", "--users", "2", "--user-prefix", "lt-cmd-"),
        *("--token-command", command, "--quiet"),
        *("--json", str(tmp_path / "r.json"), "--png", str(tmp_path / "r.png")),
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await process.communicate()
    assert process.returncode == 0, (out + err).decode()
    assert sorted(calls.read_text().split()) == ["lt-cmd-0", "lt-cmd-1"]
    report = LoadReport.from_json((tmp_path / "r.json").read_bytes())
    assert report.connections.opened == 3 and report.users == 2 and report.streams.ok > 0
    assert b"time to first delta" in out
    assert (tmp_path / "r.png").stat().st_size > 1000


# ---- against a server that breaks the contract ---------------------------------------------


@pytest.fixture
async def rude_server() -> AsyncIterator[str]:
    """A socket server that skips a seq, sends two terminals, then closes 1000 mid-stream."""

    async def handle(ws: ServerConnection) -> None:
        await ws.send(json.dumps({"type": "ready", "session_id": "x", "user_id": "u"}))
        async for raw in ws:
            request = json.loads(raw)
            sid = request["id"]
            await ws.send(json.dumps({"type": "start", "id": sid, "seq": 1}))
            if sid.endswith("-3"):
                await ws.close(1000)
                return
            await ws.send(json.dumps({"type": "delta", "id": sid, "seq": 3, "text": "a"}))
            await ws.send(json.dumps({"type": "done", "id": sid, "seq": 4}))
            await ws.send(json.dumps({"type": "done", "id": sid, "seq": 5}))

    port = free_port()
    async with websockets.serve(handle, "127.0.0.1", port):
        yield f"ws://127.0.0.1:{port}/"


async def test_violations_seen_over_a_real_socket(rude_server: str) -> None:
    config = LoadConfig(url=rude_server, connections=1, duration=1.0, secret=JWT_SECRET)
    report = await run_load(config)
    assert report.streams.ok == 2 and report.streams.failed == {"closed_1000": 1}
    assert report.violations == {
        "seq_not_consecutive": 2,
        "extra_terminal": 2,
        "missing_terminal": 1,
    }
    assert report.connections.dropped == {"close_1000": 1}


async def test_new_questions_are_each_unlike_any_before(live: LiveServer) -> None:
    config = LoadConfig(
        url=live.ws_url,
        connections=3,
        duration=1.5,
        mix={"ask": 1, "selection": 1},
        secret=JWT_SECRET,
        user_prefix="lt-new-",
        grace=15,
        seed=5,
        new_questions=True,
        # At least 0.1 s between a user's questions: at most 15 in 1.5 s, under the per-user
        # limit (30 a minute) however fast the server answers (unpaced, hundreds were refused).
        think=0.2,
    )
    report = await run_load(config)
    assert report.streams.ok >= 3 and report.streams.failed == {}
    store = live.services.store
    asked: list[str] = []
    for user in (f"lt-new-{n}" for n in range(3)):
        for conversation in await store.list_conversations(user):
            asked += [m["question"] for m in await store.list_messages(user, conversation["id"])]
    assert len(asked) == report.streams.ok and len(set(asked)) == len(asked), asked
