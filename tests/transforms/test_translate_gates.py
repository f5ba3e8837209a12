from bench.translate_gates import build_items, evaluate, load_pairs
from polycap.schemas import Reason
from polycap.transforms import translate_gates as g

SRC = "The man in the red shirt is holding 2 cups of coffee near the window."
KO = "빨간 셔츠를 입은 남자가 창가에서 커피 2잔을 들고 있다."
VI = "Người đàn ông mặc áo đỏ đang cầm 2 cốc cà phê gần cửa sổ."


def test_good_translations_pass():
    assert g.first_failure(SRC, KO, "ko") is None
    assert g.first_failure(SRC, VI, "vi") is None


def test_each_gate_names_its_reason():
    assert g.first_failure(SRC, "  ", "ko")[0] == Reason.GATE_EMPTY
    assert g.first_failure(SRC, KO, "ko", "length")[0] == Reason.GATE_TRUNCATED
    assert g.first_failure(SRC, "Here is the translation: " + KO, "ko")[0] == Reason.GATE_PREAMBLE
    assert g.first_failure(SRC, "번역: " + KO, "ko")[0] == Reason.GATE_PREAMBLE
    assert g.first_failure(SRC, "Sure, " + VI, "vi")[0] == Reason.GATE_PREAMBLE
    assert g.first_failure(SRC, SRC, "vi")[0] == Reason.GATE_ENGLISH_LEFT
    assert g.first_failure(SRC, "穿红衬衫的男人在窗边拿着2杯咖啡。", "ko")[0] == Reason.GATE_WRONG_LANGUAGE
    assert g.first_failure(SRC, "赤いシャツの男性が窓の近くでコーヒーを2杯持っている。", "vi")[0] \
        == Reason.GATE_WRONG_LANGUAGE
    assert g.first_failure(SRC, KO.replace("2", "3"), "ko")[0] == Reason.GATE_SPANS_CHANGED
    assert g.first_failure(SRC, KO + " " + KO[:-1] + ". " + KO, "ko")[0] == Reason.GATE_REPETITION
    assert g.first_failure(SRC, KO[: len(KO) // 2], "ko")[0] == Reason.GATE_TRUNCATED
    assert g.first_failure(SRC + " " + SRC, "남자 2.", "ko")[0] == Reason.GATE_LENGTH_RATIO


def test_source_that_starts_with_yes_may_start_with_yes():
    assert g.check_preamble("Yes, it is a cat.", "Vâng, đó là một con mèo.") is None


def test_gate_eval_on_ntrex_subset_meets_targets(eval_dir):
    """False rejects on human references < 2%, corruptions caught >= 95% (full run: bench/translate_gates.py)."""
    items = []
    for lang in ("ko", "vi"):
        items += build_items(load_pairs(eval_dir, lang)[:120], lang)
    res = evaluate(items)
    assert res["references"] == 480
    assert res["false_reject_rate"] < 0.02
    assert res["catch_rate_overall"] >= 0.95
    for kind in ("english_copy", "cjk", "preamble", "span_dropped"):
        assert res["per_kind"][kind]["rate"] >= 0.99, kind
