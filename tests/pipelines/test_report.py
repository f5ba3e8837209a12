"""`polycap report`: stats, a sampled gallery with OCR boxes and captions per language, and reject examples."""
from __future__ import annotations

import hashlib
import io
import json
import re
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from polycap.pipelines.report import bin_label, collect, pick_shards, write_report
from polycap.schemas import (
    Caption,
    Hashes,
    ImageInfo,
    OcrLine,
    OcrResult,
    Reason,
    Reject,
    Sample,
    Source,
    reject_to_row,
)
from polycap.sharding.rejects import rejects_table

KO = "빨간 간판에 큰 글씨로 세일이라고 쓰여 있다."
VI = "Một biển hiệu màu đỏ ghi chữ giảm giá lớn."
EN = "A red sign with large letters announcing a sale."


def card(i: int) -> tuple[bytes, list[OcrLine]]:
    """A 400x200 JPEG with a dark text-like bar at a known place, and the OCR line that covers it."""
    from PIL import Image, ImageDraw

    im = Image.new("RGB", (400, 200), (250 - 9 * i, 240, 200 + 5 * i))
    ImageDraw.Draw(im).rectangle((40, 50, 360, 100), fill=(20, 20, 20))
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=90)
    # (40, 50)-(360, 100) on a 400x200 image is (100, 250)-(900, 500) on the 0..1000 grid
    line = OcrLine(text=f"SALE {i}", box=[100, 250, 900, 500], quad=[100, 250, 900, 250, 900, 500, 100, 500],
                   score=0.98)
    return buf.getvalue(), [line]


def make_sample(i: int) -> Sample:
    data, lines = card(i)
    sha = hashlib.sha256(data).hexdigest()
    caps = {"en": Caption(text=f"{EN} ({i})", kind="source", backend="test"),
            "ko": Caption(text=KO, kind="translation", backend="test", translated_from="en"),
            "vi": Caption(text=VI, kind="translation", backend="test", translated_from="en")}
    return Sample(key=sha[:32], source=Source(name="cards", uri=f"/data/card{i}.jpg", kind="dir"),
                  image=ImageInfo(bytes=data, format="jpeg", width=400, height=200, orig_format="JPEG",
                                  orig_width=400, orig_height=200),
                  hashes=Hashes(sha256=sha), ocr=OcrResult(engine="test", lines=lines, lang="en"), captions=caps)


def make_run(root: Path, n: int = 10, max_samples: int = 3) -> Path:
    """A run dir as `polycap run` leaves it: shards + manifest, rejects/train/, _stats/train.json, _run.json."""
    from tests.sharding.conftest import run_write

    out = root / "run"
    run_write([make_sample(i) for i in range(n)], str(out), max_samples=max_samples)
    bad = root / "inputs" / "tiny.png"
    bad.parent.mkdir(parents=True, exist_ok=True)
    from PIL import Image
    Image.new("RGB", (32, 32), (0, 128, 0)).save(bad)
    rejects = [Reject(key="a" * 32, source_uri=str(bad), stage="filter", reason=Reason.TOO_SMALL, detail="32x32"),
               Reject(key="b" * 32, source_uri=str(root / "inputs" / "gone.jpg"), stage="decode",
                      reason=Reason.EMPTY_FILE, detail="0 bytes"),
               Reject(key="c" * 32, source_uri="https://example.invalid/x.jpg", stage="ingest",
                      reason=Reason.DOWNLOAD_FAILED, detail="HTTP 404")]
    (out / "rejects" / "train").mkdir(parents=True)
    pq.write_table(rejects_table([reject_to_row(r) for r in rejects]),
                   out / "rejects" / "train" / "rejects-00000.parquet")
    stats = {"inputs": n + 3, "kept": n, "rejected": 3, "balanced": True, "notes": ["ocr: test on cpu"],
             "schema_version": "1.1.0"}
    (out / "_stats").mkdir()
    (out / "_stats" / "train.json").write_text(json.dumps(stats))
    (out / "_run.json").write_text(json.dumps({"code_version": "test", "started": "2026-01-01T00:00:00Z"}))
    return out


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    return make_run(tmp_path_factory.mktemp("report"))


def test_collect_counts_stats_and_samples_a_gallery(run_dir):
    d = collect(str(run_dir), gallery_size=4, per_shard=1)
    tars = sorted(p.name for p in (run_dir / "shards").glob("*.tar"))
    assert d.kept == 10 and d.shards == len(tars) >= 4 and d.rejected == 3
    assert d.by_stage == {"filter": 1, "decode": 1, "ingest": 1}
    assert d.languages == {"en": 10, "ko": 10, "vi": 10}
    assert d.widths == {"384–512": 10} and d.heights == {"128–256": 10}
    assert len(d.gallery) == 4 and len({g.shard for g in d.gallery}) == 4      # one per shard
    g = d.gallery[0]
    assert g.captions["ko"] == {"text": KO, "kind": "translation"} and g.captions["en"]["kind"] == "source"
    assert g.ocr_lines[0]["box"] == [100, 250, 900, 500] and g.thumb.startswith("data:image/jpeg;base64,")
    assert d.scanned_samples == 10 and sum(d.caption_lengths["ko"].values()) == 10
    assert sum(d.translation_ratios["vi"].values()) == 10 and "ko" in d.translation_ratios


def test_reject_examples_have_thumbnails_only_where_the_file_is_readable(run_dir):
    ex = {r.reason: r for r in collect(str(run_dir)).reject_examples}
    assert ex["too_small"].thumb.startswith("data:image/jpeg;base64,")
    assert ex["empty_file"].thumb == "" and ex["download_failed"].thumb == ""


def test_gallery_and_scan_are_bounded(run_dir):
    d = collect(str(run_dir), gallery_size=2, per_shard=2, scan_limit=1)
    assert len(d.gallery) == 2 and len({g.shard for g in d.gallery}) == 1
    assert d.scanned_shards == 1 and d.scanned_samples <= 3
    assert pick_shards([f"s{i}" for i in range(10)], 3) == ["s0", "s3", "s6"]
    assert bin_label(0, (1, 2)) == "<1" and bin_label(1.5, (1, 2)) == "1–2" and bin_label(9, (1, 2)) == "≥2"


def test_html_is_self_contained(run_dir, tmp_path):
    path = write_report(str(run_dir), str(tmp_path / "r.html"))
    text = Path(path).read_text(encoding="utf-8")
    refs = re.findall(r'(?:src|href)="([^"]*)"', text)
    assert refs and all(r.startswith(("data:", "#")) for r in refs), [r[:40] for r in refs]
    assert "<link rel=\"stylesheet\"" not in text and "<script src" not in text
    assert KO in text and VI in text and 'class="ocr-box"' in text


def test_missing_dir_is_an_error_not_an_empty_report(tmp_path):
    with pytest.raises(FileNotFoundError, match="no run output"):
        collect(str(tmp_path / "nope"))
