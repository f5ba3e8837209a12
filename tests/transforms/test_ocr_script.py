"""Script routing in OCR: Korean and Vietnamese read by their own recognizers on rendered NTREX cards, and a
script no installed recognizer reads stored as `unsupported_script`, never as text with letters missing.
The real-model tests need Debian's tesseract-ocr-kor/-vie/-eng and fonts-nanum/-dejavu (`make test` installs
them when it runs as root); without them they skip and say what to install."""
from __future__ import annotations

import json

import numpy as np
import pytest

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


def test_unsupported_lines_make_the_status_and_are_not_stored():
    from polycap.transforms.ocr import to_ocr_result

    raw = {"lines": [("Seoul", [0, 0, 100, 0, 100, 20, 0, 20], 0.99)], "width": 200, "height": 100,
           "engine": "fake", "models": {}, "unsupported": ["ko", "ko"]}
    res = to_ocr_result(raw, 0.5)
    assert res.status == "unsupported_script" and [ln.text for ln in res.lines] == ["Seoul"]
    assert "2 lines" in res.error and "tesseract-ocr-kor" in res.error
    assert to_ocr_result({**raw, "unsupported": []}, 0.5).status == "ok"


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
