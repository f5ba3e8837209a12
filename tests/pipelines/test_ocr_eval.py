"""ocr-eval: labelled rows in, CER per language and images/s out (real model on a few small images)."""
from __future__ import annotations

import json

import pytest
from PIL import Image, ImageDraw, ImageFont

from polycap.pipelines import ocr_eval
from polycap.schemas.config import OcrConfig


def test_cer_ignores_whitespace_and_counts_edits():
    assert ocr_eval.cer_counts("d a t e l i n e", "dateline") == (0, 8)
    assert ocr_eval.cer_counts("The qick fox", "The quick fox") == (1, 11)
    assert ocr_eval.cer_counts("", "abc") == (3, 3)


def test_load_labelled_keeps_upstream_ground_truth_only(eval_dir):
    rows = ocr_eval.load_labelled(str(eval_dir / "ocr" / "gt.jsonl"))
    assert rows and all(r["gt_source"].startswith("upstream") for r in rows)
    assert any(r["path"].endswith("phototest-rotated-L.png") for r in rows)
    every = ocr_eval.load_labelled(str(eval_dir / "ocr" / "gt.jsonl"), gt_sources="all")
    assert len(every) > len(rows)


def test_load_labelled_from_a_folder(tmp_path):
    Image.new("RGB", (60, 30), "white").save(tmp_path / "a.png")
    (tmp_path / "a.txt").write_text("hello")
    Image.new("RGB", (60, 30), "white").save(tmp_path / "unlabelled.png")
    rows = ocr_eval.load_labelled(str(tmp_path))
    assert [(r["text"], r["lang"]) for r in rows] == [("hello", "en")]


@pytest.mark.slow
def test_run_reports_cer_per_language_and_speed(eval_dir, tmp_path):
    ocr_dir = eval_dir / "ocr"
    img = Image.new("RGB", (520, 90), "white")
    ImageDraw.Draw(img).text((20, 20), "Grounded captions", fill="black", font=ImageFont.load_default(size=40))
    img.save(tmp_path / "card.png")
    rows = [
        {"path": str(tmp_path / "card.png"), "lang": "en", "granularity": "line",
         "text": "Grounded captions", "gt_source": "upstream_test"},
        {"path": str(ocr_dir / "paddleocr_doc/imgs_words/ch/word_4.jpg"), "lang": "zh", "granularity": "word",
         "text": "实力活力", "gt_source": "upstream_doc_prediction"},
        {"path": str(ocr_dir / "paddleocr_doc/imgs_words/korean/1.jpg"), "lang": "ko", "granularity": "word",
         "text": "바탕으로", "gt_source": "upstream_doc_prediction"},
    ]
    gt = tmp_path / "gt.jsonl"
    gt.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows))
    out = tmp_path / "report.json"
    rep = ocr_eval.run(str(gt), OcrConfig(enabled=True, orientation=False, batch_size=2, langs=["en", "zh"]),
                       str(out))
    assert json.loads(out.read_text())["images"] == 3 == rep["images"] and rep["failed"] == 0
    assert rep["by_lang"]["en"]["cer"] == 0.0
    assert rep["by_lang"]["zh"]["cer"] <= 0.25
    ko = rep["by_lang"]["ko"]
    if "ko" in _script_langs():     # Tesseract kor installed: the Korean row is read and scored
        assert ko["cer"] is not None and ko.get("status") != "unsupported", ko
    else:
        assert ko["status"] == "unsupported" and ko["cer"] is None and "tesseract-ocr-kor" in ko["reason"]
    assert rep["images_per_s"] > 0 and rep["engine_images_per_s"] >= rep["images_per_s"]


def _script_langs() -> set[str]:
    from polycap.transforms.backends import ocr_models, ocr_script

    return ocr_script.script_langs(ocr_script.prepare_script_models(ocr_models.default_cache_dir()))


def test_lang_checker_knows_the_script_recognizers(monkeypatch):
    from polycap.transforms.backends import ocr_script

    cfg = OcrConfig(enabled=True, langs=["en"])
    monkeypatch.setattr(ocr_script, "script_langs", lambda found: {"ko", "vi"})
    check = ocr_eval.lang_checker(cfg)
    assert check("ko+en") == (True, "") and check("vi") == (True, "")
    monkeypatch.setattr(ocr_script, "script_langs", lambda found: set())
    check = ocr_eval.lang_checker(cfg)
    ok, why = check("ko+en")
    assert not ok and "recognizer cannot read ko" in why and "tesseract-ocr-kor" in why
    assert "korean_PP-OCRv5" not in why   # the old message named a model no package ships
    ok, why = check("vi")
    assert not ok and "tesseract-ocr-vie" in why and "trueocr" in why
    assert check("en") == (True, "")
