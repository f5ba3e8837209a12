"""URL-list ingest: list parsing, URL checks, and real downloads from a loopback image server."""
from __future__ import annotations

import datetime as dt
import hashlib
import json
import math

import apache_beam as beam
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from polycap.schemas import Reason, Reject
from polycap.schemas.config import IngestConfig, SourceConfig
from polycap.transforms.download import (
    FetchError,
    UrlRow,
    check_url,
    download_row,
    fetch,
    find_column,
    iter_list_records,
    jsonable,
    list_format,
    rows_from_list,
)
from polycap.transforms.ingest import ReadSource
from tests.transforms.image_server import ImageServer

SRC = SourceConfig(kind="urls", path="list.parquet", name="web")
# the image server is on loopback, which URL ingest refuses unless allowed explicitly
FAST = IngestConfig(timeout_s=2.0, retries=2, max_bytes=1_000_000, concurrency=4, allow_private_addresses=True)


@pytest.fixture(scope="module")
def server(eval_dir):
    with ImageServer({"photos": eval_dir / "photos", "text": eval_dir / "text",
                      "neardup": eval_dir / "neardup"}) as s:
        yield s


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch):
    # the server is on loopback; a proxy from the environment must not intercept it
    for var in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY"):
        monkeypatch.delenv(var, raising=False)


@pytest.mark.parametrize("url", ["http://example.org/a.jpg", "https://x.y/z?q=1", "  HTTPS://x.y/a.png "])
def test_check_url_accepts_http_and_https(url):
    assert check_url(url) is None


@pytest.mark.parametrize("url", ["", None, 12, "file:///etc/passwd", "ftp://x/a.jpg", "data:image/png;base64,AA",
                                 "javascript:alert(1)", "http://", "//x.y/a.jpg", "a.jpg", "http://[::1"])
def test_check_url_refuses_other_schemes_and_junk(url):
    assert check_url(url) == Reason.INVALID_URL


def test_find_column_exact_then_case_insensitive():
    assert find_column(["url", "URL"], "url") == "url"
    assert find_column(["URL", "TEXT"], "url") == "URL"
    assert find_column(["URL", "TEXT"], "caption") is None


def test_jsonable_makes_cells_json_safe():
    import numpy as np

    row = {"nan": math.nan, "b": b"\x00\x01", "d": dt.date(2024, 1, 2), "np": np.int64(3),
           "nested": [[0.5, math.inf]], "s": "x"}
    out = jsonable(row)
    json.dumps(out, allow_nan=False)
    assert out == {"nan": None, "b": {"base64": "AAE="}, "d": "2024-01-02", "np": 3,
                   "nested": [[0.5, None]], "s": "x"}


@pytest.mark.parametrize("name,fmt", [("a.parquet", "parquet"), ("A.CSV", "csv"), ("a.tsv.gz", "tsv"),
                                      ("a.jsonl", "jsonl"), ("a.json", "json"), ("a.txt", "txt"), ("urls", "txt")])
def test_list_format(name, fmt):
    assert list_format(name) == fmt


def test_laion_style_parquet_uses_upper_case_columns(eval_dir):
    path = str(eval_dir / "webdataset/img2dataset/tests/test_files/test_1000.parquet")
    rows = list(rows_from_list(path, iter_list_records(path), SRC))
    good = [r for r in rows if isinstance(r, UrlRow)]
    bad = [r for r in rows if isinstance(r, Reject)]
    assert len(rows) == 1000 and len(good) + len(bad) == 1000
    assert all(r.reason == Reason.INVALID_URL for r in bad)
    first = good[0]
    assert first.url.startswith("http://direct.rhapsody.com/") and first.caption.startswith("Classical Masterpieces")
    assert first.meta["__index_level_0__"] == 0 and first.meta["url_list_row"] == 0
    assert "URL" not in first.meta and "TEXT" not in first.meta


def test_missing_url_column_is_one_clear_reject(eval_dir):
    path = str(eval_dir / "webdataset/img2dataset/tests/test_files/test_1000.parquet")
    src = SourceConfig(kind="urls", path=path, url_col="image_link")
    rows = list(rows_from_list(path, iter_list_records(path), src))
    assert len(rows) == 1 and rows[0].reason == Reason.BAD_RECORD
    assert "'image_link' not found" in rows[0].detail and "URL, TEXT" in rows[0].detail


def test_csv_jsonl_txt_lists(tmp_path):
    (tmp_path / "l.csv").write_text('url,caption,width\nhttp://a/1.jpg,"a, cat",3\nftp://a/2.jpg,dog,4\n')
    (tmp_path / "l.jsonl").write_text('{"url": "http://a/1.jpg", "caption": "x"}\n{not json\n[1]\n{"caption": "y"}\n')
    (tmp_path / "l.txt").write_text("http://a/1.jpg\n\nhttps://a/2.jpg\n")
    csv_rows = list(rows_from_list("l.csv", iter_list_records(str(tmp_path / "l.csv")), SRC))
    assert csv_rows[0] == UrlRow("http://a/1.jpg", "a, cat", {"width": "3", "url_list": "l.csv", "url_list_row": 0},
                                 "l.csv#row=0")
    assert csv_rows[1].reason == Reason.INVALID_URL and "ftp://a/2.jpg" in csv_rows[1].detail
    jl = list(rows_from_list("l.jsonl", iter_list_records(str(tmp_path / "l.jsonl")), SRC))
    assert isinstance(jl[0], UrlRow)
    assert [r.reason for r in jl[1:]] == [Reason.BAD_RECORD] * 3
    assert "invalid JSON" in jl[1].detail and "not an object" in jl[2].detail and "no 'url' field" in jl[3].detail
    txt = list(rows_from_list("l.txt", iter_list_records(str(tmp_path / "l.txt")), SRC))
    assert [r.url for r in txt] == ["http://a/1.jpg", "https://a/2.jpg"] and txt[0].caption is None


def _get(server, path, cfg=FAST):
    return fetch(server.url(path), cfg)


def test_fetch_returns_exact_bytes(server, eval_dir):
    body, info = _get(server, "photos/skimage/rocket.jpg")
    assert body == (eval_dir / "photos/skimage/rocket.jpg").read_bytes()
    assert info["status"] == 200 and info["attempts"] == 1


def test_404_is_not_retried(server):
    with pytest.raises(FetchError) as e:
        _get(server, "photos/nope.jpg")
    assert e.value.reason == Reason.DOWNLOAD_FAILED and e.value.detail.startswith("HTTP 404")
    assert server.hits["photos/nope.jpg"] == 1


def test_500_then_200_is_retried(server, eval_dir):
    body, info = _get(server, "_/flaky/1/photos/skimage/coffee.png")
    assert body == (eval_dir / "photos/skimage/coffee.png").read_bytes() and info["attempts"] == 2


def test_persistent_500_fails_after_all_retries(server):
    with pytest.raises(FetchError) as e:
        _get(server, "_/status/503", IngestConfig(timeout_s=2, retries=1, allow_private_addresses=True))
    assert "HTTP 503" in e.value.detail and "after 2 attempts" in e.value.detail
    assert server.hits["_/status/503"] == 2


def test_429_honors_retry_after(server):
    body, info = _get(server, "_/ratelimit/photos/skimage/coffee.png")
    assert info["attempts"] == 2 and len(body) > 1000


def test_timeout(server):
    with pytest.raises(FetchError) as e:
        _get(server, "_/slow/3", IngestConfig(timeout_s=0.3, retries=0, allow_private_addresses=True))
    assert e.value.reason == Reason.DOWNLOAD_TIMEOUT and e.value.detail == "timeout after 0.3s"


def test_slow_drip_hits_the_total_deadline(server):
    with pytest.raises(FetchError) as e:
        _get(server, "_/drip/3", IngestConfig(timeout_s=0.7, retries=0, allow_private_addresses=True))
    assert e.value.reason == Reason.DOWNLOAD_TIMEOUT and e.value.detail == "timeout after 0.7s"


def test_watchdog_aborts_each_connection_at_its_own_deadline_once():
    """One watchdog thread serves every download of a process: a later, earlier-due connection is aborted
    first (not after the one ahead of it), a cancelled one never, a far one not yet; a process has one."""
    import socket
    import time
    from types import SimpleNamespace

    from polycap.transforms.fetch import _watchdog

    pairs = [socket.socketpair() for _ in range(3)]
    far, soon, cancelled = (SimpleNamespace(raw_sock=a) for a, _ in pairs)
    dog = _watchdog()
    assert _watchdog() is dog
    now = time.monotonic()
    dog.watch(far, now + 60)
    dog.watch(soon, now + 0.05)
    dog.cancel(dog.watch(cancelled, now + 0.02))
    pairs[1][0].settimeout(10)
    assert pairs[1][0].recv(1) == b""       # shut down by the watchdog
    dog.cancel(-1)                          # unknown or finished tickets are ignored
    for i in (0, 2):
        pairs[i][0].setblocking(False)
        with pytest.raises(BlockingIOError):  # still open: nothing to read yet, not shut down
            pairs[i][0].recv(1)
    for a, b in pairs:
        a.close()
        b.close()


@pytest.mark.parametrize("route", ["_/huge/3000000", "_/huge-cl/3000000"])
def test_body_over_max_bytes_is_aborted(server, route):
    with pytest.raises(FetchError) as e:
        _get(server, route, IngestConfig(max_bytes=1_000_000, retries=2, allow_private_addresses=True))
    assert e.value.reason == Reason.TOO_LARGE_DOWNLOAD
    assert server.hits[route] == 1


def test_redirects_followed_for_http_only(server, eval_dir):
    body, info = _get(server, "_/redirect/photos/skimage/rocket.jpg")
    assert body == (eval_dir / "photos/skimage/rocket.jpg").read_bytes()
    assert info["final_url"].endswith("/photos/skimage/rocket.jpg")
    with pytest.raises(FetchError) as e:
        _get(server, "_/redirect-ftp")
    assert "refused redirect" in e.value.detail and "ftp://" in e.value.detail


def test_connection_refused_is_a_reject():
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = download_row(UrlRow(f"http://127.0.0.1:{port}/a.jpg", None), SRC,
                       IngestConfig(timeout_s=1, retries=0, allow_private_addresses=True))
    assert isinstance(out, Reject) and out.reason == Reason.DOWNLOAD_FAILED and "network error" in out.detail


def _write_list(tmp_path, server, eval_dir):
    rows = [
        ("photos/skimage/rocket.jpg", "a rocket"), ("photos/skimage/coffee.png", "coffee"),
        ("_/flaky/1/photos/sklearn/china.jpg", "flaky china"), ("photos/missing.jpg", "gone"),
        ("_/huge/3000000", "too big"),
    ]
    urls = [server.url(p) for p, _ in rows] + ["ftp://127.0.0.1/a.jpg", ""]
    caps = [c for _, c in rows] + ["ftp", "empty"]
    path = tmp_path / "list.parquet"
    pq.write_table(pa.table({"URL": urls, "TEXT": caps, "extra": list(range(len(urls)))}), path)
    files = {c: (eval_dir / p.replace("_/flaky/1/", "")).read_bytes() for p, c in rows[:3]}
    return str(path), files


def _check_urls_run(options, tmp_path, server, eval_dir):
    path, files = _write_list(tmp_path, server, eval_dir)
    src = SourceConfig(kind="urls", path=path, name="web", license="cc-by")
    cfg = IngestConfig(timeout_s=2.0, retries=2, max_bytes=1_000_000, concurrency=3, allow_private_addresses=True)
    want = sorted((hashlib.sha256(b).hexdigest()[:32], c) for c, b in files.items())
    with TestPipeline(options=options) as p:
        samples, rejects = p | ReadSource(src, cfg)
        assert_that(samples | beam.Map(lambda s: (s.key, s.source.orig_caption)), equal_to(want))
        assert_that(samples | "Meta" >> beam.Map(
            lambda s: (s.source.kind, s.source.name, s.source.license, s.source.uri.startswith("http://127.0.0.1"),
                       s.hashes.sha256[:32] == s.key, sorted(s.source.meta) == ["extra", "http", "url_list",
                                                                               "url_list_row"])),
            equal_to([("urls", "web", "cc-by", True, True, True)] * 3), label="SampleFields")
        assert_that(rejects | beam.Map(lambda r: (str(r.reason), r.stage)),
                    equal_to([("download_failed", "ingest"), ("too_large_download", "ingest"),
                              ("invalid_url", "ingest"), ("invalid_url", "ingest")]), label="Rejects")


def test_read_source_urls(tmp_path, server, eval_dir):
    _check_urls_run(PipelineOptions([]), tmp_path, server, eval_dir)


@pytest.mark.slow
def test_read_source_urls_multi_processing(tmp_path, server, eval_dir):
    opts = PipelineOptions(["--direct_running_mode=multi_processing", "--direct_num_workers=2"])
    _check_urls_run(opts, tmp_path, server, eval_dir)


def test_img2dataset_input_list(tmp_path, server, eval_dir):
    """img2dataset's own generated input list, re-pointed at our server: files that exist here download,
    the wallpapers that are not in this corpus and the deliberate 404 row become `HTTP 404` rejects."""
    table = pq.read_table(eval_dir / "webdataset/img2dataset_generated/input_urls.parquet")
    prefix = {"C_neardup": "neardup", "D_text": "text", "A_photos": "photos"}
    urls = []
    for u in table.column("url").to_pylist():
        first, _, rest = u.split("/", 3)[3].partition("/")
        urls.append(server.url(f"{prefix.get(first, first)}/{rest}"))
    path = tmp_path / "input_urls.parquet"
    pq.write_table(table.set_column(0, "url", pa.array(urls)), path)
    exist = sum(server.file(u.split("/", 3)[3]) is not None for u in urls)
    assert 10 < exist < len(urls)
    with TestPipeline() as p:
        samples, rejects = p | ReadSource(SourceConfig(kind="urls", path=str(path)),
                                    IngestConfig(timeout_s=5, allow_private_addresses=True))
        assert_that(samples | beam.combiners.Count.Globally(), equal_to([exist]))
        assert_that(samples | "Src" >> beam.Map(lambda s: s.source.meta["source"]) | "Distinct" >> beam.Distinct(),
                    equal_to(["imageio EXAMPLE_IMAGES description", "LLaMA-Factory mllm_demo first assistant turn",
                              "deliberate error row"]), label="MetaColumns")
        assert_that(rejects | beam.Map(lambda r: (r.reason, r.detail[:8])) | beam.combiners.Count.PerElement(),
                    equal_to([((Reason.DOWNLOAD_FAILED, "HTTP 404"), len(urls) - exist)]), label="Rejects")
