"""The reader profile of `GET/PUT /v1/profile`."""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec
from msgspec import Meta

from protocol.frames import LanguageCode

Background = Annotated[str, Meta(max_length=2000)]
Level = Literal["beginner", "intermediate", "advanced"]


class Profile(msgspec.Struct, frozen=True, forbid_unknown_fields=True, omit_defaults=True):
    """What a reader tells us about themselves, for personalized chapters."""

    software_background: Background
    hardware_background: Background
    level: Level
    language: LanguageCode | None = None
