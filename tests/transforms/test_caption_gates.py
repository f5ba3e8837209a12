"""Caption quality gates on real-looking text: GPT-4 dense descriptions pass; refusals, loops, Korean and
quoted text the OCR never saw are caught with the right reason."""
from __future__ import annotations

import json

import pytest

from polycap.schemas import OcrLine, OcrResult, Reason
from polycap.transforms.caption_gates import (
    GateConfig,
    check_language,
    check_quoted_text,
    check_refusal,
    check_repetition,
    quoted_spans,
    run_gates,
    ungrounded_quotes,
)

LOOSE = GateConfig(min_chars=200, max_chars=2000)


@pytest.fixture(scope="module")
def gpt4_details(eval_dir) -> list[str]:
    """LLaVA-Bench 'detail' answers written by GPT-4: real dense image descriptions (207-725 chars)."""
    text = eval_dir / "text" / "llava"
    questions = [json.loads(line) for line in (text / "qa90_questions.jsonl").read_text().splitlines()]
    cats = {q["question_id"]: q["category"] for q in questions}
    rows = [json.loads(line) for line in (text / "qa90_gpt4_answer.jsonl").read_text().splitlines()]
    return [r["text"] for r in rows if cats[r["question_id"]] == "detail"]


@pytest.fixture(scope="module")
def ocr_gt(eval_dir) -> dict[str, str]:
    rows = [json.loads(line) for line in (eval_dir / "ocr" / "gt.jsonl").read_text().splitlines()]
    return {r["path"]: r["text"] for r in rows}


def ocr_of(text: str, status: str = "ok") -> OcrResult:
    lines = [OcrLine(text=t, box=[0, 0, 10, 10], quad=[0, 0, 10, 0, 10, 10, 0, 10], score=0.9)
             for t in text.splitlines() if t.strip()]
    return OcrResult(engine="test", status=status, lines=lines)


def test_real_dense_descriptions_pass_every_gate(gpt4_details):
    assert len(gpt4_details) == 30
    failures = [(t[:60], run_gates(t, "stop", None, LOOSE)) for t in gpt4_details]
    assert [f for f in failures if f[1] is not None] == []


REFUSALS = [
    "I'm sorry, but I can't help with identifying or making assumptions about people in images.",
    "As an AI language model, I am unable to view images directly, but I can help if you describe it.",
    "Unfortunately, I cannot provide a detailed description of this image because it appears to be blank.",
    "I apologize, but the image you uploaded did not come through. Could you try attaching it again?",
    "Sorry, I can't see the image. Please upload it once more and I will describe it in detail.",
    ("The photo shows a crowded street at dusk with several cars. I'm sorry, but I cannot assist with "
     "identifying the individuals who appear in it."),
]


@pytest.mark.parametrize("text", REFUSALS)
def test_refusals_are_caught(text):
    assert check_refusal(text) is Reason.GATE_REFUSAL
    # a refusal is short too, but the refusal is the more useful reason to report
    assert run_gates(text, "stop", None, GateConfig())[0] is Reason.GATE_REFUSAL


def test_quoted_apology_on_a_sign_is_not_a_refusal(gpt4_details):
    text = gpt4_details[0] + ' A handwritten note taped to the door reads "Sorry, we are closed today".'
    assert check_refusal(text) is None


def test_loops_are_caught(gpt4_details):
    start = gpt4_details[1]
    loop = start + " The man is wearing a black hat and a blue jacket." * 12
    assert check_repetition(loop) is Reason.GATE_REPETITION
    reason, detail = run_gates(loop, "length", None, LOOSE)
    assert reason is Reason.GATE_REPETITION and ("compression" in detail or "grams" in detail)
    # a loop that never repeats a whole sentence but cycles a phrase, as small VLMs do
    cycle = start + " " + " ".join(["with a red and white striped umbrella and a"] * 8)
    assert check_repetition(cycle) is Reason.GATE_REPETITION
    # unspaced scripts: only the compression ratio can see a loop there
    assert check_repetition("사진에는 고양이가 있다" + "고양이가있다" * 40) is Reason.GATE_REPETITION


def test_normal_phrase_reuse_is_not_a_loop(gpt4_details):
    text = gpt4_details[4] + " On the left side of the table there is a cup, and on the left side of the " \
        "shelf there is a small clock."
    assert check_repetition(text) is None


def test_korean_text_when_english_expected(eval_dir):
    ko = " ".join((eval_dir / "text" / "ntrex128" / "newstest2019-ref.kor.txt").read_text().splitlines()[:6])
    vi = " ".join((eval_dir / "text" / "ntrex128" / "newstest2019-ref.vie.txt").read_text().splitlines()[:6])
    assert check_language(ko, "en") is Reason.GATE_WRONG_LANGUAGE
    assert check_language(vi, "en") is Reason.GATE_WRONG_LANGUAGE
    assert check_language(ko, "ko") is None
    reason, detail = run_gates(ko, "stop", None, LOOSE)
    assert reason is Reason.GATE_WRONG_LANGUAGE and "detected ko" in detail
    # the same text every time: langdetect is seeded
    assert {run_gates(ko, "stop", None, LOOSE)[1] for _ in range(3)} == {detail}


def test_english_caption_quoting_korean_sign_is_english(gpt4_details, ocr_gt):
    sign = ocr_of(ocr_gt["easyocr_examples/korean.png"])
    text = gpt4_details[2] + ' A green road sign shows "서울" above "Seoul" with "56Km", and "평양" with "205Km".'
    assert check_language(text, "en") is None
    assert check_quoted_text(text, sign) is None
    assert run_gates(text, "stop", sign, LOOSE) is None


def test_quoted_text_not_in_ocr(gpt4_details, ocr_gt):
    poster = ocr_of(ocr_gt["easyocr_examples/english.png"])
    seen = gpt4_details[3] + ' The poster is headed "Reduce your risk of coronavirus infection".'
    invented = gpt4_details[3] + ' The poster is headed "Stay home, save lives" in bold red letters.'
    assert check_quoted_text(seen, poster) is None
    assert check_quoted_text(invented, poster) is Reason.GATE_UNGROUNDED_TEXT
    assert ungrounded_quotes(invented, poster) == ["Stay home, save lives"]
    reason, detail = run_gates(invented, "stop", poster, LOOSE)
    assert reason is Reason.GATE_UNGROUNDED_TEXT and "Stay home" in detail
    # the flag turns the gate off; without OCR (or with failed OCR) there is nothing to check against
    assert run_gates(invented, "stop", poster, GateConfig(min_chars=200, check_quoted_text=False)) is None
    assert check_quoted_text(invented, None) is None
    assert check_quoted_text(invented, ocr_of("", status="failed")) is None
    # OCR ran and found nothing: any quoted text is ungrounded
    assert check_quoted_text(seen, ocr_of("", status="empty")) is Reason.GATE_UNGROUNDED_TEXT


def test_quoted_text_tolerates_ocr_misreads(ocr_gt):
    ocr = ocr_of("Tne quick brovvn dog jumped over the\nlazy fox.")
    assert ungrounded_quotes('The page repeats "The quick brown dog jumped over the lazy fox".', ocr) == []
    assert ocr_gt["img2dataset_motel.png"] == "MOTEL"
    assert ungrounded_quotes("A neon sign reads 'Motel' and another 'Vacancy'.", ocr_of("MOTEL")) == ["Vacancy"]


def test_quote_extraction_ignores_apostrophes():
    text = "The dogs' owner isn't here; a sign says 'No dogs' and a label reads \u201cFresh milk\u201d."
    assert quoted_spans(text) == ["No dogs", "Fresh milk"]


def test_length_truncation_and_skips(gpt4_details):
    text = gpt4_details[0]
    assert run_gates(text, "stop", None, GateConfig(min_chars=1000))[0] is Reason.GATE_TOO_SHORT
    assert run_gates(text, "stop", None, GateConfig(min_chars=10, max_chars=100))[0] is Reason.GATE_TOO_LONG
    assert run_gates(text, "length", None, LOOSE)[0] is Reason.GATE_TRUNCATED
    assert run_gates(text, "length", None, GateConfig(min_chars=200, skip=("truncated",))) is None


def test_gate_config_names_unknown_gate():
    from polycap.schemas.config import CaptionConfig, ConfigError

    with pytest.raises(ConfigError, match=r"skip_gates\[0\]: 'langauge' is not one of refusal"):
        CaptionConfig(skip_gates=["langauge"])
