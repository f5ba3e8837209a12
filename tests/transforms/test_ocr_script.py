"""Script routing in OCR: Korean and Vietnamese read by their own recognizers on rendered NTREX cards, and a
script no installed recognizer reads stored as `unsupported_script`, never as text with letters missing.
The real-model tests need Debian's tesseract-ocr-kor/-vie/-eng and fonts-nanum/-dejavu (`make test` installs
them when it runs as root); without them they skip and say what to install."""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from polycap.transforms.backends import ocr_script as S

CARD_CER = 0.08   # per card; the language-wide numbers are in bench/results/ocr_ko_vi.json


# ---- pure functions ---------------------------------------------------------------------------------

def test_script_letters():
    assert S.hangul_share("서울 Seoul") == pytest.approx(2 / 7)
    assert S.has_vi_letters("Người") and S.has_vi_letters("đi") and not S.has_vi_letters("café crème")
    assert S.han_count("口品x") == 2 and S.has_latin("x1") and not S.has_latin("서울 2030")


def test_suspect_first_readings():
    line = [0.0, 0.0, 400.0, 0.0, 400.0, 30.0, 0.0, 30.0]         # aspect 13.3
    assert S.is_suspect("", 0.0, line, cjk_langs=False)            # PP-OCR read nothing from a Hangul line
    assert S.is_suspect("30", 0.71, line, cjk_langs=False)         # far too few characters for the box
    assert S.is_suspect("口品亡口品亡口品亡口品亡", 0.9, line, cjk_langs=False)
    assert not S.is_suspect("口品亡口品亡口品亡口品亡", 0.9, line, cjk_langs=True)
    assert not S.is_suspect("Invoice 2024-07 total 318", 0.98, line, cjk_langs=False)


def test_a_hangul_line_with_one_english_word_is_suspect():
    # ko-rotated-005: PP-OCR read a whole line of Hangul + "(Ford)" as "“(Ford),]" at 0.80 and the line was kept
    line = [0.0, 0.0, 560.0, 0.0, 560.0, 40.0, 0.0, 40.0]           # aspect 14
    assert S.is_suspect("“(Ford),]", 0.80, line, cjk_langs=False)
    assert not S.is_suspect("Europe did not have it all their own", 0.99, line, cjk_langs=False)
    assert not S.is_suspect("口品亡口品亡口品亡", 0.9, line, cjk_langs=True)     # Han is full width


def test_background_padding_does_not_smear_glyphs_at_the_edge():
    gray = np.full((20, 40), 200, np.uint8)
    gray[:, -2:] = 40                       # a stroke touching the right edge of the crop
    out = S.pad_background(gray, 8)
    assert out.shape == (36, 56) and out.dtype == np.uint8
    assert (out[:, -8:] == 200).all() and (out[:8] == 200).all()   # margin is the background grey
    assert (out[8:-8, 8:-8] == gray).all()


def test_latin_run_readings():
    assert S.is_latin_run("(Batman)") and S.is_latin_run("1,127") and S.is_latin_run("‘Café’")
    assert not S.is_latin_run("(Palu)フ") and not S.is_latin_run("明三") and not S.is_latin_run("().")


def test_flip_quad_turns_the_line_and_keeps_top_left_first():
    quad = [10.0, 20.0, 110.0, 20.0, 110.0, 40.0, 10.0, 40.0]
    flipped = S.flip_quad(quad, 200, 100)
    assert flipped == [90.0, 60.0, 190.0, 60.0, 190.0, 80.0, 90.0, 80.0]
    assert S.flip_quad(flipped, 200, 100) == quad


def test_latin_runs_inside_a_korean_reading():
    sym = [S.Symbol(c, 0.9, (i * 10, 0, i * 10 + 9, 20), i in (0, 4)) for i, c in enumerate("배트맨(8807814)과")]
    (start, end), = S.latin_runs(sym)
    assert "".join(s.text for s in sym[start:end]) == "(8807814)"
    assert S.latin_runs([S.Symbol("(", 0.9, (0, 0, 1, 1), True), S.Symbol("가", 0.9, (0, 0, 1, 1), False)]) == []


def test_an_english_word_read_as_one_wide_mark_is_a_latin_run():
    """`kor` read UnBatang's "요청했지만JIT" as "요청했지만)": one ")" 39 px wide on a 27 px line. A mark that wide
    hides letters; a narrow one is left alone."""
    def sym(text, x0, x1, top=11, bottom=38):
        return S.Symbol(text, 0.95, (x0, top, x1, bottom), False)

    wide = [sym("지", 280, 302), sym("만", 312, 340), sym(")", 347, 386), sym("용", 399, 425)]
    assert S.latin_runs(wide) == [(2, 3)]
    narrow = [sym("지", 280, 302), sym("만", 312, 340), sym(")", 343, 350), sym("용", 399, 425)]
    assert S.latin_runs(narrow) == []
    ellipsis = [sym("오", 280, 302), sym("...", 304, 330, top=33, bottom=38)]     # low: "누르십시오..."
    assert S.latin_runs(ellipsis) == []


def test_a_syllable_box_stretched_over_a_latin_run_is_cut_back():
    """`kor` gave "만" a box 67 px wide on a 26 px line, over the "JIT" after it: the Latin re-read was cut
    to the 3 px after that box. A syllable counts SYLLABLE_MAX_ASPECT x its height at most."""
    stretched = S.Symbol("만", 0.9, (284, 10, 351, 36), False)
    assert S.syllable_span(stretched) == (351 - 31, 284 + 31)
    square = S.Symbol("만", 0.9, (284, 10, 308, 36), False)
    assert S.syllable_span(square) == (284, 308)
    assert S.syllable_span(S.Symbol("—", 0.9, (0, 20, 60, 22), False)) == (0, 60)   # not a syllable


def test_unsupported_lines_make_the_status_and_are_not_stored():
    from polycap.transforms.ocr import to_ocr_result

    raw = {"lines": [("Seoul", [0, 0, 100, 0, 100, 20, 0, 20], 0.99)], "width": 200, "height": 100,
           "engine": "fake", "models": {}, "unsupported": ["ko", "ko"]}
    res = to_ocr_result(raw, 0.5)
    assert res.status == "unsupported_script" and [ln.text for ln in res.lines] == ["Seoul"]
    assert "2 lines" in res.error and "tesseract-ocr-kor" in res.error
    assert to_ocr_result({**raw, "unsupported": []}, 0.5).status == "ok"


# ---- the Korean pair: `kor` and the Hangul script model, the more confident reading kept ------------------

class FakeKoreanLines:
    """A fake line recognizer standing in for Tesseract: the same reading for every image it is shown."""

    def __init__(self, lang: str, text: str, conf: float):
        self.lang, self.text, self.conf = lang, text, conf

    def read(self, gray, symbols=False):
        return self.text, self.conf, []

    def padded(self, gray):
        return S.pad_background(gray, 8)


LINE_RGB = np.full((30, 200, 3), 250, np.uint8)
LINE_QUAD = [0.0, 0.0, 200.0, 0.0, 200.0, 30.0, 0.0, 30.0]


def _pair(kor: FakeKoreanLines, script: FakeKoreanLines) -> S.ScriptRouter:
    router = S.ScriptRouter({}, ["en", "ko"])          # nothing installed; the fakes are the Korean readers
    router.ko, router.ko_readers = kor, [kor, script]  # type: ignore[list-item]
    return router


def test_the_more_confident_korean_reading_is_kept():
    kor = FakeKoreanLines("kor", "내가 잔까 좋아하는", 0.68)
    script = FakeKoreanLines("Hangul", "내가 진짜 좋아하는", 0.71)
    assert _pair(kor, script)._korean(LINE_RGB, LINE_QUAD) == ("내가 진짜 좋아하는", 0.71, False)
    kor.conf = 0.9
    assert _pair(kor, script)._korean(LINE_RGB, LINE_QUAD) == ("내가 잔까 좋아하는", 0.9, False)
    script.conf = 0.9                                   # a tie keeps `kor`, the language model
    assert _pair(kor, script)._korean(LINE_RGB, LINE_QUAD)[0] == "내가 잔까 좋아하는"


def test_a_confident_reading_that_is_not_korean_is_not_kept():
    kor, script = FakeKoreanLines("kor", "서울 타워", 0.6), FakeKoreanLines("Hangul", "Seoul Tower", 0.97)
    assert _pair(kor, script)._korean(LINE_RGB, LINE_QUAD)[0] == "서울 타워"
    kor.conf = S.KO_MIN_CONF - 0.01                     # neither reading counts: the line is not Korean
    assert _pair(kor, script)._korean(LINE_RGB, LINE_QUAD) is None


class FakeBinarizedOnlyLines(FakeKoreanLines):
    """A fake recognizer that reads nothing on the grey crop and `text` at `conf` on a binarized one (only 0
    and 255), as `kor` read a faint UnDinaru line."""

    def read(self, gray, symbols=False):
        binarized = set(np.unique(gray).tolist()) <= {0, 255}
        return (self.text, self.conf, []) if binarized else ("", 0.0, [])


def test_the_binarized_retry_needs_more_confidence():
    """Read only binarized, a faint line came out as digits and lone jamo at 0.57 ("131716운 극1으10논"),
    which the Hangul share of its letters let through as Korean; the retry now needs KO_MIN_CONF_BINARIZED."""
    rgb = LINE_RGB.copy()
    rgb[10:20, 20:180] = 200                                     # a faint stroke: Otsu has two classes
    garbage = FakeBinarizedOnlyLines("kor", "131716운 극1으10논", 0.57)
    router = _pair(garbage, FakeKoreanLines("Hangul", "", 0.0))
    assert router._korean(rgb, LINE_QUAD, try_flip=False) is None
    sure = FakeBinarizedOnlyLines("kor", "바탕으로", 0.82)         # PaddleOCR's korean/1.jpg: white rule over grey
    assert _pair(sure, FakeKoreanLines("Hangul", "", 0.0))._korean(rgb, LINE_QUAD, try_flip=False)[0] == "바탕으로"


def test_the_script_model_does_not_claim_a_line_kor_does_not_read_as_korean():
    # ger_1.jpg's coat of arms: `kor` reads nothing Korean, the script model "¢-굿" at 0.6
    kor, script = FakeKoreanLines("kor", "", 0.0), FakeKoreanLines("Hangul", "¢-굿", 0.6)
    assert _pair(kor, script)._korean(LINE_RGB, LINE_QUAD) is None


def _syllables(gaps: list[int], width: int = 12) -> tuple[np.ndarray, list[S.Symbol]]:
    """A light line image with dark syllable blocks `width` px wide, separated by `gaps` px, each a symbol
    that starts a word (the Hangul script model writes a space between most syllables)."""
    gray = np.full((30, 20 + (len(gaps) + 1) * width + sum(gaps)), 235, np.uint8)
    syms, x = [], 10
    for i, gap in enumerate([*gaps, 0]):
        gray[8:22, x:x + width] = 30                    # ink 14 px tall
        syms.append(S.Symbol("가나다라마"[i], 0.9, (x, 8, x + width, 22), True))
        x += width + gap
    return gray, syms


def test_script_model_spaces_are_kept_only_over_whitespace():
    gray, syms = _syllables([2, 9, 3])                  # 2 / 14 and 3 / 14 of the ink height: inside a word
    assert S.ink_spaced(gray, syms) == "가나 다라"
    assert S.ink_spaced(gray, syms, min_gap=0.1) == "가 나 다 라"
    joined = [S.Symbol(s.text, s.conf, s.box, i == 0) for i, s in enumerate(syms)]
    assert S.ink_spaced(gray, joined) == "가나다라"     # a space is only ever removed, never added
    assert S.ink_spaced(255 - gray, syms) == "가나 다라"  # light text on a dark panel


def test_loosely_set_fonts_keep_their_words_whole():
    """Baekmuk and Un fonts leave 0.2-0.45 ink heights between the syllables of a word: over the fixed
    WORD_GAP alone a line of them was spaced syllable by syllable ("폴더 로 보 냄 니다"). The line's own split
    between word gaps and syllable gaps decides there."""
    gray, syms = _syllables([5, 12, 5, 5])              # 5 / 14 ink heights inside words, 12 / 14 between them
    assert S.ink_spaced(gray, syms) == "가나 다라마"
    tight, tsyms = _syllables([2, 9, 3, 2])             # a tightly set line: WORD_GAP still decides
    assert S.ink_spaced(tight, tsyms) == "가나 다라마"
    assert S.word_gap_split([0.3, 0.35, 0.8, 0.33]) == pytest.approx((0.35 + 0.8) / 2)


def test_hangul_script_model_is_found_in_either_tessdata_layout(tmp_path, monkeypatch):
    (tmp_path / "script").mkdir()
    (tmp_path / "script" / "Hangul.traineddata").write_bytes(b"x")
    (tmp_path / "kor.traineddata").write_bytes(b"x")
    monkeypatch.setattr(S, "SYSTEM_TESSDATA", (str(tmp_path),))
    assert S.system_tessdata("Hangul") == tmp_path / "script" / "Hangul.traineddata"
    assert S.system_tessdata("kor") == tmp_path / "kor.traineddata"
    found = S.prepare_script_models(tmp_path / "cache")
    assert (found[S.TESS] / "tessdata" / "Hangul.traineddata").is_file()
    assert S.korean_note(found) is None


def test_kor_without_the_script_model_warns_once(tmp_path, caplog, monkeypatch):
    tessdata = tmp_path / S.TESS / "tessdata"
    tessdata.mkdir(parents=True)
    (tessdata / "kor.traineddata").write_bytes(b"x")
    note = S.korean_note({S.TESS: tmp_path / S.TESS})
    assert note and "tesseract-ocr-script-hang" in note
    monkeypatch.setattr(S, "_warned", set())
    with caplog.at_level("WARNING", logger=S.__name__):
        S._warn_once(note)
        S._warn_once(note)
    assert [r.getMessage() for r in caplog.records] == [f"ocr: {note}"]
    assert S.korean_note({}) is None                    # no Korean recognizer at all: unsupported_script says it


# ---- real models on rendered cards ------------------------------------------------------------------

@pytest.fixture(scope="module")
def found(tmp_path_factory):
    found = S.prepare_script_models(tmp_path_factory.mktemp("script-models"))
    missing = {"ko", "vi"} - S.script_langs(found)
    if missing:
        pytest.skip(f"no recognizer for {sorted(missing)}: {S.INSTALL_KO}; apt-get install tesseract-ocr-vie")
    return found


@pytest.fixture(scope="module")
def cards(tmp_path_factory, eval_dir):
    from bench.ocr_cards import MissingFonts, make_cards

    try:
        return make_cards(tmp_path_factory.mktemp("cards"), per_cell=2, seed=7, conditions=("clean", "small"),
                          eval_dir=eval_dir)
    except MissingFonts as e:
        pytest.skip(str(e))


@pytest.fixture(scope="module")
def runner(found):
    from polycap.schemas.config import OcrConfig
    from polycap.transforms.backends.ocr_handler import OcrRunner

    return OcrRunner(OcrConfig(enabled=True, langs=["en", "ko", "vi"]))


def _read(runner, card):
    from polycap.pipelines.ocr_eval import align_to_reference, cer_counts
    from polycap.transforms.backends.ocr_handler import decode_rgb
    from polycap.transforms.ocr import to_ocr_result

    with open(card.path, "rb") as f:
        res = to_ocr_result(runner.read(decode_rgb(f.read())), 0.5)
    texts = [ln.text for ln in res.lines]
    dist, n = cer_counts(align_to_reference(texts, card.text), card.text)
    return res, dist / n


@pytest.mark.slow
@pytest.mark.parametrize("lang", ["ko", "vi", "en"])
def test_cards_are_read_in_their_language(runner, cards, lang):
    for card in [c for c in cards if c.lang == lang]:
        res, cer = _read(runner, card)
        pred = "\n".join(ln.text for ln in res.lines)
        assert res.status == "ok", (card.path, res.status, res.error)
        assert cer < CARD_CER, (card.path, cer, card.text, pred)
        if lang == "ko":
            assert S.hangul_share(pred) > 0.8 and res.lang == "ko"
        if lang == "vi":   # the letters PP-OCRv6 has no glyph for survive: ạ ả ấ ầ ẩ ẫ ậ ắ ằ ặ ẹ ẻ ế ề ể ễ ệ ...
            want = {c for c in card.text if c in S._VI_ONLY}
            assert want and len(want & set(pred)) >= 0.8 * len(want), (card.text, pred)
    assert "rec_ko" in runner.models and "rec_vi" in runner.models


@pytest.mark.slow
def test_hangul_without_a_korean_recognizer_is_unsupported_script(runner, cards, monkeypatch):
    """The same Korean card with the Korean recognizer gone: no line is stored as PP-OCR's garbage."""
    from polycap.transforms.backends.ocr_handler import decode_rgb
    from polycap.transforms.ocr import to_ocr_result

    monkeypatch.setattr(runner.router, "ko", None)
    card = next(c for c in cards if c.lang == "ko" and c.condition == "clean")
    with open(card.path, "rb") as f:
        res = to_ocr_result(runner.read(decode_rgb(f.read())), 0.5)
    assert res.status == "unsupported_script", json.dumps([ln.text for ln in res.lines], ensure_ascii=False)
    assert not any(S.han_count(ln.text) for ln in res.lines)


@pytest.mark.slow
def test_vietnamese_without_a_vietnamese_recognizer_is_unsupported_script(runner, cards, monkeypatch):
    monkeypatch.setattr(runner.router, "vi", None)
    card = next(c for c in cards if c.lang == "vi" and c.condition == "clean")
    res, _ = _read(runner, card)
    assert res.status == "unsupported_script"
    assert not any(S.has_vi_letters(ln.text) for ln in res.lines)   # no line kept with letters missing


def _render(lines: list[str], condition: str, font: str = "NanumGothic.ttf", seed: int = 3):
    import random

    from bench.ocr_cards import MissingFonts, render_card

    try:
        return render_card(lines, "ko", condition, random.Random(seed), font=font)[0]
    except MissingFonts as e:
        pytest.skip(str(e))


def _read_image(runner, img):
    from polycap.transforms.ocr import to_ocr_result

    return to_ocr_result(runner.read(np.asarray(img.convert("RGB"))), 0.5)


@pytest.mark.slow
@pytest.mark.parametrize("condition", ["low_contrast", "small"])
def test_english_words_inside_korean_lines(runner, condition):
    """`kor` has no Latin letters: "(Slack)" came out as "(513010)", "(Halloween)" as "(13110\\4660)" on
    low-contrast cards. The non-Hangul runs are re-read by PP-OCR's recognizer."""
    lines = ["구글 드라이브(Google Drive), 슬랙(Slack)과", "할로윈(Halloween)에 딱 알맞은 마스크"]
    res = _read_image(runner, _render(lines, condition))
    pred = "\n".join(ln.text for ln in res.lines)
    assert res.status == "ok", res.error
    for word in ("(Google Drive)", "(Slack)", "(Halloween)"):
        assert word in pred, pred
    assert "구글" in pred and "알맞은" in pred


def _tight_crop(text: str, font: str, size: int = 32):
    from PIL import Image, ImageDraw, ImageFont

    from bench.ocr_cards import MissingFonts, font_path

    try:
        f = ImageFont.truetype(str(font_path(font)), size)
    except MissingFonts as e:
        pytest.skip(str(e))
    x0, y0, x1, y1 = f.getbbox(text)
    img = Image.new("RGB", (x1 - x0 + 6, y1 - y0 + 6), (235, 235, 235))
    ImageDraw.Draw(img).text((3 - x0, 3 - y0), text, font=f, fill=(60, 60, 60))
    return img


@pytest.mark.slow
@pytest.mark.parametrize("text,font", [("바탕으로", "NanumGothic.ttf"), ("만행은", "NanumMyeongjo.ttf"),
                                       ("SPEED", "DejaVuSans.ttf"), ("197", "DejaVuSans.ttf")])
def test_word_crops_are_read_whole(runner, text, font):
    """A tight word crop (a recognition data set, a cut-out sign): the detector finds no line on Hangul and
    cuts letters off Latin ones, and a job that reads Vietnamese must not turn "SPEED" into "gố)"."""
    img = _tight_crop(text, font)
    assert img.height <= 128
    res = _read_image(runner, img)
    assert res.status == "ok" and [ln.text for ln in res.lines] == [text], (res.status, res.lines)


@pytest.mark.slow
def test_korean_word_crop_without_a_korean_recognizer_is_unsupported_script(runner, monkeypatch):
    monkeypatch.setattr(runner.router, "ko", None)
    res = _read_image(runner, _tight_crop("바탕으로", "NanumGothic.ttf"))
    assert res.status == "unsupported_script" and not res.lines


@pytest.mark.slow
def test_without_the_engines_recognizer_english_words_go_to_tesseract_eng(found, runner):
    """The rapidocr backend lends no recognizer: Tesseract `eng` reads the English words in Korean lines
    (weaker: here "(Slack)" stays "(9130)", so only the longer word is asserted)."""
    from pathlib import Path

    router = S.ScriptRouter({k: Path(v) for k, v in found.items()}, ["en", "ko"])
    assert router.latin is None and router.eng is not None and "+ eng" in router.models["rec_ko"]
    assert runner.router.eng is None and "Latin runs" in runner.models["rec_ko"]
    img = np.asarray(_render(["구글 드라이브(Google Drive)와 슬랙(Slack)"], "clean").convert("RGB"))
    lines = runner.engine.recognize(img)
    text = " ".join(t for t, _, _ in router.route(img, lines).lines)
    assert "(Google" in text and "드라이브" in text and "슬랙" in text, text


@pytest.mark.slow
def test_hangul_script_model_reads_beside_kor_with_word_spacing(runner):
    """With Debian's tesseract-ocr-script-hang installed, Korean lines are read by `kor` and the Hangul
    script model; the script model's reading keeps the line's word spaces, not one per syllable."""
    import cv2

    from polycap.pipelines.ocr_eval import cer_counts

    readers = {r.lang: r for r in runner.router.ko_readers}
    if "Hangul" not in readers:
        pytest.skip(f"no Hangul script model: {S.INSTALL_KO_SCRIPT}")
    assert "kor + Hangul" in runner.models["rec_ko"] and readers["Hangul"].respace
    line = "베이징 차오양, 디지털 기술로 농업 새로운 발전"
    gray = cv2.cvtColor(np.asarray(_render([line], "clean").convert("RGB")), cv2.COLOR_RGB2GRAY)
    text, conf, _ = readers["Hangul"].read(gray)
    assert conf >= S.KO_MIN_CONF and cer_counts(text, line)[0] <= 2, text
    assert len(text.split()) == len(line.split()), text


def test_bench_word_error_counts_see_word_spacing():
    from bench.ocr_ko_vi import word_counts

    assert word_counts("베이징 차오양", "베이징 차오양") == (0, 2)
    assert word_counts("베이징 차 오 양", "베이징 차오양") == (3, 2)   # 1 word replaced, 2 added; CER ignores spaces
    assert word_counts("", "서울 Seoul") == (2, 2)


@pytest.mark.slow
def test_a_page_turned_a_quarter_by_mistake_is_read_as_stored(runner, monkeypatch):
    """The orientation classifier, trained without Hangul, turned single-line Hangul cards (Baekmuk Batang,
    JPEG) a quarter (270, score 0.69): the detector then found the line standing on end and every reading
    of it was garbage. A quarter turn whose lines stand on end, while the page as stored has level ones,
    is undone. The classifier's mistake is played here by a fake prediction of 270 on an upright card."""
    from polycap.transforms.backends.ocr_handler import stood_on_end

    line = "브랜치를 만들거나 삭제합니다"
    img = np.asarray(_render([line], "clean").convert("RGB"))
    monkeypatch.setattr(runner.orientation, "predict", lambda rgb: (270, 0.69))   # fake classifier output
    res = _read_image(runner, Image.fromarray(img))
    assert res.status == "ok" and [ln.text for ln in res.lines] == [line], res.lines
    assert stood_on_end([("", [0, 0, 30, 0, 30, 400, 0, 400], 1.0)])
    assert not stood_on_end([("", [0, 0, 400, 0, 400, 30, 0, 30], 1.0), ("", [0, 0, 30, 0, 30, 30, 0, 30], 1.0)])


@pytest.mark.slow
def test_a_latin_page_turned_over_by_mistake_is_read_as_stored(runner, monkeypatch):
    """The classifier turned a bold low-contrast Vietnamese card over (180, score 0.87): PP-OCR read the
    upside-down line as "en", and `kor` then claimed it as Korean ("din 시 y a"). A turned-over page whose
    reading has suspect lines is read as stored too, and kept so when that reads as clearly more text. The
    classifier's mistake is played by a fake prediction of 180 on an upright card."""
    import random

    from bench.ocr_cards import MissingFonts, render_card

    line = "Đăng ký với bộ quản lý phiên"
    try:
        img = render_card([line], "vi", "clean", random.Random(1), font="DejaVuSans.ttf")[0]
    except MissingFonts as e:
        pytest.skip(str(e))
    monkeypatch.setattr(runner.orientation, "predict", lambda rgb: (180, 0.87))   # fake classifier output
    res = _read_image(runner, img)
    assert res.status == "ok" and [ln.text for ln in res.lines] == [line], res.lines
