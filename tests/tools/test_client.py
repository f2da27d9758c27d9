"""The benchmarks' timed stream reader (server/tools/client.py)."""

from __future__ import annotations

import json
from typing import Any, cast

import pytest
from websockets.asyncio.client import ClientConnection

from server.tools.client import ContractViolation, StreamResult, read_stream


class _Frames:
    """Stands in for a socket: hands out the given frames, encoded, in order."""

    def __init__(self, *frames: dict[str, Any]) -> None:
        self._frames = [json.dumps(f).encode() for f in frames]

    async def recv(self, decode: bool = True) -> bytes:
        return self._frames.pop(0)


def _delta(seq: int) -> dict[str, Any]:
    return {"type": "delta", "id": "s", "seq": seq, "text": f"{seq} "}


async def test_a_stream_read_in_parts_is_checked_as_one() -> None:
    """Read until two deltas, then to the end (as bench.cancel does): the second part goes on
    from the seq the first reached."""
    socket = cast(
        ClientConnection,
        _Frames(
            {"type": "start", "id": "s", "seq": 1, "message_id": "m"},
            _delta(2),
            _delta(3),
            _delta(4),
            {"type": "done", "id": "s", "seq": 5, "finish_reason": "cancelled"},
        ),
    )
    result = StreamResult(sent_at=0.0)
    await read_stream(socket, "s", result, until_deltas=2)
    assert result.deltas == 2 and result.ended_at is None
    await read_stream(socket, "s", result)
    assert result.deltas == 3 and result.finish == "cancelled"


async def test_a_gap_across_the_parts_is_a_violation() -> None:
    socket = cast(
        ClientConnection,
        _Frames({"type": "start", "id": "s", "seq": 1, "message_id": "m"}, _delta(2), _delta(4)),
    )
    result = StreamResult(sent_at=0.0)
    await read_stream(socket, "s", result, until_deltas=1)
    with pytest.raises(ContractViolation):
        await read_stream(socket, "s", result)
