"""Ingest: read a configured source (dir, URL list, webdataset tars, LLaVA/ShareGPT JSON) into raw Samples."""
from __future__ import annotations

import json
import os
import posixpath
import tarfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, BinaryIO, ClassVar

import apache_beam as beam
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from polycap.schemas import Reason, Reject, Sample
from polycap.schemas.config import IngestConfig, SourceConfig
from polycap.schemas.conversations import IMAGE_TOKEN
from polycap.schemas.conversations import SHAREGPT_ROLE as ROLES
from polycap.transforms.download import LIST_EXTS, STAGE, DownloadUrls, IngestDoFn, ingest_reject, new_sample
from polycap.transforms.plumbing import format_exc, route_stage

GLOB_CHARS = "*?["
SIDECAR_EXTS = (".txt", ".json")          # img2dataset layout: <stem>.jpg + <stem>.txt caption + <stem>.json
TAR_EXTS = (".tar", ".tgz", ".tar.gz")
LLAVA_EXTS = (".json", ".jsonl")
URL_LIST_EXTS = tuple(e + c for e in LIST_EXTS for c in ("", ".gz", ".bz2", ".zst"))
# webdataset image fields in order of preference (the first one present is the sample's image)
WDS_IMAGE_EXTS = ("jpg", "jpeg", "png", "webp", "bmp", "gif", "tif", "tiff", "jxl")
MAX_META_FIELD = 1024                      # small text members (.cls, .id ...) are copied into meta


# ---- paths ----

def match_pattern(path: str) -> str:
    """A directory becomes `<dir>/**` (recursive); a glob or a file is used as is."""
    if any(c in path for c in GLOB_CHARS):
        return path
    if path.endswith("/"):
        return path + "**"
    if "://" not in path and os.path.isdir(path):
        return os.path.join(path, "**")
    return path


def pattern_root(pattern: str) -> str:
    """The literal folder prefix of a pattern (for telling hidden files below it apart)."""
    cut = min([pattern.index(c) for c in GLOB_CHARS if c in pattern] or [len(pattern)])
    return pattern[: pattern.rfind("/", 0, cut) + 1]


def is_hidden(path: str, root: str) -> bool:
    rel = path[len(root):] if path.startswith(root) else posixpath.basename(path)
    return any(part.startswith(".") for part in rel.split("/") if part)


def list_files(path: str, exts: tuple[str, ...] | None) -> list[str]:
    """Files under a dir / glob (hidden ones skipped, filtered by extension), or the file itself."""
    pattern = match_pattern(path)
    found = [m.path for m in FileSystems.match([pattern])[0].metadata_list]
    if not found and pattern == path and "://" in path:  # an object-store "folder" without a slash
        pattern = path.rstrip("/") + "/**"
        found = [m.path for m in FileSystems.match([pattern])[0].metadata_list]
    if pattern == path and found == [path]:
        return found                                    # a file named explicitly is always taken
    root = pattern_root(pattern)
    return sorted(p for p in found if not is_hidden(p, root) and (exts is None or p.lower().endswith(exts)))


def read_bytes(path: str) -> bytes:
    # UNCOMPRESSED: Beam would otherwise gunzip `x.gz` inputs behind our back
    with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
        return f.read()


def split_sidecars(paths: Iterable[str]) -> tuple[list[str], str | None, str | None]:
    """(inputs, caption .txt, meta .json) among files sharing a stem; every non-sidecar file is an input."""
    inputs, txt, js = [], None, None
    for p in sorted(set(paths)):
        ext = posixpath.splitext(p)[1].lower()
        if ext == SIDECAR_EXTS[0]:
            txt = p
        elif ext == SIDECAR_EXTS[1]:
            js = p
        else:
            inputs.append(p)
    return inputs, txt, js


def _stem_of(path: str) -> tuple[str, str]:
    return posixpath.splitext(path)[0], path


def read_dir_group(paths: Iterable[str], src: SourceConfig) -> Iterator[Sample | Reject]:
    inputs, txt, js = split_sidecars(paths)
    caption, meta = None, {}
    if txt and inputs:
        try:
            caption = read_bytes(txt).decode("utf-8", errors="replace").strip()
        except Exception as e:
            meta["txt_error"] = format_exc(e)
    if js and inputs:
        try:
            meta["json"] = json.loads(read_bytes(js))
        except Exception as e:
            meta["json_error"] = format_exc(e)
    for p in inputs:
        try:
            data = read_bytes(p)
        except Exception as e:
            yield ingest_reject(src, p, Reason.UNREADABLE, format_exc(e))
            continue
        yield new_sample(data, src, p, orig_caption=caption, meta=dict(meta))


# ---- webdataset tars ----

def check_member(m: tarfile.TarInfo) -> Reason | None:
    """UNSAFE_PATH for absolute names, `..` components and links (never extracted, never written)."""
    name = m.name.replace("\\", "/")
    if name.startswith("/") or (len(name) > 1 and name[1] == ":") or ".." in name.split("/"):
        return Reason.UNSAFE_PATH
    if not m.isfile():
        return Reason.UNSAFE_PATH
    return None


def wds_split(name: str) -> tuple[str, str]:
    """webdataset convention: key = folder + basename up to the first dot; field = the rest, lowercased."""
    name = name.removeprefix("./")
    folder, base = posixpath.split(name)
    key, _, ext = base.partition(".")
    return posixpath.join(folder, key) if folder else key, ext.lower()


def group_to_sample(shard: str, key: str, members: dict[str, tuple[str, bytes]],
                    src: SourceConfig) -> Sample | Reject:
    image_ext = next((e for e in WDS_IMAGE_EXTS if e in members), None)
    if image_ext is None:
        return ingest_reject(src, f"tar://{shard}#{key}", Reason.MISSING_IMAGE,
                             f"sample {key!r} has no image member (fields: {', '.join(sorted(members))})")
    name, data = members[image_ext]
    meta: dict[str, Any] = {"shard": shard, "wds_key": key, "fields": sorted(members)}
    caption = members["txt"][1].decode("utf-8", errors="replace").strip() if "txt" in members else None
    if "json" in members:
        try:
            meta["json"] = json.loads(members["json"][1])
        except ValueError as e:
            meta["json_error"] = format_exc(e)
    for ext, (_, raw) in members.items():
        if ext not in ("txt", "json") and ext not in WDS_IMAGE_EXTS and len(raw) <= MAX_META_FIELD:
            try:
                meta.setdefault("extra", {})[ext] = raw.decode("utf-8").strip()
            except UnicodeDecodeError:
                pass
    return new_sample(data, src, f"tar://{shard}#{name}", orig_caption=caption, meta=meta)


def read_shard(f: BinaryIO, shard: str, src: SourceConfig) -> Iterator[Sample | Reject]:
    """Stream a (possibly gzipped) tar; adjacent members with one key form a sample. A read error
    ends the shard with an UNREADABLE reject after everything read before it was emitted."""
    key, members, n = "", {}, 0  # type: tuple[str, dict[str, tuple[str, bytes]], int]
    try:
        with tarfile.open(fileobj=f, mode="r|*") as tf:
            for m in tf:
                if m.isdir():
                    continue
                if check_member(m) is not None:
                    kind = "unsafe member name" if m.isfile() else "link/special member"
                    yield ingest_reject(src, f"tar://{shard}#{m.name}", Reason.UNSAFE_PATH,
                                        f"{kind} {m.name!r} (type {m.type!r}); not read")
                    continue
                k, ext = wds_split(m.name)
                if k != key and members:
                    yield group_to_sample(shard, key, members, src)
                    members = {}
                key = k
                members[ext] = (m.name, tf.extractfile(m).read())  # type: ignore[union-attr]  # isfile()
                n += 1
    except Exception as e:
        partial = group_to_sample(shard, key, members, src) if members else None
        if isinstance(partial, Sample):  # its image member was read whole before the error
            yield partial
        lost = f"; incomplete sample {key!r} has no image" if isinstance(partial, Reject) else ""
        yield ingest_reject(src, f"tar://{shard}", Reason.UNREADABLE,
                            f"{format_exc(e)} (after {n} members{lost})")
        return
    if members:
        yield group_to_sample(shard, key, members, src)


# ---- LLaVA / ShareGPT / LLaMA-Factory ----

@dataclass(frozen=True)
class LlavaRecord:
    order: tuple[str, int]                 # (json file, record index): merge order
    rid: str
    image: str                             # resolved path
    turns: list[dict[str, str]]
    record: dict[str, Any] = field(default_factory=dict)
    system: str | None = None


def _content(value: Any) -> tuple[str, list[Any]] | None:
    """Turn text plus image paths named inside it (OpenAI-style content parts); None if malformed."""
    if isinstance(value, str):
        return value, []
    if not isinstance(value, list):
        return None
    texts, images = [], []
    for part in value:
        if isinstance(part, str):
            texts.append(part)
        elif isinstance(part, dict) and part.get("type") == "text":
            texts.append(str(part.get("value", part.get("text", ""))))
        elif isinstance(part, dict) and part.get("type") in ("image", "image_url"):
            ref = part.get("value", part.get("image", part.get("image_url")))
            ref = ref.get("url") if isinstance(ref, dict) else ref
            texts.append(IMAGE_TOKEN)
            images.append(ref)
        else:
            return None
    return "".join(texts), images


def normalize_turns(rec: dict[str, Any]) -> tuple[list[dict[str, str]], list[str], str | None] | str:
    """ShareGPT `conversations[{from,value}]` or LLaMA-Factory `messages[{role,content}]` ->
    (turns with roles human/gpt, images named in content parts, system prompt); a str is the error."""
    raw = rec.get("conversations", rec.get("messages"))
    if not isinstance(raw, list) or not raw:
        return "no `conversations`/`messages` list (or it is empty)"
    turns, images, system = [], [], None
    for i, t in enumerate(raw):
        role = t.get("from", t.get("role")) if isinstance(t, dict) else None
        content = _content(t.get("value", t.get("content"))) if isinstance(t, dict) else None
        if content is None:
            return f"turn {i} is not {{from, value}} / {{role, content}} with text content"
        if role == "system":
            system = content[0]
            continue
        if role not in ROLES:
            return f"turn {i} has unknown role {role!r}"
        turns.append({"from": ROLES[role], "value": content[0]})
        images += content[1]
    if not turns or turns[0]["from"] != "human":
        return "conversation does not start with a human turn"
    return turns, images, system


def resolve_image(root: str, ref: str) -> str:
    if "://" in ref or ref.startswith("/"):
        return ref
    joined = FileSystems.join(root, ref) if root else ref
    return joined if "://" in joined else posixpath.normpath(joined)


def parse_llava_record(rec: Any, file: str, idx: int, root: str) -> LlavaRecord | tuple[Reason, str]:
    if not isinstance(rec, dict):
        return Reason.BAD_RECORD, f"record is {type(rec).__name__}, not an object"
    norm = normalize_turns(rec)
    if isinstance(norm, str):
        return Reason.BAD_RECORD, norm
    turns, part_images, system = norm
    named = rec.get("image", rec.get("images"))
    named = [] if named is None else [named] if isinstance(named, str) else named
    if not isinstance(named, list) or not all(isinstance(x, str) for x in named + part_images):
        return Reason.BAD_RECORD, "`image`/`images` must be a path or a list of paths"
    images = list(dict.fromkeys(x for x in named + part_images if x))
    if not images:
        return Reason.BAD_RECORD, "text-only record (no image): out of scope for image ingest"
    if len(images) > 1:
        return Reason.BAD_RECORD, f"multi-image record ({len(images)} distinct images): out of scope"
    rid = str(rec.get("id", f"{posixpath.basename(file)}:{idx}"))
    return LlavaRecord((file, idx), rid, resolve_image(root, images[0]), turns, rec, system)


def iter_json_records(text: str) -> Iterator[tuple[str, Any, str | None]]:
    """(`record=N` | `line=N`, record, error) for a JSON list or JSONL text; raises on a broken list."""
    body = text.strip()
    if not body:
        yield "record=0", None, "empty file"
        return
    if body.startswith("["):
        yield from ((f"record={i}", r, None) for i, r in enumerate(json.loads(body)))
        return
    try:
        data = json.loads(body)
    except ValueError:
        data = None
    if isinstance(data, dict) and "\n" in body:
        yield "record=0", None, f"top-level JSON object (keys {list(data)[:8]}), expected a list or JSONL"
        return
    for n, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                yield f"line={n}", json.loads(line), None
            except ValueError as e:
                yield f"line={n}", None, f"invalid JSON: {e}"


def merge_conversations(records: list[LlavaRecord]) -> list[dict[str, str]]:
    """Records of one image, in order, as one conversation with exactly one `<image>`, at the start of
    the first human turn (LLaVA's preprocess_multimodal moves it there the same way: token + newline)."""
    merged = [dict(t) for r in records for t in r.turns]
    for t in merged:
        if IMAGE_TOKEN in t["value"]:
            t["value"] = t["value"].replace(IMAGE_TOKEN, "").strip()
    merged[0]["value"] = f"{IMAGE_TOKEN}\n{merged[0]['value']}"
    return merged


def build_llava_sample(image: str, records: list[LlavaRecord], src: SourceConfig) -> Sample | Reject:
    records = sorted(records, key=lambda r: r.order)
    ids = [r.rid for r in records]
    try:
        if not FileSystems.exists(image):
            return ingest_reject(src, image, Reason.MISSING_IMAGE, f"image file not found (records {ids[:20]})")
        data = read_bytes(image)
    except Exception as e:
        return ingest_reject(src, image, Reason.UNREADABLE, f"{format_exc(e)} (records {ids[:20]})")
    meta: dict[str, Any] = {"ids": ids, "records": [r.record for r in records],
                            "files": sorted({r.order[0] for r in records})}
    systems = [r.system for r in records if r.system]
    if systems:
        meta["system"] = systems[0]
    return new_sample(data, src, image, meta=meta, conversations={"en": merge_conversations(records)})


# ---- Beam ----

class _ListFilesDoFn(IngestDoFn):
    def __init__(self, src: SourceConfig, exts: tuple[str, ...] | None):
        self.src, self.exts = src, exts

    def process(self, path: str):
        try:
            files = list_files(path, self.exts)
        except Exception as e:
            yield self.route(ingest_reject(self.src, path, Reason.UNREADABLE, f"cannot list: {format_exc(e)}"))
            return
        if not files:
            wanted = f" ({', '.join(self.exts)})" if self.exts else ""
            yield self.route(ingest_reject(self.src, path, Reason.UNREADABLE, f"no input files{wanted} match"))
        yield from files


class _ReadDirDoFn(IngestDoFn):
    def __init__(self, src: SourceConfig):
        self.src = src

    def process(self, stem_paths: tuple[str, Iterable[str]]):
        for item in read_dir_group(stem_paths[1], self.src):
            yield self.route(item)


class _ReadShardDoFn(IngestDoFn):
    def __init__(self, src: SourceConfig):
        self.src = src

    def process(self, shard: str):
        try:
            f = FileSystems.open(shard, compression_type=CompressionTypes.UNCOMPRESSED)
        except Exception as e:
            yield self.route(ingest_reject(self.src, f"tar://{shard}", Reason.UNREADABLE, format_exc(e)))
            return
        with f:
            for item in read_shard(f, shard, self.src):
                yield self.route(item)


class _ReadLlavaFileDoFn(IngestDoFn):
    def __init__(self, src: SourceConfig):
        self.src = src

    def process(self, path: str):
        root = self.src.image_root or posixpath.dirname(path)
        try:
            records = list(iter_json_records(read_bytes(path).decode("utf-8-sig")))
        except Exception as e:
            yield self.route(ingest_reject(self.src, path, Reason.BAD_RECORD, f"not JSON/JSONL: {format_exc(e)}"))
            return
        for idx, (where, rec, error) in enumerate(records):
            parsed = (Reason.BAD_RECORD, error) if error else parse_llava_record(rec, path, idx, root)
            if isinstance(parsed, LlavaRecord):
                yield parsed.image, parsed
            else:
                yield self.route(ingest_reject(self.src, f"{path}#{where}", parsed[0], parsed[1]))


class _BuildLlavaDoFn(IngestDoFn):
    def __init__(self, src: SourceConfig):
        self.src = src

    def process(self, image_records: tuple[str, Iterable[LlavaRecord]]):
        yield self.route(build_llava_sample(image_records[0], list(image_records[1]), self.src))


def _routed(pcoll: beam.PCollection, label: str, dofn: beam.DoFn, rejects: list) -> beam.PCollection:
    """The stage plumbing's ParDo; outputs before a crash are kept (a list read up to a bad row)."""
    out, stage_rejects = route_stage(pcoll, label, dofn, STAGE, partial=True)
    rejects.append(stage_rejects)
    return out


class ReadSource(beam.PTransform):
    """Pipeline root -> (PCollection[Sample], PCollection[Reject]) for one configured source."""

    EXTS: ClassVar[dict[str, tuple[str, ...] | None]] = {
        "dir": None, "urls": URL_LIST_EXTS, "webdataset": TAR_EXTS, "llava": LLAVA_EXTS}

    def __init__(self, src: SourceConfig, ingest: IngestConfig):
        super().__init__()
        self.src, self.ingest = src, ingest     # src.kind is one of EXTS: SourceConfig checks it

    def expand(self, pbegin):
        src, rejects = self.src, []
        files = _routed(pbegin | "Path" >> beam.Create([src.path]), "List",
                        _ListFilesDoFn(src, self.EXTS[src.kind]), rejects)
        if src.kind == "dir":
            samples = _routed(files | "ByStem" >> beam.Map(_stem_of) | "GroupStems" >> beam.GroupByKey(),
                              "ReadFiles", _ReadDirDoFn(src), rejects)
        elif src.kind == "webdataset":
            samples = _routed(files | "SpreadShards" >> beam.Reshuffle(), "ReadShards", _ReadShardDoFn(src),
                              rejects)
        elif src.kind == "llava":
            records = _routed(files | "SpreadFiles" >> beam.Reshuffle(), "ReadRecords",
                              _ReadLlavaFileDoFn(src), rejects)
            samples = _routed(records | "GroupByImage" >> beam.GroupByKey(), "ReadImages",
                              _BuildLlavaDoFn(src), rejects)
        else:
            samples, download_rejects = files | "Download" >> DownloadUrls(src, self.ingest)
            rejects.append(download_rejects)
        return samples, tuple(rejects) | "Rejects" >> beam.Flatten()
