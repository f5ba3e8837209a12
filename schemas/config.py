"""Job config: frozen dataclasses loaded from YAML, overridden by `--set a.b=c`, validated before any work."""
from __future__ import annotations

import copy
import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


class ConfigError(ValueError):
    """A bad config value; the message names the field (e.g. `filter.min_side`)."""


SOURCE_KINDS = ("dir", "urls", "webdataset", "llava")
BACKENDS = ("openai", "vllm", "local", "none")


@dataclass(frozen=True)
class SourceConfig:
    kind: str
    path: str
    name: str = ""
    image_root: str = ""            # llava: folder the `image` fields are relative to
    url_col: str = "url"            # urls: img2dataset conventions
    caption_col: str = "caption"
    license: str = ""


@dataclass(frozen=True)
class IngestConfig:
    timeout_s: float = 10.0
    retries: int = 2
    max_bytes: int = 32 * 1024 * 1024
    concurrency: int = 16
    user_agent: str = "polycap/0.1 (+https://github.com/polycap/polycap)"


@dataclass(frozen=True)
class DecodeConfig:
    max_pixels: int = 89_478_485    # Pillow's own bomb threshold (MAX_IMAGE_PIXELS)
    max_side: int = 0               # 0 = keep size; else downscale so max(w, h) <= max_side
    reencode: bool = True           # store a normalized RGB JPEG in the shard
    jpeg_quality: int = 92
    threads: int = 0                # decode threads per worker (Pillow releases the GIL); 0 = one per core


@dataclass(frozen=True)
class FilterConfig:
    min_side: int = 64
    max_aspect: float = 3.0
    min_bytes: int = 0
    max_bytes: int = 64 * 1024 * 1024
    caption_langs: list[str] = field(default_factory=list)   # [] = any language
    caption_min_chars: int = 0
    caption_max_chars: int = 0      # 0 = no limit


@dataclass(frozen=True)
class DedupConfig:
    exact: bool = True
    near: bool = True
    max_hamming: int = 8
    bands: int = 0                  # 0 = max_hamming + 1 (pigeonhole: a pair within t bits shares a band)


@dataclass(frozen=True)
class OcrConfig:
    enabled: bool = False
    backend: str = "paddleocr"      # paddleocr | rapidocr
    min_score: float = 0.5
    langs: list[str] = field(default_factory=lambda: ["en"])
    model_dir: str = ""             # "" = prepared cache dir (see transforms/backends/ocr_paddle.py)
    device: str = "cpu"
    batch_size: int = 4
    on_failure: str = "keep"        # keep (ocr.status=failed) | reject
    orientation: bool = True
    engine: str = "onnxruntime"     # onnxruntime (offline CPU, ONNX dirs) | paddle (native models, GPU)
    det_model: str = "PP-OCRv6_small_det"   # PaddleOCR model name = folder name under model_dir
    rec_model: str = ""             # "" = by langs (PP-OCRv6_small_rec; ko -> korean_PP-OCRv5_mobile_rec)
    # Text detection (paddleocr backend). Images whose long side exceeds det_max_side are detected at that
    # size (PP-OCR 2.x's default, 960 max). PaddleOCR 3.x detects at full size (min side 64, max 4000):
    # on the 300-dpi UNLV pages it merged lines across 17-28 px gutters (10 merged lines on 8071_093,
    # CER 66%; 3 at max side 1280-1600); at 960 none merge (CER 2.7%) and recognition still reads crops
    # of the full image (bench/results/ocr.json). 0 = PaddleOCR's own sizing. Thresholds: 0 = PaddleOCR's
    # defaults (0.3 / 0.6 / 1.5); raising det_thresh to 0.45-0.5 or lowering unclip to 1.2 did not unmerge.
    det_max_side: int = 960
    det_thresh: float = 0.0
    det_box_thresh: float = 0.0
    det_unclip_ratio: float = 0.0


@dataclass(frozen=True)
class CaptionConfig:
    enabled: bool = False
    backend: str = "openai"
    model: str = ""
    endpoint: str = ""              # "" = $POLYCAP_CAPTION_ENDPOINT, else not configured
    api_key_env: str = "OPENAI_API_KEY"
    concurrency: int = 8
    batch_size: int = 8
    max_tokens: int = 512
    temperature: float = 0.2
    timeout_s: float = 120.0
    max_retries: int = 4
    prompts: str = ""               # "" = bundled prompts/caption
    min_chars: int = 300
    max_chars: int = 2000
    check_quoted_text: bool = True
    cache: bool = True
    lang: str = "en"                # language the captions must be in (language gate)
    seed: int = 0                   # sampling seed; the one gate retry uses seed + 1
    retry_temperature: float = 0.7  # gate retry when temperature is 0 (greedy would repeat the output)
    aesthetics: bool = False        # append prompts/caption/aesthetics.yaml to every route's prompt
    routes: dict[str, str] = field(default_factory=dict)  # source name -> route (e.g. wikiart: art_landmark)
    text_rich_min_area: float = 0.02  # ocr.text_area_ratio from which the text_rich prompt is used
    document_min_area: float = 0.25   # ... and the document_chart prompt
    max_ocr_hints: int = 40         # OCR lines injected into the text_rich / document_chart prompts
    skip_gates: list[str] = field(default_factory=list)  # e.g. [language, repetition] for smoke runs
    quality: str = ""               # label written on every caption, e.g. "smoke" for tiny offline models
    device: str = "auto"            # local / vllm backends


@dataclass(frozen=True)
class TranslateConfig:
    enabled: bool = False
    to: list[str] = field(default_factory=lambda: ["ko", "vi"])
    backend: str = "openai"
    model: str = ""
    endpoint: str = ""
    api_key_env: str = "OPENAI_API_KEY"
    concurrency: int = 8
    batch_size: int = 8
    max_tokens: int = 1024
    temperature: float = 0.0
    timeout_s: float = 120.0
    max_retries: int = 4
    prompts: str = ""
    glossary: dict[str, dict[str, str]] = field(default_factory=dict)  # lang -> {term: translation}
    cache: bool = True
    device: str = "auto"
    options: dict[str, Any] = field(default_factory=dict)  # backend extras, e.g. {gguf_file: ...}
    max_chunk_chars: int = 2000     # long texts are split at paragraph (then sentence) boundaries
    prompt_style: str = "auto"      # chat | completion (few-shot, for base LMs) | auto: completion for
                                    # the Gemma 270M base GGUF or options.base_model, else chat


@dataclass(frozen=True)
class ShardsConfig:
    split: str = "train"
    max_samples: int = 1000


@dataclass(frozen=True)
class Config:
    sources: list[SourceConfig]
    output: str = "out/run"
    ingest: IngestConfig = field(default_factory=IngestConfig)
    decode: DecodeConfig = field(default_factory=DecodeConfig)
    filter: FilterConfig = field(default_factory=FilterConfig)
    dedup: DedupConfig = field(default_factory=DedupConfig)
    ocr: OcrConfig = field(default_factory=OcrConfig)
    caption: CaptionConfig = field(default_factory=CaptionConfig)
    translate: TranslateConfig = field(default_factory=TranslateConfig)
    shards: ShardsConfig = field(default_factory=ShardsConfig)


def _coerce(value: Any, tp: Any, path: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for a in (a for a in args if a is not type(None)):
            try:
                return _coerce(value, a, path)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0])
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: expected a mapping, got {type(value).__name__}")
        return build(tp, value, path)
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{path}: expected a list, got {type(value).__name__}")
        return [_coerce(v, args[0], f"{path}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: expected a mapping, got {type(value).__name__}")
        return {str(k): _coerce(v, args[1], f"{path}.{k}") for k, v in value.items()}
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{path}: expected true/false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{path}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{path}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise ConfigError(f"{path}: expected a string, got {value!r}")
        return str(value)
    return value


def build(cls: type, data: dict[str, Any], path: str = "") -> Any:
    """Build dataclass `cls` from a mapping, rejecting unknown keys and wrong types by field path."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        where = f"{path}." if path else ""
        raise ConfigError(f"{where}{unknown[0]}: unknown field (allowed: {', '.join(sorted(names))})")
    kwargs = {}
    for f in dataclasses.fields(cls):
        fpath = f"{path}.{f.name}" if path else f.name
        if f.name in data:
            kwargs[f.name] = _coerce(data[f.name], hints[f.name], fpath)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"{fpath}: required field is missing")
    return cls(**kwargs)


def _check(cfg: Config) -> None:
    if not cfg.sources:
        raise ConfigError("sources: at least one source is required")
    for i, s in enumerate(cfg.sources):
        if s.kind not in SOURCE_KINDS:
            raise ConfigError(f"sources[{i}].kind: {s.kind!r} is not one of {', '.join(SOURCE_KINDS)}")
        if not s.path:
            raise ConfigError(f"sources[{i}].path: must not be empty")
    positive = {"filter.min_side": cfg.filter.min_side, "shards.max_samples": cfg.shards.max_samples,
                "ingest.concurrency": cfg.ingest.concurrency, "ingest.max_bytes": cfg.ingest.max_bytes,
                "decode.max_pixels": cfg.decode.max_pixels, "caption.concurrency": cfg.caption.concurrency,
                "caption.batch_size": cfg.caption.batch_size, "ocr.batch_size": cfg.ocr.batch_size,
                "translate.concurrency": cfg.translate.concurrency}
    for name, v in positive.items():
        if v <= 0:
            raise ConfigError(f"{name}: must be > 0, got {v}")
    if cfg.filter.max_aspect < 1.0:
        raise ConfigError(f"filter.max_aspect: must be >= 1.0, got {cfg.filter.max_aspect}")
    if not 0 <= cfg.dedup.max_hamming <= 32:
        raise ConfigError(f"dedup.max_hamming: must be in 0..32, got {cfg.dedup.max_hamming}")
    if not 0 <= cfg.decode.threads <= 256:
        raise ConfigError(f"decode.threads: must be in 0..256 (0 = one per core), got {cfg.decode.threads}")
    if not 1 <= cfg.decode.jpeg_quality <= 100:
        raise ConfigError(f"decode.jpeg_quality: must be in 1..100, got {cfg.decode.jpeg_quality}")
    if cfg.ocr.backend not in ("paddleocr", "rapidocr"):
        raise ConfigError(f"ocr.backend: {cfg.ocr.backend!r} is not one of paddleocr, rapidocr")
    for name in ("det_max_side", "det_thresh", "det_box_thresh", "det_unclip_ratio", "min_score"):
        if getattr(cfg.ocr, name, 0) < 0:
            raise ConfigError(f"ocr.{name}: must be >= 0, got {getattr(cfg.ocr, name)}")
    if cfg.ocr.on_failure not in ("keep", "reject"):
        raise ConfigError(f"ocr.on_failure: {cfg.ocr.on_failure!r} is not one of keep, reject")
    for sec in ("caption", "translate"):
        b = getattr(cfg, sec).backend
        if b not in BACKENDS and ":" not in b:  # "module:Class" plugs in other backends (and test doubles)
            raise ConfigError(f"{sec}.backend: {b!r} is not one of {', '.join(BACKENDS)} or a 'module:Class'")
    if not cfg.shards.split or "." in cfg.shards.split or "/" in cfg.shards.split:
        raise ConfigError(f"shards.split: {cfg.shards.split!r} must be a non-empty name without '.' or '/'")


def _set_path(data: dict[str, Any], dotted: str, raw: str) -> None:
    keys = dotted.split(".")
    cur = data
    for k in keys[:-1]:
        nxt = cur.setdefault(k, {})
        if not isinstance(nxt, dict):
            raise ConfigError(f"{dotted}: {k} is not a mapping")
        cur = nxt
    cur[keys[-1]] = yaml.safe_load(raw) if raw != "" else ""


def read_yaml(path: str | Path) -> dict[str, Any]:
    """A YAML mapping from a file; a missing file or bad YAML is a ConfigError naming the file."""
    try:
        data = yaml.safe_load(Path(path).read_text()) or {}
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError("config: top level must be a mapping")
    return data


def apply_overrides(data: dict[str, Any], overrides: list[str] | None, prefix: str = "") -> dict[str, Any]:
    """A deep copy of `data` with `a.b=c` overrides applied (values parsed as YAML)."""
    data = copy.deepcopy(data)
    for ov in overrides or []:
        if "=" not in ov:
            raise ConfigError(f"--set {ov!r}: expected a.b=value")
        k, v = ov.split("=", 1)
        k = k.strip()
        _set_path(data, k if not prefix or k.startswith(prefix) else f"{prefix}{k}", v)
    return data


def config_mapping(path: str | Path | None, data: dict[str, Any] | None, what: str = "config") -> dict[str, Any]:
    """The config as a mapping: `data` when given, else the YAML file at `path`."""
    if data is None:
        if path is None:
            raise ConfigError(f"no {what} given")
        data = read_yaml(path)
    if not isinstance(data, dict):
        raise ConfigError("config: top level must be a mapping")
    return data


def load_config(path: str | Path | None = None, overrides: list[str] | None = None,
                data: dict[str, Any] | None = None) -> Config:
    """Load YAML (or a dict), apply `a.b=c` overrides (values parsed as YAML), validate."""
    cfg = build(Config, apply_overrides(config_mapping(path, data), overrides))
    _check(cfg)
    return cfg


def to_dict(cfg: Config) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def load_section(cls: type, section: str, path: str | None = None, overrides: list[str] | None = None,
                 defaults: dict[str, Any] | None = None) -> Any:
    """Load one config section (e.g. `translate:` for `polycap translate`) from an optional YAML file.

    `overrides` are `a=b` or `section.a=b`; `defaults` apply only where the file sets nothing.
    """
    sec = read_yaml(path).get(section, {}) if path else {}
    if not isinstance(sec, dict):
        raise ConfigError(f"{section}: expected a mapping")
    data = {**(defaults or {}), **sec}
    wrapped = apply_overrides({section: data}, overrides, prefix=f"{section}.")
    return build(cls, wrapped[section], section)
