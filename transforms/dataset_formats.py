"""Dataset formats for `polycap translate`: read records, find their text slots, write them back unchanged.
Files are read and written through the filesystem layer (sharding/fs.py), so they may live on any filesystem."""
from __future__ import annotations

import copy
import io
import json
import os
import tarfile
from collections.abc import Generator, Iterator
from dataclasses import dataclass
from typing import Any

from polycap.sharding import fs
from polycap.sharding.writer import add_members

FORMATS = ("llava", "sharegpt", "messages", "captions", "shards")
Path_ = tuple[Any, ...]   # where a text sits inside a record, e.g. ("conversations", 2, "value")


class FormatError(ValueError):
    """A record that does not have the structure of its format (becomes a BAD_RECORD reject)."""


@dataclass(frozen=True)
class RawRecord:
    index: int                      # position in the input (output keeps this order)
    rid: str                        # record id for reject rows: its `id` field, else "<file>#<index>"
    record: Any                     # parsed JSON object / parquet row / shard sample dict; None if unparsable
    error: str = ""                 # why it could not be parsed
    container: str = ""             # shards: the tar it came from


# -- reading ---------------------------------------------------------------------------------------
def _rid(name: str, i: int, rec: Any) -> str:
    if isinstance(rec, dict):
        for k in ("id", "key", "question_id"):
            if isinstance(rec.get(k), (str, int)) and not isinstance(rec.get(k), bool):
                return str(rec[k])
    return f"{name}#{i}"


def container_of(path: str) -> str:
    """json | jsonl | parquet | shards, from the path."""
    if path.endswith(".tar") or fs.is_dir(path):
        return "shards"
    ext = os.path.splitext(path)[1].lower()
    if ext in (".jsonl", ".ndjson"):
        return "jsonl"
    if ext == ".parquet":
        return "parquet"
    if ext == ".json":
        return "json"
    raise FormatError(f"{path}: unknown file type (expected .json, .jsonl, .parquet, a .tar or a shard dir)")


def _read_shards(path: str) -> Iterator[RawRecord]:
    from polycap.sharding.reader import ShardError, iter_shard, list_shards

    shards = [path] if path.endswith(".tar") else list_shards(path)
    i = 0
    for shard in shards:
        try:
            for s in iter_shard(shard):
                rec = {"key": s.key, "jpg": s.jpg, "json": s.json, "texts": dict(s.texts)}
                yield RawRecord(i, s.key, rec, container=fs.basename(shard))
                i += 1
        except ShardError as e:
            yield RawRecord(i, fs.basename(shard), None, str(e), fs.basename(shard))
            i += 1


def read_records(path: str) -> Generator[RawRecord, None, None]:
    """Every record of the file in order; an unparsable one comes with `record=None` and `error`.

    JSONL, parquet and shards are streamed; a JSON array is parsed whole (it cannot be split)."""
    kind, name = container_of(path), fs.basename(path)
    if kind == "shards":
        yield from _read_shards(path)
    elif kind == "parquet":
        i = 0
        for batch in fs.iter_parquet(path, batch_size=1024):  # streamed, not read whole
            for row in batch.to_pylist():
                yield RawRecord(i, _rid(name, i, row), row)
                i += 1
    elif kind == "jsonl":
        with fs.open_read(path) as raw, io.TextIOWrapper(raw, encoding="utf-8") as f:
            for i, line in enumerate(f):
                if not line.strip():
                    continue  # a blank line (e.g. the trailing one) is not a record
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError as e:
                    yield RawRecord(i, f"{name}#{i}", None, f"line {i + 1}: {e}")
                    continue
                yield RawRecord(i, _rid(name, i, rec), rec)
    else:
        data = json.loads(fs.read_bytes(path).decode("utf-8"))  # a broken array cannot be split: fail loudly
        if not isinstance(data, list):
            data = [data]
        for i, rec in enumerate(data):
            yield RawRecord(i, _rid(name, i, rec), rec)


def detect_format(record: Any, container: str) -> str:
    """llava | sharegpt | messages | captions | shards, from the container and one record's keys."""
    if container == "shards":
        return "shards"
    if isinstance(record, dict):
        if isinstance(record.get("conversations"), list):
            return "llava"
        msgs = record.get("messages")
        if isinstance(msgs, list) and msgs:
            return "messages" if any(isinstance(m, dict) and isinstance(m.get("content"), list)
                                     for m in msgs) else "sharegpt"
    return "captions"


# -- text slots ------------------------------------------------------------------------------------
def _turn_slots(turns: Any, key: str, role_keys: tuple[str, ...], text_key: str) -> list[tuple[Path_, str]]:
    if not isinstance(turns, list) or not turns:
        raise FormatError(f"`{key}` must be a non-empty list")
    out: list[tuple[Path_, str]] = []
    for i, t in enumerate(turns):
        if not isinstance(t, dict) or not any(isinstance(t.get(r), str) for r in role_keys):
            raise FormatError(f"{key}[{i}]: expected an object with {'/'.join(role_keys)}")
        content = t.get(text_key)
        if isinstance(content, str):
            out.append(((key, i, text_key), content))
        elif isinstance(content, list) and text_key == "content":
            for j, part in enumerate(content):
                if not isinstance(part, dict):
                    raise FormatError(f"{key}[{i}].content[{j}]: expected an object")
                if part.get("type") == "text":
                    tk = "text" if isinstance(part.get("text"), str) else "value"
                    if not isinstance(part.get(tk), str):
                        raise FormatError(f"{key}[{i}].content[{j}]: text part without text")
                    out.append(((key, i, text_key, j, tk), part[tk]))
        else:
            raise FormatError(f"{key}[{i}].{text_key}: expected a string")
    return out


def text_slots(record: Any, fmt: str, fields: list[str]) -> list[tuple[Path_, str]]:
    """Every (path, English text) of a record that gets translated; FormatError if malformed."""
    if not isinstance(record, dict):
        raise FormatError(f"expected a JSON object, got {type(record).__name__}")
    if fmt == "llava":
        return _turn_slots(record.get("conversations"), "conversations", ("from",), "value")
    if fmt in ("sharegpt", "messages"):
        return _turn_slots(record.get("messages"), "messages", ("role",), "content")
    if fmt == "shards":
        out: list[tuple[Path_, str]] = []
        if isinstance(record["texts"].get("en"), str):
            out.append((("texts", "en"), record["texts"]["en"]))
        conv = (record["json"].get("conversations") or {}).get("en")
        if conv:
            out += [(("json", "conversations", "en") + p[1:], t)
                    for p, t in _turn_slots(conv, "en", ("from",), "value")]
        return out
    out = []
    for f in fields:
        v = record.get(f)
        if isinstance(v, str):
            out.append(((f,), v))
        elif isinstance(v, list) and all(isinstance(x, str) for x in v):
            out += [((f, j), x) for j, x in enumerate(v)]
        elif v is not None:
            raise FormatError(f"field {f!r}: expected a string or a list of strings")
    if not out:
        raise FormatError(f"no text field {', '.join(fields)} in record (use --field)")
    return out


def set_slots(record: Any, fmt: str, lang: str, texts: dict[Path_, str]) -> Any:
    """A deep copy of `record` with every slot replaced by its translation; all else is untouched.

    Shards keep English and gain the language: `texts[lang]` and `json.conversations[lang]`."""
    rec = copy.deepcopy(record)
    for path, text in texts.items():
        if fmt == "shards":
            path = ("texts", lang) if path[0] == "texts" else ("json", "conversations", lang) + path[3:]
            if path[0] == "json":
                convs = rec["json"].setdefault("conversations", {})
                convs.setdefault(lang, copy.deepcopy(record["json"]["conversations"]["en"]))
        cur = rec
        for p in path[:-1]:
            cur = cur[p]
        cur[path[-1]] = text
    return rec


# -- writing ---------------------------------------------------------------------------------------
class RecordWriter:
    """Streams records into one file of the input's container (json | jsonl | parquet), atomically
    (`fs.atomic_create`: temp + rename on a disk, one upload on an object store).

    Memory stays bounded by one parquet batch, so a file of any length can be written. `schema` (parquet) is
    the input file's schema, so the output keeps its column types whatever values a batch happens to hold."""

    PARQUET_BATCH = 1024

    def __init__(self, path: str, container: str, schema: Any = None):
        if container not in ("json", "jsonl", "parquet"):
            raise ValueError(f"RecordWriter: container {container!r} is not json, jsonl or parquet")
        self.path, self.container, self.schema = path, container, schema
        self.count = 0
        self._rows: list[Any] = []
        self._pq_writer: Any = None
        self._file = fs.atomic_create(path)
        self._raw = self._file.__enter__()

    def _text(self, text: str) -> None:
        self._raw.write(text.encode("utf-8"))

    def write(self, record: Any) -> None:
        if self.container == "jsonl":
            self._text(json.dumps(record, ensure_ascii=False) + "\n")
        elif self.container == "json":  # the bytes json.dump(records, f, indent=2) would write, one at a time
            body = json.dumps(record, ensure_ascii=False, indent=2).replace("\n", "\n  ")
            self._text(("[\n  " if self.count == 0 else ",\n  ") + body)
        else:
            self._rows.append(record)
            if len(self._rows) >= self.PARQUET_BATCH:
                self._flush_parquet()
        self.count += 1

    def _flush_parquet(self) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        table = pa.Table.from_pylist(self._rows, schema=self.schema)
        if self._pq_writer is None:
            self.schema = table.schema
            self._pq_writer = pq.ParquetWriter(self._raw, table.schema)
        self._pq_writer.write_table(table)
        self._rows = []

    def close(self) -> None:
        """Finish the file and rename it into place."""
        if self.container == "parquet":
            if self._rows or self._pq_writer is None:
                self._flush_parquet()
            self._pq_writer.close()
        elif self.container == "json":
            self._text("\n]\n" if self.count else "[]\n")
        self._file.__exit__(None, None, None)


def write_records(path: str, container: str, records: list[Any], schema: Any = None) -> None:
    """Write records in the input's container; written to a temp name, then renamed."""
    if container == "shards":
        with fs.atomic_create(path) as f:
            _write_tar(f, records)
        return
    w = RecordWriter(path, container, schema)
    for r in records:
        w.write(r)
    w.close()


def _write_tar(fileobj: Any, records: list[dict[str, Any]]) -> None:
    with tarfile.open(fileobj=fileobj, mode="w|") as tf:
        for r in records:
            members = [(f"{r['key']}.jpg", r["jpg"]),
                       (f"{r['key']}.json", json.dumps(r["json"], ensure_ascii=False, sort_keys=True).encode())]
            members += [(f"{r['key']}.{lang}.txt", t.encode("utf-8")) for lang, t in sorted(r["texts"].items())]
            add_members(tf, members)
