"""The stream-contract checker (protocol/contract.py)."""

from __future__ import annotations

import pytest

from protocol import codec
from protocol.codes import ErrorCode
from protocol.contract import StreamContract, is_terminal
from protocol.frames import Delta, Done, Error, Timings, error_frame


def run(frames: list[tuple[str, int | None]], after_seq: int = 0) -> list[str | None]:
    contract = StreamContract(after_seq)
    return [contract.check(kind, seq) for kind, seq in frames]


def test_a_whole_stream_keeps_the_contract() -> None:
    frames = [("start", 1), ("sources", 2), ("delta", 3), ("delta", 4), ("done", 5)]
    assert run(frames) == [None] * 5


def test_an_error_may_end_a_stream_that_never_started() -> None:
    assert run([("error", 1)]) == [None]


@pytest.mark.parametrize(
    ("frames", "violation"),
    [
        ([("start", 2)], "seq_not_from_1"),
        ([("start", 1), ("delta", 3)], "seq_not_consecutive"),
        ([("start", 1), ("delta", None)], "seq_missing"),
        ([("delta", 1)], "delta_before_start"),
        ([("sources", 1)], "sources_before_start"),
        ([("done", 1)], "done_before_start"),
        ([("start", 1), ("start", 2)], "start_twice"),
        ([("start", 1), ("done", 2), ("done", 3)], "extra_terminal"),
        ([("start", 1), ("error", 2), ("delta", 3)], "frame_after_terminal"),
        ([("start", 1), ("mystery", 2)], "unknown_type"),
    ],
)
def test_each_violation_is_named(frames: list[tuple[str, int | None]], violation: str) -> None:
    assert run(frames)[-1] == violation


def test_one_skipped_number_counts_once() -> None:
    assert run([("start", 1), ("delta", 3), ("delta", 4)]) == [None, "seq_not_consecutive", None]


def test_a_resumed_stream_continues_after_its_seq() -> None:
    assert run([("delta", 4), ("done", 5)], after_seq=3) == [None, None]


def test_terminal_frames_are_recognised_encoded() -> None:
    done = Done(id="a", seq=2, finish_reason="stop", timings=Timings(1.0, 2.0))
    assert is_terminal(codec.encode(done))
    assert is_terminal(codec.encode(error_frame(ErrorCode.INTERNAL, "x", id="a", seq=2)))
    assert not is_terminal(codec.encode(Delta(id="a", seq=1, text='{"type":"done"')))
    assert isinstance(error_frame(ErrorCode.RATE_LIMITED, "slow down"), Error)
