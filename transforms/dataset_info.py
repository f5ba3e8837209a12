"""LLaMA-Factory `dataset_info.json` for `polycap translate`: the entry that describes an input, its layout as
LLaMA-Factory's loader reads it (src/llamafactory/data/parser.py, converter.py), the layout a whole input is read
with, and the entry each translated file gets in its output folder's own `dataset_info.json`.

An input's entry is the one named with --dataset-info / --dataset-name, else the entry of the `dataset_info.json`
next to the input whose `file_name` is the input's file name. The output entry is that entry under the same
name, with `file_name` the translated file's name (it lies beside that dataset_info.json) and without the keys
that would make the loader read something else or check the source file (hub and script URLs, cloud file, sha1).
"""
from __future__ import annotations

import dataclasses
import json
import posixpath
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from polycap.sharding import fs
from polycap.transforms.dataset_formats import PICK_FORMAT, FormatError, Layout, detect_format, layout_of

INFO_FILE = "dataset_info.json"     # LLaMA-Factory's dataset registry (columns, tags, formatting)
_ELSEWHERE = ("hf_hub_url", "ms_hub_url", "om_hub_url", "script_url", "cloud_file_name")  # read before file_name
_SOURCE_ONLY = (*_ELSEWHERE, "file_sha1")


@dataclass(frozen=True)
class InfoEntry:
    """One entry of a dataset_info.json: where it was read and under which name."""

    path: str                                               # the dataset_info.json
    name: str                                               # its key there: the dataset name LLaMA-Factory takes
    entry: dict[str, Any] = field(compare=False, default_factory=dict)

    @property
    def origin(self) -> str:
        return f"{self.path}#{self.name}"


def _read_registry(path: str) -> dict[str, Any]:
    try:
        info = fs.read_json(path)
    except (OSError, ValueError) as e:
        raise FormatError(f"{path}: cannot read it as JSON ({e})") from e
    if not isinstance(info, dict):
        raise FormatError(f"{path}: expected an object of dataset entries")
    return info


def find_entry(in_path: str, info_path: str | None = None, name: str | None = None) -> InfoEntry | None:
    """The dataset_info.json entry for `in_path` (module docstring); None when no dataset_info.json lies next to
    the input or none of its entries names the input's file. FormatError for a named file or entry that does
    not fit (naming the option to pass)."""
    path = info_path or fs.join(fs.parent(in_path), INFO_FILE)
    if not info_path and not fs.is_file(path):
        if name:
            raise FormatError(f"--dataset-name {name}: no {INFO_FILE} next to {in_path}; pass --dataset-info PATH")
        return None
    info = _read_registry(path)
    if name:
        if not isinstance(info.get(name), dict):
            raise FormatError(f"--dataset-name {name!r} is not an entry of {path}")
        return InfoEntry(path, name, info[name])
    base = fs.basename(in_path)
    hits = [k for k, v in info.items()
            if isinstance(v, dict) and isinstance(v.get("file_name"), str)
            and posixpath.basename(v["file_name"].rstrip("/")) == base]
    if len(hits) > 1:
        raise FormatError(f"{path}: entries {', '.join(hits)} all name {base}; pick one with --dataset-name")
    if not hits:
        if info_path:
            raise FormatError(f"{path}: no entry has file_name {base}; pick one with --dataset-name")
        return None
    return InfoEntry(path, hits[0], info[hits[0]])


def layout_from_info(info: InfoEntry) -> Layout:
    """A dataset_info.json entry as a Layout: `formatting` (alpaca, the default | sharegpt | openai), `columns`
    and `tags`, with LLaMA-Factory's defaults for what the entry leaves out."""
    entry, origin = info.entry, info.origin
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


def resolve_layout(fmt: str, first: Any, fields: Sequence[str], in_path: str,
                   info: InfoEntry | None = None) -> Layout:
    """The layout a whole input is read with: its dataset_info.json entry `info` (`find_entry`), else `fmt`,
    else the format detected from the first parsable record `first`. FormatError (naming the option to pass)
    when the formats disagree or the record fits none or two."""
    if info is not None:
        lay = dataclasses.replace(layout_from_info(info), fields=tuple(fields))
        if fmt not in ("auto", lay.name) and not (fmt == "llava" and lay.name == "sharegpt"):
            raise FormatError(f"--format {fmt} disagrees with {info.origin} ({lay.name}); drop one of them")
        return lay
    if fmt == "auto":
        fmt = detect_format(first)
        if fmt == "captions" and isinstance(first, dict) and not any(f in first for f in fields):
            keys = ", ".join(sorted(map(str, first))[:12])
            raise FormatError(f"{fs.basename(in_path)}: cannot tell the format of its first record (keys: {keys}): "
                              f"no conversations, messages, instruction/output or {', '.join(fields)} field; "
                              f"{PICK_FORMAT}, with --field NAME for captions")
        return dataclasses.replace(layout_of(fmt, fields), detected=True)
    return layout_of(fmt, fields)


# -- the output folder's dataset_info.json -------------------------------------------------------------------
def output_entry(info: InfoEntry, file_name: str) -> dict[str, Any]:
    """The entry for the translated file `file_name` (module docstring): formatting, columns, tags and every other
    key as the input's, in the same order."""
    out = {k: v for k, v in info.entry.items() if k not in _SOURCE_ONLY}
    out["file_name"] = file_name
    return out


def _names_file(entry: Any, file_name: str) -> bool:
    return (isinstance(entry, dict) and entry.get("file_name") == file_name
            and not any(k in entry for k in _ELSEWHERE))


def check_output_registry(folder: str, info: InfoEntry, file_name: str) -> None:
    """Before any work: FormatError when `folder/dataset_info.json` cannot take this input's entry (not a JSON
    object, or an entry of the same name that loads another file, which registering would replace)."""
    path = fs.join(folder, INFO_FILE)
    if not fs.is_file(path):
        return
    old = _read_registry(path).get(info.name)
    if old is not None and not _names_file(old, file_name):
        raise FormatError(f"{path}: its entry {info.name!r} loads another file than {file_name}; translating "
                          f"{info.origin} would replace it (choose another --out)")


def _write_registry(path: str, info: dict[str, Any]) -> None:
    fs.write_bytes(path, (json.dumps(info, indent=2, ensure_ascii=False) + "\n").encode("utf-8"))  # atomic


def register_output(folder: str, info: InfoEntry, file_name: str) -> None:
    """Merge the entry for `folder/<file_name>` into `folder/dataset_info.json` (created when missing), keeping
    every other entry and their order; written atomically through the filesystem layer."""
    path = fs.join(folder, INFO_FILE)
    registry = _read_registry(path) if fs.is_file(path) else {}
    entry = output_entry(info, file_name)
    if registry.get(info.name) != entry:
        registry[info.name] = entry
        _write_registry(path, registry)


def unregister_output(folder: str, file_name: str) -> None:
    """Drop the entries of `folder/dataset_info.json` that load `folder/<file_name>` (a translation about to be
    removed); the file itself goes when no entry is left. An unreadable registry is left as it is."""
    path = fs.join(folder, INFO_FILE)
    if not fs.is_file(path):
        return
    try:
        registry = _read_registry(path)
    except FormatError:
        return
    kept = {k: v for k, v in registry.items() if not _names_file(v, file_name)}
    if len(kept) == len(registry):
        return
    if kept:
        _write_registry(path, kept)
    else:
        fs.delete([path])
