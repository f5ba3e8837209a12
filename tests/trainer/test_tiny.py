"""The tiny InternVL checkpoint builds offline, reloads with transformers, and generates for an image."""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from polycap.trainer.tiny import IMG_CONTEXT, TILE, TOKENS_PER_TILE, build_tiny_internvl


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> str:
    return build_tiny_internvl(str(tmp_path_factory.mktemp("tiny")), seed=0)


def _weights_sha(d: str) -> str:
    return hashlib.sha256(Path(d, "model.safetensors").read_bytes()).hexdigest()


def test_layout_is_standard_internvl_hf(tiny_dir):
    import json

    for name in ("config.json", "model.safetensors", "processor_config.json", "tokenizer.json",
                 "tokenizer_config.json", "chat_template.jinja", "generation_config.json"):
        assert os.path.exists(os.path.join(tiny_dir, name)), name
    cfg = json.loads(Path(tiny_dir, "config.json").read_text())
    assert cfg["model_type"] == "internvl" and cfg["text_config"]["model_type"] == "qwen2"
    assert cfg["downsample_ratio"] == 0.5 and cfg["image_seq_length"] == TOKENS_PER_TILE
    for name in ("processor_config.json", "tokenizer_config.json"):   # portable: no polycap class named
        assert json.loads(Path(tiny_dir, name).read_text())["processor_class"] == "InternVLProcessor"


def test_same_seed_same_weights_other_seed_differs(tiny_dir, tmp_path):
    again = build_tiny_internvl(str(tmp_path / "a"), seed=0)
    other = build_tiny_internvl(str(tmp_path / "b"), seed=1)
    assert _weights_sha(again) == _weights_sha(tiny_dir)
    assert _weights_sha(other) != _weights_sha(tiny_dir)


def test_tokenizer_keeps_special_tokens_whole(tiny_dir):
    from polycap.sharding.checkpoint import load_processor

    tok = load_processor(tiny_dir).tokenizer
    for t in ("<|im_start|>", "<|im_end|>", "<img>", "</img>", IMG_CONTEXT, "<ref>", "<box>"):
        assert tok.convert_ids_to_tokens(tok(f"a{t}b")["input_ids"]).count(t) == 1, t
    text = "Hai người đang đi dạo. 두 사람이 걷고 있다. Two people walk."
    assert tok.decode(tok(text)["input_ids"]) == text


def test_chat_template_with_image_and_generate(tiny_dir):
    from PIL import Image
    from transformers import AutoModelForImageTextToText

    from polycap.sharding.checkpoint import load_processor

    processor = load_processor(tiny_dir)
    model = AutoModelForImageTextToText.from_pretrained(tiny_dir).eval()
    image = Image.new("RGB", (800, 1300), (200, 30, 30))
    messages = [{"role": "user", "content": [{"type": "image", "image": image},
                                             {"type": "text", "text": "Describe the image."}]}]
    inputs = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                           return_dict=True, return_tensors="pt")
    # 800x1300 -> 2x3 grid of tiles + thumbnail (InternVL 1.5), 16 tokens per tile
    assert inputs["pixel_values"].shape == (7, 3, TILE, TILE)
    ids = inputs["input_ids"][0].tolist()
    assert ids.count(model.config.image_token_id) == 7 * TOKENS_PER_TILE
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=6, do_sample=False)
    assert out.shape[1] > inputs["input_ids"].shape[1]
    assert isinstance(processor.decode(out[0, inputs["input_ids"].shape[1]:]), str)
