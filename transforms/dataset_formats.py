"""Dataset formats for `polycap translate`: read records, find their text slots, write them back unchanged.
Files are read and written through the filesystem layer (sharding/fs.py), so they may live on any filesystem.

Formats (`--format`; `auto` detects one from the first record and refuses a record that fits two):
- llava: `conversations` of {from, value} turns (also LLaMA-Factory sharegpt with its default tags).
- sharegpt: a turn list under `conversations` or `messages` with from/value or role/content tags.
- messages: OpenAI chat `messages`: content a string, a list of parts (only `text` parts are translated), or
  null beside `tool_calls`.
- alpaca: instruction / input / output, optional `history` ([[query, answer], ...]).
- captions: the `--field` columns (a string or a list of strings each).
Translated: user, assistant and system turns and the top-level `system` column. Passed through untouched, byte for
byte: tool turns (roles function_call, observation, tool, function, ipython, and a dataset_info.json's function_tag
and observation_tag), `tool_calls`, `tools`, images and every other field. A LLaMA-Factory `dataset_info.json`
entry sets the layout instead (transforms/dataset_info.py). Shards are no record format: polycap shards are
translated by pipelines/translate_shards.py.

Ids and language fields of each output record, for output language L (the source is English):
- a top-level string `id` ending in `-en` or `_en` (any case) ends in `-L` / `_L` instead; other ids are kept;
- a top-level `lang` or `language` whose value is an English tag (en, en-US, en_GB, eng, English; any case) becomes L.
"""
from __future__ import annotations

import copy
import dataclasses
import io
import json
import os
import re
from collections.abc import Generator, Sequence
from dataclasses import dataclass
from typing import Any

from polycap.sharding import fs

FORMATS = ("llava", "sharegpt", "messages", "alpaca", "captions")  # record formats (shards: not a file)
Path_ = tuple[Any, ...]   # where a text sits inside a record, e.g. ("conversations", 2, "value")
Slot = tuple[Path_, str]
PASS_ROLES = frozenset({"function_call", "observation", "tool", "function", "ipython"})  # tool calls and outputs
TURN_COLUMNS = ("conversations", "messages")
TAG_PAIRS = (("from", "value"), ("role", "content"))
_ID_EN = re.compile(r"([-_])en$", re.IGNORECASE)
_LANG_EN = re.compile(r"en(?:[-_][a-z0-9]+)*|eng|english", re.IGNORECASE)


class FormatError(ValueError):
    """A record that does not have the structure of its format (becomes a BAD_RECORD reject)."""


@dataclass(frozen=True)
class RawRecord:
    index: int                      # position in the input (output keeps this order)
    rid: str                        # record id for reject rows: its `id` field, else "<file>#<index>"
    record: Any                     # parsed JSON object / parquet row; None if unparsable
    error: str = ""                 # why it could not be parsed


@dataclass(frozen=True)
class Layout:
    """Where a format keeps its texts. `messages` / `role_tag` / `content_tag` None: found per record."""

    name: str                               # one of FORMATS
    messages: str | None = None             # the turn list column
    role_tag: str | None = None
    content_tag: str | None = None
    system: str = "system"                  # top-level system prompt column (sharegpt, alpaca)
    pass_roles: frozenset[str] = PASS_ROLES  # turns whose content is kept as is
    roles: frozenset[str] | None = None     # dataset_info tags: a turn with another role is malformed
    prompt: str = "instruction"             # alpaca columns
    query: str = "input"
    response: str = "output"
    history: str = "history"
    fields: tuple[str, ...] = ("caption",)  # captions columns
    origin: str = ""                        # the dataset_info.json entry the names come from
    detected: bool = False                  # auto-detected: a record that fits two formats is malformed


_LAYOUTS = {"llava": Layout("llava", "conversations", "from", "value"), "sharegpt": Layout("sharegpt"),
            "messages": Layout("messages", "messages", "role", "content"), "alpaca": Layout("alpaca"),
            "captions": Layout("captions")}


def layout_of(fmt: str | Layout, fields: Sequence[str] = ("caption",)) -> Layout:
    """A format name's default layout (with the caption `fields`); a Layout is returned as it is."""
    if isinstance(fmt, Layout):
        return fmt
    if fmt not in _LAYOUTS:
        raise FormatError(f"--format: {fmt!r} is not one of auto, {', '.join(FORMATS)} (shards: for shard input)")
    return dataclasses.replace(_LAYOUTS[fmt], fields=tuple(fields))


# -- reading ---------------------------------------------------------------------------------------
def _rid(name: str, i: int, rec: Any) -> str:
    if isinstance(rec, dict):
        for k in ("id", "key", "question_id"):
            if isinstance(rec.get(k), (str, int)) and not isinstance(rec.get(k), bool):
                return str(rec[k])
    return f"{name}#{i}"


def container_of(path: str) -> str:
    """json | jsonl | parquet, from the path's extension."""
    ext = os.path.splitext(path)[1].lower()
    if ext in (".jsonl", ".ndjson"):
        return "jsonl"
    if ext == ".parquet":
        return "parquet"
    if ext == ".json":
        return "json"
    raise FormatError(f"{path}: unknown file type (expected .json, .jsonl or .parquet; shards: a .tar or shard dir)")


def _not_utf8(rec: Any) -> str:
    """Why `rec` cannot be written back as UTF-8 (a lone surrogate from a JSON `\\ud800` escape, or bytes that
    were not UTF-8 in a JSONL line), or "" when it can."""
    try:
        json.dumps(rec, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError as e:
        return f"not valid UTF-8 text ({e.reason} at character {e.start}): a lone surrogate or undecodable bytes"
    return ""


def _record(i: int, name: str, rec: Any, where: str) -> RawRecord:
    why = _not_utf8(rec)
    return RawRecord(i, _rid(name, i, rec), None, f"{where}: {why}") if why else RawRecord(i, _rid(name, i, rec), rec)


def read_records(path: str) -> Generator[RawRecord, None, None]:
    """Every record of the file in order; an unparsable one comes with `record=None` and `error`.

    JSONL and parquet are streamed; a JSON array is parsed whole (it cannot be split)."""
    kind, name = container_of(path), fs.basename(path)
    if kind == "parquet":
        i = 0
        for batch in fs.iter_parquet(path, batch_size=1024):  # streamed, not read whole
            for row in batch.to_pylist():
                yield RawRecord(i, _rid(name, i, row), row)
                i += 1
    elif kind == "jsonl":
        # surrogateescape: a line with bytes that are not UTF-8 becomes one bad record, not a failed file
        with fs.open_read(path) as raw, io.TextIOWrapper(raw, encoding="utf-8", errors="surrogateescape") as f:
            for i, line in enumerate(f):
                if not line.strip():
                    continue  # a blank line (e.g. the trailing one) is not a record
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError as e:
                    yield RawRecord(i, f"{name}#{i}", None, f"line {i + 1}: {e}")
                    continue
                yield _record(i, name, rec, f"line {i + 1}")
    else:
        data = json.loads(fs.read_bytes(path).decode("utf-8"))  # a broken array cannot be split: fail loudly
        if not isinstance(data, list):
            data = [data]
        for i, rec in enumerate(data):
            yield _record(i, name, rec, f"record {i}")


def count_records(path: str, max_bytes: int = 128 << 20) -> int | None:
    """How many records the file holds, when that is cheap to learn (the progress ETA): a parquet file's footer,
    or a local JSON / JSONL file of at most `max_bytes` (read once more). None otherwise: the count is then known
    only as the records are read."""
    kind = container_of(path)
    try:
        if kind == "parquet":
            return fs.parquet_rows(path)
        if not fs.is_local(path) or fs.size(path) > max_bytes:
            return None
        if kind == "json":
            data = json.loads(fs.read_bytes(path).decode("utf-8"))
            return len(data) if isinstance(data, list) else 1
        with fs.open_read(path) as f:
            return sum(1 for line in f if line.strip())     # read_records skips blank lines only
    except (OSError, ValueError):
        return None     # the reader reports what is wrong with the file


# -- which format ----------------------------------------------------------------------------------
PICK_FORMAT = "pass --format llava|sharegpt|messages|alpaca|captions (or --dataset-info with its column names)"


def detect_format(record: Any) -> str:
    """llava | sharegpt | messages | alpaca | captions, from one record's keys (whatever file holds it).
    FormatError when the record fits two formats."""
    if not isinstance(record, dict):
        return "captions"  # text_slots then names what is wrong with the record
    found = [f"`{k}`" for k in TURN_COLUMNS if isinstance(record.get(k), list)]
    if isinstance(record.get("instruction"), str) and "output" in record:
        found.append("`instruction`/`output`")
    if len(found) > 1:
        raise FormatError(f"ambiguous record: it has {' and '.join(found)}; {PICK_FORMAT}")
    if not found:
        return "captions"
    if found[0] == "`instruction`/`output`":
        return "alpaca"
    key = TURN_COLUMNS[0] if found[0] == "`conversations`" else TURN_COLUMNS[1]
    turns = [t for t in record[key] if isinstance(t, dict)]
    tags = {pair for t in turns for pair in TAG_PAIRS if pair[0] in t}
    if len(tags) > 1:
        raise FormatError(f"ambiguous record: `{key}` turns have both `from` and `role`; {PICK_FORMAT}")
    tools = "tools" in record or any(t.get("from", t.get("role")) in PASS_ROLES for t in turns)
    if key == "conversations":
        return "llava" if tags <= {TAG_PAIRS[0]} and not tools else "sharegpt"
    if tags <= {TAG_PAIRS[1]} and (tools or any(isinstance(t.get("content"), list) or "tool_calls" in t
                                                for t in turns)):
        return "messages"
    return "sharegpt"


# -- text slots ------------------------------------------------------------------------------------
def _content_slots(content: Any, path: Path_, where: str, calls: bool) -> list[Slot]:
    """A turn's texts: a string, or the `text` parts of a list (OpenAI / LLaMA-Factory v1 content parts)."""
    if isinstance(content, str):
        return [(path, content)]
    if content is None and calls:
        return []              # an assistant turn that only calls tools
    if not isinstance(content, list):
        raise FormatError(f"{where}: expected a string or a list of parts"
                          + (" (null only beside tool_calls)" if content is None else ""))
    out: list[Slot] = []
    for j, part in enumerate(content):
        if not isinstance(part, dict):
            raise FormatError(f"{where}[{j}]: expected an object")
        if part.get("type") == "text":
            tk = "text" if isinstance(part.get("text"), str) else "value"
            if not isinstance(part.get(tk), str):
                raise FormatError(f"{where}[{j}]: text part without text")
            out.append(((*path, j, tk), part[tk]))
    return out


def _turns(turns: Any, key: Path_, role_tag: str, content_tag: str, lay: Layout) -> list[Slot]:
    name = ".".join(map(str, key))
    if not isinstance(turns, list) or not turns:
        raise FormatError(f"`{name}` must be a non-empty list")
    out: list[Slot] = []
    for i, t in enumerate(turns):
        if not isinstance(t, dict) or not isinstance(t.get(role_tag), str):
            raise FormatError(f"{name}[{i}]: expected an object with a string `{role_tag}`")
        role = t[role_tag]
        if lay.roles is not None and role not in lay.roles:
            raise FormatError(f"{name}[{i}]: role {role!r} is none of {', '.join(sorted(lay.roles))} ({lay.origin})")
        if role in lay.pass_roles:
            continue           # a tool call or a tool's output: code and data, kept byte for byte
        out += _content_slots(t.get(content_tag), (*key, i, content_tag), f"{name}[{i}].{content_tag}",
                              bool(t.get("tool_calls") or t.get("function_call")))
    return out


def _turn_names(record: dict[str, Any], lay: Layout) -> tuple[str, str, str]:
    """The turn column and role/content tags of a record: the layout's, else found in the record."""
    key = lay.messages
    if key is None:
        keys = [k for k in TURN_COLUMNS if isinstance(record.get(k), list)]
        if len(keys) != 1:
            raise FormatError("no `conversations` or `messages` list" if not keys else
                              f"both `conversations` and `messages`; {PICK_FORMAT}")
        key = keys[0]
    if lay.role_tag and lay.content_tag:
        return key, lay.role_tag, lay.content_tag
    turns = record.get(key)
    first = next((t for t in turns if isinstance(t, dict)), {}) if isinstance(turns, list) else {}
    role, content = next((p for p in TAG_PAIRS if p[0] in first), TAG_PAIRS[key == "messages"])
    return key, role, content


def _system_slot(record: dict[str, Any], lay: Layout) -> list[Slot]:
    v = record.get(lay.system)
    if v is None:
        return []
    if not isinstance(v, str):
        raise FormatError(f"`{lay.system}` (system prompt): expected a string")
    return [((lay.system,), v)]


def _alpaca_slots(record: dict[str, Any], lay: Layout) -> list[Slot]:
    if not isinstance(record.get(lay.prompt), str):
        raise FormatError(f"`{lay.prompt}`: expected a string (alpaca instruction)")
    out = _system_slot(record, lay)
    history = record.get(lay.history)
    if history is not None:
        if not isinstance(history, list):
            raise FormatError(f"`{lay.history}`: expected a list of [query, answer] pairs")
        for i, pair in enumerate(history):
            if not (isinstance(pair, list) and len(pair) == 2 and all(isinstance(x, str) for x in pair)):
                raise FormatError(f"`{lay.history}`[{i}]: expected [query, answer] strings")
            out += [((lay.history, i, 0), pair[0]), ((lay.history, i, 1), pair[1])]
    for col in (lay.prompt, lay.query, lay.response):
        v = record.get(col)
        if isinstance(v, str):
            out.append(((col,), v))
        elif v is not None:
            raise FormatError(f"`{col}`: expected a string")
    return out


def _caption_slots(record: dict[str, Any], fields: Sequence[str]) -> list[Slot]:
    out: list[Slot] = []
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


def text_slots(record: Any, fmt: str | Layout, fields: Sequence[str] = ("caption",)) -> list[Slot]:
    """Every (path, English text) of a record that gets translated; FormatError if malformed.
    `fmt` is a format name (its default names, with the caption `fields`) or a Layout (which has its own)."""
    lay = layout_of(fmt, fields)
    if not isinstance(record, dict):
        raise FormatError(f"expected a JSON object, got {type(record).__name__}")
    if lay.detected:
        detect_format(record)  # later records too: one that fits two formats is not guessed at
    if lay.name in ("llava", "sharegpt", "messages"):
        key, role_tag, content_tag = _turn_names(record, lay)
        return _system_slot(record, lay) + _turns(record.get(key), (key,), role_tag, content_tag, lay)
    if lay.name == "alpaca":
        return _alpaca_slots(record, lay)
    return _caption_slots(record, lay.fields)


def retag(record: dict[str, Any], lang: str) -> None:
    """The id / language rule of the module docstring, applied in place to a translated copy."""
    rid = record.get("id")
    if isinstance(rid, str) and (m := _ID_EN.search(rid)):
        record["id"] = f"{rid[:m.start()]}{m.group(1)}{lang}"
    for k in ("lang", "language"):
        v = record.get(k)
        if isinstance(v, str) and _LANG_EN.fullmatch(v.strip()):
            record[k] = lang


def set_slots(record: Any, lang: str, texts: dict[Path_, str]) -> Any:
    """A deep copy of `record` with every slot replaced by its translation and ids / language fields retagged
    (module docstring); all else is untouched. A slot's path says where its text goes, whatever the format."""
    rec = copy.deepcopy(record)
    for path, text in texts.items():
        cur = rec
        for p in path[:-1]:
            cur = cur[p]
        cur[path[-1]] = text
    if isinstance(rec, dict):
        retag(rec, lang)
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

