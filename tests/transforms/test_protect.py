from polycap.transforms.protect import check_placeholders, compare_spans, find_spans, mask, restore

TEXT = ("<image>\nWhere is <ref>the red cup</ref><box>(120,340),(560,780)</box>? See https://example.org/a?b=1, "
        "mail jo@example.com, run `pip install x` or\n```\nfor i in range(3):\n    print(i)\n```\n"
        "math $E = mc^2$ and \\(x_1\\). It costs 3.5% more than 1,200 won.\nA. yes\n"
        "(B) no <quad>(1,2),(3,4),(5,6),(7,8)</quad>")


def test_mask_hides_every_protected_span_and_keeps_ref_inner_text():
    m = mask(TEXT)
    kinds = [s.kind for s in m.spans]
    for k in ("tag", "box", "url", "email", "inline_code", "fenced_code", "math", "number", "choice", "quad"):
        assert k in kinds, k
    assert "the red cup" in m.text                     # translated, only the tags are masked
    for bad in ("<image>", "<ref>", "<box>", "https://", "@example", "`", "$", "3.5", "1,200", "(B)"):
        assert bad not in m.text, bad
    assert restore(m, m.text) == TEXT


def test_restore_after_reordering_keeps_spans_and_check_flags_changes():
    m = mask("<image>\nThere are 3 cats and 5 dogs.")
    assert m.text == "[[P0]]\nThere are [[P1]] cats and [[P2]] dogs."
    swapped = "[[P0]]\n개 [[P2]]마리와 고양이 [[P1]]마리."      # numbers may move (Korean word order)
    assert check_placeholders(m, swapped) is None
    assert restore(m, swapped) == "<image>\n개 5마리와 고양이 3마리."
    assert "missing=[1]" in check_placeholders(m, "[[P0]] 고양이 [[P2]]")
    assert "repeated" in check_placeholders(m, "[[P0]] [[P1]] [[P1]] [[P2]]")
    assert "unknown=[7]" in check_placeholders(m, "[[P0]] [[P1]] [[P2]] [[P7]]")
    m2 = mask("<image> then <ref>x</ref>")
    assert "reordered" in check_placeholders(m2, "[[P2]] x [[P1]] [[P0]]")


def test_source_text_that_looks_like_a_placeholder_round_trips():
    m = mask("literal [[P0]] here and 42")
    assert restore(m, m.text) == "literal [[P0]] here and 42"


def test_compare_spans_numbers_rescaled_vs_changed():
    assert compare_spans("More than 20 million people", "2000만 명 이상") is None   # 10^4 units
    assert compare_spans("at 7.55am", "오전 7시 55분") is None
    assert compare_spans("June 2019", "tháng 6 năm 2019") is None                  # a word became a number
    assert "numbers changed" in compare_spans("In 2019, 5 people", "Năm 2018, 5 người")
    assert "structural" in compare_spans("<image>\nHi https://a.org/x", "Xin chào")


def test_find_spans_does_not_split_numbers_glued_to_hangul():
    assert [s.text for s in find_spans("3,000개와 1930년대")] == ["3,000", "1930"]
