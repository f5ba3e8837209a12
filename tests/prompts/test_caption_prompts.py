"""Caption prompts as data: every route renders to its golden file; ids, versions and placeholders hold."""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pytest

from polycap.schemas import OcrLine, OcrResult
from polycap.schemas.config import CaptionConfig
from polycap.transforms.caption import ADDON, ROUTES, load_caption_prompts, render_prompt
from tests.conftest import jpeg_bytes, make_sample

GOLDEN = Path(__file__).parent / "golden"
UPDATE = os.environ.get("POLYCAP_UPDATE_GOLDEN") == "1"   # rewrite goldens after a deliberate prompt change
# OCR lines of a real public-health poster (shared/eval/ocr/easyocr_examples/english.png, EasyOCR examples)
POSTER = ["Reduce your risk of coronavirus infection:", "Clean hands with soap and water",
          "or alcohol-based hand rub", "Cover nose and mouth when coughing and"]


def sample():
    lines = [OcrLine(text=t, box=[10, 100 * i, 900, 100 * i + 80], quad=[], score=0.95) for i, t in enumerate(POSTER)]
    s = make_sample(jpeg_bytes(), uri="mem://poster")
    return dataclasses.replace(s, ocr=OcrResult(engine="test", lines=lines, text_area_ratio=0.3))


CASES = [(route, False) for route in ROUTES] + [("general", True)]


@pytest.mark.parametrize("route,aesthetics", CASES)
def test_rendered_prompt_matches_golden(route, aesthetics):
    choice = render_prompt(sample(), route, load_caption_prompts(), CaptionConfig(aesthetics=aesthetics))
    path = GOLDEN / f"caption_{route}{'+aesthetics' if aesthetics else ''}.txt"
    if UPDATE:
        path.write_text(choice.text + "\n", encoding="utf-8")
    assert choice.text + "\n" == path.read_text(encoding="utf-8"), f"{path.name} differs: a released prompt " \
        "is never edited in place; add a new version and regenerate with POLYCAP_UPDATE_GOLDEN=1"


def test_prompt_files_are_complete_and_distinct():
    prompts = load_caption_prompts()
    assert set(prompts) >= {*ROUTES, ADDON}
    assert len({p.id for p in prompts.values()}) == len(prompts)
    assert len({p.sha256 for p in prompts.values()}) == len(prompts)
    for route in ROUTES:
        t = prompts[route].template
        assert prompts[route].meta["route"] == route
        assert "{language}" in t and "double quotes" in t and "700 to 1000 characters" in t
    for route in ("text_rich", "document_chart"):
        assert "{ocr_hints}" in prompts[route].template
    assert prompts[ADDON].meta.get("addon") is True


def test_ocr_hints_are_injected_only_where_asked():
    prompts, s = load_caption_prompts(), sample()
    assert all(line in render_prompt(s, "text_rich", prompts, CaptionConfig()).text for line in POSTER)
    assert POSTER[0] not in render_prompt(s, "general", prompts, CaptionConfig()).text
    bare = render_prompt(dataclasses.replace(s, ocr=None), "text_rich", prompts, CaptionConfig())
    assert "(no text was read)" in bare.text
    many = dataclasses.replace(s, ocr=dataclasses.replace(s.ocr, lines=s.ocr.lines * 20))
    capped = render_prompt(many, "document_chart", prompts, CaptionConfig(max_ocr_hints=5)).text
    assert capped.count(f"- {POSTER[0]}") == 2 and "(... 75 more lines)" in capped


def test_custom_prompt_dir_must_hold_every_route(tmp_path):
    from polycap.prompts import PromptError

    (tmp_path / "general.yaml").write_text("id: x\nversion: 1\ntemplate: Describe.\n")
    with pytest.raises(PromptError, match="no text_rich.yaml"):
        load_caption_prompts(str(tmp_path))
