"""`polycap run` with `ocr.enabled`: real PP-OCR weights on CPU, OCR lines and grid boxes land in the shard json."""
from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image, ImageDraw

from polycap.pipelines.demo import load_font
from polycap.pipelines.run import run
from polycap.schemas.config import load_config
from polycap.sharding.reader import iter_samples
from polycap.transforms.backends import ocr_models

CARDS = {"invoice.png": ["Invoice 2024-07", "Total due 318 EUR"], "notice.png": ["Polycap reads text"]}


def _cards(folder: Path) -> Path:
    """White 640x320 PNGs with the lines of CARDS drawn in black, 100 px apart."""
    folder.mkdir()
    for name, lines in CARDS.items():
        img = Image.new("RGB", (640, 320), "white")
        draw = ImageDraw.Draw(img)
        for i, text in enumerate(lines):
            draw.text((40, 40 + 100 * i), text, fill="black", font=load_font(40))
        img.save(folder / name)
    return folder


@pytest.mark.slow
def test_ocr_lines_appear_in_the_shard_json(tmp_path):
    models = ocr_models.prepare_models(tmp_path / "models")
    out = tmp_path / "out"
    cfg = load_config(data={"sources": [{"kind": "dir", "path": str(_cards(tmp_path / "cards")), "name": "t"}],
                            "output": str(out), "shards": {"split": "train", "max_samples": 5},
                            "ocr": {"enabled": True, "model_dir": str(models)}})
    stats = run(cfg)
    assert stats["balanced"] and stats["kept"] == 2
    samples = list(iter_samples(str(out)))
    assert len(samples) == 2
    read = {}
    for s in samples:
        o = s.json["ocr"]
        assert o["status"] == "ok" and o["engine"].startswith("paddleocr 3.") and o["lang"]
        for ln in o["lines"]:
            assert ln["text"] and 0 <= min(ln["box"]) and max(ln["box"]) < 1000
            assert len(ln["quad"]) == 8 and all(0 <= v < 1000 for v in ln["quad"])
            assert ln["box"][0] < ln["box"][2] and ln["box"][1] < ln["box"][3]
        read[s.json["source"]["uri"].rsplit("/", 1)[-1]] = [ln["text"] for ln in o["lines"]]
        assert s.json["provenance"]["ocr"]["params"]["det_max_side"] == 960
    assert read == CARDS
