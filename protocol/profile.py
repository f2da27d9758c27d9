"""The reader profile of `GET/PUT /v1/profile`."""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec
from msgspec import Meta

from protocol import languages
from protocol.frames import NO_NUL, LanguageCode

Background = Annotated[str, Meta(max_length=2000, pattern=NO_NUL)]
Level = Literal["beginner", "intermediate", "advanced"]


class Profile(msgspec.Struct, frozen=True, forbid_unknown_fields=True, omit_defaults=True):
    """What a reader tells us about themselves, for personalized chapters."""

    software_background: Background
    hardware_background: Background
    level: Level
    language: LanguageCode | None = None

    def __post_init__(self) -> None:
        if self.language is not None and not languages.is_known(self.language):
            raise ValueError(f"language {self.language!r} is not one we translate into")
