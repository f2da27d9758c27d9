"""Front matter of a doc page, and `_category_.yml` files: YAML, read with PyYAML."""

from __future__ import annotations

import logging
from typing import Any

import yaml

log = logging.getLogger(__name__)
# The C loader when PyYAML was built with libyaml; both are safe loaders.
_YamlLoader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def parse_front_matter(text: str) -> dict[str, Any]:
    """Front matter (or a `_category_.yml`) as YAML; empty when it is not a YAML mapping.

    Docusaurus refuses a page whose front matter is not YAML; ingest is lenient and reads such
    a page as having none, saying so in the log."""
    try:
        loaded = yaml.load(text, Loader=_YamlLoader)
    except yaml.YAMLError as exc:
        log.warning("front matter is not YAML (%s): ignored", str(exc).splitlines()[0])
        return {}
    return loaded if isinstance(loaded, dict) else {}


def front_matter_text(meta: dict[str, Any], key: str) -> str:
    """A front matter value as text ("" when absent); YAML may have made it a number or a bool."""
    value = meta.get(key)
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value).strip()
