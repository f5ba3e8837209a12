"""The OCR model handler: one engine per worker (PaddleOCR or RapidOCR) plus our page-orientation classifier;
RGB image in, lines with quads on the stored image out. Model folders are prepared by `ocr_models`."""
from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from apache_beam.metrics import Metrics
from apache_beam.ml.inference.base import ModelHandler, PredictionResult

from polycap.sharding.staging import image_bytes
from polycap.transforms.backends.ocr_models import ORIENTATION, OcrModelError, OcrModels, check_ocr_models
from polycap.transforms.backends.ocr_script import ScriptRouter, has_latin, is_suspect, single_thread_openmp

# Engine time per image (ms): a Beam distribution, read by `polycap ocr-eval`; never stored in the record.
ENGINE_MS = Metrics.distribution("ocr", "engine_ms")


class DocOrientation:
    """Whole-page orientation classifier; labels are the clockwise angle the page content is turned by."""

    LABELS = (0, 90, 180, 270)

    def __init__(self, path: str, min_score: float = 0.6):
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = opts.inter_op_num_threads = 1   # one worker per core (ocr_paddle.ort_threads)
        self.session = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
        self.input = self.session.get_inputs()[0].name
        self.min_score = min_score

    @staticmethod
    def preprocess(rgb: np.ndarray) -> np.ndarray:
        """Resize the short side to 256, centre-crop 224, ImageNet mean/std, BGR CHW (the model's training)."""
        from PIL import Image

        img = Image.fromarray(rgb)
        scale = 256 / min(img.size)
        img = img.resize((max(224, round(img.width * scale)), max(224, round(img.height * scale))),
                         Image.Resampling.LANCZOS)
        left, top = (img.width - 224) // 2, (img.height - 224) // 2
        arr = np.asarray(img.crop((left, top, left + 224, top + 224)), dtype=np.float32)[:, :, ::-1] / 255.0
        norm = (arr - np.array([0.485, 0.456, 0.406], np.float32)) / np.array([0.229, 0.224, 0.225], np.float32)
        return norm.transpose(2, 0, 1)[None].astype(np.float32)

    def predict(self, rgb: np.ndarray) -> tuple[int, float]:
        """(angle, score); angle is 0 unless the classifier is at least `min_score` sure."""
        prob = self.session.run(None, {self.input: self.preprocess(rgb)})[0][0]
        i = int(np.argmax(prob))
        score = float(prob[i])
        return (self.LABELS[i] if score >= self.min_score else 0), score


def quad_to_original(quad: list[float], k: int, w: int, h: int) -> list[float]:
    """Map an 8-float quad found on `np.rot90(image, k)` back onto the image as stored (w x h pixels)."""
    out: list[float] = []
    for x, y in zip(quad[0::2], quad[1::2]):
        if k % 4 == 1:
            x, y = w - y, x
        elif k % 4 == 2:
            x, y = w - x, h - y
        elif k % 4 == 3:
            x, y = y, h - x
        out += [float(x), float(y)]
    return out


class OcrRunner:
    """One loaded OCR engine (+ orientation classifier) per worker: RGB image in, pixel-space lines out."""

    def __init__(self, cfg: Any):
        models = check_ocr_models(cfg)
        if cfg.engine == "onnxruntime" or cfg.backend == "rapidocr":
            single_thread_openmp()   # before PaddleX loads libgomp; native Paddle (engine=paddle) keeps its threads
        self.engine = make_engine(cfg, models)
        self.orientation = DocOrientation(models.orientation) if models.orientation else None
        # Lines by script: Korean / Vietnamese re-read, unreadable scripts reported (even with no recognizer)
        self.router = ScriptRouter({k: Path(v) for k, v in models.scripts.items()}, list(cfg.langs),
                                   latin=getattr(self.engine, "read_crops", None))
        self.models = {"det": models.det_name, "rec": models.rec_name, **self.engine.extra_models,
                       **self.router.models}
        if self.orientation is not None:
            self.models["orientation"] = ORIENTATION

    def read(self, rgb: np.ndarray) -> dict[str, Any]:
        """{lines: [(text, quad 8 floats px on the stored image, score)], width, height, angle, angle_score}."""
        angle, angle_score = self.orientation.predict(rgb) if self.orientation else (0, 0.0)
        k = angle // 90  # content turned clockwise by `angle`: turn it back counter-clockwise
        upright = np.ascontiguousarray(np.rot90(rgb, k)) if k else rgb
        lines = self.engine.recognize(upright)
        word_crop = is_word_crop(rgb)    # read whole as stored and as turned by _word_crop: no page checks
        if k % 2 and not word_crop and stood_on_end(lines):
            # the classifier (trained without Hangul) turned a page of level lines a quarter: they now stand
            # on end, and a line read across its height is garbage. Kept as stored where its lines lie level.
            level = self.engine.recognize(rgb)
            if not stood_on_end(level):
                upright, k, angle, lines = rgb, 0, 0, level
        elif k == 2 and not word_crop and any(self._suspect(ln) and has_latin(ln[0]) for ln in lines):
            # a page the classifier turned over: kept as stored where the stored page reads as more text the
            # recognizer is sure of (a low-contrast Vietnamese card read as "en" turned over). Hangul reads as
            # Han-like garbage or nothing both ways and stays with the classifier (the router turns its lines
            # back): only a suspect line with Latin letters asks for the second reading.
            as_stored = self.engine.recognize(rgb)
            if self._legible(as_stored) > 2 * self._legible(lines):
                upright, k, angle, lines = rgb, 0, 0, as_stored
        if word_crop and len(lines) <= 1 and hasattr(self.engine, "read_crops"):
            upright, k, lines = self._word_crop(rgb, upright, k, lines)
            angle = k * 90
        routed = self.router.route(upright, lines)
        if routed.flipped:  # a Hangul page the orientation classifier (trained without Hangul) turned over
            k, angle = (k + 2) % 4, (angle + 180) % 360
        h, w = rgb.shape[:2]
        lines = [(t, quad_to_original(q, k, w, h), s) for t, q, s in routed.lines]
        return {"lines": lines, "width": w, "height": h, "angle": angle, "angle_score": angle_score,
                "engine": self.engine.name, "models": dict(self.models), "error": None,
                "unsupported": routed.unsupported}


    def _suspect(self, line: tuple[str, list[float], float]) -> bool:
        return is_suspect(line[0].strip(), line[2], line[1], self.router.cjk_langs)

    def _legible(self, lines: list[tuple[str, list[float], float]]) -> float:
        """Characters read with confidence: sum of score x length over the lines that are not suspect."""
        return sum(s * len(t.strip()) for t, q, s in lines if not self._suspect((t, q, s)))

    def _word_crop(self, rgb: np.ndarray, upright: np.ndarray, k: int, lines: list) -> tuple[np.ndarray, int, list]:
        """A word or line crop read whole. The detector finds nothing on a tight Hangul crop and cuts letters
        off tight Latin ones ("197" -> "19", "Future" -> "Fure"), and the page-orientation classifier,
        trained on pages, turns a third of the word crops in ../shared/eval/ocr over. The whole crop is read
        as stored and as turned; the best-scored reading wins over the detector's one line, if any."""
        cands = [(rgb, 0)] + ([(upright, k)] if k else [])
        reads = self.engine.read_crops([np.ascontiguousarray(c[:, :, ::-1]) for c, _ in cands])
        (text, score), (img, kk) = max(zip(reads, cands), key=lambda rc: rc[0][1])
        best_line = lines[0][2] if lines else 0.0
        if score >= WORD_CROP_MIN_SCORE and score > best_line:
            h, w = img.shape[:2]
            return img, kk, [(text, [0.0, 0.0, float(w), 0.0, float(w), float(h), 0.0, float(h)], score)]
        if best_line < WORD_CROP_MIN_SCORE and self.router.ko is not None:
            # PP-OCR reads Hangul as Han garbage at ~0.5 and the classifier turns Hangul crops: an empty first
            # reading of the crop as stored that only the Korean recognizer can claim (the router drops it
            # otherwise)
            h, w = rgb.shape[:2]
            return rgb, 0, [("", [0.0, 0.0, float(w), 0.0, float(w), float(h), 0.0, float(h)], 0.0)]
        return upright, k, lines


def stood_on_end(lines: list[tuple[str, list[float], float]]) -> bool:
    """More of the detected lines are tall (height > 1.5 x width) than wide: the page is turned a quarter
    from its lines' direction (or is vertical CJK writing)."""
    tall = wide = 0
    for _, quad, _ in lines:
        xs, ys = quad[0::2], quad[1::2]
        w, h = max(xs) - min(xs), max(ys) - min(ys)
        tall += h > 1.5 * w
        wide += w > 1.5 * h
    return tall > wide


# A word / line crop (a text-recognition data set, a cut-out sign): one line of text at most this tall.
WORD_CROP_MAX_H, WORD_CROP_MAX_W = 128, 640
WORD_CROP_MIN_SCORE = 0.5    # as OcrConfig.min_score's default; photos without text read at < 0.45


def is_word_crop(rgb: np.ndarray) -> bool:
    h, w = rgb.shape[:2]
    return h <= WORD_CROP_MAX_H and w <= WORD_CROP_MAX_W


def make_engine(cfg: Any, models: OcrModels) -> Any:
    """The backend named by `cfg.backend`: an object with `name`, `extra_models` and `recognize(rgb)`."""
    if cfg.backend == "paddleocr":
        from polycap.transforms.backends.ocr_paddle import PaddleOcrEngine

        return PaddleOcrEngine(cfg, models)
    if cfg.backend == "rapidocr":
        from polycap.transforms.backends.ocr_rapid import RapidOcrEngine

        return RapidOcrEngine(cfg, models)
    raise OcrModelError(f"ocr.backend: {cfg.backend!r} is not one of paddleocr, rapidocr")


def decode_rgb(data: bytes) -> np.ndarray:
    """Image bytes -> upright RGB array (EXIF orientation applied, as the decode stage stores it)."""
    import io

    from PIL import Image, ImageOps

    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(ImageOps.exif_transpose(im).convert("RGB"))


class OcrModelHandler(ModelHandler[Any, PredictionResult, OcrRunner]):
    """Beam ModelHandler over Samples: one OcrRunner per worker, batches of up to `cfg.batch_size`.

    A bad image (undecodable, engine error) yields a result with `error` set so its batch-mates survive;
    anything else raises into RunInference's dead-letter output.
    """

    def __init__(self, cfg: Any):
        self.cfg = cfg

    def load_model(self) -> OcrRunner:
        return OcrRunner(self.cfg)

    def run_inference(self, batch: Sequence[Any], model: OcrRunner,
                      inference_args: dict[str, Any] | None = None) -> Iterable[PredictionResult]:
        out = []
        for sample in batch:
            t0 = time.perf_counter()
            try:
                res = model.read(decode_rgb(image_bytes(sample)))
            except Exception as e:  # noqa: BLE001 - per-image failure: recorded, routed by the stage's on_failure
                res = {"lines": [], "engine": model.engine.name, "models": dict(model.models),
                       "error": f"{type(e).__name__}: {str(e)[:500]}"}
            ENGINE_MS.update(int((time.perf_counter() - t0) * 1000))
            out.append(PredictionResult(example=sample, inference=res, model_id=model.engine.name))
        return out

    def batch_elements_kwargs(self) -> dict[str, Any]:
        return {"min_batch_size": 1, "max_batch_size": self.cfg.batch_size}

    def share_model_across_processes(self) -> bool:
        return False
