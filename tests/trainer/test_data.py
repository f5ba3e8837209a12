"""Trainer data: chat encoding, label masking, truncation that never cuts image tokens, the resumable stream."""
from __future__ import annotations

import random
from collections import Counter

import pytest

from polycap.sharding.reader import ShardSample, iter_samples
from polycap.sharding.turns import available_langs, sample_turns
from polycap.trainer.data import (
    IGNORE,
    ExampleBuilder,
    NoExamplesError,
    ShardStream,
    batches,
    choose_lang,
    encode_turns,
    truncate,
)

pytest.importorskip("transformers")

TURNS = [{"from": "human", "value": "<image>\nWhat is in the picture?"},
         {"from": "gpt", "value": "A red square."},
         {"from": "human", "value": "And the color?"},
         {"from": "gpt", "value": "Red."}]


@pytest.fixture(scope="module")
def processor(tiny_model_dir):
    from polycap.sharding.checkpoint import load_processor

    return load_processor(tiny_model_dir)


def test_encoding_equals_processor_chat_template(processor):
    tok = processor.tokenizer
    enc = encode_turns(TURNS, tok, n_image_tokens=processor.image_seq_length)
    msgs = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is in the picture?"}]},
            {"role": "assistant", "content": [{"type": "text", "text": "A red square."}]},
            {"role": "user", "content": [{"type": "text", "text": "And the color?"}]},
            {"role": "assistant", "content": [{"type": "text", "text": "Red."}]}]
    text = processor.apply_chat_template(msgs, tokenize=False)
    text = text.replace(processor.image_token, "<img>" + processor.image_token * processor.image_seq_length + "</img>")
    assert enc.input_ids == tok(text, add_special_tokens=False)["input_ids"]


def test_only_assistant_tokens_carry_loss(processor):
    tok = processor.tokenizer
    enc = encode_turns(TURNS, tok, n_image_tokens=16)
    supervised = [t for t, lab in zip(enc.input_ids, enc.labels) if lab != IGNORE]
    assert [lab for lab in enc.labels if lab != IGNORE] == supervised
    assert tok.decode(supervised) == "A red square.<|im_end|>Red.<|im_end|>"
    assert all(lab == IGNORE for lab in enc.labels[enc.image_start:enc.image_end])
    span = enc.input_ids[enc.image_start:enc.image_end]
    assert span == [tok.start_image_token_id] + [tok.context_image_token_id] * 16 + [tok.end_image_token_id]


def test_truncation_cuts_text_never_image_tokens(processor):
    tok = processor.tokenizer
    long_answer = [TURNS[0], {"from": "gpt", "value": "word " * 400}]
    enc = encode_turns(long_answer, tok, n_image_tokens=16)
    cut = truncate(enc, 64)
    assert cut is not None and len(cut.input_ids) == 64
    assert cut.input_ids[cut.image_start:cut.image_end] == enc.input_ids[enc.image_start:enc.image_end]
    assert any(lab != IGNORE for lab in cut.labels)
    assert truncate(enc, enc.image_end - 1) is None           # would cut the image span: dropped, not cut
    long_prompt = [{"from": "human", "value": "<image>\n" + "why " * 200}, {"from": "gpt", "value": "ok"}]
    assert truncate(encode_turns(long_prompt, tok, 16), 100) is None   # nothing supervised left


def test_builder_uses_fewer_tiles_before_dropping_a_long_sample(processor, tmp_path):
    from tests.trainer.conftest import make_samples, write_shards

    write_shards(str(tmp_path), make_samples(1, sizes=((900, 300),)), per_shard=1)
    sample = next(iter_samples(str(tmp_path)))
    args = {"tokenizer": processor.tokenizer, "stage": "pretrain", "tokens_per_tile": 16,
            "lang_weights": {"en": 1.0}, "tile": processor.image_processor.size["height"]}
    full = ExampleBuilder(max_len=512, max_tiles=6, **args).build(sample)
    assert full["pixel_values"].shape[0] == 3 + 1               # 3x1 grid + thumbnail
    short = ExampleBuilder(max_len=50, max_tiles=6, **args).build(sample)
    assert short["pixel_values"].shape[0] == 1                  # retried with 1 tile, image span intact
    n_ctx = int((short["input_ids"] == processor.tokenizer.context_image_token_id).sum())
    assert n_ctx == 16 and len(short["input_ids"]) <= 50
    tiny = ExampleBuilder(max_len=30, max_tiles=6, **args)
    assert tiny.build(sample) is None and tiny.skipped["too_long"] == 1


def _sample(captions: dict, convs: dict | None = None) -> ShardSample:
    return ShardSample(key="a" * 32, jpg=b"x", json={"captions": {k: {"text": v} for k, v in captions.items()},
                                                      "conversations": convs or {}})


def test_pretrain_caption_sft_conversation_and_documented_fallback():
    s = _sample({"en": "A cat.", "ko": "고양이."}, {"en": TURNS})
    assert available_langs(s, "pretrain") == ["en", "ko"]
    assert sample_turns(s, "pretrain", "ko")[1] == {"from": "gpt", "value": "고양이."}
    assert sample_turns(s, "pretrain", "ko")[0]["value"].startswith("<image>\n이 이미지")
    assert sample_turns(s, "sft", "en") == TURNS
    assert sample_turns(s, "sft", "ko")[1]["value"] == "고양이."    # caption-only language: describe turn
    assert sample_turns(s, "sft", "ko", caption_fallback=False) is None
    assert available_langs(s, "sft", caption_fallback=False) == ["en"]


def test_language_mix_follows_weights():
    rng = random.Random(0)
    picks = Counter(choose_lang(["en", "ko", "vi"], {"en": 0.5, "ko": 0.25, "vi": 0.25}, rng) for _ in range(4000))
    assert abs(picks["en"] / 4000 - 0.5) < 0.03 and abs(picks["ko"] / 4000 - 0.25) < 0.03
    assert choose_lang(["vi"], {"en": 1.0}, rng) is None
    assert choose_lang(["en", "vi"], {"en": 0.0, "vi": 1.0}, rng) == "vi"


def test_stream_resumes_exactly_and_reshuffles_each_epoch(shards32):
    a = ShardStream(shards32, seed=3, shuffle_buffer=5)
    it = iter(a)
    head = [next(it)[1].key for _ in range(13)]
    state = a.state_dict()
    rest = [next(it) for _ in range(40)]
    b = ShardStream(shards32, seed=3, shuffle_buffer=5)
    b.load_state_dict(state)
    itb = iter(b)
    assert [(e, s.key) for e, s in rest] == [(e, s.key) for e, s in (next(itb) for _ in range(40))]
    epoch0 = head + [s.key for e, s in rest if e == 0]
    epoch1 = [s.key for e, s in rest if e == 1]
    assert sorted(epoch0) == sorted(s.key for s in iter_samples(shards32)) and len(epoch0) == 32
    assert epoch1 != epoch0[:len(epoch1)]


@pytest.mark.parametrize("world", [2, 3, 5])
def test_ranks_see_disjoint_samples_that_cover_the_epoch(shards32, world):
    seen = []
    for rank in range(world):
        st = ShardStream(shards32, seed=0, shuffle_buffer=4, rank=rank, world=world)
        keys = []
        for e, s in st:
            if e > 0:
                break
            keys.append(s.key)
        seen.append(keys)
    flat = [k for keys in seen for k in keys]
    assert len(flat) == len(set(flat)) == 32


def test_an_epoch_without_any_example_stops_with_the_skip_counts(processor, tmp_path):
    """Shards whose samples have no text (images without captions) stop training with an error, not a loop."""
    from tests.trainer.conftest import make_samples, write_shards

    write_shards(str(tmp_path), make_samples(5, langs=(), conversations=False), per_shard=2)
    builder = ExampleBuilder(tokenizer=processor.tokenizer, stage="pretrain", tokens_per_tile=16,
                             lang_weights={"en": 1.0}, tile=processor.image_processor.size["height"],
                             max_len=512, max_tiles=6)
    with pytest.raises(NoExamplesError, match=r"all 5 samples were skipped \(no_text_in_weighted_langs: 5\)"):
        next(batches(ShardStream(str(tmp_path)), builder, batch_size=2, pad_id=0))


def test_an_epoch_with_some_examples_keeps_going(processor, tmp_path):
    from tests.trainer.conftest import make_samples, write_shards

    samples = make_samples(3, langs=(), conversations=False) + make_samples(1, start=50)
    write_shards(str(tmp_path), samples, per_shard=2)
    builder = ExampleBuilder(tokenizer=processor.tokenizer, stage="pretrain", tokens_per_tile=16,
                             lang_weights={"en": 1.0}, tile=processor.image_processor.size["height"],
                             max_len=512, max_tiles=6)
    it = batches(ShardStream(str(tmp_path)), builder, batch_size=2, pad_id=0)
    assert len(next(it)["keys"]) == 2 and len(next(it)["keys"]) == 2     # the one example, over epochs
    assert builder.skipped["no_text_in_weighted_langs"] >= 3
