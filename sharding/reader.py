"""Stream samples out of shard tars (used by tests, `polycap shards`, and the trainer), on any filesystem."""
from __future__ import annotations

import json
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from polycap.sharding import fs, record_json
from polycap.sharding.members import SHARD_RE, split_member, text_lang


class ShardError(ValueError):
    """A shard that is unreadable, truncated, or breaks the member layout."""


@dataclass
class ShardSample:
    key: str
    jpg: bytes = b""
    json: dict[str, Any] = field(default_factory=dict)
    texts: dict[str, str] = field(default_factory=dict)   # lang -> text (as the json spells the tag)
    shard: str = ""
    txt: str = ""                                          # the primary caption member `{key}.txt`
    raw: dict[str, Any] = field(default_factory=dict)      # the json member as written (record_json.py)


def list_shards(path: str) -> list[str]:
    """Shard tars in a run dir (`DIR/shards/*.tar`), a shard dir, one tar, or a glob; sorted by name.
    Local paths and object stores alike (a "dir" there is a prefix)."""
    if any(c in path for c in "*?["):
        return fs.glob(path)
    if fs.is_dir(fs.join(path, "shards")):
        path = fs.join(path, "shards")
    if fs.is_dir(path):
        return sorted(fs.join(path, f) for f in fs.list_dir(path) if SHARD_RE.match(f))
    return [path] if fs.is_file(path) else []


def _finish(cur: ShardSample, shard: str) -> ShardSample:
    """Check the sample and turn its json into the record's dict shape (`record_json.record_from_json`);
    text members are keyed by the language tag the json names for them (`pt-br.txt` -> "pt-BR")."""
    if not cur.jpg or not cur.raw:
        raise ShardError(f"{shard}: sample {cur.key} lacks jpg or json")
    try:
        cur.json = record_json.record_from_json(cur.raw)
    except (KeyError, TypeError, ValueError) as e:
        raise ShardError(f"{shard}: sample {cur.key} json breaks the shard schema ({e})") from e
    by_member = {member[: -len(".txt")]: lang for lang, member in record_json.langs_of(cur.raw)}
    cur.texts = {by_member.get(m, m): t for m, t in cur.texts.items()}
    return cur


BLOCK = 512


def member_end(m: tarfile.TarInfo) -> int:
    """Offset just past a member's data, padded to the 512-byte block."""
    return m.offset_data + -(-m.size // BLOCK) * BLOCK


def end_blocks_ok(fileobj: Any, end: int) -> bool:
    """POSIX tar ends with two zero blocks after the last member; tarfile stops quietly at a cut on a
    member boundary, so this is the only way to tell such a truncated tar from a complete one."""
    fileobj.seek(end)
    tail = fileobj.read(2 * BLOCK)
    return len(tail) == 2 * BLOCK and not tail.strip(b"\0")


def _check_complete(tf: tarfile.TarFile, fileobj: Any, name: str) -> list[tarfile.TarInfo]:
    """Read all headers first and require the end blocks before yielding anything from the tar."""
    members = tf.getmembers()
    if not end_blocks_ok(fileobj, max((member_end(m) for m in members), default=0)):
        raise ShardError(f"{name}: truncated (no end-of-archive blocks after the last member)")
    return members


def iter_shard(path: str) -> Iterator[ShardSample]:
    """Yield samples of one tar in order; raises ShardError, before yielding anything, on a truncated
    tar, and on a split member group when it reaches it."""
    name = fs.basename(path)
    seen: set[str] = set()
    cur: ShardSample | None = None
    try:
        with fs.open_read(path) as fileobj, tarfile.open(fileobj=fileobj, mode="r:") as tf:
            for m in _check_complete(tf, fileobj, name):
                if not m.isfile():
                    continue
                key, ext = split_member(m.name)
                if cur is None or key != cur.key:
                    if cur is not None:
                        yield _finish(cur, name)
                    if key in seen:
                        raise ShardError(f"{name}: members of {key} are not adjacent")
                    seen.add(key)
                    cur = ShardSample(key=key, shard=name)
                f = tf.extractfile(m)
                data = f.read() if f is not None else b""
                if ext == "jpg":
                    cur.jpg = data
                elif ext == "json":
                    cur.raw = json.loads(data)
                elif ext == "txt":
                    cur.txt = data.decode("utf-8")
                elif (lang := text_lang(ext)) is not None:
                    cur.texts[lang] = data.decode("utf-8")
    except (tarfile.TarError, EOFError, OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ShardError(f"{name}: unreadable ({type(e).__name__}: {e})") from e
    if cur is not None:
        yield _finish(cur, name)


def iter_samples(path: str) -> Iterator[ShardSample]:
    """All samples of all shards under `path`, in shard-name order."""
    for shard in list_shards(path):
        yield from iter_shard(shard)
