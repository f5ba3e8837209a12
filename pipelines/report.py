"""`polycap report OUT`: gather a run's stats, a sample gallery and reject examples into one HTML file.

Memory stays bounded on any run size: manifest and reject parquet files are read in record batches and
aggregated into counters; shard tars are scanned one sample at a time, and only a sample of them (evenly
spaced shards, the first few samples of each) is kept for the gallery. Text lengths come from the scanned
shards only, and the report says how many of how many that was.
"""
from __future__ import annotations

import base64
import io
import logging
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

from polycap.sharding import fs
from polycap.sharding import manifest as mf
from polycap.sharding.members import SHARD_RE
from polycap.sharding.reader import ShardError, iter_shard
from polycap.sharding.rejects import reject_files, rejects_dir
from polycap.sharding.run_stats import read_stats

log = logging.getLogger(__name__)

REPORT_NAME = "report.html"
THUMB_SIDE = 320                # gallery thumbnails: longest side in pixels (JPEG, quality 75)
REJECT_THUMB_SIDE = 160
MAX_REJECT_READ = 16 << 20      # never read a reject's source file bigger than this for a thumbnail
SIZE_EDGES = (64, 128, 256, 384, 512, 768, 1024, 1536, 2048, 4096)
LENGTH_EDGES = (10, 25, 50, 100, 200, 400, 800, 1600)
RATIO_EDGES = (0.5, 0.75, 0.9, 1.1, 1.25, 1.5, 2.0)


def bin_label(value: float, edges: tuple[float, ...]) -> str:
    """The histogram bin of `value`: "<e0", "e0–e1", ..., "≥en" (edges ascending)."""
    if value < edges[0]:
        return f"<{edges[0]:g}"
    for lo, hi in zip(edges, edges[1:]):
        if value < hi:
            return f"{lo:g}–{hi:g}"
    return f"≥{edges[-1]:g}"


def bin_labels(edges: tuple[float, ...]) -> list[str]:
    return [f"<{edges[0]:g}", *(f"{lo:g}–{hi:g}" for lo, hi in zip(edges, edges[1:])), f"≥{edges[-1]:g}"]


def thumbnail(data: bytes, side: int) -> tuple[str, int, int] | None:
    """(data URI of a downscaled JPEG, width, height), or None when the bytes do not decode."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as im:
            im.draft("RGB", (side, side))       # JPEG: decode at a reduced scale, much faster
            im = im.convert("RGB")
            im.thumbnail((side, side))
            buf = io.BytesIO()
            im.save(buf, format="JPEG", quality=75)
            uri = "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")
            return uri, im.width, im.height
    except Exception:  # noqa: BLE001 - any undecodable file just has no thumbnail
        return None


@dataclass
class GalleryItem:
    key: str
    shard: str
    thumb: str                      # data URI
    width: int                      # record's image size
    height: int
    source_uri: str
    captions: dict[str, dict[str, str]]     # lang -> {text, kind}
    ocr_lines: list[dict[str, Any]]         # {text, box, quad, score} on the 0..1000 grid
    ocr_status: str = ""


@dataclass
class RejectExample:
    key: str
    stage: str
    reason: str
    detail: str
    source_uri: str
    thumb: str = ""


@dataclass
class ReportData:
    run_dir: str
    stats: dict[str, Any] = field(default_factory=dict)          # _stats/<split>.json merged (or counted here)
    run: dict[str, Any] = field(default_factory=dict)            # _run.json
    kept: int = 0
    shards: int = 0
    shard_bytes: int = 0
    splits: Counter[str] = field(default_factory=Counter)
    languages: Counter[str] = field(default_factory=Counter)
    sources: Counter[str] = field(default_factory=Counter)
    widths: Counter[str] = field(default_factory=Counter)
    heights: Counter[str] = field(default_factory=Counter)
    rejected: int = 0
    by_stage: Counter[str] = field(default_factory=Counter)
    by_reason: Counter[tuple[str, str]] = field(default_factory=Counter)   # (stage, reason)
    caption_lengths: dict[str, Counter[str]] = field(default_factory=lambda: defaultdict(Counter))
    translation_ratios: dict[str, Counter[str]] = field(default_factory=lambda: defaultdict(Counter))
    scanned_shards: int = 0
    scanned_samples: int = 0
    gallery: list[GalleryItem] = field(default_factory=list)
    reject_examples: list[RejectExample] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)            # unreadable files, shown in the report


def _read_json(path: str) -> dict[str, Any]:
    if not fs.is_file(path):
        return {}
    data = fs.read_json(path)
    return data if isinstance(data, dict) else {}


def _batches(path: str, columns: list[str]):
    """Column dicts of a parquet file, one record batch at a time (columns it lacks are left out)."""
    names = fs.parquet_schema(path).names
    for batch in fs.iter_parquet(path, [c for c in columns if c in names], batch_size=65_536):
        yield batch.to_pydict()


def read_manifest_counts(data: ReportData) -> None:
    """Kept samples by split, language, source and image size, from manifest.parquet in batches."""
    path = fs.join(data.run_dir, mf.MANIFEST_NAME)
    if not fs.is_file(path):
        data.problems.append(f"{mf.MANIFEST_NAME} not found: kept counts come from the shards scanned")
        return
    for cols in _batches(path, ["split", "source_name", "width", "height", "languages"]):
        n = len(cols["split"])
        data.kept += n
        data.splits.update(cols["split"])
        data.sources.update(s or "" for s in cols.get("source_name", [""] * n))
        for langs in cols.get("languages", []):
            data.languages.update(langs or [])
        data.widths.update(bin_label(w or 0, SIZE_EDGES) for w in cols.get("width", []))
        data.heights.update(bin_label(h or 0, SIZE_EDGES) for h in cols.get("height", []))


def read_reject_counts(data: ReportData, examples_per_reason: int) -> None:
    """Reject counts by stage and reason, and the first few rejects of each reason as examples."""
    folder = rejects_dir(data.run_dir)
    for path in reject_files(data.run_dir):          # every split's (rejects/<split>/) and older flat files
        name = path[len(folder):].lstrip("/")
        try:
            batches = list(_batches(path, ["key", "source_uri", "stage", "reason", "detail"]))
        except Exception as e:  # noqa: BLE001 - a broken reject file is reported, not fatal
            data.problems.append(f"rejects/{name}: unreadable ({type(e).__name__}: {e})")
            continue
        for cols in batches:
            for i, stage in enumerate(cols["stage"]):
                reason = cols["reason"][i]
                data.rejected += 1
                data.by_stage[stage] += 1
                data.by_reason[(stage, reason)] += 1
                if data.by_reason[(stage, reason)] <= examples_per_reason:
                    data.reject_examples.append(RejectExample(
                        key=cols["key"][i] or "", stage=stage, reason=reason, detail=cols["detail"][i] or "",
                        source_uri=cols["source_uri"][i] or ""))


def reject_thumbnail(uri: str) -> str:
    """A thumbnail of a reject's source file when it is a readable image; "" otherwise (URLs of a
    download list, members of a tar or JSON record, deleted files, non-images)."""
    if not uri or "#" in uri or uri.startswith(("http://", "https://", "tar://")):
        return ""
    try:
        if not fs.is_file(uri) or not 0 < fs.size(uri) <= MAX_REJECT_READ:
            return ""
        thumb = thumbnail(fs.read_bytes(uri), REJECT_THUMB_SIDE)
    except Exception:  # noqa: BLE001 - a thumbnail is a nicety; its absence is shown as "no preview"
        return ""
    return thumb[0] if thumb else ""


def pick_shards(names: list[str], count: int) -> list[str]:
    """`count` shard names spread evenly over the sorted list (all of them when there are fewer)."""
    if len(names) <= count:
        return names
    step = len(names) / count
    return [names[int(i * step)] for i in range(count)]


def _gallery_item(s: Any) -> GalleryItem | None:
    thumb = thumbnail(s.jpg, THUMB_SIDE)
    if thumb is None:
        return None
    rec, ocr = s.json, s.json.get("ocr") or {}
    caps = rec.get("captions") or {}
    captions = {lang: {"text": text, "kind": (caps.get(lang) or {}).get("kind", "")}
                for lang, text in sorted(s.texts.items()) if text.strip()}   # a run language it lacks: empty
    image = rec.get("image") or {}
    return GalleryItem(key=s.key, shard=s.shard, thumb=thumb[0], width=image.get("width") or thumb[1],
                       height=image.get("height") or thumb[2], source_uri=(rec.get("source") or {}).get("uri", ""),
                       captions=captions, ocr_lines=list(ocr.get("lines") or []), ocr_status=ocr.get("status", ""))


def _count_lengths(data: ReportData, rec: dict[str, Any], texts: dict[str, str]) -> None:
    caps = rec.get("captions") or {}
    for lang, text in texts.items():
        if not text.strip():          # every run language has a member; an empty one is no caption
            continue
        data.caption_lengths[lang][bin_label(len(text), LENGTH_EDGES)] += 1
        src = (caps.get(lang) or {}).get("translated_from")
        if src and texts.get(src):
            data.translation_ratios[lang][bin_label(len(text) / len(texts[src]), RATIO_EDGES)] += 1


def scan_shards(data: ReportData, shards_dir: str, names: list[str], gallery_from: set[str],
                per_shard: int, size: int) -> None:
    """Text lengths over every sample of the given shards. The gallery takes the first `per_shard` samples
    of each shard in `gallery_from`, topped up from the other scanned shards when those run short."""
    spare: list[GalleryItem] = []
    for name in names:
        pool = data.gallery if name in gallery_from else spare
        try:
            for i, s in enumerate(iter_shard(fs.join(shards_dir, name))):
                data.scanned_samples += 1
                _count_lengths(data, s.json, s.texts)
                if i < per_shard and len(pool) < size and (item := _gallery_item(s)) is not None:
                    pool.append(item)
            data.scanned_shards += 1
        except ShardError as e:
            data.problems.append(str(e))
    data.gallery.extend(spare[: max(0, size - len(data.gallery))])


def collect(run_dir: str, gallery_size: int = 48, per_shard: int = 4, scan_limit: int = 64,
            examples_per_reason: int = 4) -> ReportData:
    """Everything the report shows; raises FileNotFoundError when `run_dir` holds no run output."""
    run_dir, shards_dir = mf.resolve_dirs(fs.abs_path(run_dir))
    data = ReportData(run_dir=run_dir)
    shard_files = {n: size for n, size in fs.list_dir(shards_dir).items() if SHARD_RE.match(n)}
    try:
        data.stats = read_stats(run_dir)                 # every split's _stats/<split>.json, merged
    except (OSError, ValueError) as e:
        data.problems.append(f"stats unreadable ({type(e).__name__}: {e})")
    data.run = _read_json(fs.join(run_dir, "_run.json"))
    has_manifest = fs.is_file(fs.join(run_dir, mf.MANIFEST_NAME))
    if not (shard_files or data.stats or has_manifest):
        raise FileNotFoundError(f"{run_dir}: no run output here (no shards/, manifest.parquet or _stats/)")
    data.shards, data.shard_bytes = len(shard_files), sum(shard_files.values())
    read_manifest_counts(data)
    read_reject_counts(data, examples_per_reason)
    for ex in data.reject_examples:
        ex.thumb = reject_thumbnail(ex.source_uri)
    names = sorted(shard_files)
    per_shard = max(1, per_shard)
    gallery_shards = max(1, -(-gallery_size // per_shard))
    scan_names = pick_shards(names, max(scan_limit, 0))
    # the gallery's shards are scanned anyway; add them when the scan limit leaves some out
    gallery_from = set(pick_shards(names, gallery_shards))
    scan_shards(data, shards_dir, sorted(gallery_from | set(scan_names)), gallery_from, per_shard, gallery_size)
    if not has_manifest:
        data.kept = data.scanned_samples
    return data


def write_report(run_dir: str, out: str | None = None, **kw: Any) -> str:
    """Collect and render the report; writes `out` (default `<run_dir>/report.html`) and returns its path."""
    from polycap.pipelines.report_html import render

    data = collect(run_dir, **kw)
    path = out or fs.join(data.run_dir, REPORT_NAME)
    fs.write_bytes(path, render(data).encode("utf-8"))
    return path
