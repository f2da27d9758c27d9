"""What a load test does: where, how many sockets, asking what, as whom."""

from __future__ import annotations

import asyncio
import dataclasses
import shlex

from protocol.frames import Mode
from server.errors import ConfigError
from server.tools.loadtest.report import KINDS

DEFAULT_URL = "ws://127.0.0.1:8000/v1/chat"
DEFAULT_USER_PREFIX = "loadtest-"

# Written for this tool (not from any book): what readers of a physical AI / humanoid robotics
# textbook ask, and passages they might highlight.
QUESTIONS = (
    "What is physical AI and how is it different from a chatbot?",
    "Why do humanoid robots need whole-body control?",
    "How does a ROS 2 node publish sensor data to other nodes?",
    "What is the difference between a ROS 2 topic, a service and an action?",
    "Which quality of service settings matter for camera streams in ROS 2?",
    "How does an IMU help a walking robot keep its balance?",
    "What does the zero moment point say about bipedal walking?",
    "Why fuse lidar and camera data instead of using one sensor?",
    "What is a vision-language-action model?",
    "How is a robot policy trained in simulation and moved to real hardware?",
    "What is the sim-to-real gap and how do engineers narrow it?",
    "Why is latency a safety problem for robot control loops?",
    "How do depth cameras estimate distance?",
    "What makes grasping unknown objects hard for a humanoid hand?",
    "How does reinforcement learning teach a robot to walk?",
    "What role does a world model play in embodied intelligence?",
)
SELECTIONS = (
    "A humanoid robot keeps its balance by moving its center of mass so that the point where "
    "the ground pushes back stays inside the area covered by its feet.",
    "In ROS 2 a node is a single process with one job; nodes talk over named topics, and any "
    "number of them may publish or subscribe to the same topic.",
    "Quality of service profiles let a subscriber choose between reliable delivery, which "
    "retries lost messages, and best effort, which drops them to keep latency low.",
    "An inertial measurement unit combines accelerometers and gyroscopes to report how the body "
    "of the robot is accelerating and rotating many hundred times per second.",
    "Vision-language-action models take camera images and an instruction in plain words and "
    "output motor commands directly, learning the mapping from demonstrations.",
    "Physical AI systems must act under uncertainty: their sensors are noisy, their models are "
    "incomplete, and the world changes while they think.",
    "Domain randomization varies textures, lighting, masses and friction in simulation so that "
    "a policy trained there treats the real world as one more variation.",
    "A service in ROS 2 is a request and a single response, while an action is a long-running "
    "goal that sends feedback along the way and can be cancelled.",
)
SELECTION_QUESTIONS = (
    "Explain this passage in simpler words.",
    "Why does this matter for a humanoid robot?",
    "Give a concrete example of this.",
    "What would go wrong if this were ignored?",
)


@dataclasses.dataclass(frozen=True, slots=True)
class LoadConfig:
    """One load test: where, how many sockets, for how long, asking what."""

    url: str = DEFAULT_URL
    connections: int = 100
    duration: float = 30.0
    ramp: float = 0.0  # seconds over which the connections open, evenly
    think: float = 0.0  # mean pause between a stream's end and the next request (±50%)
    mix: dict[str, float] = dataclasses.field(default_factory=lambda: {"ask": 80, "selection": 20})
    chapters: tuple[str, ...] = ()
    chapter_mode: Mode = "translate"
    language: str = "ur"
    secret: str | None = None  # HS256 secret to mint tokens with
    token_command: str | None = None  # shell command printing a token; `{user}` is replaced
    users: int | None = None  # distinct users; None = one per connection
    user_prefix: str = DEFAULT_USER_PREFIX
    issuer: str | None = None
    audience: str | None = None
    grace: float = 30.0  # how long streams in flight at the end may take to finish
    stream_timeout: float = 120.0
    connect_timeout: float = 10.0
    deflate: bool = False  # offer permessage-deflate (used when the server has it on)
    # Every question unlike any before it (numbered), so none is answered from the server's
    # caches of embeddings and passages: the cost of a reader's first question.
    new_questions: bool = False
    seed: int | None = None

    def validate(self) -> None:
        """Raise ConfigError for a run that cannot be done."""
        if self.connections < 1 or self.duration <= 0 or self.ramp < 0 or self.think < 0:
            raise ConfigError("loadtest: connections >= 1, duration > 0, ramp and think >= 0")
        if self.ramp >= self.duration:
            raise ConfigError("loadtest: --ramp must be shorter than --duration")
        if set(self.mix) - set(KINDS) or any(w < 0 for w in self.mix.values()):
            raise ConfigError(f"loadtest: mix takes non-negative weights of {', '.join(KINDS)}")
        if sum(self.mix.values()) <= 0:
            raise ConfigError("loadtest: the mix needs a positive weight")
        if self.mix.get("chapter", 0) > 0 and not self.chapters:
            raise ConfigError("loadtest: a chapter share in the mix needs --chapters")
        if (self.secret is None) == (self.token_command is None):
            raise ConfigError(
                "loadtest: give exactly one of --secret (or JWT_SECRET) and --token-command"
            )
        if self.users is not None and self.users < 1:
            raise ConfigError("loadtest: --users must be at least 1")

    @property
    def distinct_users(self) -> int:
        """How many users the connections are spread over."""
        return self.connections if self.users is None else min(self.users, self.connections)


def parse_mix(text: str) -> dict[str, float]:
    """`ask=70,selection=20,chapter=10` as weights."""
    mix: dict[str, float] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        kind, _, weight = part.partition("=")
        try:
            mix[kind.strip()] = float(weight)
        except ValueError:
            raise ConfigError(f"--mix: {part!r} is not kind=weight") from None
    return mix


def parse_users(text: str) -> int | None:
    """`per-connection` (None), `shared` (1) or a count."""
    if text == "per-connection":
        return None
    if text == "shared":
        return 1
    try:
        return int(text)
    except ValueError:
        raise ConfigError("--users: per-connection, shared or a number") from None


async def _token_from_command(command: str, user: str, limit: asyncio.Semaphore) -> str:
    async with limit:
        process = await asyncio.create_subprocess_shell(
            command.replace("{user}", shlex.quote(user)),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            out, err = await process.communicate()
        except asyncio.CancelledError:  # another user's command failed: leave no process behind
            process.kill()
            await process.wait()
            raise
    token = out.decode().strip()
    if process.returncode != 0 or not token:
        detail = err.decode(errors="replace").strip()[-200:]
        raise ConfigError(
            f"--token-command for {user} exited {process.returncode} with {'no token' if not token else 'a token'}: {detail}"
        )
    return token


def _mint_all(config: LoadConfig, users: list[str]) -> list[str]:
    from server.auth import mint_token

    assert config.secret is not None
    ttl = int(config.ramp + config.duration + config.grace) + 600
    return [
        mint_token(config.secret, user, ttl, issuer=config.issuer, audience=config.audience)
        for user in users
    ]


async def tokens_for(config: LoadConfig) -> list[str]:
    """One token per distinct user: minted, or printed by the token command (8 at a time)."""
    users = [f"{config.user_prefix}{i}" for i in range(config.distinct_users)]
    if config.token_command is None:
        return await asyncio.to_thread(_mint_all, config, users)
    limit = asyncio.Semaphore(8)
    tasks = [
        asyncio.create_task(_token_from_command(config.token_command, u, limit)) for u in users
    ]
    try:
        return list(await asyncio.gather(*tasks))
    finally:
        for task in tasks:
            task.cancel()
