from bench.translate_gates_catalogs import strip_bar_context
from polycap.transforms import coverage as c

PAIRS_KO = [("Cannot open file", "파일을 열 수 없습니다"), ("file not found", "파일을 찾을 수 없습니다"),
            ("Open the file", "파일 열기"), ("Remove file %s", "%s 파일 삭제"), ("open directory", "디렉터리 열기"),
            ("directory not found", "디렉터리를 찾을 수 없습니다"), ("Remove directory", "디렉터리 삭제"),
            ("list directory", "디렉터리 목록"), ("Remove the entry", "항목 삭제"), ("entry not found", "항목 없음"),
            ("Remove the link", "링크 삭제")]


def test_source_terms_are_stemmed_content_words_without_spans():
    assert c.source_terms("Removing the files in /etc/passwd and --files") == ["remov", "fil"]
    assert c.source_terms("to be or not") == []


def test_target_keys_are_hangul_runs_or_vietnamese_words_and_pairs():
    assert {"파", "파일", "파일을", "일을"} <= c.target_keys("파일을 %s", "ko")
    assert "을 " not in c.target_keys("파일을 열기", "ko")
    assert c.target_keys("Tập tin %s", "vi") == {"tập", "tin", "tập tin"}


def test_fit_lexicon_learns_the_translation_of_each_frequent_word():
    table = c.fit_lexicon(PAIRS_KO, "ko")
    assert "파일" in table["fil"] and any("디렉" in a for a in table["directory"])
    assert c.fit_lexicon(PAIRS_KO, "ko") == table                       # deterministic
    assert c.uncovered("Remove the file", "파일", "ko", table) == (["remov", "fil"], ["remov"])
    assert c.uncovered("Remove the file", "파일 삭제", "ko", table)[1] == []


def test_fit_coverage_measures_each_term_out_of_fold():
    p, table, folds = c.fit_coverage(PAIRS_KO * 2, "ko")
    assert len(folds) == 2 and set(table) <= set(p)
    assert all(0 < v < 1 for v in p.values())         # add-one smoothed


def test_fit_length_predicts_more_characters_for_longer_sources():
    model = c.fit_length(PAIRS_KO, lambda t: len(" ".join(t.split())))
    vocab = {w: j + 2 for j, w in enumerate(model["vocab"])}
    assert c.predicted_length("Remove directory", model, vocab) < c.predicted_length(
        "Remove directory and open the file and list directory", model, vocab)
    assert c.predicted_length("", model, vocab) >= 1.0


def test_word_endings_and_the_last_one():
    assert c.word_endings("파일을 열 수 없습니다", "ko") == ["일을", "열", "수", "니다"]
    assert c.last_ending("파일이 이미 있습", "ko") == "있습"
    assert c.last_ending("파일 %s", "ko") is None                      # ends on a span, not a word
    assert c.last_ending("Không thể tạo các", "vi") == "các"


def test_aptitude_bar_context_is_not_part_of_the_text():
    pairs = {"Encoding of help.txt|UTF-8": "UTF-8", "a|b|c": "x|y", "Localized defaults|": "aptitude-defaults.vi",
             "source|sources": "nguồn|các nguồn"}
    assert strip_bar_context(pairs) == {"UTF-8": "UTF-8", "a|b|c": "x|y", "source|sources": "nguồn|các nguồn"}


def test_budgets_chosen_together_within_both_false_reject_targets():
    from bench.translate_gates_fit import BUDGET_GRID, _choose_budgets

    def report(n, fr, cut):
        return {"dev_catalog_references": n,
                "dev_catalog_false_reject_rate_by_budget": {str(b): f for b, f in zip(BUDGET_GRID, fr)},
                "dev_catalog_cut_catch_rate_by_budget": {str(b): c for b, c in zip(BUDGET_GRID, cut)}}
    # ko is cheap and already catches most cuts; vi needs a larger budget, which only fits beside ko's
    # smaller one: the combined rate (1000 ko + 1000 vi references) must stay <= 1 %, each <= 1.5 %
    ko = report(1000, [0.004, 0.004, 0.005, 0.0065, 0.007, 0.008], [0.90, 0.92, 0.95, 0.96, 0.97, 0.98])
    vi = report(1000, [0.010, 0.011, 0.013, 0.014, 0.016, 0.020], [0.80, 0.85, 0.90, 0.94, 0.97, 0.99])
    chosen = _choose_budgets({"ko": ko, "vi": vi})
    # vi's 0.002 (1.4 %, catches 0.94) leaves room for ko's 0.001 (0.5 %: 0.95 % combined), not its 0.002
    assert chosen == {"ko": 0.001, "vi": 0.002}
    # nothing within the targets: the smallest budgets
    bad = report(1000, [0.02] * 6, [0.9] * 6)
    assert _choose_budgets({"ko": bad, "vi": bad}) == {"ko": BUDGET_GRID[0], "vi": BUDGET_GRID[0]}
