"""The stream contract, checked from the client's side: frames of one stream carry seq 1, 2, 3…,
`start` comes first (an `error` may come alone), and exactly one terminal frame ends it.

One checker for everyone who reads streams: the load tester, the benchmarks, the tests' client.
It is fed the frame's type and seq only, so any decoder can drive it.
"""

from __future__ import annotations

from protocol.frames import TERMINAL_TYPES

STREAM_TYPES = frozenset({"start", "sources", "delta", "done", "error"})
_TERMINAL_PREFIXES = tuple(f'{{"type":"{t}"' for t in sorted(TERMINAL_TYPES))
_TERMINAL_PREFIXES_B = tuple(p.encode() for p in _TERMINAL_PREFIXES)

# The names of the violations, for reports.
VIOLATIONS = (
    "extra_terminal",
    "frame_after_terminal",
    "unknown_type",
    "seq_missing",
    "seq_not_from_1",
    "seq_not_consecutive",
    "start_twice",
    "delta_before_start",
    "sources_before_start",
    "done_before_start",
)


def is_terminal(frame_json: str | bytes) -> bool:
    """True for an encoded `done` or `error` frame (as the server's codec writes them)."""
    if isinstance(frame_json, bytes):
        return frame_json.startswith(_TERMINAL_PREFIXES_B)
    return frame_json.startswith(_TERMINAL_PREFIXES)


class StreamContract:
    """One stream's frames as they arrive; `check` names the rule a frame breaks, if any."""

    __slots__ = ("ended", "seq", "started")

    def __init__(self, after_seq: int = 0, *, started: bool = False) -> None:
        self.seq = after_seq  # a resumed stream continues after the seq it was resumed from
        self.started = started or after_seq > 0
        self.ended = False

    def check(self, frame_type: str, seq: int | None) -> str | None:
        """Account one frame of this stream; the violation it shows, or None."""
        if self.ended:
            return "extra_terminal" if frame_type in TERMINAL_TYPES else "frame_after_terminal"
        if frame_type not in STREAM_TYPES:
            return "unknown_type"
        violation = None
        if seq is None:
            violation = "seq_missing"
            seq = self.seq + 1
        elif seq != self.seq + 1:
            violation = "seq_not_from_1" if self.seq == 0 else "seq_not_consecutive"
        self.seq = seq  # resynchronise, so one skipped number counts once
        if frame_type == "start":
            if self.started:
                violation = violation or "start_twice"
            self.started = True
        elif frame_type == "error":  # may come without `start` (rate_limited before anything)
            self.ended = True
        elif not self.started:
            violation = violation or f"{frame_type}_before_start"
        if frame_type == "done":
            self.ended = True
        return violation
