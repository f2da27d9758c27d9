"""The limits of one connection, declared once: the server's settings take their defaults from
here, and `ready.limits` tells the client."""

from __future__ import annotations

import dataclasses

MAX_FRAME_BYTES = 131_072  # a client frame over this closes the socket with 1009
MAX_QUESTION_CHARS = 4000
MAX_SELECTION_CHARS = 8000
STREAM_ID_MAX = 64


@dataclasses.dataclass(frozen=True, slots=True)
class ConnectionLimits:
    """How much one connection may do before it is refused or closed."""

    max_streams: int = 8  # live streams on one connection (too_many_streams)
    auth_timeout_s: float = 10.0  # to send `auth` when no header carried a token (4408)
    token_expiry_grace_s: float = 5.0  # from `token_expired` to the 4401 close
    idle_timeout_s: float = 600.0  # no frames and no streams for this long: close 1000
    invalid_window_s: float = 10.0
    invalid_limit: int = 50  # invalid frames within the window before 1008
    control_frames: int = 64  # pongs and errors queued before the reader waits for the writer
    max_buffered_chars: int = 1_000_000  # text waiting for a slow reader, across its streams


DEFAULT_LIMITS = ConnectionLimits()
