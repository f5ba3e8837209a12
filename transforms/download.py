"""URL-list ingest: read img2dataset-style URL lists and download them with bounded concurrency."""
from __future__ import annotations

import base64
import csv
import datetime as _dt
import decimal
import hashlib
import json
import math
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import apache_beam as beam
from apache_beam.metrics import Metrics

from polycap.schemas import Hashes, ImageInfo, Reason, Reject, Sample, Source
from polycap.schemas.config import IngestConfig, SourceConfig
from polycap.sharding import fs
from polycap.transforms.fetch import FetchError, check_url, fetch, strip_userinfo
from polycap.transforms.input_files import BudgetError, bounded_lines, open_text
from polycap.transforms.plumbing import PooledDoFn, RoutingDoFn, format_exc, route_stage

__all__ = ["FetchError", "check_url", "fetch"]   # re-exported: URL checks and fetching live in fetch.py

STAGE = "ingest"
LIST_EXTS = (".parquet", ".csv", ".tsv", ".jsonl", ".json", ".txt")
COMPRESSED_EXTS = (".gz", ".bz2", ".zst", ".deflate")
PLACEHOLDER_CAPTIONS = ("nan", "none", "null", "undefined")


# ---- shared by every ingest source (transforms/ingest.py imports these) ----

def source_name(src: SourceConfig) -> str:
    return src.name or src.kind


def safe_text(value: Any) -> Any:
    """`value` with every string made encodable as UTF-8 (a lone surrogate becomes the text `\\udXXX`), so
    one record cannot crash a writer; dict keys included."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
            return value
        except UnicodeEncodeError:
            return value.encode("utf-8", "backslashreplace").decode("utf-8")
    if isinstance(value, dict):
        return {safe_text(k): safe_text(v) for k, v in value.items()}
    if isinstance(value, list):
        return [safe_text(v) for v in value]
    return value


def text_problem(text: str) -> str | None:
    """Why `text` is not clean Unicode text: a NUL, a lone surrogate, U+FFFD from undecodable bytes."""
    if "\x00" in text:
        return "contains NUL characters"
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return "contains lone surrogates (not valid Unicode)"
    if "\ufffd" in text:
        return "contains U+FFFD (bytes that were not valid UTF-8)"
    return None


def is_mojibake(text: str) -> bool:
    """UTF-8 bytes that were decoded as cp1252/Latin-1 (`cafÃ©`): re-encoding gives valid, different UTF-8."""
    if text.isascii():
        return False
    for codec in ("cp1252", "latin-1"):
        try:
            return text.encode(codec).decode("utf-8") != text
        except UnicodeError:
            continue
    return False


@dataclass(frozen=True)
class ListedCell:
    """A caption cell that is not text, a number or None, as a run in waves lists it (pipelines/waves.py):
    what `clean_caption` says of the original value (its type name and first 40 characters)."""
    type_name: str
    text: str


def clean_caption(value: Any) -> tuple[str | None, str | None]:
    """(caption, why it was dropped). A missing value (None, NaN, empty) is no caption and no problem; a
    value that is not usable text (a number, a placeholder like "nan", NUL, lone surrogates, undecodable
    bytes, mojibake, no letters at all) is dropped with the reason, and the image is still ingested."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None, None
    if isinstance(value, ListedCell):
        return None, f"not text: {value.type_name} {value.text!r}"
    if not isinstance(value, str):
        return None, f"not text: {type(value).__name__} {str(value)[:40]!r}"
    text = value.strip()
    if not text:
        return None, None
    why = text_problem(text)
    if why:
        return None, why
    if text.lower() in PLACEHOLDER_CAPTIONS:
        return None, f"placeholder {text!r}"
    if is_mojibake(text):
        return None, "mojibake (UTF-8 decoded as cp1252/Latin-1)"
    if not any(c.isalpha() for c in text):
        return None, "no letters (a number or symbols only)"
    return text, None


def new_sample(data: bytes, src: SourceConfig, uri: str, orig_caption: Any = None,
               meta: dict[str, Any] | None = None,
               conversations: dict[str, list[dict[str, str]]] | None = None) -> Sample:
    """A freshly ingested Sample: raw bytes, content key, nothing decoded yet. A source caption that is not
    usable text is dropped (`source.meta["caption_dropped"]` says why; counted `ingest/caption_dropped`)."""
    sha = hashlib.sha256(data).hexdigest()
    meta = safe_text(meta or {})
    caption, why = clean_caption(orig_caption)
    if why:
        meta["caption_dropped"] = {"reason": str(Reason.BAD_CAPTION), "detail": safe_text(why)}
        Metrics.counter(STAGE, "caption_dropped").inc()
    source = Source(name=source_name(src), uri=safe_text(uri), kind=src.kind, license=src.license or None,
                    orig_caption=caption, meta=meta)
    return Sample(key=sha[:32], source=source, image=ImageInfo(bytes=data), hashes=Hashes(sha256=sha),
                  conversations=conversations or {})


def ingest_reject(src: SourceConfig, uri: str, reason: Reason, detail: str, key: str = "") -> Reject:
    return Reject(key=key, source_uri=safe_text(uri), stage=STAGE, reason=reason, detail=safe_text(detail[:2000]),
                  source_name=source_name(src))


class IngestDoFn(RoutingDoFn):
    """Base for ingest DoFns: the stage plumbing's routing and counting, under `ingest`."""

    stage = STAGE


# ---- URL lists ----

@dataclass(frozen=True)
class UrlRow:
    url: str                    # without userinfo (strip_userinfo)
    caption: Any                # raw cell: new_sample cleans it (clean_caption)
    meta: dict[str, Any] = field(default_factory=dict)
    row_uri: str = ""           # `<list file>#row=<n>`, for rejects that have no usable URL


def find_column(names: Iterable[str], wanted: str) -> str | None:
    """Exact column match first, then case-insensitive (LAION/img2dataset lists use `URL`/`TEXT`)."""
    names = list(names)
    if wanted in names:
        return wanted
    lower = [n for n in names if n.lower() == wanted.lower()]
    return lower[0] if lower else None


def _caption_names(src: SourceConfig) -> tuple[str, ...]:
    # with the default name, also take the caption columns of LAION (`TEXT`) and img2dataset (`txt`)
    if src.caption_col in ("", "caption"):
        return ("caption", "text", "txt")
    return (src.caption_col,)


def jsonable(v: Any) -> Any:
    """Make a list-file cell JSON-able (meta travels as JSON): NaN -> None, bytes -> base64, dates -> ISO."""
    if v is None or isinstance(v, (bool, int, str)):
        return v
    if isinstance(v, float):
        return None if math.isnan(v) or math.isinf(v) else v
    if isinstance(v, (bytes, bytearray)):
        return {"base64": base64.b64encode(bytes(v)).decode()}
    if isinstance(v, (_dt.date, _dt.datetime, _dt.time)):
        return v.isoformat()
    if isinstance(v, decimal.Decimal):
        return float(v)
    if isinstance(v, dict):
        return {str(k): jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [jsonable(x) for x in v]
    if hasattr(v, "item"):  # numpy scalars
        return jsonable(v.item())
    return str(v)


def list_format(path: str) -> str:
    """`parquet | csv | tsv | jsonl | json | txt` from the file name (a compression suffix is ignored)."""
    name = path.lower()
    for c in COMPRESSED_EXTS:
        name = name.removesuffix(c)
    for ext in LIST_EXTS:
        if name.endswith(ext):
            return ext[1:]
    return "txt"


def iter_list_records(path: str, url_col: str = "url", cfg: IngestConfig | None = None
                      ) -> Iterator[dict[str, Any] | str]:
    """Yield each row of a URL list as a dict (columns -> values); a str is one bad row's error, and the rows
    after it are still read. Compressed lists (.gz .bz2 .zst .deflate) are decompressed by suffix, a BOM is
    dropped, and every read stays within ingest.max_list_bytes / max_row_bytes / read_timeout_s."""
    cfg = cfg or IngestConfig()
    fmt = list_format(path)
    if fmt == "parquet":
        for batch in fs.iter_parquet(path, batch_size=4096):
            yield from batch.to_pylist()
        return
    with open_text(path, cfg) as text:
        if fmt in ("csv", "tsv"):
            yield from csv_records(bounded_lines(text, cfg.max_row_bytes), "," if fmt == "csv" else "\t", url_col)
        elif fmt == "json":
            data = json.load(text)
            if not isinstance(data, list):
                yield f"top-level JSON is {type(data).__name__}, expected a list of rows"
                return
            yield from (r if isinstance(r, dict) else f"row is {type(r).__name__}, not an object"
                        for r in data)
        else:
            for line in bounded_lines(text, cfg.max_row_bytes):
                if line is None:
                    yield f"line longer than ingest.max_row_bytes ({cfg.max_row_bytes})"
                elif line.strip():
                    yield _json_row(line) if fmt == "jsonl" else {url_col: line.strip()}


class _LineFeed:
    """The lines csv.reader pulls, with the ones taken for the current record kept (to re-read them)."""

    def __init__(self, lines: Iterator[str | None]):
        self.lines, self.pending, self.taken, self.too_long = lines, deque[str](), list[str](), False

    def __iter__(self) -> _LineFeed:
        return self

    def __next__(self) -> str:
        line = self.pending.popleft() if self.pending else next(self.lines)
        if line is None:          # an over-long line: the record it belongs to is refused
            self.too_long, line = True, "\n"
        self.taken.append(line)
        return line


def _is_row(line: str, delimiter: str, n_fields: int, url_at: int | None) -> bool:
    try:
        fields = next(csv.reader([line], delimiter=delimiter), [])
    except csv.Error:
        return False
    return url_at is not None and len(fields) == n_fields and check_url(fields[url_at]) is None


def csv_records(lines: Iterator[str | None], delimiter: str, url_col: str) -> Iterator[dict[str, Any] | str]:
    """CSV/TSV rows as dicts by the header; one bad row is one error string. A quoted field may span lines
    (captions with newlines), but when the line after a row's first line is itself a whole row with a URL,
    the quote was never closed: that row is refused and the lines it swallowed are read again as rows."""
    feed = _LineFeed(lines)
    reader = csv.reader(feed, delimiter=delimiter)
    header: list[str] | None = None
    url_at: int | None = None
    while True:
        feed.taken, feed.too_long = [], False
        try:
            rec = next(reader)
        except StopIteration:
            return
        except csv.Error as e:     # e.g. a field over csv.field_size_limit(): this row only
            yield f"unparsable CSV row: {e}"
            continue
        if feed.too_long:
            yield "row longer than ingest.max_row_bytes"
            continue
        if not rec:
            continue
        if header is None:
            header = rec
            url_at = next((i for i, h in enumerate(header) if h == find_column(header, url_col)), None)
            continue
        if len(feed.taken) > 1 and _is_row(feed.taken[1], delimiter, len(header), url_at):
            yield "unbalanced quote: the row ran into the next line (which is read as its own row)"
            feed.pending.extendleft(reversed(feed.taken[1:]))
            continue
        if len(rec) > len(header):
            yield f"row has {len(rec)} fields, the header {len(header)}"
            continue
        yield dict(zip(header, rec + [None] * (len(header) - len(rec))))


def _json_row(line: str) -> dict[str, Any] | str:
    try:
        row = json.loads(line)
    except ValueError as e:
        return f"invalid JSON: {e}"
    return row if isinstance(row, dict) else f"row is {type(row).__name__}, not an object"


def rows_from_list(path: str, records: Iterable[dict[str, Any] | str], src: SourceConfig
                   ) -> Iterator[UrlRow | Reject]:
    """Map raw rows to UrlRows (url + caption + other columns in meta); bad rows become Rejects."""
    url_col = cap_col = None
    for i, rec in enumerate(records):
        row_uri = f"{path}#row={i}"
        if isinstance(rec, str):
            yield ingest_reject(src, row_uri, Reason.BAD_RECORD, rec)
            continue
        if url_col is None:
            url_col = find_column(rec, src.url_col or "url")
            cap_col = next(filter(None, (find_column(rec, c) for c in _caption_names(src))), None)
            if url_col is None:
                yield ingest_reject(src, path, Reason.BAD_RECORD,
                                    f"url column {src.url_col!r} not found (case-insensitive) in {path}; "
                                    f"columns: {', '.join(map(str, rec))}; set sources[].url_col")
                return
        if url_col not in rec:
            yield ingest_reject(src, row_uri, Reason.BAD_RECORD, f"row has no {url_col!r} field")
            continue
        url = rec.get(url_col)
        creds = False
        if isinstance(url, str):     # `user:password@` goes before anything else sees the URL
            url, creds = strip_userinfo(url.strip())
        reason = check_url(url)
        if reason is not None:
            yield ingest_reject(src, str(url) if url else row_uri, reason,
                                f"not an absolute http(s) URL: {str(url)[:300]!r} ({row_uri})")
            continue
        cap = rec.get(cap_col) if cap_col else None
        meta = {str(k): jsonable(v) for k, v in rec.items() if k not in (url_col, cap_col)}
        meta.update(url_list=path, url_list_row=i)
        if creds:
            meta["url_credentials_removed"] = True
        yield UrlRow(url=str(url), caption=cap, meta=meta, row_uri=row_uri)


def download_row(row: UrlRow, src: SourceConfig, cfg: IngestConfig) -> Sample | Reject:
    try:
        body, info = fetch(row.url, cfg)
    except FetchError as e:
        return ingest_reject(src, row.url, e.reason, e.detail)
    except Exception as e:  # never let one URL take the worker down
        return ingest_reject(src, row.url, Reason.DOWNLOAD_FAILED, format_exc(e))
    return new_sample(body, src, row.url, orig_caption=row.caption, meta={**row.meta, "http": info})


def list_rows(path: str, src: SourceConfig, cfg: IngestConfig) -> Iterator[UrlRow | Reject]:
    """One URL-list file's rows and row rejects, streamed; a list that cannot be read on ends with one reject
    for the file (the rows read before it were already yielded)."""
    try:
        yield from rows_from_list(path, iter_list_records(path, src.url_col or "url", cfg), src)
    except BudgetError as e:  # over a budget
        yield ingest_reject(src, path, e.reason, e.detail)
    except Exception as e:  # unreadable / corrupt list file
        yield ingest_reject(src, path, Reason.UNREADABLE, format_exc(e))


# ---- Beam ----

class _ReadUrlListDoFn(IngestDoFn):
    def __init__(self, src: SourceConfig, cfg: IngestConfig):
        self.src, self.cfg = src, cfg

    def process(self, path: str):
        for item in list_rows(path, self.src, self.cfg):
            yield self.route(item)


class _DownloadDoFn(PooledDoFn, IngestDoFn):
    """Keeps up to `concurrency` requests in flight across the whole bundle and emits as they finish."""

    thread_name = "polycap-download"

    def __init__(self, src: SourceConfig, cfg: IngestConfig):
        self.src, self.cfg = src, cfg
        self.threads = cfg.concurrency

    def work(self, row: UrlRow) -> Sample | Reject:
        return download_row(row, self.src, self.cfg)  # never raises

    def emit(self, result: Sample | Reject) -> Any:
        return self.route(result)


class DownloadUrls(beam.PTransform):
    """PCollection of URL-list file paths -> (samples, rejects): list files spread (the listing is one
    element's work, so without a shuffle every list would be parsed in that one bundle), each parsed on its
    own worker, rows shuffled, downloaded."""

    def __init__(self, src: SourceConfig, cfg: IngestConfig):
        super().__init__()
        self.src, self.cfg = src, cfg

    def expand(self, paths):
        lists = paths | "SpreadLists" >> beam.Reshuffle()
        rows, list_rejects = route_stage(lists, "ReadLists", _ReadUrlListDoFn(self.src, self.cfg), STAGE, partial=True)
        fetched, fetch_rejects = download_rows(rows, self.src, self.cfg)
        return fetched, (list_rejects, fetch_rejects) | "Rejects" >> beam.Flatten()


def download_rows(rows: beam.PCollection, src: SourceConfig, cfg: IngestConfig
                  ) -> tuple[beam.PCollection, beam.PCollection]:
    """PCollection[UrlRow] -> (samples, rejects): rows spread over workers, then downloaded (DownloadUrls,
    and a wave's listed rows, transforms/ingest.py ReadListed)."""
    return route_stage(rows | "Spread" >> beam.Reshuffle(), "Download", _DownloadDoFn(src, cfg), STAGE)
