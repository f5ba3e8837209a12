"""Job config: frozen dataclasses loaded from YAML, overridden by `--set a.b=c`, validated before any work.

Each section checks its own fields when it is built, whether by the loader or in code: `Literal` fields
hold one of their listed values, every float is finite, and `validate()` adds ranges and cross-field rules.
Section errors name the field relative to the section (`max_aspect: ...`); the loader prefixes the path
(`filter.max_aspect: ...`).
"""
from __future__ import annotations

import copy
import dataclasses
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml


class ConfigError(ValueError):
    """A bad config value; the message names the field (e.g. `filter.min_side`)."""


SourceKind = Literal["dir", "urls", "webdataset", "llava"]
OcrBackend = Literal["paddleocr", "rapidocr"]
OcrEngine = Literal["onnxruntime", "paddle"]     # onnxruntime: offline CPU, ONNX dirs; paddle: native models, GPU
OnFailure = Literal["keep", "reject"]
CaptionRoute = Literal["general", "text_rich", "document_chart", "art_landmark"]   # prompts/caption/<route>.yaml
CaptionGate = Literal["refusal", "repetition", "truncated", "length", "language", "quoted_text"]
PromptStyle = Literal["auto", "chat", "completion"]
# Text-generation backends built into transforms/backends/base.py REGISTRY; "none" turns the stage off.
BUILTIN_BACKENDS = ("openai", "vllm", "local")
_PLUGGED_BACKENDS: set[str] = set()     # added in code by transforms.backends.base.register_backend
NAME = re.compile(r"[a-z0-9_-]+")
LANG_TAG = re.compile(r"[a-z]{2,3}(-[A-Za-z0-9]+)*")    # BCP-47 shaped: ko, vi, pt-BR, zh-Hant
ENV_VAR = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def allow_backend(name: str) -> None:
    """Let config name a backend registered in code (transforms.backends.base.register_backend calls this)."""
    _PLUGGED_BACKENDS.add(name)


def backend_names() -> tuple[str, ...]:
    return (*BUILTIN_BACKENDS, *sorted(_PLUGGED_BACKENDS), "none")


def _one_of(path: str, value: Any, allowed: typing.Iterable[Any]) -> ConfigError:
    return ConfigError(f"{path}: {value!r} is not one of {', '.join(map(str, allowed))}")


_HINTS: dict[type, dict[str, Any]] = {}


def _hints(cls: type) -> dict[str, Any]:
    if cls not in _HINTS:
        _HINTS[cls] = typing.get_type_hints(cls)
    return _HINTS[cls]


def _check_value(value: Any, tp: Any, path: str) -> None:
    """Literal membership and finite floats, inside lists and dicts too (types are the loader's job)."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Literal:
        if value not in args:
            raise _one_of(path, value, args)
    elif tp is float and isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{path}: must be a finite number, got {value}")
    elif origin is list and isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            _check_value(v, args[0], f"{path}[{i}]")
    elif origin is dict and isinstance(value, dict):
        for k, v in value.items():
            _check_value(v, args[1], f"{path}.{k}")


def _ranges(obj: Any, positive: tuple[str, ...] = (), non_negative: tuple[str, ...] = ()) -> None:
    for name in positive:
        if getattr(obj, name) <= 0:
            raise ConfigError(f"{name}: must be > 0, got {getattr(obj, name)}")
    for name in non_negative:
        if getattr(obj, name) < 0:
            raise ConfigError(f"{name}: must be >= 0, got {getattr(obj, name)}")


class Section:
    """Base of the config dataclasses: checks its fields on construction (see the module docstring)."""

    def __post_init__(self) -> None:
        hints = _hints(type(self))
        for f in dataclasses.fields(self):  # type: ignore[arg-type]  # subclasses are dataclasses
            _check_value(getattr(self, f.name), hints[f.name], f.name)
        self.validate()

    def validate(self) -> None:
        """Ranges and cross-field rules; raise ConfigError("<field>: ...")."""


@dataclass(frozen=True)
class SourceConfig(Section):
    kind: SourceKind
    path: str
    name: str = ""
    image_root: str = ""            # llava: folder the `image` fields are relative to
    url_col: str = "url"            # urls: img2dataset conventions
    caption_col: str = "caption"
    license: str = ""

    def validate(self) -> None:
        if not self.path:
            raise ConfigError("path: must not be empty")


@dataclass(frozen=True)
class IngestConfig(Section):
    timeout_s: float = 10.0         # one download attempt, connect + headers + body (retries each get their own)
    connect_timeout_s: float = 5.0  # TCP (+TLS) connect, within timeout_s
    retries: int = 2
    max_bytes: int = 32 * 1024 * 1024           # one image: a download, a file, a tar member
    max_row_bytes: int = 1024 * 1024            # one list row / JSONL line, one sidecar caption or .json
    max_list_bytes: int = 2 * 1024**3           # one URL list or LLaVA JSON file, after decompression
    max_tar_bytes: int = 16 * 1024**3           # one webdataset tar stream, after decompression
    read_timeout_s: float = 600.0   # one input file or tar shard, checked between reads
    concurrency: int = 16
    user_agent: str = "polycap/0.1 (+https://github.com/polycap/polycap)"
    allow_private_addresses: bool = False   # let URL ingest reach loopback/private/link-local/... addresses
    follow_symlinks: bool = False   # follow links and LLaVA image paths that leave their root folder

    def validate(self) -> None:
        _ranges(self, positive=("timeout_s", "connect_timeout_s", "max_bytes", "max_row_bytes", "max_list_bytes",
                                "max_tar_bytes", "read_timeout_s", "concurrency"), non_negative=("retries",))


@dataclass(frozen=True)
class DecodeConfig(Section):
    max_pixels: int = 89_478_485    # Pillow's own bomb threshold (MAX_IMAGE_PIXELS)
    max_side: int = 0               # 0 = keep size; else downscale so max(w, h) <= max_side
    reencode: bool = True           # store a normalized RGB JPEG in the shard
    jpeg_quality: int = 92
    threads: int = 0                # decode threads per worker (Pillow releases the GIL); 0 = one per core
    memory_mb: int = 1024           # pixel memory the decode threads of one worker may hold at once

    def validate(self) -> None:
        _ranges(self, positive=("max_pixels", "memory_mb"), non_negative=("max_side",))
        if not 1 <= self.jpeg_quality <= 100:
            raise ConfigError(f"jpeg_quality: must be in 1..100, got {self.jpeg_quality}")
        if not 0 <= self.threads <= 256:
            raise ConfigError(f"threads: must be in 0..256 (0 = one per core), got {self.threads}")


@dataclass(frozen=True)
class FilterConfig(Section):
    min_side: int = 64
    max_aspect: float = 3.0
    min_bytes: int = 0
    max_bytes: int = 64 * 1024 * 1024   # 0 = no limit
    caption_langs: list[str] = field(default_factory=list)   # [] = any language
    caption_min_chars: int = 0
    caption_max_chars: int = 0      # 0 = no limit

    def validate(self) -> None:
        _ranges(self, positive=("min_side",),
                non_negative=("min_bytes", "max_bytes", "caption_min_chars", "caption_max_chars"))
        if self.max_aspect < 1.0:
            raise ConfigError(f"max_aspect: must be >= 1.0, got {self.max_aspect}")


@dataclass(frozen=True)
class DedupConfig(Section):
    exact: bool = True
    near: bool = True
    max_hamming: int = 10         # content pHash radius of near-dup candidates (each verified by neardup.same_picture)
    max_key_items: int = 2048       # no near-dup key holds more items: bigger ones are split into blocks
    center_rounds: int = 4          # clustering rounds; nodes still undecided after them are kept

    def validate(self) -> None:
        if self.max_key_items < 16:
            raise ConfigError(f"max_key_items: must be >= 16, got {self.max_key_items}")
        if not 1 <= self.center_rounds <= 16:
            raise ConfigError(f"center_rounds: must be in 1..16, got {self.center_rounds}")
        if not 0 <= self.max_hamming <= 32:
            raise ConfigError(f"max_hamming: must be in 0..32, got {self.max_hamming}")


@dataclass(frozen=True)
class OcrConfig(Section):
    enabled: bool = False
    backend: OcrBackend = "paddleocr"
    min_score: float = 0.5
    langs: list[str] = field(default_factory=lambda: ["en"])
    model_dir: str = ""             # "" = prepared cache dir (see transforms/backends/ocr_paddle.py)
    device: str = "cpu"
    batch_size: int = 4
    on_failure: OnFailure = "keep"  # keep (ocr.status=failed) | reject
    orientation: bool = True
    engine: OcrEngine = "onnxruntime"
    det_model: str = "PP-OCRv6_small_det"   # PaddleOCR model name = folder name under model_dir
    rec_model: str = ""             # "" = PP-OCRv6_small_rec; Korean/Vietnamese lines: ocr_script routing
    # Detection (paddleocr backend) runs at most at det_max_side px on the long side; 0 = PaddleOCR's own
    # sizing. The det_* thresholds: 0 = PaddleOCR's defaults. Why 960: bench/results/ocr.json.
    det_max_side: int = 960
    det_thresh: float = 0.0
    det_box_thresh: float = 0.0
    det_unclip_ratio: float = 0.0

    def validate(self) -> None:
        _ranges(self, positive=("batch_size",),
                non_negative=("det_max_side", "det_thresh", "det_box_thresh", "det_unclip_ratio"))
        if not 0 <= self.min_score <= 1:
            raise ConfigError(f"min_score: must be in 0..1, got {self.min_score}")
        if self.backend == "rapidocr" and self.device != "cpu":
            raise ConfigError(f"device: rapidocr-onnxruntime runs on cpu only, got {self.device!r}")


@dataclass(frozen=True)
class EndpointConfig(Section):
    """Where a text-generation model is served and how to call it: what every GenBackend is built from.

    `caption` and `translate` extend it, so their YAML keeps these keys flat (`caption: {backend: openai,
    model: m, endpoint: url}`); `endpoint_of(section)` is the one place a backend's copy is taken.
    """
    backend: str = "openai"         # a registered name (openai | vllm | local | registered in code) or none
    model: str = ""                 # model name (openai/vllm) or checkpoint dir (local, vllm)
    endpoint: str = ""              # base URL of an OpenAI-compatible server, e.g. http://127.0.0.1:8000/v1
    api_key_env: str = "OPENAI_API_KEY"   # name of the env var holding the API key; the key is never logged
    concurrency: int = 8
    timeout_s: float = 120.0
    max_retries: int = 4
    device: str = "auto"            # local / vllm backends
    options: dict[str, Any] = field(default_factory=dict)  # backend-specific extras, e.g. {gguf_file: ...}

    def validate(self) -> None:
        if self.backend not in backend_names():
            raise _one_of("backend", self.backend, backend_names())
        _ranges(self, positive=("concurrency", "timeout_s"), non_negative=("max_retries",))
        if self.endpoint and not self.endpoint.startswith(("http://", "https://")):
            raise ConfigError(f"endpoint: must be an http:// or https:// URL, got {self.endpoint!r}")
        if self.api_key_env and not ENV_VAR.fullmatch(self.api_key_env):
            raise ConfigError("api_key_env: must be the NAME of an environment variable (letters, digits, _), "
                              "not the key itself")


def endpoint_of(section: EndpointConfig, **changes: Any) -> EndpointConfig:
    """The section's model-endpoint fields as a plain EndpointConfig (what backends and handlers get)."""
    values = {f.name: getattr(section, f.name) for f in dataclasses.fields(EndpointConfig)}
    return EndpointConfig(**{**values, **changes})


@dataclass(frozen=True)
class CaptionConfig(EndpointConfig):
    enabled: bool = False
    # endpoint "" = $POLYCAP_CAPTION_ENDPOINT, else not configured (transforms/caption.py resolve_endpoint)
    batch_size: int = 8
    max_tokens: int = 512
    temperature: float = 0.2
    prompts: str = ""               # "" = bundled prompts/caption
    min_chars: int = 300
    max_chars: int = 2000           # 0 = no limit
    check_quoted_text: bool = True
    cache: bool = True
    lang: str = "en"                # language the captions must be in (language gate)
    seed: int = 0                   # sampling seed; the one gate retry uses seed + 1
    retry_temperature: float = 0.7  # gate retry when temperature is 0 (greedy would repeat the output)
    aesthetics: bool = False        # append prompts/caption/aesthetics.yaml to every route's prompt
    routes: dict[str, CaptionRoute] = field(default_factory=dict)  # source name -> route (wikiart: art_landmark)
    text_rich_min_area: float = 0.02  # ocr.text_area_ratio from which the text_rich prompt is used
    document_min_area: float = 0.25   # ... and the document_chart prompt
    max_ocr_hints: int = 40         # OCR lines injected into the text_rich / document_chart prompts
    skip_gates: list[CaptionGate] = field(default_factory=list)  # e.g. [language, repetition] for smoke runs
    quality: str = ""               # label written on every caption, e.g. "smoke" for tiny offline models

    def validate(self) -> None:
        super().validate()
        _ranges(self, positive=("batch_size", "max_tokens"),
                non_negative=("temperature", "retry_temperature", "min_chars", "max_chars", "max_ocr_hints"))
        if not 0 <= self.text_rich_min_area <= self.document_min_area <= 1:
            raise ConfigError("text_rich_min_area: need 0 <= text_rich_min_area <= document_min_area <= 1, "
                              f"got {self.text_rich_min_area} and {self.document_min_area}")


@dataclass(frozen=True)
class TranslateConfig(EndpointConfig):
    enabled: bool = False
    to: list[str] = field(default_factory=lambda: ["ko", "vi"])
    batch_size: int = 8
    max_tokens: int = 1024
    temperature: float = 0.0
    prompts: str = ""
    glossary: dict[str, dict[str, str]] = field(default_factory=dict)  # lang -> {term: translation}
    cache: bool = True
    max_chunk_chars: int = 2000     # long texts are split at paragraph (then sentence) boundaries
    prompt_style: PromptStyle = "auto"  # chat | completion (few-shot, for base LMs) | auto: completion for
                                        # the Gemma 270M base GGUF or options.base_model, else chat

    def validate(self) -> None:
        super().validate()
        _ranges(self, positive=("batch_size", "max_tokens", "max_chunk_chars"), non_negative=("temperature",))
        # target languages name output folders and shard members: tags only, so `--to ../x` cannot escape
        for i, tag in enumerate(self.to):
            if not LANG_TAG.fullmatch(tag):
                raise ConfigError(f"to[{i}]: {tag!r} is not a language tag like ko, vi or pt-BR")
        if len(set(self.to)) != len(self.to):
            raise ConfigError(f"to: a language is listed twice in {self.to}")
        if self.enabled and not self.to:
            raise ConfigError("to: at least one target language is needed")


@dataclass(frozen=True)
class ShardsConfig(Section):
    split: str = "train"            # shard names are {split}-{shard:06d}.tar
    max_samples: int = 1000

    def validate(self) -> None:
        if not NAME.fullmatch(self.split):
            raise ConfigError(f"split: {self.split!r} must match [a-z0-9_-]+")
        _ranges(self, positive=("max_samples",))


@dataclass(frozen=True)
class RunConfig(Section):
    # Local runs (DirectRunner/Prism) of local folder / URL-list sources go in waves of this many inputs, each
    # graph in a forked child of the launcher (pipelines/waves.py): memory bounded by the wave, not the
    # dataset. 0: one graph in process. Remote runners always run one graph. 1000 (bench/results/
    # pipeline_memory.json): the peak stays at the 1k run's (~300 MB) at any size, for ~1.4x one graph's
    # time (each wave pays ~2 s CPU of Beam graph construction and start-up); one graph grows ~27 KB an
    # input, and waves of 2000 already peak ~20 % above a 1k run.
    wave_size: int = 1000

    def validate(self) -> None:
        _ranges(self, non_negative=("wave_size",))


@dataclass(frozen=True)
class Config(Section):
    sources: list[SourceConfig]
    output: str = "out/run"
    run: RunConfig = field(default_factory=RunConfig)
    ingest: IngestConfig = field(default_factory=IngestConfig)
    decode: DecodeConfig = field(default_factory=DecodeConfig)
    filter: FilterConfig = field(default_factory=FilterConfig)
    dedup: DedupConfig = field(default_factory=DedupConfig)
    ocr: OcrConfig = field(default_factory=OcrConfig)
    caption: CaptionConfig = field(default_factory=CaptionConfig)
    translate: TranslateConfig = field(default_factory=TranslateConfig)
    shards: ShardsConfig = field(default_factory=ShardsConfig)

    def validate(self) -> None:
        if not self.sources:
            raise ConfigError("sources: at least one source is required")


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
    if origin is Literal:
        if isinstance(value, bool) or value not in args:
            raise _one_of(path, value, args)
        return value
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
        if not math.isfinite(value):
            raise ConfigError(f"{path}: must be a finite number, got {value}")
        return float(value)
    if tp is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise ConfigError(f"{path}: expected a string, got {value!r}")
        return str(value)
    return value


def build(cls: type, data: dict[str, Any], path: str = "") -> Any:
    """Build dataclass `cls` from a mapping; unknown keys, wrong types and the section's own checks fail
    with a ConfigError naming the field path."""
    hints = _hints(cls)
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
    try:
        return cls(**kwargs)
    except ConfigError as e:
        raise ConfigError(f"{path}.{e}" if path else str(e)) from None


def _set_path(data: dict[str, Any], dotted: str, raw: str) -> None:
    keys = dotted.split(".")
    cur = data
    for k in keys[:-1]:
        nxt = cur.setdefault(k, {})
        if not isinstance(nxt, dict):
            raise ConfigError(f"{dotted}: {k} is not a mapping")
        cur = nxt
    try:
        cur[keys[-1]] = yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError as e:
        raise ConfigError(f"{dotted}: --set value {raw!r} is not valid YAML ({_yaml_problem(e)})") from None


def _yaml_problem(e: yaml.YAMLError) -> str:
    """PyYAML's error in one line: what went wrong and where (its str() spans several lines)."""
    problem = getattr(e, "problem", None) or str(e).splitlines()[0]
    mark = getattr(e, "problem_mark", None)
    return f"line {mark.line + 1}, column {mark.column + 1}: {problem}" if mark else str(problem)


def read_yaml(path: str | Path) -> dict[str, Any]:
    """A YAML mapping from a file; a missing file or bad YAML is a ConfigError naming the file."""
    try:
        data = yaml.safe_load(Path(path).read_text()) or {}
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: cannot read the config file ({type(e).__name__}: {e})") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {_yaml_problem(e)}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping")
    return data


def apply_overrides(data: dict[str, Any], overrides: list[str] | None, prefix: str = "") -> dict[str, Any]:
    """A deep copy of `data` with `a.b=c` overrides applied (values parsed as YAML)."""
    data = copy.deepcopy(data)
    for ov in overrides or []:
        if "=" not in ov:
            raise ConfigError(f"--set {ov!r}: expected a.b=value")
        k, v = ov.split("=", 1)
        k = k.strip()
        if not k or "" in k.split("."):
            raise ConfigError(f"--set {ov!r}: expected a.b=value")
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
    return build(Config, apply_overrides(config_mapping(path, data), overrides))


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
