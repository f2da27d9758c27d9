"""The languages a chapter can be translated into (and a profile can prefer): code, name, and
direction. A code is `xx` or `xx-REGION`; its base must be in this list."""

from __future__ import annotations

LANGUAGES: dict[str, str] = {
    "ur": "Urdu", "ar": "Arabic", "fa": "Persian", "he": "Hebrew", "ps": "Pashto", "sd": "Sindhi",
    "ug": "Uyghur", "yi": "Yiddish", "ckb": "Central Kurdish", "dv": "Dhivehi", "ks": "Kashmiri",
    "hi": "Hindi", "bn": "Bengali", "pa": "Punjabi", "gu": "Gujarati", "mr": "Marathi",
    "ta": "Tamil", "te": "Telugu", "kn": "Kannada", "ml": "Malayalam", "ne": "Nepali",
    "si": "Sinhala", "zh": "Chinese", "ja": "Japanese", "ko": "Korean", "vi": "Vietnamese",
    "th": "Thai", "id": "Indonesian", "ms": "Malay", "tl": "Tagalog", "es": "Spanish",
    "fr": "French", "de": "German", "it": "Italian", "pt": "Portuguese", "nl": "Dutch",
    "sv": "Swedish", "no": "Norwegian", "da": "Danish", "fi": "Finnish", "pl": "Polish",
    "cs": "Czech", "sk": "Slovak", "hu": "Hungarian", "ro": "Romanian", "el": "Greek",
    "bg": "Bulgarian", "uk": "Ukrainian", "ru": "Russian", "tr": "Turkish", "az": "Azerbaijani",
    "kk": "Kazakh", "uz": "Uzbek", "sw": "Swahili", "am": "Amharic", "ha": "Hausa",
    "yo": "Yoruba", "zu": "Zulu", "af": "Afrikaans", "en": "English",
}  # fmt: skip
RTL_LANGUAGES = frozenset({"ar", "ckb", "dv", "fa", "he", "ks", "ps", "sd", "ug", "ur", "yi"})


def _either_case(code: str) -> str:
    return "".join(f"[{c}{c.upper()}]" for c in code)


# What `is_known` accepts, as a regex both msgspec (Python) and JSON Schema (ECMA-262) read alike,
# so the published schemas say which codes are accepted: a known base in either case and up to
# three subtags. `(?!\n)`: Python's `$` also matches before a final newline, ECMA's does not.
PATTERN = f"^({'|'.join(map(_either_case, LANGUAGES))})(-[A-Za-z0-9]{{2,8}}){{0,3}}(?!\\n)$"


def base(code: str) -> str:
    """`ur` of `ur-PK`."""
    return code.split("-")[0].lower()


def is_known(code: str) -> bool:
    """True when the code's base language is one we translate into."""
    return base(code) in LANGUAGES


def language_name(code: str) -> str:
    """The English name of a known language code."""
    return LANGUAGES[base(code)]


def direction(code: str | None) -> str:
    """`rtl` for right-to-left languages, else `ltr`."""
    return "rtl" if code and base(code) in RTL_LANGUAGES else "ltr"
