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


def test_ui_placeholders_options_paths_are_spans_and_korean_particles_stay_outside():
    text = ("%s: %-10s %1$s %.250s 100%% {name} {0} $HOME ${XDG_DIR} --help를 -v /etc/passwd를 "
            "bug-coreutils@gnu.org로 https://gnu.org/software/를 `%s'")
    got = [(s.kind, s.text) for s in find_spans(text)]
    for want in [("printf", "%s"), ("printf", "%-10s"), ("printf", "%1$s"), ("printf", "%.250s"), ("printf", "%%"),
                 ("brace", "{name}"), ("brace", "{0}"), ("dollar", "$HOME"), ("dollar", "${XDG_DIR}"),
                 ("option", "--help"), ("option", "-v"), ("path", "/etc/passwd"),
                 ("email", "bug-coreutils@gnu.org"), ("url", "https://gnu.org/software/")]:
        assert want in got, want
    m = mask(text)
    assert "를" in m.text and "로" in m.text and "%" not in m.text and "{" not in m.text
    assert restore(m, m.text) == text


def test_metavariables_and_prose_are_not_spans():
    assert find_spans("Usage: %s [-WIDTH] [OPTION]... /REGEXP/ {INTEGER}")[1:] == []
    assert find_spans("100 % of people, e-mail, non-empty, and/or 24/7") == [
        s for s in find_spans("100 % of people, e-mail, non-empty, and/or 24/7") if s.kind == "number"]
    assert not [s for s in find_spans("%Dùng 'date'-style") if s.kind in ("printf", "option")]


def test_compare_spans_fails_on_a_dropped_duplicated_or_altered_span():
    src = "cannot open '%s' with --force in {dir}"
    assert compare_spans(src, "'%s'을(를) {dir}에서 --force로 열 수 없습니다") is None    # moved: fine
    assert "lost" in compare_spans(src, "'%s'을(를) 열 수 없습니다 --force")             # {dir} dropped
    assert "added" in compare_spans(src, "'%s' '%s' {dir} --force")                    # duplicated
    assert compare_spans(src, "'%s' {꺧멦} --force") is not None                         # altered
    assert compare_spans("%s", "%똻") is not None


def test_printf_compares_arguments_not_order_or_precision():
    assert compare_spans("%d in %s: ", "%2$s 안에 %1$d: ") is None
    assert compare_spans("conffile '%s' is bad", "'%.250s' 설정 파일") is None
    assert compare_spans("%d files in %s", "%s에 %d개 파일") is not None                # types swapped


def test_gnu_quotes_are_style_and_dates_are_localized():
    assert compare_spans("unknown `%s' option", "알 수 없는 '%s' 옵션") is None
    assert compare_spans("unknown `%s' option", "tùy chọn “%s” không rõ") is None
    assert compare_spans("e.g., 12/31/99", "v.d. 22/10/07") is None
    assert compare_spans("Saturday, September 29, 2018", "Thứ Bảy, 29/09/2018") is None


def test_translate_stage_rejects_a_mangled_placeholder():
    from polycap.schemas import Reason
    from polycap.transforms.backends.base import GenResult
    from polycap.transforms.translate import TextUnit, judge, plan_chunks

    chunk = plan_chunks(TextUnit("k", "Hello {name}, you have %d new messages"), "ko", 2000)[0]
    assert "{name}" not in chunk.sent and "%d" not in chunk.sent
    ok = chunk.sent.replace("Hello", "안녕").replace("you have", "").replace("new messages", "개의 새 메시지")
    text, reason, _ = judge(chunk, GenResult(key="k", text=ok))
    assert reason is None and "{name}" in text and "%d" in text
    bad = ok.replace("[[P0]]", "{꺧멦}")
    assert judge(chunk, GenResult(key="k", text=bad))[1] == Reason.GATE_SPANS_CHANGED


def test_backquoted_placeholder_is_a_quote_and_code_stays_code():
    # glibc and wget quote a placeholder as `%s`; translators write “%s”: the placeholder is what counts
    assert compare_spans("monitored file `%s` was %s", "tập tin đã theo dõi “%s” bị %s") is None
    assert compare_spans("monitored file `%s` was %s", "tập tin đã theo dõi bị %s") is not None
    assert compare_spans("run `pip install x` now", "chạy “pip install x” ngay") is not None   # real code


def test_heading_dashes_are_not_options_and_lowercase_long_options_are():
    assert compare_spans("--Long Link--", "--긴 링크--") is None
    assert compare_spans("--Continued at byte %s--", "--Tiếp tục tại byte %s--") is None
    assert compare_spans("use --force to override", "dùng để ghi đè") is not None


def test_printf_i_and_d_are_the_same_conversion():
    assert compare_spans("must be between 8 and %i", "phải nằm giữa 8 và %d") is None
    assert compare_spans("must be between 8 and %i", "phải nằm giữa 8 và %s") is not None


def test_slash_after_a_closing_bracket_is_a_list_not_a_path():
    assert compare_spans("Err?=(none)/Reinst-required", "Lỗi?=(không)/Cần cài lại") is None
    assert compare_spans("see /etc/passwd", "xem") is not None


def test_span_scan_guard_changes_no_match():
    """SPAN_RE's guard (skip non-ASCII non-digits and letters after ASCII letters) finds exactly what the
    bare alternation finds, on random strings mixing every pattern's characters, other scripts' digits
    and arbitrary code points."""
    import random
    import re

    from polycap.transforms.protect import SPAN_RE, SPANS_ALTERNATION

    bare = re.compile(SPANS_ALTERNATION, re.DOTALL)
    rng = random.Random(11)
    alphabet = "aAbZhEH:/.-%s{}$`'~<>[]()0123456789 \n\t,@_가나tpfw+=*#é۷߉\\"
    for _ in range(20000):
        text = "".join(rng.choice(alphabet) if rng.random() < 0.9 else chr(rng.randint(0, 0x3000))
                       for _ in range(rng.randint(1, 40)))
        want = [(m.lastgroup, m.span()) for m in bare.finditer(text)]
        assert [(m.lastgroup, m.span()) for m in SPAN_RE.finditer(text)] == want, text
    assert [m.lastgroup for m in SPAN_RE.finditer("see https://x.org, run --force in /usr/lib %s ۷")] == [
        "url", "option", "path", "printf", "number"]


def test_a_url_brought_up_to_https_or_without_www_is_the_same_address():
    assert compare_spans("See <http://www.gnu.org/gethelp/>", "Xem <https://www.gnu.org/gethelp/>") is None
    assert compare_spans("See <http://www.gnu.org/licenses/gpl.html>", "Xem <http://gnu.org/licenses/gpl.html>") is None
    assert compare_spans("See http://a.org/x", "Xem http://b.org/x") is not None       # another address


def test_a_word_between_dash_runs_is_a_table_heading_not_an_option():
    assert [s.text for s in find_spans("procs ---swap-- -system-- --help -x")] == ["--help", "-x"]
