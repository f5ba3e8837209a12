"""`polycap run` with `translate.enabled`: shards gain <lang>.txt and per-language conversations."""
from __future__ import annotations

import shutil

from polycap.pipelines.run import run
from polycap.schemas.config import load_config
from polycap.sharding.reader import iter_samples
from tests.fakes.fake_translator import FAKE  # deterministic test double, not a model


def test_run_adds_translations_and_conversations(tmp_path, eval_dir):
    src = tmp_path / "src"
    src.mkdir()
    photos = {"chelsea.png": "A tabby cat looking to the side.", "coffee.png": "A cup of coffee on a saucer.",
              "rocket.jpg": "A rocket on the launch pad."}
    for name, caption in photos.items():
        shutil.copyfile(eval_dir / "photos" / "skimage" / name, src / name)
        (src / name).with_suffix(".txt").write_text(caption)
    out = tmp_path / "out"
    cfg = load_config(data={"sources": [{"kind": "dir", "path": str(src)}], "output": str(out),
                            "translate": {"enabled": True, "backend": FAKE, "model": "fake", "to": ["ko", "vi"]}})
    stats = run(cfg)
    assert stats["balanced"] and stats["kept"] == 3
    assert stats["kept_by_language"] == {"en": 3, "ko": 3, "vi": 3}
    for s in iter_samples(str(out)):
        assert set(s.texts) == {"en", "ko", "vi"}
        assert s.texts["ko"] != s.texts["en"]
        for lang in ("ko", "vi"):
            cap = s.json["captions"][lang]
            assert cap["kind"] == "translation" and cap["translated_from"] == "en" and cap["prompt_sha256"]
            turns = s.json["conversations"][lang]
            assert [t["from"] for t in turns] == ["human", "gpt"]
            assert turns[0]["value"].startswith("<image>") and turns[0]["value"].count("<image>") == 1
            assert turns[1]["value"] == s.texts[lang]
