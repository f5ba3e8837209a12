"""Filter stage: one test per rule at its boundary, details naming value and threshold, the PTransform."""
from __future__ import annotations

from dataclasses import replace

import apache_beam as beam
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from polycap.schemas import Reason, Reject, Sample
from polycap.schemas.config import DecodeConfig, FilterConfig
from polycap.transforms.decode import decode_sample
from polycap.transforms.filters import (
    FilterSamples,
    check_aspect,
    check_caption_language,
    check_caption_long,
    check_caption_short,
    check_max_bytes,
    check_min_bytes,
    check_min_side,
    detect_languages,
    filter_sample,
)
from tests.conftest import jpeg_bytes, make_sample

EN = "A red double-decker bus drives past an old stone church on a rainy afternoon in the city."
DE = "Ein roter Doppeldeckerbus fährt an einem regnerischen Nachmittag an einer alten Steinkirche vorbei."
KO = "비 오는 오후에 빨간 이층 버스가 오래된 석조 교회 앞을 지나가고 있습니다."


def sample(w: int = 200, h: int = 100, caption: str | None = None, uri: str = "mem://x") -> Sample:
    s = decode_sample(make_sample(jpeg_bytes(w, h), uri=uri, orig_caption=caption), DecodeConfig())
    assert isinstance(s, Sample)
    return s


def test_min_side_boundary():
    cfg = FilterConfig(min_side=64)
    assert check_min_side(sample(64, 200), cfg) is None
    assert check_min_side(sample(63, 200), cfg) == Reason.TOO_SMALL
    r = filter_sample(sample(63, 100), cfg)
    assert isinstance(r, Reject) and r.reason == Reason.TOO_SMALL and r.stage == "filter"
    assert "63px" in r.detail and "min_side 64" in r.detail


def test_aspect_boundary():
    cfg = FilterConfig(min_side=1, max_aspect=3.0)
    assert check_aspect(sample(300, 100), cfg) is None
    assert check_aspect(sample(100, 301), cfg) == Reason.EXTREME_ASPECT
    r = filter_sample(sample(400, 100), cfg)
    assert r.reason == Reason.EXTREME_ASPECT and "4.00" in r.detail and "max_aspect 3.0" in r.detail


def test_file_bytes_use_the_input_size_not_the_reencoded_one():
    s = sample(200, 100)
    n = s.provenance["decode"]["input_bytes"]
    assert n == len(jpeg_bytes(200, 100)) != len(s.image.bytes)   # decode re-encoded at quality 92
    assert check_min_bytes(s, FilterConfig(min_bytes=n)) is None
    assert check_min_bytes(s, FilterConfig(min_bytes=n + 1)) == Reason.FILE_TOO_SMALL
    assert check_max_bytes(s, FilterConfig(max_bytes=n)) is None
    assert check_max_bytes(s, FilterConfig(max_bytes=n - 1)) == Reason.FILE_TOO_LARGE
    big = replace(s, provenance={"decode": {"input_bytes": 10_000_000}})
    r = filter_sample(big, FilterConfig(max_bytes=1_000_000))
    assert r.reason == Reason.FILE_TOO_LARGE and "10000000 bytes" in r.detail and "1000000" in r.detail


def test_caption_language():
    cfg = FilterConfig(caption_langs=["en"])
    assert check_caption_language(sample(caption=EN), cfg) is None
    assert check_caption_language(sample(caption=DE), cfg) == Reason.CAPTION_LANGUAGE
    assert check_caption_language(sample(caption=None), cfg) is None          # no caption: no rule
    assert check_caption_language(sample(caption=DE), FilterConfig()) is None   # no langs configured
    assert check_caption_language(sample(caption=KO), FilterConfig(caption_langs=["ko", "en"])) is None
    r = filter_sample(sample(caption=DE), cfg)
    assert r.reason == Reason.CAPTION_LANGUAGE and "de p=" in r.detail and "['en']" in r.detail
    r = filter_sample(sample(caption="12345 !!!"), cfg)
    assert r.reason == Reason.CAPTION_LANGUAGE and "undetectable" in r.detail


def test_language_detection_is_deterministic_and_normalizes_region():
    detect_languages.cache_clear()
    first = detect_languages(DE)
    detect_languages.cache_clear()
    assert detect_languages(DE) == first and first[0][0] == "de"
    zh = sample(caption="一辆红色的双层巴士在下雨的下午经过一座古老的石头教堂。")
    assert check_caption_language(zh, FilterConfig(caption_langs=["zh"])) is None   # zh-cn counts as zh


def test_caption_length():
    cfg = FilterConfig(caption_min_chars=10, caption_max_chars=20)
    assert check_caption_short(sample(caption="  0123456789  "), cfg) is None   # stripped: 10 chars
    assert check_caption_short(sample(caption="012345678"), cfg) == Reason.CAPTION_TOO_SHORT
    assert check_caption_long(sample(caption="x" * 20), cfg) is None
    assert check_caption_long(sample(caption="x" * 21), cfg) == Reason.CAPTION_TOO_LONG
    assert check_caption_long(sample(caption="x" * 5000), FilterConfig()) is None   # 0 = no limit
    r = filter_sample(sample(caption="x" * 21), cfg)
    assert r.reason == Reason.CAPTION_TOO_LONG and "21 chars" in r.detail and "caption_max_chars 20" in r.detail


def test_passing_sample_is_unchanged():
    s = sample(caption=EN)
    assert filter_sample(s, FilterConfig(caption_langs=["en"], caption_min_chars=10)) is s


def test_filter_samples_ptransform():
    cfg = FilterConfig(min_side=64, max_aspect=3.0, caption_langs=["en"])
    items = [sample(200, 100, EN, "mem://ok"), sample(40, 40, None, "mem://tiny"),
             sample(400, 100, None, "mem://wide"), sample(200, 100, DE, "mem://de")]
    with TestPipeline() as p:
        kept, rejects = p | beam.Create(items) | FilterSamples(cfg)
        assert_that(kept | "K" >> beam.Map(lambda s: s.source.uri), equal_to(["mem://ok"]), label="kept")
        assert_that(rejects | "R" >> beam.Map(lambda r: (r.source_uri, str(r.reason))),
                    equal_to([("mem://tiny", "too_small"), ("mem://wide", "extreme_aspect"),
                              ("mem://de", "caption_language")]), label="rejects")
