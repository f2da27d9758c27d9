"""The chat server behind a real Better-Auth (examples/better-auth on Node.js, its JWT plugin):
sign up, tokens the way a browser gets them, the socket, history over HTTP, key rotation,
expiry and refresh, and the user's fields reaching personalized chapters."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import re
import secrets
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets

from server.auth import LEEWAY_S, TokenVerifier
from server.services import Services
from server.settings import Settings
from server.tools.client import ChatClient, connect, deltas
from server.tools.fake_llm import FakeLLM
from tests.conftest import ROOT, LiveServer, model_config
from tests.e2e.better_auth import EXAMPLE, BetterAuth, Reader, claims, header, run_better_auth

PASSWORD = "correct horse battery staple"
CHAPTER = "ros2-basics/ros2-services-actions-qos"
TOKEN_WAIT_S = 20.0


@pytest.fixture(scope="module")
async def better_auth(
    admin_dsn: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[BetterAuth]:
    """Better-Auth as the example configures it (15-minute tokens, no rotation)."""
    async with run_better_auth(admin_dsn, tmp_path_factory.mktemp("better-auth")) as auth:
        yield auth


@contextlib.asynccontextmanager
async def chat_server(
    services: Services, auth: BetterAuth, **changes: Any
) -> AsyncIterator[LiveServer]:
    """The chat server configured from the environment the README gives for Better-Auth
    (JWKS_URL, JWT_ISSUER, JWT_AUDIENCE; JWT_ALGORITHMS left to its default), with its own
    verifier and so its own empty JWKS cache."""
    env = {"DATA_DIR": str(services.settings.data_dir), **auth.chat_env()}
    parsed = Settings.from_env(env)
    settings = services.settings.replace(
        jwt_secret=None,
        jwks_url=parsed.jwks_url,
        jwt_issuer=parsed.jwt_issuer,
        jwt_audience=parsed.jwt_audience,
        jwt_algorithms=parsed.jwt_algorithms,
        **changes,
    )
    verifier = TokenVerifier(settings, None, services.http)
    async with LiveServer(dataclasses.replace(services, settings=settings, verifier=verifier)) as s:
        yield s


def _email(name: str) -> str:
    return f"{name}-{secrets.token_hex(4)}@example.org"


async def _token_until(reader: Reader, done: Callable[[str], bool]) -> str:
    """Ask Better-Auth for tokens until one satisfies `done` (a rotation, a later expiry)."""
    deadline = time.monotonic() + TOKEN_WAIT_S
    while time.monotonic() < deadline:
        token = await reader.token()
        if done(token):
            return token
        await asyncio.sleep(0.2)
    raise TimeoutError("Better-Auth issued no such token in time")


async def _refused(url: str, token: str) -> tuple[list[dict[str, Any]], int | None]:
    async with websockets.connect(url) as ws:
        chat = ChatClient(ws)
        await chat.send(type="auth", token=token)
        return await chat.until_closed()


async def _auth_frame(chat: ChatClient, token: str) -> dict[str, Any]:
    await chat.send(type="auth", token=token)
    return await chat.recv()


async def test_sign_up_then_ask_and_read_history_with_the_same_token(
    better_auth: BetterAuth, services: Services, fake_llm: FakeLLM
) -> None:
    async with (
        Reader(better_auth) as reader,
        Reader(better_auth) as stranger,
        chat_server(services, better_auth) as server,
    ):
        signed_up = await reader.sign_up(_email("ada"), PASSWORD, "Ada")
        assert signed_up.status_code == 200, signed_up.text
        token = await reader.token()
        head, body = header(token), claims(token)
        assert head["alg"] == "EdDSA" and head["kid"] in await better_auth.jwks_kids()
        assert body["sub"] == reader.user["id"]
        assert body["iss"] == body["aud"] == better_auth.url

        question = "What is the zero-moment point?"
        async with connect(server.ws_url, token) as chat:  # Authorization: Bearer
            first = await chat.ask("q1", question)
        assert first[-1]["type"] == "done", first[-1]
        conversation_id = first[0]["conversation_id"]

        # the plugin's other way to hand a browser its JWT: the set-auth-jwt header of get-session
        from_header = await reader.session_jwt()
        assert claims(from_header)["sub"] == reader.user["id"]
        follow_up = "How does a humanoid keep it inside the support polygon?"
        async with websockets.connect(server.ws_url) as ws:  # the first-frame path
            chat = ChatClient(ws)
            ready = await _auth_frame(chat, from_header)
            assert ready["type"] == "ready" and ready["user_id"] == reader.user["id"]
            assert ready["expires_at"] == claims(from_header)["exp"]
            second = await chat.ask("q2", follow_up, conversation_id=conversation_id)
        assert second[-1]["type"] == "done" and second[0]["conversation_id"] == conversation_id

        async with httpx.AsyncClient(
            base_url=server.http_url, headers={"Authorization": f"Bearer {token}"}
        ) as api:
            listing = await api.get("/v1/conversations")
            assert listing.status_code == 200
            assert conversation_id in [c["id"] for c in listing.json()["conversations"]]
            history = await api.get(f"/v1/conversations/{conversation_id}/messages")
            assert history.status_code == 200
            assert [
                (m["stream_id"], m["question"], m["answer"], m["status"])
                for m in history.json()["messages"]
            ] == [
                ("q1", question, deltas(first), "complete"),
                ("q2", follow_up, deltas(second), "complete"),
            ]

            assert (await stranger.sign_up(_email("eve"), PASSWORD, "Eve")).status_code == 200
            theirs = {"Authorization": f"Bearer {await stranger.token()}"}
            other = await api.get(f"/v1/conversations/{conversation_id}/messages", headers=theirs)
            assert other.status_code == 404
            assert (await api.get("/v1/conversations", headers=theirs)).json() == {
                "conversations": []
            }


async def test_user_fields_reach_the_personalized_chapter(
    better_auth: BetterAuth, services: Services, fake_llm: FakeLLM
) -> None:
    fields = {
        "level": "advanced",
        "softwareBackground": "Rust firmware for quadcopter flight controllers",
        "hardwareBackground": "STM32 boards and a bench oscilloscope",
    }
    async with Reader(better_auth) as reader, chat_server(services, better_auth) as server:
        # the example validates the fields with textbook-chat's limits (Better-Auth alone does not)
        for bad in ({"level": "guru"}, {"softwareBackground": "x" * 2001}):
            refused = await reader.sign_up(_email("bad"), PASSWORD, "Bad", **{**fields, **bad})
            assert refused.status_code == 400, (bad, refused.text)
        assert (
            await reader.sign_up(_email("grace"), PASSWORD, "Grace", **fields)
        ).status_code == 200
        token = await reader.token()
        assert claims(token)["profile"] == fields  # put there by the plugin's definePayload

        async with httpx.AsyncClient(base_url=server.http_url) as api:
            profile = await api.get("/v1/profile", headers={"Authorization": f"Bearer {token}"})
        assert profile.status_code == 200, "no PUT /v1/profile: the profile comes from the token"
        assert profile.json() == {
            "level": "advanced",
            "software_background": fields["softwareBackground"],
            "hardware_background": fields["hardwareBackground"],
        }

        with model_config(fake_llm, echo=True):
            async with connect(server.ws_url, token) as chat:
                before = len(fake_llm.chat_requests)
                await chat.send(type="chapter", id="p1", chapter=CHAPTER, mode="personalize")
                frames = await chat.stream("p1")
                assert frames[-1]["type"] == "done", frames[-1]
                prompts = [r["messages"][1]["content"] for r in fake_llm.chat_requests[before:]]
                assert prompts and all(
                    "advanced" in p
                    and fields["softwareBackground"] in p
                    and fields["hardwareBackground"] in p
                    for p in prompts
                )

                # the reader edits their profile in the book's account page; the next token
                # carries it, and a refresh over the same socket brings it to the next chapter
                await reader.update(level="beginner", softwareBackground="JavaScript, a little")
                refreshed = await reader.token()
                assert claims(refreshed)["profile"]["level"] == "beginner"
                ready = await _auth_frame(chat, refreshed)
                assert ready["type"] == "ready" and ready["user_id"] == reader.user["id"]
                before = len(fake_llm.chat_requests)
                await chat.send(type="chapter", id="p2", chapter=CHAPTER, mode="personalize")
                again = await chat.stream("p2")
        assert again[-1]["type"] == "done" and again[-1]["cached"] is False
        prompts = [r["messages"][1]["content"] for r in fake_llm.chat_requests[before:]]
        assert prompts and all(
            "beginner" in p and "JavaScript, a little" in p and "Rust firmware" not in p
            for p in prompts
        )


async def test_a_key_better_auth_rotates_in_is_accepted_at_once(
    admin_dsn: str, tmp_path: Path, services: Services
) -> None:
    # rotationInterval 1 s: Better-Auth signs with a new key once its key is older than that,
    # and keeps publishing the old one beside it (for the grace period, 30 days by default)
    async with (
        run_better_auth(admin_dsn, tmp_path, JWKS_ROTATION_SECONDS="1") as auth,
        Reader(auth) as reader,
        chat_server(services, auth) as server,
    ):
        assert (await reader.sign_up(_email("rot"), PASSWORD, "Rot")).status_code == 200
        first = await reader.token()
        old_kid = header(first)["kid"]
        async with connect(server.ws_url, first):  # the chat server caches the JWKS: the old key
            pass
        assert await auth.jwks_kids() == [old_kid]
        rotated = await _token_until(reader, lambda t: header(t)["kid"] != old_kid)
        new_kid = header(rotated)["kid"]
        assert {old_kid, new_kid} <= set(await auth.jwks_kids()), "published beside the old"
        # signed with a key published a moment ago: accepted at once, not after a refetch interval
        async with connect(server.ws_url, rotated) as chat:
            answer = await chat.ask("r1", "What is a ROS 2 topic?")
            assert answer[-1]["type"] == "done"
            ready = await _auth_frame(chat, first)  # a refresh with the old key still works
            assert ready["type"] == "ready"
        async with connect(server.ws_url, first):
            pass


async def test_short_lived_tokens_refresh_over_the_socket_then_expire(
    admin_dsn: str, tmp_path: Path, services: Services
) -> None:
    async with (
        run_better_auth(admin_dsn, tmp_path, JWT_EXPIRATION="3s") as auth,
        Reader(auth) as reader,
        chat_server(services, auth, token_expiry_grace_s=0.5) as server,
    ):
        assert (await reader.sign_up(_email("exp"), PASSWORD, "Exp")).status_code == 200
        first = await reader.token()
        expiry = claims(first)["exp"]
        assert expiry - claims(first)["iat"] == 3
        async with websockets.connect(server.ws_url) as ws:
            chat = ChatClient(ws)
            ready = await _auth_frame(chat, first)
            assert ready["type"] == "ready" and ready["expires_at"] == expiry
            fresh = await _token_until(reader, lambda t: claims(t)["exp"] > expiry)
            again = await _auth_frame(chat, fresh)
            assert again["type"] == "ready" and again["expires_at"] == claims(fresh)["exp"]
            assert again["session_id"] == ready["session_id"], "the same socket, refreshed"
            # no refresh this time: the server says so at expiry and closes with 4401
            frames, code = await chat.until_closed()
        assert [(f["type"], f.get("code")) for f in frames] == [("error", "token_expired")]
        assert code == 4401
        assert time.time() >= claims(fresh)["exp"], "it lived on the refreshed token"

        # an expired Better-Auth token (past the verifier's leeway) is refused at the door
        await asyncio.sleep(max(0.0, expiry + LEEWAY_S + 1 - time.time()))
        frames, code = await _refused(server.ws_url, first)
        assert [(f["type"], f.get("code")) for f in frames] == [("error", "token_expired")]
        assert code == 4401


def test_the_readme_shows_the_configuration_these_tests_run() -> None:
    section = (ROOT / "README.md").read_text().split("\n## Better-Auth\n", 1)[1]
    section = section.split("\n## ", 1)[0]
    blocks = dict(re.findall(r"```(sh|js)\n(.*?)\n```", section, re.S))
    base = "https://auth.example.org"
    env = dict(line.split("=", 1) for line in blocks["sh"].splitlines())
    assert env == BetterAuth(base, Path()).chat_env()
    # the Better-Auth lines are a verbatim excerpt of the file the tests run
    source = [line.strip() for line in (EXAMPLE / "auth.mjs").read_text().splitlines()]
    excerpt = [line.strip() for line in blocks["js"].splitlines()]
    starts = [i for i in range(len(source)) if source[i : i + len(excerpt)] == excerpt]
    assert starts, "the README's Better-Auth config is not in examples/better-auth/auth.mjs"
