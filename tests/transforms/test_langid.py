"""The one language-ID module: seeded (same answer every time), regional variants fold, one name table."""
from __future__ import annotations

from polycap.transforms.langid import (
    base_lang,
    detect_languages,
    language_name,
    language_share,
    top_language,
)

DE = "Ein kleiner Hund spielt im Garten mit einem roten Ball, während die Kinder lachen."


def test_detection_is_seeded_and_cached():
    detect_languages.cache_clear()
    first = detect_languages(DE)
    detect_languages.cache_clear()
    assert detect_languages(DE) == first and first[0][0] == "de"
    assert top_language(DE) == ("de", first[0][1])
    assert detect_languages("1234 ... !!") == () and top_language("1234") is None


def test_regional_variants_count_as_their_language():
    assert base_lang("zh-cn") == "zh" and base_lang("zh-TW") == "zh" and base_lang("ko") == "ko"
    zh_tw = "這是一個在花園裡玩紅色球的小狗，孩子們在旁邊笑著看著牠。"
    assert detect_languages(zh_tw)[0][0] == "zh-tw"
    assert top_language(zh_tw)[0] == "zh" and language_share(zh_tw, "zh") > 0.9


def test_language_names():
    assert language_name("ko") == "Korean" and language_name("vi") == "Vietnamese"
    assert language_name("pt") == "Portuguese" and language_name("xx") == "xx"
