"""OCR stage: grid normalization, reading order, language, Qwen-VL rendering, and routing in Beam."""
from __future__ import annotations

import numpy as np
import pytest

from polycap.schemas import OcrLine, Reject
from polycap.schemas.config import OcrConfig
from polycap.transforms import ocr
from polycap.transforms.backends import ocr_handler, ocr_models
from polycap.transforms.backends.ocr_handler import quad_to_original
from tests.conftest import jpeg_bytes, make_sample


def _line(text: str, box: list[int], score: float = 0.9) -> OcrLine:
    x1, y1, x2, y2 = box
    return OcrLine(text=text, box=box, quad=[x1, y1, x2, y1, x2, y2, x1, y2], score=score)


def test_grid_is_half_open_0_1000():
    assert ocr.to_grid(0, 640) == 0
    assert ocr.to_grid(640, 640) == 999          # the right edge stays inside [0, 1000)
    assert ocr.to_grid(320, 640) == 500
    assert ocr.to_grid(-3.2, 640) == 0
    quad = ocr.normalize_quad([10, 20, 630, 20, 630, 460, 10, 460], 640, 480)
    assert quad == [15, 41, 984, 41, 984, 958, 15, 958]
    assert ocr.quad_box([30, 10, 90, 14, 88, 40, 28, 36]) == [28, 10, 90, 40]


def test_reading_order_rows_then_left_to_right():
    lines = [_line("world", [520, 102, 900, 160]), _line("second", [50, 300, 400, 360]),
             _line("hello", [50, 100, 480, 158]), _line("third", [50, 500, 400, 560])]
    assert [ln.text for ln in ocr.reading_order(lines)] == ["hello", "world", "second", "third"]


def test_reading_order_on_a_page_turned_clockwise():
    # The page content is turned 90° clockwise: its first line is the right-most column of the stored image.
    lines = [_line("second", [600, 50, 680, 900]), _line("first", [800, 50, 880, 900])]
    assert [ln.text for ln in ocr.reading_order(lines, k=1)] == ["first", "second"]


# ---- column-aware reading order on synthetic pages (2550 x 3300 px: a US letter page at 300 dpi) --------

PAGE = (2550, 3300)


def _page(spec: list[tuple[str, tuple[int, int, int, int]]], size=PAGE, k: int = 0) -> list[OcrLine]:
    """Pixel boxes on the upright page -> OcrLines on the grid of the stored image (turned by `k`)."""
    w, h = size
    return [_line(text, ocr.rotate_grid_box([ocr.to_grid(x1, w), ocr.to_grid(y1, h), ocr.to_grid(x2, w),
                                             ocr.to_grid(y2, h)], -k % 4)) for text, (x1, y1, x2, y2) in spec]


def _column(prefix: str, x1: int, x2: int, y0: int, n: int, pitch: int = 48) -> list:
    """A justified column as a detector boxes it: 50 px lines touching each other, first line indented,
    last line short."""
    return [(f"{prefix}{i}", (x1 + (50 if i == 0 else 0), y0 + i * pitch,
                              x2 if i < n - 1 else x1 + (x2 - x1) // 3, y0 + i * pitch + 50)) for i in range(n)]


def _shuffled(lines: list[OcrLine]) -> list[OcrLine]:
    return [lines[i] for i in np.random.default_rng(0).permutation(len(lines))]


def _texts(spec) -> list[str]:
    return [t for t, _ in spec]


@pytest.mark.parametrize("left,right", [
    ((270, 1240), (1300, 2270)),   # a 60 px gutter
    ((170, 815), (832, 1478)),     # 17 px between the boxes (UNLV 8071_093: boxes almost touch)
])
def test_two_columns_are_read_column_by_column(left, right):
    title = [("Title", (800, 300, 1700, 380))]
    lcol, rcol = _column("L", *left, 600, 30), _column("R", *right, 600, 30)   # rows aligned across
    footer = [("54 Travel", (200, 3150, 1100, 3200))]
    spec = title + lcol + rcol + footer
    assert [ln.text for ln in ocr.reading_order(_shuffled(_page(spec)), 0, PAGE)] == _texts(spec)


def test_caption_across_the_gutter_is_read_after_the_columns():
    # UNLV 8087_054's layout: a photo between the columns, its caption straddling the gutter.
    lcol = _column("L", 270, 1240, 600, 10) + _column("Lw", 270, 1000, 1080, 12) + _column("Lb", 270, 1240, 1680, 8)
    rcol = _column("R", 1300, 2270, 600, 10) + _column("Rw", 1540, 2270, 1080, 12) + _column("Rb", 1300, 2270, 1680, 8)
    caption = [(f"C{i}", (1080 + 10 * (i % 3), 1250 + 40 * i, 1470 - 10 * (i % 2), 1285 + 40 * i)) for i in range(6)]
    spec = [("dateline", (1100, 380, 1440, 430))] + lcol + rcol + caption
    assert [ln.text for ln in ocr.reading_order(_shuffled(_page(spec)), 0, PAGE)] == _texts(spec)


def test_full_width_heading_separates_two_column_sections():
    top = _column("a", 270, 1240, 300, 8) + _column("b", 1300, 2270, 300, 8)
    heading = [("Heading across the page", (270, 760, 2270, 840))]
    bottom = _column("c", 270, 1240, 900, 8) + _column("d", 1300, 2270, 900, 8)
    spec = top + heading + bottom
    assert [ln.text for ln in ocr.reading_order(_shuffled(_page(spec)), 0, PAGE)] == _texts(spec)


def test_single_column_text_is_never_split_into_columns():
    # Short lines ("earlier.", a last line) and indents leave white space at the right, never a gutter.
    spec = (_column("p", 270, 2270, 300, 6) + [("earlier.", (270, 588, 420, 638))]
            + _column("q", 270, 2270, 636, 5) + [("2", (2200, 900, 2240, 950))])
    assert [ln.text for ln in ocr.reading_order(_shuffled(_page(spec)), 0, PAGE)] == _texts(spec)


def test_scene_text_is_read_in_rows():
    size = (640, 480)
    spec = [("EXIT", (40, 40, 180, 100)), ("PARKING", (420, 45, 600, 100)),
            ("Main Street", (120, 200, 520, 280)), ("300 m", (250, 320, 390, 360))]
    assert [ln.text for ln in ocr.reading_order(_shuffled(_page(spec, size)), 0, size)] == _texts(spec)


@pytest.mark.parametrize("k", [1, 2, 3])
def test_columns_of_a_turned_page_are_read_upright(k):
    spec = _column("L", 270, 1240, 600, 12) + _column("R", 1300, 2270, 600, 12)
    stored = PAGE[::-1] if k % 2 else PAGE
    assert [ln.text for ln in ocr.reading_order(_shuffled(_page(spec, k=k)), k, stored)] == _texts(spec)


@pytest.mark.parametrize("k", [0, 1, 2, 3])
def test_quad_to_original_maps_back_onto_the_stored_image(k):
    h, w = 30, 50
    img = np.zeros((h, w), np.uint8)
    img[7, 41] = 255                                 # marker at x=41, y=7
    rot = np.rot90(img, k)
    ry, rx = (int(v) for v in np.argwhere(rot == 255)[0])
    # map the marker's pixel square (its 4 corners) back; its centre must land on the marker
    x, y = rx, ry
    corners = quad_to_original([x, y, x + 1, y, x + 1, y + 1, x, y + 1], k, w, h)
    cx, cy = sum(corners[0::2]) / 4, sum(corners[1::2]) / 4
    assert (cx, cy) == (41.5, 7.5)


def test_rotate_grid_box_four_turns_is_identity():
    box = [100, 200, 300, 260]
    assert ocr.rotate_grid_box(box, 4) == box
    assert ocr.rotate_grid_box(box, 1) == [200, 700, 260, 900]


def test_text_area_ratio():
    assert ocr.text_area_ratio([[0, 0, 50, 0, 50, 20, 0, 20]], 100, 100) == 0.1
    assert ocr.text_area_ratio([[0, 0, 100, 0, 100, 100, 0, 100]] * 3, 100, 100) == 1.0
    assert ocr.text_area_ratio([], 0, 0) == 0.0


@pytest.mark.parametrize("texts,lang", [
    (["서울", "Seoul"], "ko"),
    (["ポイ捨て禁止", "港区"], "ja"),
    (["汉阳鹦鹉家居建材市场"], "zh"),
    (["Tiếng Việt có dấu rất đặc biệt"], "vi"),
    (["The quick brown dog jumped over the lazy fox."], "en"),
    (["Der schnelle braune Fuchs springt über den faulen Hund."], "de"),
    (["OK"], "latn"),
    (["12345 !!"], None),
])
def test_dominant_lang(texts, lang):
    assert ocr.dominant_lang(texts) == lang


def test_qwen_vl_text_form():
    lines = [_line("MOTEL", [120, 40, 880, 210]), _line("Vacancy", [300, 700, 700, 780])]
    assert ocr.ref_box("MOTEL", [120, 40, 880, 210]) == "<ref>MOTEL</ref><box>(120,40),(880,210)</box>"
    assert ocr.render_grounded(lines) == ("<ref>MOTEL</ref><box>(120,40),(880,210)</box>\n"
                                          "<ref>Vacancy</ref><box>(300,700),(700,780)</box>")


def _raw(lines, angle=0):
    return {"lines": lines, "width": 200, "height": 100, "angle": angle, "engine": "fake 0 (test)",
            "models": {"det": "d", "rec": "r"}, "error": None}


def test_to_ocr_result_filters_orders_and_measures():
    raw = _raw([("second line", [10, 60, 190, 60, 190, 90, 10, 90], 0.95),
                ("low score", [10, 30, 100, 30, 100, 50, 10, 50], 0.2),
                ("   ", [0, 0, 5, 0, 5, 5, 0, 5], 0.99),
                ("first line", [10, 5, 190, 5, 190, 25, 10, 25], 0.97)])
    res = ocr.to_ocr_result(raw, min_score=0.5)
    assert [ln.text for ln in res.lines] == ["first line", "second line"]
    assert res.lines[0].box == [50, 50, 950, 250] and len(res.lines[0].quad) == 8
    assert all(0 <= v < 1000 for ln in res.lines for v in ln.box + ln.quad)
    assert res.status == "ok" and res.engine == "fake 0 (test)" and res.lang == "en"
    assert res.text_area_ratio == round((180 * 20 + 180 * 30) / 20000, 4)
    assert ocr.to_ocr_result(_raw([("x", [0, 0, 1, 0, 1, 1, 0, 1], 0.1)]), 0.5).status == "empty"


# ---- Beam routing with a named fake engine (no model files needed) ------------------------------------

class FakeEngine:
    """Test double for a backend: reads a fixed line, or raises for images wider than 150 px."""
    name = "fake-ocr 0 (test)"

    def __init__(self, cfg, models):
        self.extra_models: dict[str, str] = {}

    def recognize(self, rgb):
        if rgb.shape[1] > 150:
            raise RuntimeError("engine exploded")
        return [("FAKE TEXT", [4, 4, 60, 4, 60, 20, 4, 20], 0.9)]


@pytest.fixture()
def fake_engine(monkeypatch):
    models = ocr_models.OcrModels("fake_det", "fake_rec", None, None, None)
    monkeypatch.setattr(ocr_handler, "check_ocr_models", lambda cfg: models)
    monkeypatch.setattr(ocr, "check_ocr_models", lambda cfg: models)
    monkeypatch.setattr(ocr_handler, "make_engine", lambda cfg, m: FakeEngine(cfg, m))


def _summary(x) -> tuple:
    if isinstance(x, Reject):
        return ("reject", x.source_uri, x.stage, str(x.reason), "whole batch lost" in x.detail)
    o = x.ocr
    first = (o.lines[0].text, tuple(o.lines[0].box)) if o.lines else None
    return ("sample", x.source.uri, o.status, first, x.provenance["ocr"].get("engine", ""),
            "engine exploded" in (o.error or "") or "whole batch lost" in (o.error or ""))


def _run(samples, cfg, expected_ok: list[tuple], expected_bad: list[tuple]) -> None:
    import apache_beam as beam
    from apache_beam.testing.test_pipeline import TestPipeline
    from apache_beam.testing.util import assert_that, equal_to

    with TestPipeline() as p:
        ok, bad = p | beam.Create(samples, reshuffle=False) | ocr.RunOcr(cfg)
        assert_that(ok | "SumOk" >> beam.Map(_summary), equal_to(expected_ok), label="CheckOk")
        assert_that(bad | "SumBad" >> beam.Map(_summary), equal_to(expected_bad), label="CheckBad")


GOOD = ("FAKE TEXT", (33, 50, 500, 250))


@pytest.mark.parametrize("on_failure", ["keep", "reject"])
def test_stage_routes_every_input(fake_engine, on_failure):
    good = make_sample(jpeg_bytes(120, 80), uri="mem://good")
    wide = make_sample(jpeg_bytes(300, 80, (1, 2, 3)), uri="mem://wide")      # engine raises
    broken = make_sample(b"not an image at all", uri="mem://broken")            # decode raises
    cfg = OcrConfig(enabled=True, on_failure=on_failure, batch_size=3)
    eng = "fake-ocr 0 (test)"
    if on_failure == "keep":   # every input kept, failures marked, nothing lost
        ok = [("sample", "mem://good", "ok", GOOD, eng, False),
              ("sample", "mem://wide", "failed", None, eng, True),
              ("sample", "mem://broken", "failed", None, eng, False)]
        _run([good, wide, broken], cfg, ok, [])
    else:
        _run([good, wide, broken], cfg, [("sample", "mem://good", "ok", GOOD, eng, False)],
             [("reject", "mem://wide", "ocr", "ocr_failed", False),
              ("reject", "mem://broken", "ocr", "ocr_failed", False)])


def test_failed_batch_goes_through_dead_letters(fake_engine, monkeypatch):
    def explode(self, batch, model, inference_args=None):
        raise MemoryError("whole batch lost")

    monkeypatch.setattr(ocr_handler.OcrModelHandler, "run_inference", explode)
    samples = [make_sample(jpeg_bytes(100, 60, (i, 0, 0)), uri=f"mem://{i}") for i in range(3)]
    _run(samples, OcrConfig(enabled=True, on_failure="reject", batch_size=2), [],
         [("reject", f"mem://{i}", "ocr", "ocr_failed", True) for i in range(3)])
    _run(samples, OcrConfig(enabled=True, on_failure="keep", batch_size=2),
         [("sample", f"mem://{i}", "failed", None, "paddleocr", True) for i in range(3)], [])


def _skewed_paragraph(angle_deg: float, n: int = 3, size=(800, 600)) -> list[OcrLine]:
    """`n` lines 600 px wide, 30 px tall, 40 px apart, turned by `angle_deg` about the page centre (a card
    photographed or scanned a few degrees off); quads as a detector gives them, on the grid."""
    w, h = size
    a = np.deg2rad(angle_deg)
    rot = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    out = []
    for i in range(n):
        y0 = 250 + 40 * i
        corners = np.array([[100, y0], [700, y0], [700, y0 + 30], [100, y0 + 30]], dtype=float)
        pts = (corners - (w / 2, h / 2)) @ rot.T + (w / 2, h / 2)
        quad = ocr.normalize_quad([float(v) for p in pts for v in p], w, h)
        out.append(OcrLine(text=f"line{i}", box=ocr.quad_box(quad), quad=quad, score=0.9))
    return out


@pytest.mark.parametrize("angle", [-6, -5, 5, 6])
def test_skewed_lines_are_read_line_by_line(angle):
    # en-rotated-007 in bench/results/ocr_ko_vi.json: at 2-6 degrees the axis-aligned boxes of consecutive
    # lines overlap by more than half a height, and lines 2 and 3 were read as one row, right part first
    lines = _skewed_paragraph(angle)
    b1, b2 = lines[1].box, lines[2].box
    assert min(b1[3], b2[3]) - max(b1[1], b2[1]) >= 0.5 * min(b1[3] - b1[1], b2[3] - b2[1])   # old rule's trap
    assert [ln.text for ln in ocr.reading_order(_shuffled(lines), 0, (800, 600))] == ["line0", "line1", "line2"]


def test_skewed_row_keeps_words_of_one_line_together():
    # two boxes on one skewed line (a word gap) stay one row, left part first, before the next line
    lines = _skewed_paragraph(5, n=2)
    a, b = lines[0], lines[1]
    qa = a.quad
    left = OcrLine("L", [], [qa[0], qa[1], (qa[0] + qa[2]) // 2, (qa[1] + qa[3]) // 2,
                                (qa[4] + qa[6]) // 2, (qa[5] + qa[7]) // 2, qa[6], qa[7]], 0.9)
    right = OcrLine("R", [], [(qa[0] + qa[2]) // 2, (qa[1] + qa[3]) // 2, qa[2], qa[3], qa[4], qa[5],
                                 (qa[4] + qa[6]) // 2, (qa[5] + qa[7]) // 2], 0.9)
    left = OcrLine("L", ocr.quad_box(left.quad), left.quad, 0.9)
    right = OcrLine("R", ocr.quad_box(right.quad), right.quad, 0.9)
    assert [ln.text for ln in ocr.reading_order([b, right, left], 0, (800, 600))] == ["L", "R", "line1"]
