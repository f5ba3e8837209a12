"""RapidOCR backend: the light alternative, PP-OCRv4 (Chinese + English) ONNX models inside the wheel."""
from __future__ import annotations

from typing import Any

import numpy as np

from polycap.transforms.backends.ocr_models import RAPID_MODELS, OcrModelError, OcrModels


class RapidOcrEngine:
    """Loaded once per worker; `recognize(rgb)` -> [(text, quad 8 floats in pixels, score)]."""

    def __init__(self, cfg: Any, models: OcrModels):  # ocr.device is cpu: OcrConfig checks it
        try:
            import rapidocr_onnxruntime
        except ImportError:
            raise OcrModelError("ocr.backend=rapidocr needs `pip install rapidocr-onnxruntime`") from None
        try:
            # text_score 0: we filter by ocr.min_score ourselves so both backends behave the same.
            self.ocr = rapidocr_onnxruntime.RapidOCR(text_score=0.0)
        except Exception as e:  # noqa: BLE001
            raise OcrModelError(f"ocr: RapidOCR could not load its bundled models: "
                                f"{type(e).__name__}: {e}") from None
        from importlib.metadata import version

        self.name = f"rapidocr-onnxruntime {version('rapidocr-onnxruntime')} (onnxruntime, cpu)"
        self.extra_models = {"textline_cls": RAPID_MODELS["textline_cls"]}

    def recognize(self, rgb: np.ndarray) -> list[tuple[str, list[float], float]]:
        result, _ = self.ocr(np.ascontiguousarray(rgb[:, :, ::-1]))  # RapidOCR takes OpenCV BGR arrays
        out = []
        for box, text, score in result or []:
            quad = [float(v) for v in np.asarray(box, dtype=np.float64).reshape(-1)[:8]]
            out.append((str(text), quad, float(score)))
        return out
