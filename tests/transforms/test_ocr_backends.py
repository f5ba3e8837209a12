"""OCR backends with the real PP-OCR weights on CPU: model preparation, start-up checks, rendered text, and
rotated pages. No network: a test blocks sockets while the models load and run."""
from __future__ import annotations

import socket
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from polycap.pipelines.demo import load_font
from polycap.schemas.config import OcrConfig
from polycap.transforms import ocr
from polycap.transforms.backends import ocr_handler, ocr_models
from polycap.transforms.backends.ocr_handler import OcrRunner, decode_rgb
from polycap.transforms.backends.ocr_models import OcrModelError, check_ocr_models

LINES = [("Polycap reads text", (40, 40)), ("Invoice 2024-07 total 318", (40, 150))]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return ocr_models.prepare_models(tmp_path_factory.mktemp("ocr-models"))


def _cfg(model_dir: Path, **kw) -> OcrConfig:
    return OcrConfig(enabled=True, model_dir=str(model_dir), **kw)


def _rendered() -> tuple[np.ndarray, list[tuple[str, tuple[int, int, int, int]]]]:
    """White 720x260 card with two lines; returns the RGB array and each line's drawn pixel bbox."""
    img = Image.new("RGB", (720, 260), "white")
    draw = ImageDraw.Draw(img)
    font = load_font(40)
    drawn = []
    for text, xy in LINES:
        draw.text(xy, text, fill="black", font=font)
        drawn.append((text, draw.textbbox(xy, text, font=font)))
    return np.asarray(img), drawn


def _iou(a, b) -> float:
    ix = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


@pytest.fixture(scope="module")
def paddle(model_dir) -> OcrRunner:
    return OcrRunner(_cfg(model_dir))


def test_prepare_models_builds_paddleocr_folders_idempotently(model_dir):
    for name in (ocr_models.DET_DEFAULT, ocr_models.REC_DEFAULT):
        assert (model_dir / name / "inference.onnx").stat().st_size > 1_000_000
        assert "model_name: " + name in (model_dir / name / "inference.yml").read_text()
    before = (model_dir / ocr_models.REC_DEFAULT / "inference.onnx").stat().st_mtime_ns
    assert ocr_models.prepare_models(model_dir) == model_dir
    assert (model_dir / ocr_models.REC_DEFAULT / "inference.onnx").stat().st_mtime_ns == before


def test_paddle_kwargs_are_offline_and_explicit(model_dir):
    from polycap.transforms.backends.ocr_paddle import paddle_kwargs

    kw = paddle_kwargs(_cfg(model_dir), check_ocr_models(_cfg(model_dir)))
    assert kw["engine"] == "onnxruntime" and kw["device"] == "cpu"
    assert kw["use_doc_orientation_classify"] is False and kw["use_doc_unwarping"] is False
    assert kw["use_textline_orientation"] is False
    assert kw["text_recognition_model_dir"] == str(model_dir / "PP-OCRv6_small_rec")
    # one ONNX Runtime thread per worker process on CPU; GPU workers keep ORT's own settings
    assert kw["engine_config"] == {"intra_op_num_threads": 1, "inter_op_num_threads": 1}
    gpu = paddle_kwargs(_cfg(model_dir, device="gpu:0"), check_ocr_models(_cfg(model_dir)))
    assert "engine_config" not in gpu


def test_only_large_images_are_detected_at_det_max_side():
    from polycap.transforms.backends.ocr_paddle import det_kwargs

    cfg = OcrConfig(enabled=True)
    assert det_kwargs(cfg, 3300, 2560) == {"text_det_limit_type": "max", "text_det_limit_side_len": 960}
    assert det_kwargs(cfg, 480, 640) == {}          # small images and word crops keep PaddleOCR's sizing
    tuned = OcrConfig(enabled=True, det_max_side=0, det_thresh=0.4, det_unclip_ratio=1.2)
    assert det_kwargs(tuned, 3300, 2560) == {"text_det_thresh": 0.4, "text_det_unclip_ratio": 1.2}


@pytest.mark.slow
def test_rendered_text_is_read_and_boxed_where_drawn(paddle, monkeypatch):
    rgb, drawn = _rendered()

    def no_network(*args, **kwargs):
        raise AssertionError("OCR tried to open a network connection")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    res = ocr.to_ocr_result(paddle.read(rgb), min_score=0.5)
    assert [ln.text for ln in res.lines] == [t for t, _ in drawn]
    h, w = rgb.shape[:2]
    for line, (_, (x1, y1, x2, y2)) in zip(res.lines, drawn):
        want = [ocr.to_grid(x1, w), ocr.to_grid(y1, h), ocr.to_grid(x2, w), ocr.to_grid(y2, h)]
        assert _iou(line.box, want) > 0.6, (line.box, want)
        assert line.score > 0.9
    assert res.lang == "en" and 0.05 < res.text_area_ratio < 0.5
    assert res.engine.startswith("paddleocr 3.") and res.models["rec"] == "PP-OCRv6_small_rec"


@pytest.mark.slow
def test_rotated_page_is_read_upright_and_boxed_on_the_stored_image(paddle, eval_dir):
    page = eval_dir / "ocr" / "tesseract_test" / "phototest-rotated-L.png"
    raw = paddle.read(decode_rgb(page.read_bytes()))
    res = ocr.to_ocr_result(raw, 0.5)
    assert raw["angle"] == 270
    assert res.lines[0].text == "This is a lot of 12 point text to test the"
    # the page is turned counter-clockwise: the first line is a tall, narrow box on the stored image
    x1, y1, x2, y2 = res.lines[0].box
    assert (y2 - y1) > 5 * (x2 - x1)


@pytest.mark.slow
@pytest.mark.parametrize("page", ["8071_093.3B", "8087_054.3B"])
def test_two_column_magazine_page_cer_below_5_percent(paddle, eval_dir, page):
    """Reading order on UNLV magazine scans: narrow gutters (8071) and a caption across the gutter
    (8087). Plain output order against the upstream transcription, no re-alignment."""
    from polycap.pipelines.ocr_eval import cer_counts

    folder = eval_dir / "ocr" / "tesseract_test"
    res = ocr.to_ocr_result(paddle.read(decode_rgb((folder / f"{page}.tif").read_bytes())), 0.5)
    edits, chars = cer_counts("\n".join(ln.text for ln in res.lines), (folder / f"{page}.txt").read_text())
    assert edits / chars < 0.05, (page, edits / chars)


@pytest.mark.slow
def test_rapidocr_backend_reads_rendered_text(model_dir):
    rgb, drawn = _rendered()
    runner = OcrRunner(_cfg(model_dir, backend="rapidocr", orientation=False))
    res = ocr.to_ocr_result(runner.read(rgb), 0.5)
    assert [ln.text.replace(" ", "") for ln in res.lines] == [t.replace(" ", "") for t, _ in drawn]
    assert res.models["rec"] == "ch_PP-OCRv4_rec" and res.engine.startswith("rapidocr-onnxruntime")


def test_missing_model_dir_is_one_clear_error(tmp_path):
    with pytest.raises(OcrModelError, match="does not exist"):
        check_ocr_models(_cfg(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(OcrModelError, match=r"PP-OCRv6_small_det/ with inference.onnx and inference.yml"):
        check_ocr_models(_cfg(tmp_path / "empty"))


@pytest.mark.slow
def test_corrupt_model_file_fails_at_pipeline_construction(model_dir, tmp_path, monkeypatch):
    import shutil

    import apache_beam as beam

    bad = tmp_path / "models"
    shutil.copytree(model_dir, bad)
    onnx = bad / "PP-OCRv6_small_rec" / "inference.onnx"
    onnx.write_bytes(onnx.read_bytes()[: 50_000])           # truncated download
    calls = []
    monkeypatch.setattr(ocr_handler, "decode_rgb", lambda data: calls.append(1))
    with pytest.raises(OcrModelError, match=r"inference.onnx \(PP-OCRv6_small_rec\) is corrupt"):
        p = beam.Pipeline()
        _ = p | beam.Create([b"x"]) | ocr.RunOcr(_cfg(bad))
    assert calls == []                                      # failed before any image was touched
    with pytest.raises(OcrModelError, match="corrupt"):     # and a worker's load_model says the same
        ocr_handler.OcrModelHandler(_cfg(bad)).load_model()


def test_korean_needs_a_script_recognizer(model_dir, monkeypatch):
    """Korean / Vietnamese are read by ocr_script's recognizers (Debian tessdata, the trueocr wheel); a language
    none of them reads fails at start-up with what to install."""
    from polycap.transforms.backends import ocr_script

    models = check_ocr_models(_cfg(model_dir, langs=["en", "ko", "vi"])) if ocr_script.system_tessdata("kor") \
        else None
    if models is not None:
        assert models.rec_name == "PP-OCRv6_small_rec" and ocr_script.TESS in models.scripts
    monkeypatch.setattr(ocr_script, "prepare_script_models", lambda root: {})
    with pytest.raises(OcrModelError, match=r"ocr.langs: ko not readable .* tesseract-ocr-kor"):
        check_ocr_models(_cfg(model_dir, langs=["en", "ko"]))
    with pytest.raises(OcrModelError, match=r"korean_PP-OCRv5_mobile_rec/ with inference.onnx"):
        check_ocr_models(_cfg(model_dir, langs=["en", "ko"], rec_model="korean_PP-OCRv5_mobile_rec"))
    with pytest.raises(OcrModelError, match=r"ocr.langs: th not readable by PP-OCRv6_small_rec"):
        check_ocr_models(_cfg(model_dir, langs=["th"]))
    with pytest.raises(OcrModelError, match="rapidocr backend"):
        check_ocr_models(_cfg(model_dir, backend="rapidocr", langs=["ko"]))
    assert check_ocr_models(_cfg(model_dir, langs=["en", "zh", "ja", "fr", "de"])).rec_name == "PP-OCRv6_small_rec"
