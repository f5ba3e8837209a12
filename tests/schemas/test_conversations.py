"""One phrasing per language: the pipeline's SFT records, the exports and the trainer use the same turns."""
from __future__ import annotations

import pytest

from polycap.schemas import Caption, Hashes, ImageInfo, Sample, Source
from polycap.schemas.conversations import DESCRIBE, IMAGE_TOKEN, describe_turns
from polycap.sharding.reader import ShardSample
from polycap.sharding.turns import sample_turns
from polycap.transforms.build_records import build_records


def _shard_sample(lang: str, text: str) -> ShardSample:
    return ShardSample(key="k", json={"captions": {lang: {"text": text}}}, texts={lang: text})


@pytest.mark.parametrize("lang", sorted(DESCRIBE))
def test_pipeline_records_and_trainer_turns_use_the_same_instruction(lang):
    caption = f"caption in {lang}"
    sample = Sample(key="k", source=Source(name="s", uri="u", kind="dir"),
                    image=ImageInfo(bytes=b"", format="jpeg", width=8, height=8),
                    hashes=Hashes(sha256="0" * 64, phash="0" * 16),
                    captions={lang: Caption(text=caption, kind="dense")})
    pipeline_turns = build_records(sample).conversations[lang]
    trainer_turns = sample_turns(_shard_sample(lang, caption), "sft", lang)
    pretrain_turns = sample_turns(_shard_sample(lang, caption), "pretrain", lang)
    assert pipeline_turns == trainer_turns == pretrain_turns == describe_turns(caption, lang)
    assert pipeline_turns[0]["value"] == f"{IMAGE_TOKEN}\n{DESCRIBE[lang]}"


def test_language_without_instruction_pipeline_skips_trainer_falls_back_to_english():
    assert describe_turns("x", "xx") is None
    assert describe_turns("x", "xx", fallback="en")[0]["value"].endswith(DESCRIBE["en"])
