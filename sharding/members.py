"""Shard member layout: `{key}.jpg`, `{key}.json` (record minus image bytes), `{key}.{lang}.txt`."""
from __future__ import annotations

import re

SHARD_RE = re.compile(r"^(?P<split>[A-Za-z0-9_-]+)-(?P<shard>\d{6})\.tar$")
LANG_RE = re.compile(r"^[a-z]{2,3}(-[A-Za-z0-9]+)?$")


def shard_name(split: str, index: int) -> str:
    return f"{split}-{index:06d}.tar"


def split_member(name: str) -> tuple[str, str]:
    """`abc.ko.txt` -> ("abc", "ko.txt"); webdataset splits keys at the first dot."""
    key, dot, ext = name.partition(".")
    if not dot or not key:
        raise ValueError(f"member {name!r} has no extension")
    return key, ext


def text_lang(ext: str) -> str | None:
    """`ko.txt` -> "ko"; anything else -> None."""
    if ext.endswith(".txt"):
        lang = ext[: -len(".txt")]
        if LANG_RE.match(lang):
            return lang
    return None
