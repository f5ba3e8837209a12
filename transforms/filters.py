"""Filter decoded samples by image size, aspect ratio, file size and source-caption language/length."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import apache_beam as beam

from polycap.schemas import Reason, Reject, Sample
from polycap.schemas.config import FilterConfig
from polycap.transforms.langid import base_lang, detect_languages
from polycap.transforms.plumbing import StageDoFn, make_reject, route_stage

STAGE = "filter"

# The rules follow Qwen-VL's pre-training data cleaning (Bai et al. 2023, arXiv:2308.12966, App. A.1):
# remove pairs whose image is too small or has too large an aspect ratio, whose text is in a non-target
# language, or whose text is too short or too long. Thresholds come from FilterConfig.

# langdetect is noisy on short strings; a target language that is a runner-up with at least this
# probability still passes, so a short English alt-text is not dropped for looking like Welsh.
LANG_RUNNER_UP_MIN_P = 0.2


def _side(sample: Sample) -> tuple[int, int]:
    return sample.image.width, sample.image.height


def _input_bytes(sample: Sample) -> int:
    """Size of the file as ingested (decode records it before it re-encodes the image)."""
    return int(sample.provenance.get("decode", {}).get("input_bytes", len(sample.image.bytes)))


def _caption(sample: Sample) -> str:
    return (sample.source.orig_caption or "").strip()


def check_min_side(sample: Sample, cfg: FilterConfig) -> Reason | None:
    return Reason.TOO_SMALL if min(_side(sample)) < cfg.min_side else None


def check_aspect(sample: Sample, cfg: FilterConfig) -> Reason | None:
    w, h = _side(sample)
    return Reason.EXTREME_ASPECT if max(w, h) > cfg.max_aspect * max(1, min(w, h)) else None


def check_min_bytes(sample: Sample, cfg: FilterConfig) -> Reason | None:
    return Reason.FILE_TOO_SMALL if _input_bytes(sample) < cfg.min_bytes else None


def check_max_bytes(sample: Sample, cfg: FilterConfig) -> Reason | None:
    return Reason.FILE_TOO_LARGE if 0 < cfg.max_bytes < _input_bytes(sample) else None


def check_caption_language(sample: Sample, cfg: FilterConfig) -> Reason | None:
    text = _caption(sample)
    if not text or not cfg.caption_langs:
        return None
    wanted = {base_lang(x) for x in cfg.caption_langs}
    cands = detect_languages(text)
    ok = any(base_lang(lang) in wanted and (i == 0 or p >= LANG_RUNNER_UP_MIN_P)
             for i, (lang, p) in enumerate(cands))
    return None if ok else Reason.CAPTION_LANGUAGE


def check_caption_short(sample: Sample, cfg: FilterConfig) -> Reason | None:
    text = _caption(sample)
    return Reason.CAPTION_TOO_SHORT if text and len(text) < cfg.caption_min_chars else None


def check_caption_long(sample: Sample, cfg: FilterConfig) -> Reason | None:
    text = _caption(sample)
    return Reason.CAPTION_TOO_LONG if text and 0 < cfg.caption_max_chars < len(text) else None


def _explain_side(sample: Sample, cfg: FilterConfig) -> str:
    w, h = _side(sample)
    return f"min side {min(w, h)}px < filter.min_side {cfg.min_side} (image {w}x{h})"


def _explain_aspect(sample: Sample, cfg: FilterConfig) -> str:
    w, h = _side(sample)
    return f"aspect {max(w, h) / max(1, min(w, h)):.2f} > filter.max_aspect {cfg.max_aspect} (image {w}x{h})"


def _explain_min_bytes(sample: Sample, cfg: FilterConfig) -> str:
    return f"file {_input_bytes(sample)} bytes < filter.min_bytes {cfg.min_bytes}"


def _explain_max_bytes(sample: Sample, cfg: FilterConfig) -> str:
    return f"file {_input_bytes(sample)} bytes > filter.max_bytes {cfg.max_bytes}"


def _explain_language(sample: Sample, cfg: FilterConfig) -> str:
    cands = detect_languages(_caption(sample))
    found = ", ".join(f"{lang} p={p:.2f}" for lang, p in cands[:3]) or "undetectable (no letters)"
    return f"caption language {found}; filter.caption_langs {list(cfg.caption_langs)}"


def _explain_short(sample: Sample, cfg: FilterConfig) -> str:
    return f"caption {len(_caption(sample))} chars < filter.caption_min_chars {cfg.caption_min_chars}"


def _explain_long(sample: Sample, cfg: FilterConfig) -> str:
    return f"caption {len(_caption(sample))} chars > filter.caption_max_chars {cfg.caption_max_chars}"


@dataclass(frozen=True)
class Rule:
    check: Callable[[Sample, FilterConfig], Reason | None]
    explain: Callable[[Sample, FilterConfig], str]   # the measured value and the threshold


# Cheap checks first; the language check (langdetect) runs last, only on samples still standing.
RULES: tuple[Rule, ...] = (
    Rule(check_min_side, _explain_side),
    Rule(check_aspect, _explain_aspect),
    Rule(check_min_bytes, _explain_min_bytes),
    Rule(check_max_bytes, _explain_max_bytes),
    Rule(check_caption_short, _explain_short),
    Rule(check_caption_long, _explain_long),
    Rule(check_caption_language, _explain_language),
)


def filter_sample(sample: Sample, cfg: FilterConfig) -> Sample | Reject:
    """The first rule that fails rejects the sample; a sample passing all rules is returned unchanged."""
    for rule in RULES:
        reason = rule.check(sample, cfg)
        if reason is not None:
            return make_reject(sample, STAGE, reason, rule.explain(sample, cfg))
    return sample


class FilterSamples(beam.PTransform):
    """Decoded Samples -> (Samples that pass every rule, Rejects of stage "filter")."""

    def __init__(self, cfg: FilterConfig):
        super().__init__()
        self.cfg = cfg

    def expand(self, pcoll):
        return route_stage(pcoll, "FilterOne", StageDoFn(partial(filter_sample, cfg=self.cfg), STAGE), STAGE)
