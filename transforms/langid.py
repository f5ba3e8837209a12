"""Language identification: one seeded, cached langdetect wrapper and one language-name table."""
from __future__ import annotations

from functools import lru_cache
from typing import Any

# Names used in prompts ("Write the caption in {language}", "Translate into {language}").
LANG_NAMES = {"en": "English", "ko": "Korean", "vi": "Vietnamese", "zh": "Chinese", "ja": "Japanese",
              "th": "Thai", "id": "Indonesian", "fr": "French", "de": "German", "es": "Spanish",
              "pt": "Portuguese", "it": "Italian", "ru": "Russian", "ar": "Arabic", "hi": "Hindi",
              "tr": "Turkish"}

_FACTORY: Any = None


def language_name(code: str) -> str:
    """English name of a language code; the code itself when the table does not know it."""
    return LANG_NAMES.get(code, code)


def base_lang(code: str) -> str:
    """`zh-cn` / `zh-TW` -> `zh`: langdetect's regional variants count as their language."""
    return code.lower().split("-")[0]


def _factory() -> Any:
    """langdetect's profiles, loaded once per process into our own factory (no global state touched)."""
    global _FACTORY
    from langdetect.detector_factory import PROFILES_DIRECTORY, DetectorFactory

    if _FACTORY is None:
        factory = DetectorFactory()
        factory.load_profile(PROFILES_DIRECTORY)
        factory.seed = 0   # langdetect is randomized; seed 0 makes it deterministic (its README)
        _FACTORY = factory
    return _FACTORY


@lru_cache(maxsize=4096)
def detect_languages(text: str) -> tuple[tuple[str, float], ...]:
    """langdetect candidates [(lang, p)], best first; () when the text has no letters to go by."""
    from langdetect.lang_detect_exception import LangDetectException

    detector = _factory().create()
    detector.append(text)
    try:
        return tuple((c.lang, c.prob) for c in detector.get_probabilities())
    except LangDetectException:
        return ()


def top_language(text: str) -> tuple[str, float] | None:
    """(base language code, p) of langdetect's best candidate; None when the text has no letters."""
    cands = detect_languages(text)
    return (base_lang(cands[0][0]), cands[0][1]) if cands else None


def language_share(text: str, lang: str) -> float:
    """Probability mass langdetect gives `lang`, its regional variants summed (zh-cn + zh-tw = zh)."""
    return sum(p for code, p in detect_languages(text) if base_lang(code) == lang)
