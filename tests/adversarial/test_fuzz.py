"""Bad input against the live server: generated frames, size limits, floods. Generated HTTP
requests are sent by tests/web/test_openapi.py, against the document the server publishes.

Generated runs are bounded (`FUZZ_EXAMPLES` frames, default 300) and derandomized, so CI sees the
same inputs every run; `FUZZ_RANDOM=1` explores new ones. Run with `-s` to see how many inputs
were tried.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import re
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit

import psutil
import pytest
import websockets
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from websockets.sync.client import ClientConnection
from websockets.sync.client import connect as sync_connect

from protocol import codec, languages
from server.services import Services
from server.tools.client import connect
from server.tools.fake_llm import FakeLLM
from tests.conftest import LiveServer, server_with, token_for

FRAME_EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "300"))
DERANDOMIZE = os.environ.get("FUZZ_RANDOM") != "1"
MAX_FRAME = 131_072
ROTATE_AFTER_INVALID = 40  # the server closes with 1008 after 50 invalid frames in 10 s
FUZZ_USER = "fuzz"
FRAME_TYPES = ("auth", "ask", "chapter", "cancel", "resume", "ping")
LANGUAGE = re.compile(languages.PATTERN)
SETTINGS = settings(
    max_examples=FRAME_EXAMPLES,
    deadline=None,
    database=None,
    derandomize=DERANDOMIZE,
    suppress_health_check=list(HealthCheck),
)

# U+0000 is left out of the text of frames meant to be valid: it is refused in every string
# field (the `nul` case of `broken_fields` puts it in each).
CHARS = st.characters(codec="utf-8", exclude_characters="\x00")


def _dump(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)


# ---- generated frames ------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Probe:
    """One input and what protocol v1 says the server must answer."""

    kind: str
    expect: str  # invalid | pong | not_found | stream | ready | closed
    payload: str | bytes = ""
    text: bool = True  # sent as a text frame (else binary)
    frame: dict[str, Any] | None = None  # sent with a fresh stream id (asks) or token (auth)
    stream_id: str | None = None
    nonce: str | None = None
    field: str | None = None  # the field an invalid frame gets wrong; the error must name it
    outcomes: tuple[str, ...] = ()  # allowed ends of a stream: "done" or error codes
    close_code: int | None = None


def _text(min_size: int = 0, max_size: int = 200) -> st.SearchStrategy[str]:
    return st.text(CHARS, min_size=min_size, max_size=max_size)


IDS = _text(1, 64).filter(lambda s: not s.startswith("ask-"))
NONBLANK = _text(1, 300).filter(lambda s: bool(s.strip()))
SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | _text(max_size=40)
)
JSON_VALUES = st.recursive(
    SCALARS,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(_text(max_size=10), inner, max_size=4)
    ),
    max_leaves=12,
)


@st.composite
def pings(draw: st.DrawFn) -> Probe:
    nonce = draw(st.none() | _text(max_size=128))
    frame = (
        {"type": "ping"}
        if nonce is None and draw(st.booleans())
        else {"type": "ping", "nonce": nonce}
    )
    return Probe("ping", "pong", _dump(frame), nonce=nonce)


@st.composite
def unknown_streams(draw: st.DrawFn) -> Probe:
    sid = draw(IDS)
    frame: dict[str, Any] = {"type": "cancel", "id": sid}
    if draw(st.booleans()):
        frame = {"type": "resume", "id": sid, "after_seq": draw(st.integers(0, 2**63 - 1))}
    return Probe(frame["type"], "not_found", _dump(frame), stream_id=sid)


@st.composite
def asks(draw: st.DrawFn) -> Probe:
    frame: dict[str, Any] = {"type": "ask", "question": draw(NONBLANK)}
    variant = draw(st.sampled_from(["plain", "selection", "conversation", "chapter"]))
    outcomes = ("done",)
    if variant == "selection":
        selection: dict[str, Any] = {"text": draw(NONBLANK)}
        if draw(st.booleans()):
            selection["page_url"] = draw(_text(max_size=300))
        if draw(st.booleans()):
            selection["chapter"] = draw(_text(1, 100))  # an unknown chapter is only a hint
        frame["selection"] = selection
    elif variant == "conversation":
        frame["conversation_id"] = draw(IDS)
        outcomes = ("not_found",)
    elif variant == "chapter":
        frame["chapter"] = draw(_text(1, 256))
        outcomes = ("not_found",)
    return Probe(f"ask-{variant}", "stream", frame=frame, outcomes=outcomes)


@st.composite
def chapters(draw: st.DrawFn) -> Probe:
    frame: dict[str, Any] = {
        "type": "chapter",
        "chapter": draw(_text(1, 256)),
        "mode": draw(st.sampled_from(["personalize", "translate"])),
    }
    # a language we translate into (an unknown one is an invalid frame: `broken_fields` sends those)
    language = draw(st.none() | st.sampled_from(sorted(languages.LANGUAGES)))
    if language is not None and draw(st.booleans()):
        language += draw(st.from_regex(r"\A(-[A-Za-z0-9]{2,8}){1,2}\Z"))
    if language is not None:
        frame["language"] = language
    # no such chapter (or translate without a language): the stream ends with an error
    return Probe("chapter", "stream", frame=frame, outcomes=("not_found", "invalid_message"))


@st.composite
def auths(draw: st.DrawFn) -> Probe:
    if draw(st.booleans()):
        return Probe("auth-refresh", "ready", frame={"type": "auth"})
    frame = {"type": "auth", "token": draw(_text(1, 300))}
    return Probe("auth-junk", "closed", _dump(frame), close_code=4401)


@st.composite
def lone_surrogates(draw: st.DrawFn) -> Probe:
    """A valid frame with a lone UTF-16 surrogate escape in a string: not text, so invalid."""
    kind = draw(st.sampled_from(["ask", "ping", "resume", "cancel"]))
    frame = _dump(_valid(kind, draw))
    escape = "\\u" + format(draw(st.integers(0xD800, 0xDFFF)), "04x")
    at = frame.rindex('"', 0, len(frame) - 1)  # inside the frame's last string value
    return Probe(f"surrogate-{kind}", "invalid", frame[:at] + escape + frame[at:])


@st.composite
def malformed_json(draw: st.DrawFn) -> Probe:
    text = draw(_text(max_size=300))
    with contextlib.suppress(ValueError):
        value = json.loads(text)
        assume(not (isinstance(value, dict) and value.get("type") in FRAME_TYPES))
    return Probe("malformed-json", "invalid", text)


@st.composite
def truncated_frames(draw: st.DrawFn) -> Probe:
    frame = _dump({"type": "ask", "id": draw(IDS), "question": draw(NONBLANK)})
    return Probe("truncated", "invalid", frame[: draw(st.integers(1, len(frame) - 1))])


@st.composite
def not_objects(draw: st.DrawFn) -> Probe:
    value = draw(JSON_VALUES.filter(lambda v: not isinstance(v, dict)))
    return Probe("not-an-object", "invalid", _dump(value))


@st.composite
def unknown_types(draw: st.DrawFn) -> Probe:
    value = draw(st.dictionaries(_text(max_size=12), JSON_VALUES, max_size=5))
    kind = draw(st.none() | JSON_VALUES.filter(lambda v: v not in FRAME_TYPES))
    if kind is not None:
        value["type"] = kind
    else:
        value.pop("type", None)
    return Probe("unknown-type", "invalid", _dump(value), field="type")


def _valid(kind: str, draw: st.DrawFn) -> dict[str, Any]:
    fields: dict[str, dict[str, Any]] = {
        "auth": {"token": "x.y.z"},
        "ask": {"id": draw(IDS), "question": draw(NONBLANK)},
        "chapter": {"id": draw(IDS), "chapter": draw(_text(1, 50)), "mode": "translate"},
        "cancel": {"id": draw(IDS)},
        "resume": {"id": draw(IDS), "after_seq": 0},
        "ping": {"nonce": draw(_text(max_size=20))},
    }
    return {"type": kind, **fields[kind]}


# field -> (JSON type, min length, max length, required); lengths are in characters
STRING_FIELDS: dict[str, dict[str, tuple[int, int, bool]]] = {
    "auth": {"token": (1, 16_384, True)},
    "ask": {
        "id": (1, 64, True),
        "question": (1, 4000, True),
        "conversation_id": (1, 64, False),
        "chapter": (1, 256, False),
    },
    "chapter": {"id": (1, 64, True), "chapter": (1, 256, True)},
    "cancel": {"id": (1, 64, True)},
    "resume": {"id": (1, 64, True)},
    "ping": {"nonce": (0, 128, False)},
}
NOT_OBJECTS = (
    st.integers() | st.floats(allow_nan=False) | st.booleans() | st.lists(SCALARS, max_size=3)
)
NOT_STRINGS = NOT_OBJECTS | st.dictionaries(_text(max_size=5), SCALARS, max_size=3)


@st.composite
def broken_fields(draw: st.DrawFn) -> Probe:
    """A frame of a known type with exactly one field wrong."""
    kind = draw(st.sampled_from(FRAME_TYPES))
    frame = _valid(kind, draw)
    strings = STRING_FIELDS[kind]
    hows = ("type", "long", "short", "missing", "nul")
    choices = [f"{name}:{how}" for name in strings for how in hows]
    choices += {
        "ask": [
            "question:blank",
            "selection:type",
            "selection:blank",
            "selection:long",
            "selection:page_url",
            "selection:chapter",
            "selection:nul",
        ],
        "chapter": ["mode:enum", "mode:missing", "language:pattern"],
        "resume": ["after_seq:negative", "after_seq:type", "after_seq:missing"],
    }.get(kind, [])
    name, how = draw(st.sampled_from(choices)).split(":")
    if name in strings:
        lo, hi, required = strings[name]
        if (how == "short" and lo == 0) or (how == "missing" and not required):
            how = "long"
        if how == "type":
            frame[name] = draw(NOT_STRINGS if not required else NOT_STRINGS | st.none())
        elif how == "long":
            frame[name] = "x" * draw(st.integers(hi + 1, hi + 64))
        elif how == "short":
            frame[name] = ""
        elif how == "nul":
            value = str(frame.get(name) or "x")
            at = draw(st.integers(0, len(value)))
            frame[name] = (value[:at] + "\x00" + value[at:])[: max(hi, 1)]
        else:
            frame.pop(name, None)
    elif name == "question":
        frame["question"] = draw(st.text(" \t\n\r\u3000\u2003", min_size=1, max_size=20))
    elif name == "selection":
        frame["selection"] = {
            "type": draw(NOT_OBJECTS | _text(max_size=10)),
            "blank": {"text": draw(st.text(" \t\n", min_size=1, max_size=10))},
            "long": {"text": "y" * draw(st.integers(8001, 8100))},
            "page_url": {"text": "fine", "page_url": "u" * draw(st.integers(2049, 2100))},
            "chapter": {"text": "fine", "chapter": draw(st.sampled_from(["", "c" * 257]))},
            "nul": draw(
                st.sampled_from(
                    [
                        {"text": "zero\x00moment"},
                        {"text": "fine", "page_url": "/docs/\x00"},
                        {"text": "fine", "chapter": "\x00"},
                    ]
                )
            ),
        }[how]
    elif name == "mode":
        if how == "missing":
            frame.pop("mode")
        else:
            frame["mode"] = draw(
                JSON_VALUES.filter(lambda v: v not in ("personalize", "translate"))
            )
    elif name == "language":
        frame["language"] = draw(
            _text(max_size=40).filter(lambda s: not LANGUAGE.match(s) or len(s) > 35)
        )
    elif how == "negative":
        frame["after_seq"] = draw(st.integers(max_value=-1))
    elif how == "type":
        frame["after_seq"] = draw(
            st.none() | st.booleans() | st.floats(allow_nan=False) | _text(max_size=10)
        )
    else:
        frame.pop("after_seq")
    sid = frame.get("id")
    return Probe(
        f"broken-{kind}.{name}",
        "invalid",
        _dump(frame),
        stream_id=sid if isinstance(sid, str) else None,
        field=name,
    )


def _invalid_utf8(data: bytes) -> bool:
    try:
        data.decode()
    except UnicodeDecodeError:
        return True
    return False


FRAMES = st.one_of(
    pings(),
    unknown_streams(),
    asks(),
    chapters(),
    auths(),
    malformed_json(),
    lone_surrogates(),
    truncated_frames(),
    not_objects(),
    unknown_types(),
    broken_fields(),
    broken_fields(),  # the richest family gets twice the weight
    st.binary(max_size=300).map(lambda b: Probe("binary", "invalid", b, text=False)),
    st.binary(min_size=1, max_size=64)
    .filter(_invalid_utf8)
    .map(lambda b: Probe("invalid-utf8-text", "closed", b, close_code=1007)),
    st.integers(MAX_FRAME + 1, 3 * MAX_FRAME).map(
        lambda n: Probe(
            "oversize",
            "closed",
            '{"type":"ping","nonce":"' + "x" * (n - 26) + '"}',
            close_code=1009,
        )
    ),
)


class FrameFuzzer:
    """Sends probes over one authenticated socket (a new one after a close), checking every answer."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.ws: ClientConnection | None = None
        self._stack = contextlib.ExitStack()
        self.invalid_on_socket = 0
        self.tried: Counter[str] = Counter()
        self.sockets = 0
        self.sequence = 0

    def run(self, examples: int) -> None:
        """Send `examples` generated probes (more while shrinking a failure)."""

        @settings(SETTINGS, max_examples=examples)
        @given(probe=FRAMES)
        def check(probe: Probe) -> None:
            self.probe(probe)

        try:
            check()
        finally:
            self.close()

    def close(self) -> None:
        self.ws = None
        self._stack.close()

    def socket(self) -> ClientConnection:
        if self.ws is not None and self.invalid_on_socket < ROTATE_AFTER_INVALID:
            return self.ws
        self.close()
        ws = self._stack.enter_context(
            sync_connect(
                self.url,
                additional_headers={"Authorization": f"Bearer {token_for(FUZZ_USER)}"},
                compression=None,
                max_size=2**22,
                close_timeout=2,
            )
        )
        assert json.loads(ws.recv(timeout=10))["type"] == "ready"
        self.ws, self.invalid_on_socket = ws, 0
        self.sockets += 1
        return ws

    def probe(self, probe: Probe) -> None:
        self.tried[probe.kind] += 1
        self.sequence += 1
        ws = self.socket()
        payload: str | bytes = probe.payload
        sid = probe.stream_id
        if probe.frame is not None and probe.frame["type"] == "auth":
            payload = _dump({"type": "auth", "token": token_for(FUZZ_USER)})
        elif probe.frame is not None:
            sid = f"ask-{self.sequence}"
            payload = _dump({**probe.frame, "id": sid})
        ws.send(payload, text=probe.text)
        if probe.expect == "closed":
            frames, code = self._until_closed(ws)
            self.close()
            assert code == probe.close_code, (probe.kind, code, frames)
            if probe.kind == "auth-junk":
                assert [f["code"] for f in frames] in (["unauthorized"], ["token_expired"]), frames
            else:
                assert frames == [], frames
            return
        nonce = f"sync-{self.sequence}"
        ws.send(_dump({"type": "ping", "nonce": nonce}))
        frames = self._until_synced(ws, nonce, sid if probe.expect == "stream" else None)
        self._check(probe, sid, frames)

    def _check(self, probe: Probe, sid: str | None, frames: list[dict[str, Any]]) -> None:
        if probe.expect == "invalid":
            self.invalid_on_socket += 1
            assert len(frames) == 1, frames
            error = frames[0]
            assert error["type"] == "error" and error["code"] == "invalid_message", error
            assert error["retryable"] is False and error.get("id") in (None, sid), error
            if probe.field is not None:
                assert probe.field in error["message"], ("the error names the field", error)
        elif probe.expect == "pong":
            assert frames == [
                {"type": "pong", **({} if probe.nonce is None else {"nonce": probe.nonce})}
            ]
        elif probe.expect == "not_found":
            assert len(frames) == 1 and frames[0]["type"] == "error", frames
            assert frames[0]["code"] == "not_found" and frames[0]["id"] == sid, frames
        elif probe.expect == "ready":
            assert len(frames) == 1 and frames[0]["type"] == "ready", frames
            assert frames[0]["user_id"] == FUZZ_USER
        else:
            assert all(f.get("id") == sid for f in frames), frames
            assert [f["seq"] for f in frames] == list(range(1, len(frames) + 1)), frames
            end = frames[-1]
            outcome = "done" if end["type"] == "done" else end.get("code")
            assert outcome in probe.outcomes, (probe.outcomes, end)
            if outcome == "done":
                kinds = [f["type"] for f in frames]
                assert kinds[:2] == ["start", "sources"] and set(kinds[2:-1]) <= {"delta"}, kinds

    @staticmethod
    def _recv(ws: ClientConnection) -> dict[str, Any]:
        raw = ws.recv(timeout=15)
        codec.decode_server(raw)  # every frame the server sends matches the published schema
        frame: dict[str, Any] = json.loads(raw)
        return frame

    def _until_synced(
        self, ws: ClientConnection, nonce: str, sid: str | None
    ) -> list[dict[str, Any]]:
        """Frames up to our sync pong (and, for a stream, its terminal frame), the pong left out."""
        frames: list[dict[str, Any]] = []
        synced, ended = False, sid is None
        while not (synced and ended):
            frame = self._recv(ws)
            if frame == {"type": "pong", "nonce": nonce}:
                synced = True
                continue
            frames.append(frame)
            if sid is not None and frame.get("id") == sid and frame["type"] in ("done", "error"):
                ended = True
        return frames

    def _until_closed(self, ws: ClientConnection) -> tuple[list[dict[str, Any]], int | None]:
        frames: list[dict[str, Any]] = []
        try:
            while True:
                frames.append(self._recv(ws))
        except websockets.ConnectionClosed as closed:
            return frames, closed.rcvd.code if closed.rcvd else None


# ---- leaks -----------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Footprint:
    """What this process holds: the server runs in it, in the test's event loop."""

    tasks: int
    fds: int  # open file descriptors, pooled connections to Postgres and the model left out
    pooled: int


def footprint(pool_ports: set[int]) -> Footprint:
    """Count asyncio tasks and open fds now."""
    process = psutil.Process()
    pooled = sum(
        1
        for c in process.net_connections(kind="inet")
        if c.status != psutil.CONN_LISTEN
        and {c.laddr.port if c.laddr else 0, c.raddr.port if c.raddr else 0} & pool_ports
    )
    return Footprint(len(asyncio.all_tasks()), process.num_fds() - pooled, pooled)


def pool_ports(services: Services, fake_llm: FakeLLM) -> set[int]:
    """Ports of the connection pools (Postgres, the model), whose size varies with load."""
    ports = {urlsplit(fake_llm.base_url).port or 0}
    if services.settings.database_url:
        ports.add(urlsplit(services.settings.database_url).port or 5432)
    return ports


async def settled(before: Footprint, ports: set[int], timeout: float = 10.0) -> Footprint:  # noqa: ASYNC109
    """The footprint once it is back to `before` (or whatever it is after `timeout`)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        now = footprint(ports)
        if now.tasks <= before.tasks and now.fds <= before.fds:
            return now
        if asyncio.get_running_loop().time() > deadline:
            return now
        await asyncio.sleep(0.1)


async def bystander(url: str, stop: asyncio.Event) -> list[str]:
    """Another user asking questions all along; returns how each answer ended."""
    ends: list[str] = []
    async with connect(url, token_for("bystander")) as chat:
        while not stop.is_set():
            frames = await chat.ask(f"b{len(ends)}", "What is the zero-moment point?")
            ends.append(frames[-1]["type"] if frames[-1]["type"] == "done" else frames[-1]["code"])
            await asyncio.sleep(0.1)
    return ends


@contextlib.asynccontextmanager
async def watched_by_bystander(url: str) -> AsyncIterator[list[str]]:
    """Run a bystander while the block runs; the list fills with its outcomes at the end."""
    stop = asyncio.Event()
    task = asyncio.create_task(bystander(url, stop))
    ends: list[str] = []
    try:
        yield ends
    finally:
        stop.set()
        ends.extend(await asyncio.wait_for(task, 30))


# ---- tests: the socket -------------------------------------------------------------------------


async def test_generated_frames_get_the_spec_answers_and_leak_nothing(
    services: Services, fake_llm: FakeLLM
) -> None:
    ports = pool_ports(services, fake_llm)
    async with server_with(services, requests_per_minute=0, completion_tokens_per_day=0) as server:
        async with connect(
            server.ws_url, token_for("warmup")
        ) as chat:  # lazy tasks and pools exist
            assert (await chat.ask("w", "What is a humanoid?"))[-1]["type"] == "done"
        before = await settled(footprint(ports), ports, timeout=1.0)
        fuzzer = FrameFuzzer(server.ws_url)
        async with watched_by_bystander(server.ws_url) as ends:
            await asyncio.to_thread(fuzzer.run, FRAME_EXAMPLES)
        after = await settled(before, ports)
        async with connect(server.ws_url, token_for("after")) as chat:
            assert (await chat.ask("a", "What is a humanoid?"))[-1]["type"] == "done"
    total = sum(fuzzer.tried.values())
    print(
        f"\nframe fuzz: {total} inputs over {fuzzer.sockets} sockets; {dict(sorted(fuzzer.tried.items()))}"
        f"\nbystander: {len(ends)} answers {Counter(ends)}; footprint before {before}, after {after}"
    )
    assert total >= FRAME_EXAMPLES
    assert ends and set(ends) == {"done"}, "the other user kept getting answers"
    assert after.tasks <= before.tasks, f"asyncio tasks leaked: {before} -> {after}"
    assert after.fds <= before.fds, f"file descriptors leaked: {before} -> {after}"
    assert after.pooled <= before.pooled + 10 + 4, "pooled sockets stay within the pools' bounds"


async def test_frame_size_limit_is_128_kib_whole_or_fragmented(live: LiveServer) -> None:
    token = token_for("sizer")
    async with watched_by_bystander(live.ws_url) as ends:
        async with connect(live.ws_url, token, max_size=2**22) as chat:
            exact = '{"type":"ping","nonce":"' + "x" * (MAX_FRAME - 26) + '"}'
            assert len(exact.encode()) == MAX_FRAME
            await chat.ws.send(exact)  # at the limit: decoded, refused for its nonce, still open
            error = await chat.recv()
            assert error["code"] == "invalid_message" and "nonce" in error["message"]
            await chat.ws.send(exact[:-2] + 'x"}')
            frames, code = await chat.until_closed()
            assert (frames, code) == ([], 1009)
        async with connect(live.ws_url, token, max_size=2**22) as chat:
            piece = "y" * 16_384
            await chat.ws.send(['{"type":"ping","nonce":"', *[piece] * 9, '"}'])  # 9 fragments
            assert await chat.until_closed() == ([], 1009)
        async with connect(live.ws_url, token) as chat:
            await chat.send(type="ping", nonce="still here")
            assert await chat.recv() == {"type": "pong", "nonce": "still here"}
    assert ends and set(ends) == {"done"}


async def test_a_flood_of_invalid_frames_closes_1008_and_spares_others(live: LiveServer) -> None:
    token = token_for("flooder")
    async with watched_by_bystander(live.ws_url) as ends:
        async with connect(live.ws_url, token) as chat:
            for i in range(80):
                await chat.ws.send(f'{{"type":"nonsense","n":{i}}}')
            frames, code = await chat.until_closed()
        errors = [f for f in frames if f["type"] == "error"]
        assert code == 1008
        assert len(errors) >= 50 and {e["code"] for e in errors} == {"invalid_message"}
        async with connect(live.ws_url, token) as chat:  # a fresh socket starts a fresh count
            await chat.ws.send("{oops")
            assert (await chat.recv())["code"] == "invalid_message"
            await chat.send(type="ping")
            assert await chat.recv() == {"type": "pong"}
    assert ends and set(ends) == {"done"}


@pytest.mark.parametrize("burst", [66, 500])
async def test_a_burst_of_pings_from_a_reading_client_is_answered_in_full(
    live: LiveServer, burst: int
) -> None:
    """66 pings sent at once by a client that reads its answers were once closed with 1008:
    the reader filled the reply queue before the writer ran. Now the reader waits for it."""
    async with connect(live.ws_url, token_for(f"pinger-{burst}")) as chat:
        for n in range(burst):
            await chat.send(type="ping", nonce=str(n))
        nonces = [(await chat.recv())["nonce"] for _ in range(burst)]
        assert nonces == [str(n) for n in range(burst)]
        frames = await chat.ask("after", "What is a humanoid?")
    assert frames[-1]["type"] == "done"


async def test_invalid_utf8_in_a_text_frame_closes_1007(
    live: LiveServer, caplog: pytest.LogCaptureFixture
) -> None:
    uvicorn_log = logging.getLogger("uvicorn.error")  # uvicorn's loggers do not reach the root
    uvicorn_log.addHandler(caplog.handler)
    try:
        async with connect(live.ws_url, token_for("utf")) as chat:
            await chat.ws.send(b'{"type":"ping","nonce":"\xff\xfe"}', text=True)
            assert await chat.until_closed() == ([], 1007)
            # RFC 6455 §8.1: a text frame that is not UTF-8 fails the connection
    finally:
        uvicorn_log.removeHandler(caplog.handler)
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert not errors, "a peer's mistake is not logged as the server's error"


async def _answer_and_open(url: str, raw: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Send one raw frame; return the answer and the answer to a ping after it."""
    async with connect(url, token_for("deep")) as chat:
        await chat.ws.send(raw)
        answer = await chat.recv()
        await chat.send(type="ping", nonce="after")
        return answer, await chat.recv()


@pytest.mark.parametrize(
    "raw",
    ["[" * 1000 + "]" * 1000, '{"type":"ping","nonce":"n","pad":' + "[" * 1000 + "]" * 1000 + "}"],
    ids=["bare-array", "inside-a-ping"],
)
async def test_deeply_nested_json_is_an_invalid_frame(live: LiveServer, raw: str) -> None:
    answer, after = await _answer_and_open(live.ws_url, raw)
    assert answer["type"] in ("error", "pong") and answer.get("code") in (None, "invalid_message")
    assert after == {"type": "pong", "nonce": "after"}


async def test_nul_in_a_resume_id_is_not_found_and_the_socket_stays(live: LiveServer) -> None:
    answer, after = await _answer_and_open(
        live.ws_url, json.dumps({"type": "resume", "id": "a\u0000b", "after_seq": 0})
    )
    assert answer["code"] in ("not_found", "invalid_message")
    assert after == {"type": "pong", "nonce": "after"}


@pytest.mark.parametrize(
    "fields",
    [
        {"question": "What is a\u0000humanoid?"},
        {"question": "What is it?", "selection": {"text": "zero\u0000moment point"}},
    ],
    ids=["question", "selection"],
)
async def test_nul_in_an_ask_is_not_an_internal_error(
    live: LiveServer, fields: dict[str, Any]
) -> None:
    async with connect(live.ws_url, token_for("nul-ask")) as chat:
        await chat.send(type="ask", id="n", **fields)
        end = (await chat.stream("n"))[-1]
    assert end["type"] == "done" or end["code"] == "invalid_message", end


async def test_nul_in_a_stream_id_does_not_stop_the_journal(services: Services) -> None:
    async with server_with(services) as server:
        async with connect(server.ws_url, token_for("nul-id")) as chat:
            await chat.send(type="ask", id="bad\u0000id", question="What is a humanoid?")
            await chat.stream("bad\u0000id")
            await asyncio.sleep(0.5)  # the journal writes every 200 ms
            assert (await chat.ask("good", "What is a humanoid?"))[-1]["type"] == "done"
        record = None
        for _ in range(20):  # a healthy journal has it within a few hundred ms
            record = await services.store.stream_record("nul-id", "good", 300)
            if record is not None:
                break
            await asyncio.sleep(0.1)
        journal_task = server.services.journal._task
        if journal_task is not None and journal_task.done() and not journal_task.cancelled():
            journal_task.exception()  # retrieved here so the loop does not log it at exit
            server.services.journal._task = None
    assert record is not None, "the next stream was journaled"


# ---- tests: HTTP (generated requests against the served document: tests/web/test_openapi.py) ---


async def test_nul_in_a_profile_is_not_a_server_error(live: LiveServer) -> None:
    import httpx

    async with httpx.AsyncClient(base_url=live.http_url) as http:
        response = await http.put(
            "/v1/profile",
            headers={"Authorization": f"Bearer {token_for('nul-profile')}"},
            json={
                "software_background": "a\u0000b",
                "hardware_background": "",
                "level": "beginner",
            },
        )
    assert response.status_code < 500, response.text
