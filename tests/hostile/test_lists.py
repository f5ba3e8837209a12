"""Hostile URL lists: compressed of every advertised kind, a BOM, an oversized field, an unbalanced quote, an
over-long line; captions that are not text (NaN, numbers, NUL, mojibake, surrogates); credentials in URLs."""
from __future__ import annotations

import bz2
import gzip
import json
import math
import zlib

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from polycap.schemas import Reason, Reject
from polycap.schemas.config import IngestConfig, SourceConfig
from polycap.transforms.download import UrlRow, clean_caption, iter_list_records, new_sample, rows_from_list
from polycap.transforms.input_files import BudgetError

SRC = SourceConfig(kind="urls", path="l")
URLS = [f"http://img.example/{i}.jpg" for i in range(3)]


def _rows(path, cfg=None):
    return list(rows_from_list(str(path), iter_list_records(str(path), "url", cfg), SRC))


def _bodies():
    csv_text = "url,caption\n" + "".join(f"{u},cap {i}\n" for i, u in enumerate(URLS))
    return {
        "csv": csv_text,
        "tsv": csv_text.replace(",", "\t"),
        "jsonl": "".join(json.dumps({"url": u, "caption": f"cap {i}"}) + "\n" for i, u in enumerate(URLS)),
        "json": json.dumps([{"url": u, "caption": f"cap {i}"} for i, u in enumerate(URLS)]),
        "txt": "".join(u + "\n" for u in URLS),
    }


def _compress(data: bytes, suffix: str) -> bytes:
    if suffix == ".gz":
        return gzip.compress(data)
    if suffix == ".bz2":
        return bz2.compress(data)
    if suffix == ".deflate":
        return zlib.compress(data)
    import zstandard
    return zstandard.ZstdCompressor().compress(data)


@pytest.mark.parametrize("suffix", [".gz", ".bz2", ".zst", ".deflate"])
@pytest.mark.parametrize("fmt", ["csv", "tsv", "jsonl", "json", "txt"])
def test_compressed_lists_of_every_kind(tmp_path, fmt, suffix):
    if suffix == ".zst":
        pytest.importorskip("zstandard")
    path = tmp_path / f"l.{fmt}{suffix}"
    path.write_bytes(_compress(_bodies()[fmt].encode(), suffix))
    rows = _rows(path)
    assert [r.url for r in rows] == URLS and all(isinstance(r, UrlRow) for r in rows)


def test_bom_is_dropped(tmp_path):
    (tmp_path / "l.csv").write_bytes("\ufeffurl,caption\n".encode() + f"{URLS[0]},a cat\n".encode())
    assert [(r.url, r.caption) for r in _rows(tmp_path / "l.csv")] == [(URLS[0], "a cat")]


def test_oversized_field_is_one_reject_and_the_rest_is_read(tmp_path):
    big = "x" * 300_000                                # over Python csv's 128 KiB field limit
    (tmp_path / "l.csv").write_text(f"url,caption\n{URLS[0]},ok\n{URLS[1]},{big}\n{URLS[2]},after\n")
    rows = _rows(tmp_path / "l.csv")
    assert [type(r).__name__ for r in rows] == ["UrlRow", "Reject", "UrlRow"]
    assert rows[1].reason == Reason.BAD_RECORD and rows[2].caption == "after"


def test_over_long_line_is_skipped_without_holding_it(tmp_path):
    (tmp_path / "l.jsonl").write_text(json.dumps({"url": URLS[0], "caption": "y" * 5000}) + "\n"
                                      + json.dumps({"url": URLS[1]}) + "\n")
    rows = _rows(tmp_path / "l.jsonl", IngestConfig(max_row_bytes=1000))
    assert isinstance(rows[0], Reject) and "max_row_bytes" in rows[0].detail and rows[1].url == URLS[1]


def test_unbalanced_quote_does_not_swallow_the_next_rows(tmp_path):
    (tmp_path / "l.csv").write_text(f'url,caption\n{URLS[0]},"broken\n{URLS[1]},fine\n{URLS[2]},"a, b"\n')
    rows = _rows(tmp_path / "l.csv")
    assert [type(r).__name__ for r in rows] == ["Reject", "UrlRow", "UrlRow"]
    assert "unbalanced quote" in rows[0].detail and [r.caption for r in rows[1:]] == ["fine", "a, b"]


def test_multi_line_quoted_caption_is_still_one_row(tmp_path):
    (tmp_path / "l.csv").write_text(f'url,caption\n{URLS[0]},"line one\nline two"\n{URLS[1]},x\n')
    rows = _rows(tmp_path / "l.csv")
    assert [r.caption for r in rows] == ["line one\nline two", "x"]


def test_list_over_max_list_bytes_is_refused(tmp_path):
    (tmp_path / "l.txt.gz").write_bytes(gzip.compress(b"http://a.example/x.jpg\n" * 100_000))   # 2.3 MB unpacked
    with pytest.raises(BudgetError) as e:
        _rows(tmp_path / "l.txt.gz", IngestConfig(max_list_bytes=1_000_000))
    assert e.value.reason == Reason.TOO_LARGE_INPUT


@pytest.mark.parametrize("value,kept", [
    (None, None), (math.nan, None), ("", None), ("  a red bus  ", "a red bus"), ("빨간 버스", "빨간 버스"),
    (12345, None), (1.5, None), ("nan", None), ("None", None), ("12345", None), ("bad \x00 nul", None),
    ("lone \ud800", None), ("caf\ufffd", None), ("cafÃ© au lait", None), ("café au lait", "café au lait")])
def test_caption_cleaning(value, kept):
    assert clean_caption(value)[0] == kept


def test_parquet_nan_and_number_captions_never_become_text(tmp_path):
    path = tmp_path / "l.parquet"
    pq.write_table(pa.table({"url": URLS, "caption": [math.nan, 7.0, None]}), path)   # a float column
    rows = _rows(path)
    samples = [new_sample(b"\xff\xd8", SRC, r.url, orig_caption=r.caption, meta=r.meta) for r in rows]
    assert [s.source.orig_caption for s in samples] == [None, None, None]
    assert "caption_dropped" not in samples[0].source.meta              # NaN is a missing caption
    assert samples[1].source.meta["caption_dropped"]["reason"] == "bad_caption"


def test_lone_surrogate_in_a_jsonl_row_is_made_writable(tmp_path):
    line = json.dumps({"url": URLS[0]})[:-1] + ', "caption": "x \\ud800", "tag": "\\udfff"}'   # JSON escapes
    (tmp_path / "l.jsonl").write_text(line + "\n")
    [row] = _rows(tmp_path / "l.jsonl")
    s = new_sample(b"\xff\xd8", SRC, row.url, orig_caption=row.caption, meta=row.meta)
    assert s.source.orig_caption is None
    json.dumps(s.source.meta, ensure_ascii=False).encode("utf-8")    # would raise on a surrogate


def test_credentials_are_stripped_before_anything_sees_them(tmp_path):
    (tmp_path / "l.txt").write_text("http://user:pa%40ss@img.example/a.jpg\nftp://u:secret@img.example/b.jpg\n")
    rows = _rows(tmp_path / "l.txt")
    assert rows[0].url == "http://img.example/a.jpg" and rows[0].meta["url_credentials_removed"] is True
    assert isinstance(rows[1], Reject) and "secret" not in rows[1].source_uri + rows[1].detail
