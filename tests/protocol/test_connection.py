"""The connection's rules with no socket: inputs in, actions out (protocol/connection.py)."""

from __future__ import annotations

import json

import pytest

from protocol.codes import CloseCode, ErrorCode
from protocol.connection import (
    TRANSITIONS,
    Action,
    CancelStream,
    ChatConnection,
    Close,
    OpenStream,
    ResumeStream,
    Send,
    SetTimer,
    State,
    Timer,
    Verify,
)
from protocol.frames import Ask, Error, Pong, Ready, error_frame
from protocol.limits import ConnectionLimits

LIMITS = ConnectionLimits(max_streams=2, invalid_limit=3, invalid_window_s=10.0)
T0 = 1000.0  # monotonic seconds
WALL = 1_700_000_000.0


def ready_connection(limits: ConnectionLimits = LIMITS) -> ChatConnection:
    conn = ChatConnection(limits, session_id="s1")
    assert conn.connected("tok", T0) == [Verify("tok")]
    conn.authenticated("reader", int(WALL) + 600, WALL)
    return conn


def sends(actions: list[Action]) -> list[object]:
    return [a.frame for a in actions if isinstance(a, Send)]


def errors(actions: list[Action]) -> list[tuple[ErrorCode, str | None]]:
    return [(f.code, f.id) for f in sends(actions) if isinstance(f, Error)]


def closes(actions: list[Action]) -> list[CloseCode]:
    return [a.code for a in actions if isinstance(a, Close)]


def ask(sid: str) -> str:
    return json.dumps({"type": "ask", "id": sid, "question": "What is a ZMP?"})


# ---- authentication ------------------------------------------------------------------------


def test_a_header_token_is_verified_at_once() -> None:
    conn = ChatConnection(LIMITS, session_id="s1")
    assert conn.connected("tok", T0) == [Verify("tok")]
    assert conn.state is State.AUTHENTICATING


def test_without_a_header_the_first_frame_must_be_auth_within_the_deadline() -> None:
    conn = ChatConnection(LIMITS, session_id="s1")
    assert conn.connected(None, T0) == [SetTimer(Timer.AUTH, LIMITS.auth_timeout_s)]
    actions = conn.receive('{"type":"auth","token":"tok"}', T0 + 1)
    assert actions == [SetTimer(Timer.AUTH, None), Verify("tok")]
    assert conn.state is State.AUTHENTICATING


def test_the_auth_deadline_closes_4408() -> None:
    conn = ChatConnection(LIMITS, session_id="s1")
    conn.connected(None, T0)
    assert closes(conn.timer_fired(Timer.AUTH, T0 + 10)) == [CloseCode.AUTH_TIMEOUT]
    assert conn.state is State.CLOSING
    assert conn.receive('{"type":"auth","token":"late"}', T0 + 11) == []


def test_a_first_frame_that_is_not_auth_closes_4401() -> None:
    conn = ChatConnection(LIMITS, session_id="s1")
    conn.connected(None, T0)
    actions = conn.receive('{"type":"ping"}', T0)
    assert errors(actions) == [(ErrorCode.UNAUTHORIZED, None)]
    assert closes(actions) == [CloseCode.UNAUTHENTICATED]


def test_an_invalid_first_frame_says_why_then_closes_4401() -> None:
    conn = ChatConnection(LIMITS, session_id="s1")
    conn.connected(None, T0)
    actions = conn.receive("{not json", T0)
    assert [code for code, _ in errors(actions)] == [
        ErrorCode.INVALID_MESSAGE,
        ErrorCode.UNAUTHORIZED,
    ]
    assert closes(actions) == [CloseCode.UNAUTHENTICATED]


def test_authenticated_sends_ready_and_sets_the_expiry_and_idle_timers() -> None:
    conn = ChatConnection(LIMITS, session_id="s1")
    conn.connected("tok", T0)
    actions = conn.authenticated("reader", int(WALL) + 600, WALL)
    ready = sends(actions)[0]
    assert isinstance(ready, Ready)
    assert (ready.user_id, ready.session_id, ready.limits.max_streams) == ("reader", "s1", 2)
    assert SetTimer(Timer.EXPIRY, 600.0) in actions
    assert SetTimer(Timer.IDLE, LIMITS.idle_timeout_s / 4) in actions
    assert conn.state is State.READY


def test_a_rejected_token_closes_4401_with_the_reason() -> None:
    conn = ChatConnection(LIMITS, session_id="s1")
    conn.connected("tok", T0)
    actions = conn.rejected(ErrorCode.TOKEN_EXPIRED, "token expired")
    frame = sends(actions)[0]
    assert isinstance(frame, Error) and frame.code == ErrorCode.TOKEN_EXPIRED
    assert frame.retryable is False
    assert closes(actions) == [CloseCode.UNAUTHENTICATED]


def test_frames_while_authenticating_are_refused_not_dispatched() -> None:
    conn = ChatConnection(LIMITS, session_id="s1")
    conn.connected("tok", T0)
    actions = conn.receive(ask("early"), T0)
    assert errors(actions) == [(ErrorCode.UNAUTHORIZED, None)]
    assert not any(isinstance(a, OpenStream) for a in actions)


# ---- refresh and expiry --------------------------------------------------------------------


def test_refresh_for_the_same_user_sends_a_new_ready() -> None:
    conn = ready_connection()
    assert conn.receive('{"type":"auth","token":"fresh"}', T0 + 5) == [Verify("fresh")]
    actions = conn.authenticated("reader", int(WALL) + 1200, WALL + 5)
    assert isinstance(sends(actions)[0], Ready)
    assert SetTimer(Timer.EXPIRY, 1195.0) in actions
    assert conn.state is State.READY


def test_refresh_for_another_user_closes_4401() -> None:
    conn = ready_connection()
    conn.receive('{"type":"auth","token":"other"}', T0 + 5)
    actions = conn.authenticated("mallory", int(WALL) + 1200, WALL + 5)
    assert errors(actions) == [(ErrorCode.UNAUTHORIZED, None)]
    assert closes(actions) == [CloseCode.UNAUTHENTICATED]
    assert conn.user_id == "reader"


def test_expiry_warns_then_closes_after_the_grace() -> None:
    conn = ready_connection()
    actions = conn.timer_fired(Timer.EXPIRY, T0 + 600)
    assert errors(actions) == [(ErrorCode.TOKEN_EXPIRED, None)]
    assert SetTimer(Timer.GRACE, LIMITS.token_expiry_grace_s) in actions
    assert conn.state is State.EXPIRED
    assert closes(conn.timer_fired(Timer.GRACE, T0 + 605)) == [CloseCode.UNAUTHENTICATED]


def test_a_refresh_within_the_grace_keeps_the_connection() -> None:
    conn = ready_connection()
    conn.timer_fired(Timer.EXPIRY, T0 + 600)
    conn.receive('{"type":"auth","token":"fresh"}', T0 + 601)
    actions = conn.authenticated("reader", int(WALL) + 1800, WALL + 601)
    assert SetTimer(Timer.GRACE, None) in actions
    assert conn.state is State.READY
    assert conn.timer_fired(Timer.GRACE, T0 + 605) == []  # a stale timer does nothing


def test_new_streams_wait_for_a_refresh_once_the_token_expired() -> None:
    conn = ready_connection()
    conn.timer_fired(Timer.EXPIRY, T0 + 600)
    actions = conn.receive(ask("late"), T0 + 601)
    assert errors(actions) == [(ErrorCode.TOKEN_EXPIRED, "late")]
    assert conn.attached() == []


# ---- streams -------------------------------------------------------------------------------


def test_ask_opens_a_stream_and_counts_it() -> None:
    conn = ready_connection()
    actions = conn.receive(ask("a"), T0)
    assert actions == [OpenStream(Ask(id="a", question="What is a ZMP?"))]
    assert conn.live_streams() == 1


def test_a_live_id_again_is_duplicate_id() -> None:
    conn = ready_connection()
    conn.receive(ask("a"), T0)
    assert errors(conn.receive(ask("a"), T0)) == [(ErrorCode.DUPLICATE_ID, "a")]


def test_an_ended_id_may_be_asked_again() -> None:
    conn = ready_connection()
    conn.receive(ask("a"), T0)
    conn.stream_ended("a")
    assert isinstance(conn.receive(ask("a"), T0)[0], OpenStream)


def test_too_many_streams_on_one_connection() -> None:
    conn = ready_connection()
    conn.receive(ask("a"), T0)
    conn.receive(ask("b"), T0)
    assert errors(conn.receive(ask("c"), T0)) == [(ErrorCode.TOO_MANY_STREAMS, "c")]
    conn.stream_ended("a")
    assert isinstance(conn.receive(ask("c"), T0)[0], OpenStream)


def test_resumed_streams_count_against_the_limit() -> None:
    conn = ready_connection()
    conn.receive('{"type":"resume","id":"r1","after_seq":3}', T0)
    conn.receive('{"type":"resume","id":"r2","after_seq":0}', T0)
    actions = conn.receive('{"type":"resume","id":"r3","after_seq":0}', T0)
    assert errors(actions) == [(ErrorCode.TOO_MANY_STREAMS, "r3")]


def test_resuming_an_id_attached_here_is_duplicate_id_even_when_it_ended() -> None:
    conn = ready_connection()
    assert conn.receive('{"type":"resume","id":"r","after_seq":3}', T0) == [ResumeStream("r", 3)]
    conn.stream_ended("r")
    actions = conn.receive('{"type":"resume","id":"r","after_seq":0}', T0)
    assert errors(actions) == [(ErrorCode.DUPLICATE_ID, "r")]


def test_a_refused_stream_is_not_attached_and_the_error_names_it() -> None:
    conn = ready_connection()
    conn.receive('{"type":"resume","id":"gone","after_seq":0}', T0)
    refusal = error_frame(ErrorCode.NOT_FOUND, "no such stream")
    actions = conn.refused("gone", refusal)
    assert errors(actions) == [(ErrorCode.NOT_FOUND, "gone")]
    assert conn.attached() == []


def test_a_stream_taken_over_by_another_connection_is_released() -> None:
    conn = ready_connection()
    conn.receive(ask("a"), T0)
    conn.stream_released("a")
    assert conn.attached() == [] and conn.live_streams() == 0


def test_cancel_and_ping() -> None:
    conn = ready_connection()
    assert conn.receive('{"type":"cancel","id":"a"}', T0) == [CancelStream("a")]
    assert sends(conn.receive('{"type":"ping","nonce":"n"}', T0)) == [Pong(nonce="n")]


# ---- invalid frames ------------------------------------------------------------------------


def test_invalid_frames_are_answered_and_the_connection_stays_open() -> None:
    conn = ready_connection()
    actions = conn.receive('{"type":"ask","id":"x"}', T0)
    assert errors(actions) == [(ErrorCode.INVALID_MESSAGE, "x")]
    assert errors(conn.receive(None, T0)) == [(ErrorCode.INVALID_MESSAGE, None)]
    assert conn.state is State.READY


def test_too_many_invalid_frames_within_the_window_close_1008() -> None:
    conn = ready_connection()
    for i in range(LIMITS.invalid_limit):
        assert closes(conn.receive("junk", T0 + i)) == []
    assert closes(conn.receive("junk", T0 + 3)) == [CloseCode.POLICY_VIOLATION]


def test_invalid_frames_spread_beyond_the_window_are_forgiven() -> None:
    conn = ready_connection()
    for i in range(10):
        assert closes(conn.receive("junk", T0 + i * 5.0)) == []


# ---- idle ----------------------------------------------------------------------------------


def test_idle_without_streams_closes_1000() -> None:
    conn = ready_connection()
    later = T0 + LIMITS.idle_timeout_s + 1
    assert closes(conn.timer_fired(Timer.IDLE, later)) == [CloseCode.NORMAL]


def test_a_live_stream_keeps_an_idle_connection_open() -> None:
    conn = ready_connection()
    conn.receive(ask("a"), T0)
    later = T0 + LIMITS.idle_timeout_s + 1
    assert conn.timer_fired(Timer.IDLE, later) == [SetTimer(Timer.IDLE, LIMITS.idle_timeout_s / 4)]


def test_closing_is_final() -> None:
    conn = ready_connection()
    assert closes(conn.close(CloseCode.SERVICE_RESTART, "restart")) == [CloseCode.SERVICE_RESTART]
    assert conn.close(CloseCode.NORMAL) == []
    assert conn.receive(ask("a"), T0) == []
    assert conn.timer_fired(Timer.IDLE, T0 + 10_000) == []


@pytest.mark.parametrize(("state", "trigger"), list(TRANSITIONS))
def test_every_transition_leads_to_a_known_state(state: State, trigger: object) -> None:
    assert TRANSITIONS[(state, trigger)] in State  # type: ignore[index]
