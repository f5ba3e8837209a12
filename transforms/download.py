"""URL-list ingest: read img2dataset-style URL lists and download them with bounded concurrency."""
from __future__ import annotations

import base64
import csv
import datetime as _dt
import decimal
import hashlib
import io
import json
import math
import socket
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import apache_beam as beam
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from polycap.schemas import Hashes, ImageInfo, Reason, Reject, Sample, Source
from polycap.schemas.config import IngestConfig, SourceConfig
from polycap.transforms.plumbing import PooledDoFn, RoutingDoFn, format_exc, route_stage
from polycap.transforms.retry import retry_after_s, retry_wait_s

STAGE = "ingest"
ALLOWED_SCHEMES = ("http", "https")
LIST_EXTS = (".parquet", ".csv", ".tsv", ".jsonl", ".json", ".txt")
COMPRESSED_EXTS = (".gz", ".bz2", ".zst", ".deflate")
CHUNK = 64 * 1024


# ---- shared by every ingest source (transforms/ingest.py imports these) ----

def source_name(src: SourceConfig) -> str:
    return src.name or src.kind


def new_sample(data: bytes, src: SourceConfig, uri: str, orig_caption: str | None = None,
               meta: dict[str, Any] | None = None,
               conversations: dict[str, list[dict[str, str]]] | None = None) -> Sample:
    """A freshly ingested Sample: raw bytes, content key, nothing decoded yet."""
    sha = hashlib.sha256(data).hexdigest()
    source = Source(name=source_name(src), uri=uri, kind=src.kind, license=src.license or None,
                    orig_caption=orig_caption, meta=meta or {})
    return Sample(key=sha[:32], source=source, image=ImageInfo(bytes=data), hashes=Hashes(sha256=sha),
                  conversations=conversations or {})


def ingest_reject(src: SourceConfig, uri: str, reason: Reason, detail: str, key: str = "") -> Reject:
    return Reject(key=key, source_uri=uri, stage=STAGE, reason=reason, detail=detail[:2000],
                  source_name=source_name(src))


class IngestDoFn(RoutingDoFn):
    """Base for ingest DoFns: the stage plumbing's routing and counting, under `ingest`."""

    stage = STAGE


# ---- URL lists ----

@dataclass(frozen=True)
class UrlRow:
    url: str
    caption: str | None
    meta: dict[str, Any] = field(default_factory=dict)
    row_uri: str = ""           # `<list file>#row=<n>`, for rejects that have no usable URL


def check_url(url: Any) -> Reason | None:
    """INVALID_URL for anything that is not an absolute http(s) URL with a host."""
    if not isinstance(url, str) or not url.strip():
        return Reason.INVALID_URL
    try:
        parts = urllib.parse.urlsplit(url.strip())
    except ValueError:
        return Reason.INVALID_URL
    if parts.scheme.lower() not in ALLOWED_SCHEMES or not parts.hostname:
        return Reason.INVALID_URL
    return None


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


def iter_list_records(path: str, url_col: str = "url") -> Iterator[dict[str, Any] | str]:
    """Yield each row of a URL list as a dict (columns -> values); a str is an unparsable row's error."""
    fmt = list_format(path)
    if fmt == "parquet":
        import pyarrow.parquet as pq

        with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
            for batch in pq.ParquetFile(f).iter_batches(batch_size=4096):
                yield from batch.to_pylist()
        return
    with FileSystems.open(path) as raw:
        text = io.TextIOWrapper(raw, encoding="utf-8", errors="replace", newline="")
        if fmt in ("csv", "tsv"):
            yield from csv.DictReader(text, delimiter="," if fmt == "csv" else "\t")
        elif fmt == "json":
            data = json.load(text)
            if not isinstance(data, list):
                yield f"top-level JSON is {type(data).__name__}, expected a list of rows"
                return
            yield from (r if isinstance(r, dict) else f"row is {type(r).__name__}, not an object"
                        for r in data)
        elif fmt == "jsonl":
            for line in text:
                if line.strip():
                    yield _json_row(line)
        else:
            for line in text:
                if line.strip():
                    yield {url_col: line.strip()}


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
        reason = check_url(url)
        if reason is not None:
            yield ingest_reject(src, str(url) if url else row_uri, reason,
                                f"not an absolute http(s) URL: {str(url)[:300]!r} ({row_uri})")
            continue
        cap = rec.get(cap_col) if cap_col else None
        meta = {str(k): jsonable(v) for k, v in rec.items() if k not in (url_col, cap_col)}
        meta.update(url_list=path, url_list_row=i)
        yield UrlRow(url=str(url).strip(), caption=None if cap is None else str(cap), meta=meta,
                     row_uri=row_uri)


# ---- HTTP ----

class FetchError(Exception):
    def __init__(self, reason: Reason, detail: str, retry: bool = False, wait_s: float | None = None):
        super().__init__(detail)
        self.reason, self.detail, self.retry, self.wait_s = reason, detail, retry, wait_s


class _SafeRedirect(urllib.request.HTTPRedirectHandler):
    """Follow redirects only to http(s); urllib alone would also follow ftp://."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        if check_url(newurl) is not None:
            raise FetchError(Reason.DOWNLOAD_FAILED, f"refused redirect to non-http(s) URL {newurl[:300]}")
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def build_opener() -> urllib.request.OpenerDirector:
    return urllib.request.build_opener(_SafeRedirect())


def _read_body(resp: Any, cfg: IngestConfig, deadline: float) -> bytes:
    length = resp.headers.get("Content-Length")
    if length and length.strip().isdigit() and int(length) > cfg.max_bytes:
        raise FetchError(Reason.TOO_LARGE_DOWNLOAD, f"Content-Length {length} > max_bytes {cfg.max_bytes}")
    buf = bytearray()
    while True:
        chunk = resp.read1(CHUNK)  # read1: return what has arrived (read() blocks to fill CHUNK)
        if not chunk:
            return bytes(buf)
        buf += chunk
        if len(buf) > cfg.max_bytes:
            raise FetchError(Reason.TOO_LARGE_DOWNLOAD, f"body exceeded max_bytes {cfg.max_bytes}")
        if time.monotonic() > deadline:  # socket timeouts are per read; this bounds a slow drip
            raise FetchError(Reason.DOWNLOAD_FAILED, f"timeout after {cfg.timeout_s:g}s", retry=True)


def fetch_once(url: str, cfg: IngestConfig, opener: urllib.request.OpenerDirector
               ) -> tuple[bytes, dict[str, Any]]:
    """One GET; raises FetchError with a retry flag (5xx, 429 and network errors are retryable)."""
    req = urllib.request.Request(url, headers={"User-Agent": cfg.user_agent, "Accept": "image/*,*/*;q=0.8"})
    deadline = time.monotonic() + cfg.timeout_s
    try:
        with opener.open(req, timeout=cfg.timeout_s) as resp:
            body = _read_body(resp, cfg, deadline)
            info = {"status": resp.status, "content_type": resp.headers.get("Content-Type")}
            if resp.geturl() != url:
                info["final_url"] = resp.geturl()
            return body, info
    except FetchError:
        raise
    except urllib.error.HTTPError as e:
        retry = e.code >= 500 or e.code == 429
        raise FetchError(Reason.DOWNLOAD_FAILED, f"HTTP {e.code} {e.reason}".strip(), retry=retry,
                         wait_s=retry_after_s(e.headers)) from None
    except TimeoutError:
        raise FetchError(Reason.DOWNLOAD_FAILED, f"timeout after {cfg.timeout_s:g}s", retry=True) from None
    except urllib.error.URLError as e:
        if isinstance(e.reason, (socket.timeout, TimeoutError)):
            raise FetchError(Reason.DOWNLOAD_FAILED, f"timeout after {cfg.timeout_s:g}s", retry=True) from None
        raise FetchError(Reason.DOWNLOAD_FAILED, f"network error: {e.reason}", retry=True) from None
    except (OSError, ValueError) as e:  # ConnectionReset, IncompleteRead, bad URL parts ...
        raise FetchError(Reason.DOWNLOAD_FAILED, format_exc(e), retry=isinstance(e, OSError)) from None


def fetch(url: str, cfg: IngestConfig, opener: urllib.request.OpenerDirector
          ) -> tuple[bytes, dict[str, Any]]:
    """GET with up to `cfg.retries` retries, exponential backoff with jitter, honoring Retry-After; no wait
    is longer than `ingest.timeout_s`."""
    for attempt in range(cfg.retries + 1):
        try:
            body, info = fetch_once(url, cfg, opener)
            info["attempts"] = attempt + 1
            return body, info
        except FetchError as e:
            if not e.retry or attempt == cfg.retries:
                if attempt:
                    e.detail = f"{e.detail} (after {attempt + 1} attempts)"
                raise
            time.sleep(retry_wait_s(attempt, e.wait_s, cfg.timeout_s))
    raise AssertionError("unreachable")


def download_row(row: UrlRow, src: SourceConfig, cfg: IngestConfig,
                 opener: urllib.request.OpenerDirector) -> Sample | Reject:
    try:
        body, info = fetch(row.url, cfg, opener)
    except FetchError as e:
        return ingest_reject(src, row.url, e.reason, e.detail)
    except Exception as e:  # never let one URL take the worker down
        return ingest_reject(src, row.url, Reason.DOWNLOAD_FAILED, format_exc(e))
    return new_sample(body, src, row.url, orig_caption=row.caption, meta={**row.meta, "http": info})


# ---- Beam ----

class _ReadUrlListDoFn(IngestDoFn):
    def __init__(self, src: SourceConfig):
        self.src = src

    def process(self, path: str):
        try:
            records = iter_list_records(path, self.src.url_col or "url")
            for item in rows_from_list(path, records, self.src):
                yield self.route(item)
        except Exception as e:  # unreadable / corrupt list file: rows read so far were already emitted
            yield self.route(ingest_reject(self.src, path, Reason.UNREADABLE, format_exc(e)))


class _DownloadDoFn(PooledDoFn, IngestDoFn):
    """Keeps up to `concurrency` requests in flight across the whole bundle and emits as they finish."""

    thread_name = "polycap-download"

    def __init__(self, src: SourceConfig, cfg: IngestConfig):
        self.src, self.cfg = src, cfg
        self.threads = cfg.concurrency

    def setup(self):
        super().setup()
        self._opener = build_opener()

    def work(self, row: UrlRow) -> Sample | Reject:
        return download_row(row, self.src, self.cfg, self._opener)  # never raises

    def emit(self, result: Sample | Reject) -> Any:
        return self.route(result)


class DownloadUrls(beam.PTransform):
    """PCollection of URL-list file paths -> (samples, rejects): rows read, shuffled, downloaded."""

    def __init__(self, src: SourceConfig, cfg: IngestConfig):
        super().__init__()
        self.src, self.cfg = src, cfg

    def expand(self, paths):
        rows, list_rejects = route_stage(paths, "ReadLists", _ReadUrlListDoFn(self.src), STAGE, partial=True)
        fetched, fetch_rejects = route_stage(rows | "Spread" >> beam.Reshuffle(), "Download",
                                             _DownloadDoFn(self.src, self.cfg), STAGE)
        return fetched, (list_rejects, fetch_rejects) | "Rejects" >> beam.Flatten()
