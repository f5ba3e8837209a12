from dataclasses import replace

import apache_beam as beam
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from polycap.schemas import Caption, Reject
from polycap.schemas.config import TranslateConfig
from polycap.transforms.translate import TextUnit, TranslateSamples, TranslateTexts, split_paragraphs
from tests.conftest import jpeg_bytes, make_sample
from tests.fakes.fake_translator import FAKE  # deterministic TEST backend, not a model


def cfg_for(tmp_path, **kw):
    return TranslateConfig(backend=FAKE, model="fake", options={"log_path": str(tmp_path / "requests.log")}, **kw)


def n_requests(tmp_path):
    p = tmp_path / "requests.log"
    return len(p.read_text().splitlines()) if p.exists() else 0


def test_split_paragraphs_rejoins_exactly():
    text = "One.\n\nTwo two.\n\n" + "Three is long. " * 40 + "\n\nFour."
    parts = split_paragraphs(text, 120)
    assert "".join(parts) == text
    assert len(parts) > 4 and all(len(p) <= 120 for p in parts)


def _run(units, cfg, cache):
    with TestPipeline() as p:
        res = p | beam.Create(units) | TranslateTexts(cfg, cache)
        assert_that(res | beam.Map(lambda r: (r.key, r.lang, r.reason)), equal_to([
            ("ok", "ko", None), ("ok", "vi", None), ("img", "ko", None), ("img", "vi", None),
            ("retry", "ko", None), ("retry", "vi", None), ("bad", "ko", "gate_english_left"),
            ("bad", "vi", "gate_english_left"), ("drop", "ko", "gate_spans_changed"),
            ("drop", "vi", "gate_spans_changed"), ("long", "ko", None), ("long", "vi", None)]))


UNITS = [TextUnit("ok", "<image>\nThe cat sits at <ref>the door</ref><box>(1,2),(3,4)</box>."),
         TextUnit("img", "<image>"),
         TextUnit("retry", "FAKEFAILONCE The quick brown fox jumps over the lazy dog."),
         TextUnit("bad", "FAKEFAILALWAYS The fox and the dog are in the house with the man."),
         TextUnit("drop", "FAKEDROPSPAN There are 3 apples on the table."),
         TextUnit("long", "\n\n".join(f"Paragraph {i} describes the scene in words." for i in range(30)))]


def test_translate_texts_gates_retry_cache_and_rerun_makes_no_requests(tmp_path):
    cfg = cfg_for(tmp_path, max_chunk_chars=300)
    cache = str(tmp_path / "_cache" / "translate")
    _run(UNITS, cfg, cache)
    first = n_requests(tmp_path)
    # ok 1 + retry 2 + bad 2 + drop 2 + long >= 5 chunks; per language; "<image>" alone needs no model
    assert first >= 2 * (1 + 2 + 2 + 2 + 5)
    _run(UNITS, cfg, cache)
    assert n_requests(tmp_path) == first                    # everything, rejects included, came from cache


def test_translated_text_keeps_spans_and_provenance(tmp_path):
    with TestPipeline() as p:
        res = p | beam.Create(UNITS[:1]) | TranslateTexts(cfg_for(tmp_path), None, ["ko"])
        assert_that(res | beam.Map(lambda r: (r.text.startswith("<image>\n"), "<ref>" in r.text,
                                              "<box>(1,2),(3,4)</box>" in r.text, r.provenance["prompt_id"],
                                              r.provenance["translated_from"])),
                    equal_to([(True, True, True, "translate-ko", "en")]))


def test_translate_samples_keeps_partial_languages_and_rejects_only_total_failure(tmp_path):
    good = replace(make_sample(jpeg_bytes()), captions={"en": Caption("A red cup on a wooden table.", "dense")},
                   conversations={"en": [{"from": "human", "value": "<image>\nDescribe it."},
                                         {"from": "gpt", "value": "A red cup on a wooden table."}]})
    bad = replace(make_sample(jpeg_bytes(color=(0, 0, 9))),
                  captions={"en": Caption("FAKEFAILALWAYS the cup is on the table with the man.", "dense")})
    with TestPipeline() as p:
        samples, rejects = p | beam.Create([good, bad]) | TranslateSamples(cfg_for(tmp_path), str(tmp_path))
        assert_that(samples | beam.Map(lambda s: (s.key, sorted(s.captions), sorted(s.conversations),
                                                  s.captions["ko"].kind, s.captions["vi"].translated_from,
                                                  s.conversations["ko"][0]["value"].startswith("<image>\n"))),
                    equal_to([(good.key, ["en", "ko", "vi"], ["en", "ko", "vi"], "translation", "en", True)]),
                    label="samples")
        assert_that(rejects | beam.Map(lambda r: (isinstance(r, Reject), r.key, str(r.reason), r.stage)),
                    equal_to([(True, bad.key, "gate_english_left", "translate")]), label="rejects")


def test_a_worker_judges_the_same_chunk_and_answer_once(monkeypatch):
    import polycap.transforms.translate as tr
    from polycap.transforms.backends.base import GenResult
    from polycap.transforms.translate import TranslateConfig as _Cfg
    from polycap.transforms.translate import _AdvanceFn, plan_chunks, prompts_for

    cfg = _Cfg(backend=FAKE, model="fake", to=["ko"])
    fn = _AdvanceFn(cfg, prompts_for(cfg, ["ko"]), None)
    fn.setup()
    calls = []
    real = tr.judge
    monkeypatch.setattr(tr, "judge", lambda c, r: calls.append(r.text) or real(c, r))
    ok = GenResult("k", "빨간 컵이 나무 탁자 위에 있다.")
    for unit_key in ("a", "b", "c"):   # one text in three records, the same answer each time (a cache hit)
        (chunk,) = plan_chunks(TextUnit(unit_key, "A red cup on a wooden table."), "ko", 2000)
        (done,) = fn.process((chunk, type("P", (), {"inference": ok})()))
        assert done.text == ok.text and done.chunk.unit_key == unit_key and done.reason is None
    assert calls == [ok.text]
    bad = GenResult("k", "A red cup on a wooden table.")   # another answer is judged anew, and fails
    (retry,) = fn.process((chunk, type("P", (), {"inference": bad})()))
    assert calls == [ok.text, bad.text]
    assert retry.tag == tr.REQUESTS and retry.value[0].attempt == 2   # English left: the strict prompt is asked
