"""Dataset formats for `polycap translate`: read records, find their text slots, write them back unchanged.
Files are read and written through the filesystem layer (sharding/fs.py), so they may live on any filesystem.

Formats (`--format`; `auto` detects one from the first record and refuses a record that fits two):
- llava: `conversations` of {from, value} turns (also LLaMA-Factory sharegpt with its default tags).
- sharegpt: a turn list under `conversations` or `messages` with from/value or role/content tags.
- messages: OpenAI chat `messages`: content a string, a list of parts (only `text` parts are translated), or
  null beside `tool_calls`.
- alpaca: instruction / input / output, optional `history` ([[query, answer], ...]).
- captions: the `--field` columns (a string or a list of strings each). shards: polycap shards.
Translated: user, assistant and system turns and the top-level `system` column. Passed through untouched, byte for
byte: tool turns (roles function_call, observation, tool, function, ipython, and a dataset_info.json's function_tag
and observation_tag), `tool_calls`, `tools`, images and every other field. A LLaMA-Factory `dataset_info.json`
entry (found next to the input by its `file_name`, or named with --dataset-info / --dataset-name) sets the
formatting, columns and tags as LLaMA-Factory's loader reads them (src/llamafactory/data/parser.py, converter.py).

Ids and language fields of each output record, for output language L (the source is English):
- a top-level string `id` ending in `-en` or `_en` (any case) ends in `-L` / `_L` instead; other ids are kept;
- a top-level `lang` or `language` whose value is an English tag (en, en-US, en_GB, eng, English; any case) becomes L;
- shards keep English and gain L, so nothing of theirs is renamed.
"""
from __future__ import annotations

import copy
import dataclasses
import io
import json
import os
import posixpath
import re
import tarfile
from collections.abc import Generator, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from polycap.sharding import fs
from polycap.sharding.writer import add_members

FORMATS = ("llava", "sharegpt", "messages", "alpaca", "captions", "shards")
Path_ = tuple[Any, ...]   # where a text sits inside a record, e.g. ("conversations", 2, "value")
Slot = tuple[Path_, str]
PASS_ROLES = frozenset({"function_call", "observation", "tool", "function", "ipython"})  # tool calls and outputs
TURN_COLUMNS = ("conversations", "messages")
TAG_PAIRS = (("from", "value"), ("role", "content"))
INFO_FILE = "dataset_info.json"     # LLaMA-Factory's dataset registry (columns, tags, formatting)
_ID_EN = re.compile(r"([-_])en$", re.IGNORECASE)
_LANG_EN = re.compile(r"en(?:[-_][a-z0-9]+)*|eng|english", re.IGNORECASE)


class FormatError(ValueError):
    """A record that does not have the structure of its format (becomes a BAD_RECORD reject)."""


@dataclass(frozen=True)
class RawRecord:
    index: int                      # position in the input (output keeps this order)
    rid: str                        # record id for reject rows: its `id` field, else "<file>#<index>"
    record: Any                     # parsed JSON object / parquet row / shard sample dict; None if unparsable
    error: str = ""                 # why it could not be parsed
    container: str = ""             # shards: the tar it came from


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
            "captions": Layout("captions"), "shards": Layout("shards")}


def layout_of(fmt: str | Layout, fields: Sequence[str] = ("caption",)) -> Layout:
    """A format name's default layout (with the caption `fields`); a Layout is returned as it is."""
    if isinstance(fmt, Layout):
        return fmt
    if fmt not in _LAYOUTS:
        raise FormatError(f"--format: {fmt!r} is not one of auto, {', '.join(FORMATS)}")
    return dataclasses.replace(_LAYOUTS[fmt], fields=tuple(fields))


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


# -- which format ----------------------------------------------------------------------------------
_PICK = "pass --format llava|sharegpt|messages|alpaca|captions (or --dataset-info with its column names)"


def detect_format(record: Any, container: str) -> str:
    """llava | sharegpt | messages | alpaca | captions | shards, from the container and one record's keys.
    FormatError when the record fits two formats."""
    if container == "shards":
        return "shards"
    if not isinstance(record, dict):
        return "captions"  # text_slots then names what is wrong with the record
    found = [f"`{k}`" for k in TURN_COLUMNS if isinstance(record.get(k), list)]
    if isinstance(record.get("instruction"), str) and "output" in record:
        found.append("`instruction`/`output`")
    if len(found) > 1:
        raise FormatError(f"ambiguous record: it has {' and '.join(found)}; {_PICK}")
    if not found:
        return "captions"
    if found[0] == "`instruction`/`output`":
        return "alpaca"
    key = TURN_COLUMNS[0] if found[0] == "`conversations`" else TURN_COLUMNS[1]
    turns = [t for t in record[key] if isinstance(t, dict)]
    tags = {pair for t in turns for pair in TAG_PAIRS if pair[0] in t}
    if len(tags) > 1:
        raise FormatError(f"ambiguous record: `{key}` turns have both `from` and `role`; {_PICK}")
    tools = "tools" in record or any(t.get("from", t.get("role")) in PASS_ROLES for t in turns)
    if key == "conversations":
        return "llava" if tags <= {TAG_PAIRS[0]} and not tools else "sharegpt"
    if tags <= {TAG_PAIRS[1]} and (tools or any(isinstance(t.get("content"), list) or "tool_calls" in t
                                                for t in turns)):
        return "messages"
    return "sharegpt"


def _info_entry(in_path: str, info_path: str | None, name: str | None) -> tuple[dict[str, Any] | None, str]:
    """The dataset_info.json entry for `in_path` and where it is written ("<file>#<name>"); (None, "") when
    no dataset_info.json lies next to the input or none of its entries names the input's file."""
    path = info_path or fs.join(fs.parent(in_path), INFO_FILE)
    if not info_path and not fs.is_file(path):
        if name:
            raise FormatError(f"--dataset-name {name}: no {INFO_FILE} next to {in_path}; pass --dataset-info PATH")
        return None, ""
    try:
        info = fs.read_json(path)
    except (OSError, ValueError) as e:
        raise FormatError(f"{path}: cannot read it as JSON ({e})") from e
    if not isinstance(info, dict):
        raise FormatError(f"{path}: expected an object of dataset entries")
    if name:
        if not isinstance(info.get(name), dict):
            raise FormatError(f"--dataset-name {name!r} is not an entry of {path}")
        return info[name], f"{path}#{name}"
    base = fs.basename(in_path)
    hits = [k for k, v in info.items()
            if isinstance(v, dict) and isinstance(v.get("file_name"), str)
            and posixpath.basename(v["file_name"].rstrip("/")) == base]
    if len(hits) > 1:
        raise FormatError(f"{path}: entries {', '.join(hits)} all name {base}; pick one with --dataset-name")
    if not hits:
        if info_path:
            raise FormatError(f"{path}: no entry has file_name {base}; pick one with --dataset-name")
        return None, ""
    return info[hits[0]], f"{path}#{hits[0]}"


def layout_from_info(entry: dict[str, Any], origin: str) -> Layout:
    """A LLaMA-Factory dataset_info.json entry as a Layout: `formatting` (alpaca, the default | sharegpt |
    openai), `columns` and `tags`, with LLaMA-Factory's defaults for what the entry leaves out."""
    formatting, cols, tags = entry.get("formatting", "alpaca"), entry.get("columns") or {}, entry.get("tags") or {}
    if formatting not in ("alpaca", "sharegpt", "openai"):
        raise FormatError(f"{origin}: formatting {formatting!r} is not alpaca, sharegpt or openai")
    if entry.get("ranking"):
        raise FormatError(f"{origin}: ranking (chosen/rejected) datasets are not supported")
    if not isinstance(cols, dict) or not isinstance(tags, dict):
        raise FormatError(f"{origin}: `columns` and `tags` must be objects")
    system = cols.get("system") or "system"
    if formatting == "alpaca":
        return Layout("alpaca", system=system, prompt=cols.get("prompt") or "instruction",
                      query=cols.get("query") or "input", response=cols.get("response") or "output",
                      history=cols.get("history") or "history", origin=origin)
    t = {"role_tag": "from", "content_tag": "value", "user_tag": "human", "assistant_tag": "gpt",
         "observation_tag": "observation", "function_tag": "function_call", "system_tag": "system", **tags}
    passing = {t["observation_tag"], t["function_tag"]}
    roles = passing | {t["user_tag"], t["assistant_tag"], t["system_tag"]}
    return Layout("sharegpt" if formatting == "sharegpt" else "messages", cols.get("messages") or "conversations",
                  t["role_tag"], t["content_tag"], system=system, pass_roles=frozenset(passing - {None}),
                  roles=frozenset(roles - {None}), origin=origin)


def resolve_layout(fmt: str, first: Any, container: str, fields: Sequence[str], in_path: str,
                   info_path: str | None = None, info_name: str | None = None) -> Layout:
    """The layout a whole input is read with: its dataset_info.json entry (explicit, or next to the input and
    naming its file), else `fmt`, else the format detected from the first parsable record `first`.
    FormatError (naming the option to pass) when the formats disagree or the record fits none or two."""
    if container != "shards":
        entry, origin = _info_entry(in_path, info_path, info_name)
        if entry is not None:
            lay = dataclasses.replace(layout_from_info(entry, origin), fields=tuple(fields))
            if fmt not in ("auto", lay.name) and not (fmt == "llava" and lay.name == "sharegpt"):
                raise FormatError(f"--format {fmt} disagrees with {origin} ({lay.name}); drop one of them")
            return lay
    elif info_path or info_name:
        raise FormatError("--dataset-info / --dataset-name apply to dataset files, not to shards")
    if fmt == "auto":
        fmt = detect_format(first, container)
        if fmt == "captions" and isinstance(first, dict) and not any(f in first for f in fields):
            keys = ", ".join(sorted(map(str, first))[:12])
            raise FormatError(f"{fs.basename(in_path)}: cannot tell the format of its first record (keys: {keys}): "
                              f"no conversations, messages, instruction/output or {', '.join(fields)} field; "
                              f"{_PICK}, with --field NAME for captions")
        return dataclasses.replace(layout_of(fmt, fields), detected=True)
    return layout_of(fmt, fields)


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
                              f"both `conversations` and `messages`; {_PICK}")
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
    if lay.name == "shards":
        out: list[Slot] = []
        if isinstance(record["texts"].get("en"), str):
            out.append((("texts", "en"), record["texts"]["en"]))
        conv = (record["json"].get("conversations") or {}).get("en")
        if conv:
            out += _turns(conv, ("json", "conversations", "en"), "from", "value", _LAYOUTS["llava"])
        return out
    if not isinstance(record, dict):
        raise FormatError(f"expected a JSON object, got {type(record).__name__}")
    if lay.detected:
        detect_format(record, "json")  # later records too: one that fits two formats is not guessed at
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


def set_slots(record: Any, fmt: str | Layout, lang: str, texts: dict[Path_, str]) -> Any:
    """A deep copy of `record` with every slot replaced by its translation and ids / language fields retagged
    (module docstring); all else is untouched.

    Shards keep English and gain the language: `texts[lang]` and `json.conversations[lang]`."""
    shards = (fmt.name if isinstance(fmt, Layout) else fmt) == "shards"
    rec = copy.deepcopy(record)
    for path, text in texts.items():
        if shards:
            path = ("texts", lang) if path[0] == "texts" else ("json", "conversations", lang) + path[3:]
            if path[0] == "json":
                convs = rec["json"].setdefault("conversations", {})
                convs.setdefault(lang, copy.deepcopy(record["json"]["conversations"]["en"]))
        cur = rec
        for p in path[:-1]:
            cur = cur[p]
        cur[path[-1]] = text
    if not shards and isinstance(rec, dict):
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
