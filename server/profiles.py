"""The reader's profile: saved with PUT /v1/profile, or carried as claims in the token."""

from __future__ import annotations

from typing import Any

import msgspec

from protocol.profile import Profile
from server.store import Store

_CLAIM_NAMES = {
    "software_background": ("software_background", "softwareBackground"),
    "hardware_background": ("hardware_background", "hardwareBackground"),
    "level": ("level",),
    "language": ("language", "preferredLanguage", "preferred_language"),
}


def profile_from_claims(claims: dict[str, Any]) -> Profile | None:
    """A profile from token claims (top level or under `profile`), if they hold a valid one."""
    nested = claims.get("profile")
    source: dict[str, Any] = nested if isinstance(nested, dict) else claims
    fields: dict[str, Any] = {}
    for field, names in _CLAIM_NAMES.items():
        for name in names:
            if source.get(name) is not None:
                fields[field] = source[name]
                break
    if "level" not in fields:
        return None
    fields.setdefault("software_background", "")
    fields.setdefault("hardware_background", "")
    try:
        return msgspec.convert(fields, Profile)
    except msgspec.ValidationError:
        return None


async def reader_profile(store: Store, user_id: str, claims: dict[str, Any]) -> Profile | None:
    """The saved profile wins; the token's claims are used only when none is saved."""
    return await store.get_profile(user_id) or profile_from_claims(claims)
