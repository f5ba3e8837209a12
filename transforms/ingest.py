"""Ingest: read a configured source (dir, URL list, webdataset tars, LLaVA/ShareGPT JSON) into raw Samples."""
from __future__ import annotations

import dataclasses
import json
import posixpath
import tarfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import IO, Any, ClassVar

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems

from polycap.schemas import Caption, Reason, Reject, Sample
from polycap.schemas.config import IngestConfig, SourceConfig
from polycap.schemas.conversations import IMAGE_TOKEN
from polycap.schemas.conversations import SHAREGPT_ROLE as ROLES
from polycap.sharding import fs, record_json
from polycap.transforms.download import (
    LIST_EXTS,
    STAGE,
    DownloadUrls,
    IngestDoFn,
    UrlRow,
    download_rows,
    ingest_reject,
    new_sample,
    text_problem,
)
from polycap.transforms.input_files import (
    BudgetError,
    LimitedReader,
    Refused,
    deadline_of,
    entry_problem,
    inside,
    list_inputs,
    missing,
    read_limited,
)
from polycap.transforms.plumbing import format_exc, route_stage

SIDECAR_EXTS = (".txt", ".json")          # img2dataset layout: <stem>.jpg + <stem>.txt caption + <stem>.json
TAR_EXTS = (".tar", ".tgz", ".tar.gz")
LLAVA_EXTS = (".json", ".jsonl")
URL_LIST_EXTS = tuple(e + c for e in LIST_EXTS for c in ("", ".gz", ".bz2", ".zst"))
# webdataset image fields in order of preference (the first one present is the sample's image)
WDS_IMAGE_EXTS = ("jpg", "jpeg", "png", "webp", "bmp", "gif", "tif", "tiff", "jxl")
MAX_META_FIELD = 1024                      # small text members (.cls, .id ...) are copied into meta


# ---- dir ----

def read_bytes(path: str, limit: int, cfg: IngestConfig, what: str = "file (ingest.max_bytes)") -> bytes:
    """A whole input file within its byte and time budget (raw bytes: `x.gz` is not gunzipped)."""
    return read_limited(path, limit, cfg, what)


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


def read_dir_group(paths: Iterable[str], src: SourceConfig, cfg: IngestConfig | None = None
                   ) -> Iterator[Sample | Reject]:
    """Files sharing a stem: each non-sidecar file is a sample (or a reject), with the stem's caption and
    meta sidecars (each within ingest.max_row_bytes; an unreadable one is noted in meta, not fatal)."""
    cfg = cfg or IngestConfig()
    inputs, txt, js = split_sidecars(paths)
    caption, meta = None, {}
    if txt and inputs:
        try:
            caption = read_bytes(txt, cfg.max_row_bytes, cfg, "caption file (ingest.max_row_bytes)"
                                 ).decode("utf-8", errors="replace")
        except Exception as e:
            meta["txt_error"] = format_exc(e)
    if js and inputs:
        try:
            meta["json"] = json.loads(read_bytes(js, cfg.max_row_bytes, cfg, "sidecar .json (ingest.max_row_bytes)"))
        except Exception as e:
            meta["json_error"] = format_exc(e)
    for p in inputs:
        try:
            data = read_bytes(p, cfg.max_bytes, cfg)
        except BudgetError as e:
            yield ingest_reject(src, p, e.reason, e.detail)
            continue
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
    record: dict[str, Any] | None = None
    if "json" in members:
        try:
            meta["json"] = json.loads(members["json"][1])
        except ValueError as e:
            meta["json_error"] = format_exc(e)
        record = polycap_record(meta.get("json"))
    if record is not None:
        # one of polycap's own shards: captions, conversations and licence come back as they were written
        del meta["json"]
        meta["polycap"] = {"key": record["key"], "schema_version": record["schema_version"],
                           "source": record["source"], "provenance": record.get("provenance") or {}}
    for ext, (_, raw) in members.items():
        if record is not None and ext.endswith("txt"):
            continue                                   # the captions themselves, read from the record
        if ext not in ("txt", "json") and ext not in WDS_IMAGE_EXTS and len(raw) <= MAX_META_FIELD:
            try:
                meta.setdefault("extra", {})[ext] = raw.decode("utf-8").strip()
            except UnicodeDecodeError:
                pass
    if record is None:
        return new_sample(data, src, f"tar://{shard}#{name}", orig_caption=caption, meta=meta)
    orig = (record.get("source") or {}).get("orig_caption")   # the txt member is captions[primary], not alt-text
    sample = new_sample(data, src, f"tar://{shard}#{name}", orig_caption=orig,
                        meta=meta, conversations=record.get("conversations") or {})
    captions = {lang: Caption(**{f: v for f, v in c.items() if f in CAPTION_FIELDS})
                for lang, c in (record.get("captions") or {}).items() if (c.get("text") or "").strip()}
    licence = sample.source.license or (record.get("source") or {}).get("license") or None
    return dataclasses.replace(sample, captions=captions,
                               source=dataclasses.replace(sample.source, license=licence))


CAPTION_FIELDS = {f.name for f in dataclasses.fields(Caption)}


def polycap_record(rec: Any) -> dict[str, Any] | None:
    """The record of a polycap shard's json member (`sharding/record_json.py`, any schema version), or None
    for another producer's json."""
    if not (isinstance(rec, dict) and "schema_version" in rec and "key" in rec and "captions" in rec
            and isinstance(rec.get("source"), dict)):
        return None
    try:
        out = record_json.record_from_json(rec)
    except (KeyError, TypeError, ValueError):
        return None
    return out if isinstance(out.get("captions"), dict) else None


def _member_refusal(m: tarfile.TarInfo, field_: str, shard: str, seen: dict[str, int], cfg: IngestConfig,
                    src: SourceConfig) -> Reject | None:
    """A reject for a member that is not read: unsafe name or type, over ingest.max_bytes, or a name already
    seen in this sample (webdataset readers would keep only one of them; we keep the first)."""
    uri = f"tar://{shard}#{m.name}"
    if check_member(m) is not None:
        kind = "unsafe member name" if m.isfile() else "link/special member"
        return ingest_reject(src, uri, Reason.UNSAFE_PATH, f"{kind} {m.name!r} (type {m.type!r}); not read")
    if m.size > cfg.max_bytes:
        return ingest_reject(src, uri, Reason.TOO_LARGE_INPUT,
                             f"member of {m.size} bytes > ingest.max_bytes {cfg.max_bytes}; not read")
    if field_ in seen:              # same key and field (`a.jpg` twice, or `a.jpg` + `a.JPG`)
        seen[field_] += 1
        return ingest_reject(src, f"{uri}@{seen[field_]}", Reason.DUPLICATE_MEMBER,
                             f"field {field_!r} repeated in one sample (occurrence {seen[field_]}, member "
                             f"{m.name!r}); the first was kept")
    seen[field_] = 1
    return None


def _group(shard: str, key: str, members: dict[str, tuple[str, bytes]], src: SourceConfig,
           refused_any: bool) -> list[Sample | Reject]:
    """The sample of one key's members; nothing when there are none, or when the group has no image
    because its member was refused (that refusal already counted the sample)."""
    if not members:
        return []
    out = group_to_sample(shard, key, members, src)
    return [] if isinstance(out, Reject) and refused_any else [out]


def read_shard(f: IO[bytes], shard: str, src: SourceConfig, cfg: IngestConfig | None = None
               ) -> Iterator[Sample | Reject]:
    """Stream a (possibly gzipped) tar; adjacent members with one key form a sample. The stream is read within
    ingest.max_tar_bytes (compressed and unpacked) and read_timeout_s, each member within max_bytes. A read
    error or a spent budget ends the shard with one reject after everything read before it was emitted."""
    cfg = cfg or IngestConfig()
    key, members, n = "", {}, 0  # type: tuple[str, dict[str, tuple[str, bytes]], int]
    seen: dict[str, int] = {}
    refused_any = False
    stream = LimitedReader(f, cfg.max_tar_bytes, deadline_of(cfg), "tar shard (ingest.max_tar_bytes)")
    try:
        with tarfile.open(fileobj=stream, mode="r|*") as tf:  # type: ignore[call-overload]
            for m in tf:
                if m.offset_data + max(m.size, 0) > cfg.max_tar_bytes:   # unpacked size, before skipping it
                    raise BudgetError(Reason.TOO_LARGE_INPUT, f"tar stream over ingest.max_tar_bytes "
                                                              f"{cfg.max_tar_bytes} at member {m.name!r}")
                if m.isdir():
                    continue
                k, ext = wds_split(m.name)
                if k != key:
                    yield from _group(shard, key, members, src, refused_any)
                    key, members, seen, refused_any = k, {}, {}, False
                refused = _member_refusal(m, ext, shard, seen, cfg, src)
                if refused is not None:
                    refused_any = True   # this sample is already counted: no second reject for its group
                    yield refused
                    continue
                members[ext] = (m.name, tf.extractfile(m).read())  # type: ignore[union-attr]  # isfile()
                n += 1
    except Exception as e:
        partial = next(iter(_group(shard, key, members, src, refused_any)), None)
        if isinstance(partial, Sample):  # its image member was read whole before the error
            yield partial
        lost = f"; incomplete sample {key!r} has no image" if isinstance(partial, Reject) else ""
        reason, detail = (e.reason, e.detail) if isinstance(e, BudgetError) else (Reason.UNREADABLE, format_exc(e))
        yield ingest_reject(src, f"tar://{shard}", reason, f"{detail} (after {n} members{lost})")
        return
    yield from _group(shard, key, members, src, refused_any)


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


def _turns_problem(turns: list[dict[str, str]], system: str | None) -> str | None:
    """NUL or lone surrogates (also undecodable bytes, read as surrogates) in the conversation text."""
    for i, text in enumerate([t["value"] for t in turns] + [system or ""]):
        why = text_problem(text.replace("\ufffd", ""))   # U+FFFD itself may be genuine text here
        if why:
            return f"turn {i} {why}" if i < len(turns) else f"system prompt {why}"
    return None


def parse_llava_record(rec: Any, file: str, idx: int, root: str, cfg: IngestConfig | None = None
                       ) -> LlavaRecord | tuple[Reason, str]:
    """A record -> LlavaRecord, or (reason, detail): BAD_RECORD for malformed records or text that is not
    clean Unicode, UNSAFE_PATH for an image path outside `root` (`..`, absolute, a URL, a link leading out)
    unless ingest.follow_symlinks."""
    cfg = cfg or IngestConfig()
    if not isinstance(rec, dict):
        return Reason.BAD_RECORD, f"record is {type(rec).__name__}, not an object"
    norm = normalize_turns(rec)
    if isinstance(norm, str):
        return Reason.BAD_RECORD, norm
    turns, part_images, system = norm
    why = _turns_problem(turns, system)
    if why:
        return Reason.BAD_RECORD, why
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
    image = resolve_image(root, images[0])
    if not cfg.follow_symlinks and not (root and inside(image, root)):
        return Reason.UNSAFE_PATH, (f"image {images[0]!r} resolves outside image_root {root!r} "
                                    "(ingest.follow_symlinks is false)")
    return LlavaRecord((file, idx), rid, image, turns, rec, system)


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


def build_llava_sample(image: str, records: list[LlavaRecord], src: SourceConfig,
                       cfg: IngestConfig | None = None) -> Sample | Reject:
    cfg = cfg or IngestConfig()
    records = sorted(records, key=lambda r: r.order)
    ids = [r.rid for r in records]
    try:
        if missing(image):
            return ingest_reject(src, image, Reason.MISSING_IMAGE, f"image file not found (records {ids[:20]})")
        data = read_bytes(image, cfg.max_bytes, cfg)
    except BudgetError as e:
        return ingest_reject(src, image, e.reason, f"{e.detail} (records {ids[:20]})")
    except Exception as e:
        return ingest_reject(src, image, Reason.UNREADABLE, f"{format_exc(e)} (records {ids[:20]})")
    meta: dict[str, Any] = {"ids": ids, "records": [r.record for r in records],
                            "files": sorted({r.order[0] for r in records})}
    systems = [r.system for r in records if r.system]
    if systems:
        meta["system"] = systems[0]
    return new_sample(data, src, image, meta=meta, conversations={"en": merge_conversations(records)})


# ---- Beam ----

class _SourceDoFn(IngestDoFn):
    def __init__(self, src: SourceConfig, cfg: IngestConfig):
        self.src, self.cfg = src, cfg


def cannot_list_detail(e: BaseException) -> str:
    """The reject detail of a source path that could not be listed (here and in a run in waves' listing)."""
    return f"cannot list: {format_exc(e)}"


def no_inputs_detail(exts: tuple[str, ...] | None) -> str:
    """The reject detail of a source path under which no input file matched."""
    wanted = f" ({', '.join(exts)})" if exts else ""
    return f"no input files{wanted} match"


class _ListFilesDoFn(_SourceDoFn):
    def __init__(self, src: SourceConfig, cfg: IngestConfig, exts: tuple[str, ...] | None):
        super().__init__(src, cfg)
        self.exts = exts

    def process(self, path: str):
        try:
            found = list_inputs(path, self.exts, self.cfg)
        except Exception as e:
            yield self.route(ingest_reject(self.src, path, Reason.UNREADABLE, cannot_list_detail(e)))
            return
        if not found:
            yield self.route(ingest_reject(self.src, path, Reason.UNREADABLE, no_inputs_detail(self.exts)))
        for f in found:
            yield self.route(ingest_reject(self.src, f.path, f.reason, f.detail)) if isinstance(f, Refused) else f


class _ReadDirDoFn(_SourceDoFn):
    def process(self, stem_paths: tuple[str, Iterable[str]]):
        for item in read_dir_group(stem_paths[1], self.src, self.cfg):
            yield self.route(item)


class _ReadShardDoFn(_SourceDoFn):
    def process(self, shard: str):
        try:
            problem = entry_problem(shard, None, self.cfg)
            if problem:
                raise BudgetError(*problem)
            f = fs.open_read(shard)
        except BudgetError as e:
            yield self.route(ingest_reject(self.src, f"tar://{shard}", e.reason, e.detail))
            return
        except Exception as e:
            yield self.route(ingest_reject(self.src, f"tar://{shard}", Reason.UNREADABLE, format_exc(e)))
            return
        with f:
            for item in read_shard(f, shard, self.src, self.cfg):
                yield self.route(item)


class _ReadLlavaFileDoFn(_SourceDoFn):
    def process(self, path: str):
        root = self.src.image_root or posixpath.dirname(path)
        try:   # undecodable bytes become surrogates: only the records holding them are refused
            text = read_bytes(path, self.cfg.max_list_bytes, self.cfg, "LLaVA file (ingest.max_list_bytes)")
            records = list(iter_json_records(text.decode("utf-8-sig", errors="surrogateescape")))
        except BudgetError as e:
            yield self.route(ingest_reject(self.src, path, e.reason, e.detail))
            return
        except Exception as e:
            yield self.route(ingest_reject(self.src, path, Reason.BAD_RECORD, f"not JSON/JSONL: {format_exc(e)}"))
            return
        for idx, (where, rec, error) in enumerate(records):
            parsed = (Reason.BAD_RECORD, error) if error else parse_llava_record(rec, path, idx, root, self.cfg)
            if isinstance(parsed, LlavaRecord):
                yield parsed.image, parsed
            else:
                yield self.route(ingest_reject(self.src, f"{path}#{where}", parsed[0], parsed[1]))


class _BuildLlavaDoFn(_SourceDoFn):
    def process(self, image_records: tuple[str, Iterable[LlavaRecord]]):
        yield self.route(build_llava_sample(image_records[0], list(image_records[1]), self.src, self.cfg))


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
        src, cfg, rejects = self.src, self.ingest, []
        files = _routed(pbegin | "Path" >> beam.Create([src.path]), "List",
                        _ListFilesDoFn(src, cfg, self.EXTS[src.kind]), rejects)
        if src.kind == "dir":
            samples = _routed(files | "ByStem" >> beam.Map(_stem_of) | "GroupStems" >> beam.GroupByKey(),
                              "ReadFiles", _ReadDirDoFn(src, cfg), rejects)
        elif src.kind == "webdataset":
            samples = _routed(files | "SpreadShards" >> beam.Reshuffle(), "ReadShards", _ReadShardDoFn(src, cfg),
                              rejects)
        elif src.kind == "llava":
            records = _routed(files | "SpreadFiles" >> beam.Reshuffle(), "ReadRecords",
                              _ReadLlavaFileDoFn(src, cfg), rejects)
            samples = _routed(records | "GroupByImage" >> beam.GroupByKey(), "ReadImages",
                              _BuildLlavaDoFn(src, cfg), rejects)
        else:
            samples, download_rejects = files | "Download" >> DownloadUrls(src, self.ingest)
            rejects.append(download_rejects)
        return samples, tuple(rejects) | "Rejects" >> beam.Flatten()


class ReadListed(beam.PTransform):
    """One slice of a local source listed beforehand (a wave of pipelines/waves.py): for a folder, groups of
    paths sharing a stem; for URL lists, their rows; and refused entries or row rejects (uri, reason, detail)
    -> (PCollection[Sample], PCollection[Reject]), as `ReadSource` reads the same entries."""

    def __init__(self, src: SourceConfig, ingest: IngestConfig, groups: list[tuple[str, list[str]]],
                 refused: list[tuple[str, str, str]], rows: list[UrlRow] | None = None):
        super().__init__()
        self.src, self.ingest, self.groups, self.refused, self.rows = src, ingest, groups, refused, rows or []

    def expand(self, pbegin):
        rejects: list = []
        if self.src.kind == "urls":
            samples, download_rejects = download_rows(pbegin | "Rows" >> beam.Create(self.rows), self.src,
                                                      self.ingest)
            rejects.append(download_rejects)
        else:
            samples = _routed(pbegin | "Groups" >> beam.Create(self.groups), "ReadFiles",
                              _ReadDirDoFn(self.src, self.ingest), rejects)
        refused = pbegin | "Refused" >> beam.Create(
            [ingest_reject(self.src, p, Reason(r), d) for p, r, d in self.refused])
        return samples, (*rejects, refused) | "Rejects" >> beam.Flatten()
