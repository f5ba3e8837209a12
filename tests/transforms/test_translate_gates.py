import math

import pytest

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


def test_korean_given_as_vietnamese_is_wrong_language_even_decomposed():
    import unicodedata

    ko = "파일을 열 수 없습니다"
    assert g.first_failure("Cannot open file", ko, "vi")[0] == Reason.GATE_WRONG_LANGUAGE
    assert g.first_failure("Cannot open file", unicodedata.normalize("NFD", ko), "vi")[0] \
        == Reason.GATE_WRONG_LANGUAGE
    assert g.first_failure("Cannot open file", "Không thể mở tập tin", "ko")[0] == Reason.GATE_WRONG_LANGUAGE
    assert g.first_failure("Cannot open file", unicodedata.normalize("NFD", ko), "ko") is None


def test_short_ui_strings_pass():
    assert g.first_failure("horizontal", "ngang", "vi") is None               # one word, no diacritic
    assert g.first_failure("#%ld\tin ", "#%ld\ttrong ", "vi") is None
    assert g.first_failure("fdatasync failed for %s", "%s에 fdatasync 실패", "ko") is None   # copied command
    assert g.first_failure("CPU time limit exceeded.", "CPU 시간 제한 초과", "ko") is None    # noun-final
    assert g.first_failure("Adding '%s'...", "'%s' 추가하는 중", "ko") is None
    assert g.first_failure("Report bugs to bug-tar@gnu.org.", "bug-tar@gnu.org로 버그를 알려주십시오.", "ko") is None
    assert g.first_failure("unknown `%s' option", "알 수 없는 '%s' 옵션", "ko") is None
    assert g.first_failure("Note: %s", "Ghi chú: %s", "vi") is None
    assert g.first_failure("the whole file", "toàn bộ tập tin", "vi") is None  # "toàn" is not English "to"
    assert g.first_failure("James Youngman", "James Youngman", "ko") is None   # a name is kept


def test_untranslated_short_string_is_caught():
    assert g.first_failure("Go To Line", "Go To Line", "ko")[0] == Reason.GATE_ENGLISH_LEFT    # not a name
    assert g.first_failure("preserving permissions for %s", "preserving permissions for %s", "vi")[0] \
        == Reason.GATE_ENGLISH_LEFT


def test_dropped_placeholder_or_option_fails_spans():
    assert g.first_failure("cannot stat %s", "stat 실행 불가", "ko")[0] == Reason.GATE_SPANS_CHANGED
    assert g.first_failure("use --force to override", "dùng để ghi đè", "vi")[0] == Reason.GATE_SPANS_CHANGED


def test_duplication_without_punctuation_is_caught():
    assert g.first_failure("Write Selection to File", "Lưu vùng chọn vào tập tin Lưu vùng chọn vào tập tin",
                           "vi")[0] == Reason.GATE_REPETITION
    assert g.first_failure("Cancel", "취소\n취소", "ko")[0] == Reason.GATE_REPETITION
    assert g.first_failure("-f progfile\t\t--file=progfile", "-f <프로그램-파일>\t\t--file=<프로그램-파일>",
                           "ko") is None                                       # the source repeats itself too


def test_preamble_does_not_depend_on_the_source_first_word():
    src = "No such file or directory"
    ref = "Không có tập tin hoặc thư mục như vậy"
    assert g.first_failure(src, ref, "vi") is None
    for pre in ("Sure, here is the translation:\n", "Vâng, ", "Đây là bản dịch:\n", "Vietnamese: "):
        assert g.first_failure(src, pre + ref, "vi")[0] == Reason.GATE_PREAMBLE, pre
    assert g.first_failure("No, thanks.", "네, 번역하면 아니요, 괜찮습니다.", "ko")[0] == Reason.GATE_PREAMBLE
    assert g.first_failure("Yes, it is.", "네, 그렇습니다.", "ko") is None


def test_truncation_signals():
    assert g.first_failure("Refresh (redraw) the current screen", "Làm mới (vẽ lại", "vi")[0] \
        == Reason.GATE_TRUNCATED                                               # unclosed bracket
    assert g.first_failure("could not create child process", "không thể tạo tiến trình con nh", "vi")[0] \
        == Reason.GATE_TRUNCATED                                               # word cut before its vowel
    assert g.first_failure("Select the file to open", "열 파일을", "ko")[0] == Reason.GATE_TRUNCATED
    long_src = "The following packages have been kept back because their dependencies have changed."
    assert g.first_failure(long_src, "다음 패키지는 의존성이 바뀌었기 때문에 보류", "ko")[0] == Reason.GATE_TRUNCATED
    assert g.first_failure(long_src * 3, "다음 패키지는 보류되었습니다.", "ko")[0] == Reason.GATE_LENGTH_RATIO


def test_untranslated_labels_metavariables_and_hyphenated_words_are_caught():
    # title-case labels of common words are not names; all-caps English words are localized metavariables
    for src in ("Mark Unset", "Prev Line", "Usage: %s NAME [SUFFIX]", "PATH is not set", "no pre-opened fd %d",
                "run-level", "Copyright (C) 2007 Trent Waddington"):
        assert g.first_failure(src, src, "vi")[0] == Reason.GATE_ENGLISH_LEFT, src


def test_copied_names_identifiers_keys_and_short_answers_pass():
    # names (both parts may be English words: "Randy Smith"), identifiers missing from the English vocabulary,
    # key names printed on keyboards, a lone short word or column header: kept by human translators too
    for src in ("Bruno Haible", "Randy Smith", "H. Peter Anvin", "stdin", "fdopen", "waitpid", "Kerberos.",
                "InstVer", "nsNET", "Home", "Backspace", "Yes", "us", "COMMAND", "euid: %u", "%s (kbytes) ="):
        assert g.first_failure(src, src, "ko") is None, src


def test_english_lexicon_ships_with_the_package():
    words, names = g.english_lexicon()
    assert len(words) > 50_000 and {"mark", "line", "preserving"} <= words and "stdin" not in words
    assert {"James", "Randy"} <= names and "Meyering" not in names


def test_truncation_by_structure():
    # a copied word cut off; its plural given in the singular or a compound's head is no cut
    assert g.first_failure("invalid RejectMessage", "부적절한 Re", "ko")[0] == Reason.GATE_TRUNCATED
    assert g.first_failure("Kerberos", "Kerb", "vi")[0] == Reason.GATE_TRUNCATED
    assert g.first_failure("free Inodes", "Inode trống", "vi") is None
    assert g.first_failure("file is unchanged; not dumped", "tập tin chưa thay đổi; không được dump", "vi") is None
    assert g.first_failure("-m, --slabs  slabinfo", "-m, --slabs  thông tin slab", "vi") is None
    # a Korean particle after a copied word or placeholder ends nothing
    assert g.first_failure("Follow dselect selections", "dselect에", "ko")[0] == Reason.GATE_TRUNCATED
    assert g.first_failure("Entry data of type %s", "타입 %s의", "ko")[0] == Reason.GATE_TRUNCATED
    # an opening quote or a comma where the source ends on a word; a colon is allowed
    assert g.first_failure("Refresh the current screen", "Làm mới màn hình hiện tại,", "vi")[0] \
        == Reason.GATE_TRUNCATED
    assert g.first_failure("Show the current screen", "Hiện màn hình “", "vi")[0] == Reason.GATE_TRUNCATED
    assert g.first_failure("Unable to invoke", "다음을 실행할 수 없습니다:", "ko") is None


def test_vietnamese_word_cut_mid_syllable():
    for cut in ("rấ", "đượ", "ngườ", "nghiê", "k"):
        assert not g.vi_syllable_ok(cut), cut
    for word in ("rất", "được", "người", "gì", "khuya", "quốc", "các", "tất"):
        assert g.vi_syllable_ok(word), word
    assert g.first_failure("Clean water is scarce", "Nước sạch rấ", "vi")[0] == Reason.GATE_TRUNCATED
    assert g.first_failure("Clean water is scarce", "Nước sạch rất khan hiếm", "vi") is None
    assert g.first_failure("I/O plugin error", "Lỗi trình cắm V/R", "vi") is None      # an abbreviation
    assert g.first_failure("The storm tears the old houses apart.", "Cơn bão xé nát những", "vi")[0] \
        == Reason.GATE_TRUNCATED
    # the same sentence complete but for its period: the omission model weighs the missing period with the rest
    assert g.first_failure("The storm tears the old houses apart.", "Cơn bão xé nát những ngôi nhà cũ", "vi") is None
    assert g.first_failure("CPU time limit exceeded.", "CPU 시간 제한 초과", "ko") is None


def test_word_end_counts_count_whole_words_clause_ends_and_longer_words_started():
    counts = g.word_end_counts(["파일을 열 수 없습니다.", "파일 %s", "파일"], "ko")
    assert counts["파일"] == [2, 1, 1]           # whole twice (before a span: no clause end), starts 파일을
    assert counts["파"] == [0, 0, 3] and counts["없습니다"] == [1, 1, 0]
    ends = g.word_ends()
    assert {"ko", "vi"} <= set(ends) and all(len(c) == 3 for c in ends["vi"].values())


def test_a_cut_is_an_omission_and_a_complete_translation_is_not():
    # the fitted omission model (omission.json.gz): a short output that lacks the translations of known
    # source words is a cut, whether it ends inside a word ("디렉터") or on a whole one ("Không thể tạo")
    cuts = [("Go To Directory", "디렉터", "ko"), ("cannot read object name", "오브젝트 이름", "ko"),
            ("Cannot make regular backup", "Không thể tạo", "vi"), ("Not found, no such name", "Không tìm thấy", "vi")]
    for src, out, lang in cuts:
        reason, detail = g.first_failure(src, out, lang)
        assert reason == Reason.GATE_TRUNCATED and detail.startswith("omission"), (src, detail)
    assert "backup" in g.first_failure("Cannot make regular backup", "Không thể tạo", "vi")[1]   # names what it lacks
    for src, out, lang in [("Go To Directory", "디렉터리로 이동", "ko"),
                           ("cannot read object name", "오브젝트 이름을 읽을 수 없습니다", "ko"),
                           ("Cannot make regular backup", "Không thể tạo bản sao lưu thường", "vi"),
                           ("Not found, no such name", "Không tìm thấy, không có tên như vậy", "vi"),
                           ("File exists -- cannot overwrite", "파일이 이미 있습니다 -- 덮어쓸 수 없습니다", "ko")]:
        assert g.first_failure(src, out, lang) is None, src


def test_a_terse_translation_that_carries_the_known_words_is_no_omission():
    # Korean UI labels are far shorter than their English ("Information request" -> "정보 요청", a length
    # ratio of 0.26, under the old fixed lower bound of 0.26 for this length): carrying the translation of
    # each known word, the label passes; the same length without them is a cut
    assert g.first_failure("Information request", "정보 요청", "ko") is None
    assert g.first_failure("Information request", "정보", "ko")[0] == Reason.GATE_TRUNCATED
    assert g.first_failure("Bad header data", "잘못된 헤더 데이터", "ko") is None


def test_omission_is_not_judged_for_abbreviations_or_non_english_sources():
    assert g.omission_score("cur", "현", "ko") is None             # under MIN_OMISSION_SOURCE characters
    assert g.omission_score("文件已存在，无法覆盖", "파일", "ko") is None
    assert g.omission_score("File exists", "파일", "ja") is None      # no model for the target
    assert g.first_failure("bo", "출", "ko") is None


def test_omission_features_follow_the_lexicon_with_a_fake_model():
    # a fake two-word lexicon (stemmed terms): "fil" is carried as 파일, "exist" lacks any of its translations
    lexicon, p = {"fil": ["파일"], "exist": ["있", "존재"]}, {"fil": 0.9, "exist": 0.8}
    length = ({"vocab": [], "coef": [1.0, 1.0], "intercept": 0.0}, {})
    x = dict(zip(g.OMISSION_FEATURES, g.omission_features("File exists", "파일", "ko", lexicon, p, [(0, 0.0)],
                                                          length, frozenset({"파일"}))))
    assert round(x["uncovered"], 3) == round(-math.log(1 - 0.8), 3)
    assert round(x["covered"], 3) == round(-math.log(0.1), 3)
    assert x["uncovered_share"] == 0.5 and x["all_covered"] == 0.0 and x["no_known_terms"] == 0.0
    assert round(x["ratio"], 3) == round(math.log(2 / 11), 3) and x["short_source"] == 1.0 and x["bias"] == 1.0
    assert x["unseen_ending"] == 0.0
    x = dict(zip(g.OMISSION_FEATURES, g.omission_features("File exists", "파일이 있습", "ko", lexicon, p, [(0, 0.0)],
                                                          length, frozenset({"파일"}))))
    assert x["uncovered"] == 0.0 and x["all_covered"] == 1.0 and x["unseen_ending"] == 1.0    # "있습" unseen


def test_long_sources_keep_the_fitted_lower_length_bound():
    src = "The quick brown fox jumps over the lazy dog near the river bank today."      # 64+ characters
    assert g.check_length_ratio(src, "여우.", "ko") == Reason.GATE_LENGTH_RATIO
    assert g.check_length_ratio(src, "여우", "ko") == Reason.GATE_TRUNCATED           # too short and left open
    assert g.check_length_ratio("Information request", "정보 요청", "ko") is None    # the omission model judges


def test_an_output_that_only_carries_what_it_copied_is_english_left():
    src = "-y, --no-first         skips first line of output"
    assert g.first_failure(src, "-y, --no-first", "ko")[0] == Reason.GATE_ENGLISH_LEFT
    assert g.first_failure("%s: parsed OK", "%s:", "vi")[0] == Reason.GATE_ENGLISH_LEFT
    assert g.first_failure(src, "-y, --no-first         출력의 첫 줄을 건너뜀", "ko") is None
    assert g.check_english_left("nsNET %s", "%s", "vi") is None             # nothing left to translate


def test_acronyms_and_words_glued_to_digits_are_not_untranslated_english():
    for src in ("Linux RAID", "W95 FAT32", "EFI (FAT-12/16/32)"):
        assert g.first_failure(src, src, "vi") is None, src
    assert g.first_failure("NO SPACE LEFT", "NO SPACE LEFT", "vi")[0] == Reason.GATE_ENGLISH_LEFT   # all capitals


def test_missing_period_after_a_placeholder_or_option_is_no_cut():
    assert g.first_failure("Using default response %c.", "Sử dụng câu trả lời mặc định %c", "vi") is None
    assert g.first_failure("Ignoring the unknown --debug flag.", "Bỏ qua cờ lạ --debug", "vi") is None
    # since 2026-12-01 a complete Korean or Vietnamese sentence without its period passes: translators of UI
    # catalogs drop it often, and the omission model weighs a missing period with the rest of the evidence
    assert g.first_failure("Debugging support was not compiled in.", "Hỗ trợ gỡ lỗi không được biên dịch", "vi") \
        is None
    assert g.first_failure("Debugging support was not compiled in.", "Hỗ trợ gỡ lỗi", "vi")[0] \
        == Reason.GATE_TRUNCATED


def test_compile_and_service_are_not_translation_talk():
    assert g.first_failure("Compiler: g++ %s", "Bộ biên dịch: g++ %s", "vi") is None
    assert g.first_failure("PAM service name to use: %s", "Tên dịch vụ PAM được dùng: %s", "vi") is None
    assert g.first_failure("Open the file", "Phần dịch:\nMở tập tin", "vi")[0] == Reason.GATE_PREAMBLE


def test_menu_hotkey_markers_are_no_letters():
    assert g.normalized("^Install", "Cà^i") == ("Install", "Cài")
    assert g.normalized("I^nformation", "Thông ti^n") == ("Information", "Thông tin")
    assert g.normalized("a ^ b", "x ^ y") == ("a ^ b", "x ^ y")             # no hotkey: left as it is
    assert g.first_failure("^Close", "Đón^g", "vi") is None                  # was read as "Đón" + "g"


def test_gtk_mnemonics_and_hotkeys_appended_in_brackets_are_no_letters():
    assert g.normalized("_Add", "Thê_m") == ("Add", "Thêm")
    assert g.normalized("&Skip", "건너뛰기(&S)") == ("Skip", "건너뛰기")
    assert g.normalized("Save _As", "다른 이름으로 저장(_A)") == ("Save As", "다른 이름으로 저장")
    assert g.normalized("A&bout...", "소개(&B)...") == ("About...", "소개...")
    # an identifier's underscore is no mnemonic; a bracketed letter that is not the source's key stays
    assert g.normalized("io_channel failed", "io_channel lỗi") == ("io_channel failed", "io_channel lỗi")
    assert g.normalized("&Skip", "건너뛰기(X)") == ("&Skip", "건너뛰기(X)")
    assert g.first_failure("&Find recursively", "반복적으로 찾기(&F)", "ko") is None      # was "(F)" added


def test_source_words_glossed_in_brackets_are_no_extra_length():
    assert g.first_failure("STRING", "문자열(STRING)", "ko") is None
    assert g.first_failure("Bruno Haible", "브루노 헤이블(Bruno Haible)", "ko") is None
    assert g.first_failure("STRING", "문자열(문자열 문자열 문자열)", "ko") is not None       # no copy of the source


def test_a_named_character_or_key_may_come_back_as_itself():
    for src, out in (("Colon", ":"), ("Dollar sign", "$"), ("Left brace", "("), ("Function key 12", "F12"),
                     ("Escape", "Esc")):
        assert g.first_failure(src, out, "ko") is None, (src, out)
        assert g.first_failure(src, out, "vi") is None, (src, out)
    assert g.first_failure("Function key 3", "F4", "ko") is not None        # another key
    assert g.first_failure("Colon", ": :", "ko") is not None                # not one character
    assert g.first_failure("Remove all files", ":", "ko") is not None       # names no character


def test_a_model_fitted_for_other_features_is_refused(monkeypatch):
    model = dict(g.omission_model()["ko"], features=["uncovered", "bias"])
    monkeypatch.setattr(g, "omission_model", lambda: {"ko": model})
    with pytest.raises(RuntimeError, match="refit"):
        g.omission_score("Remove the file", "파일", "ko")


def test_an_added_emoticon_or_decoration_ends_nothing():
    assert g.first_failure("You lose!", "Bạn thua. :(", "vi") is None
    src = "*** WARNING ***   Ignoring these trust violations because it is 'true'!"
    assert g.first_failure(src, "••• CẢNH BÁO   Đang bỏ qua những vi phạm sự tin cậy vì nó là 'true' (đúng) •••",
                           "vi") is None
    assert g.first_failure("You lose!", "Bạn thua (", "vi")[0] == Reason.GATE_TRUNCATED


def test_a_closing_bracket_ends_a_usage_line():
    assert g.check_truncated("%s [options] file...", "%s [TUỲ_CHỌN] [TẬP_TIN…]", target="vi") is None


def test_a_copied_word_without_its_plural_ending_is_no_cut_word():
    assert g.check_truncated("x   processes without controlling ttys", "x   tiến trình không điều khiển các tty",
                             target="vi") is None
    assert g.check_truncated("x   processes without controlling terminals", "x   tiến trình không điều khiển các tty",
                             target="vi") == Reason.GATE_TRUNCATED


def test_gi_before_a_consonant_is_a_syllable():
    for word in ("gìn", "gíc", "gịt"):
        assert g.vi_syllable_ok(word), word
    assert g.check_truncated("container for logical partitions", "cái chứa các phân vùng lô-gíc", target="vi") is None


def test_a_single_quote_may_close_a_curly_one():
    assert g.check_truncated("Did you mean '%s'?", "Có phải ý bạn là “%s'?", target="vi") is None
    assert g.check_truncated("Did you mean '%s'?", "Có phải ý bạn là “%s", target="vi") == Reason.GATE_TRUNCATED


def test_a_file_name_is_no_english_to_translate():
    assert g.first_failure("help.txt", "help.txt", "vi") is None
    assert g.first_failure("Read help.txt", "Read help.txt", "vi")[0] == Reason.GATE_ENGLISH_LEFT     # "Read" is


def test_a_spaced_out_korean_heading_is_one_word():
    assert g.normalized("Address", "주  소") == ("Address", "주소")
    assert g.normalized("Address", "주  소 주  소")[1] == "주  소 주  소"     # a doubled heading stays doubled
    assert g.first_failure("Address", "주  소 주  소", "ko")[0] == Reason.GATE_REPETITION
