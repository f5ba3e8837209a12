"""Build a tiny InternVL (InternViT + pixel shuffle + MLP + Qwen2) checkpoint offline, for tests and demos."""
from __future__ import annotations

import json
import os

# Special tokens an InternVL-hf checkpoint carries (OpenGVLab/InternVL3-1B-hf tokenizer_config): ChatML turns,
# the image span `<img><IMG_CONTEXT>*n</img>`, and Qwen-VL grounding tags used by our OCR/box prompts.
IM_START, IM_END, EOT = "<|im_start|>", "<|im_end|>", "<|endoftext|>"
IMG_START, IMG_END, IMG_CONTEXT, VIDEO = "<img>", "</img>", "<IMG_CONTEXT>", "<video>"
GROUNDING = ["<ref>", "</ref>", "<box>", "</box>", "<quad>", "</quad>"]
SPECIAL_TOKENS = [EOT, IM_START, IM_END, IMG_START, IMG_END, IMG_CONTEXT, VIDEO, *GROUNDING]

# ChatML template in the InternVL-hf style: an image content part renders as `<IMG_CONTEXT>\n`, which the
# processor expands to `<img>` + image_seq_length * num_tiles context tokens + `</img>`.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' }}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' %}{{ '<IMG_CONTEXT>\n' }}"
    "{% elif content['type'] == 'text' %}{{ content['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "{{ '<|im_end|>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

# A small built-in corpus (English, Korean, Vietnamese) so the BPE learns real sub-words in all three scripts.
CORPUS = [
    "A red car is parked on a quiet street next to a green tree.",
    "Two people are walking along the beach at sunset, holding hands.",
    "The photo shows a cat sleeping on a wooden table near a window.",
    "A bowl of noodles with eggs, herbs and sliced meat on a white plate.",
    "A sign with white text reads OPEN above the door of a small shop.",
    "Describe the image in detail. What is in the picture? Answer briefly.",
    "The image shows a mountain landscape with snow and a blue sky.",
    "빨간 자동차가 초록색 나무 옆 조용한 거리에 주차되어 있다.",
    "두 사람이 해질녘 해변을 따라 손을 잡고 걷고 있다.",
    "사진에는 창가 근처 나무 테이블 위에서 자고 있는 고양이가 있다.",
    "이미지를 자세히 설명해 주세요. 사진에 무엇이 있나요?",
    "눈 덮인 산과 파란 하늘이 있는 풍경 사진이다.",
    "Một chiếc ô tô màu đỏ đậu trên con phố yên tĩnh cạnh một cái cây xanh.",
    "Hai người đang đi dạo dọc bãi biển lúc hoàng hôn, tay trong tay.",
    "Bức ảnh cho thấy một con mèo đang ngủ trên bàn gỗ gần cửa sổ.",
    "Hãy mô tả chi tiết hình ảnh này. Trong ảnh có gì?",
    "Một bát phở với trứng, rau thơm và thịt thái lát trên đĩa trắng.",
    "system user assistant human gpt caption image picture photo",
    "0 1 2 3 4 5 6 7 8 9 10 100 2024 (x1,y1),(x2,y2) - , . ; : ! ? \" ' ( ) [ ] { } / \\ % & + = * #",
]

# Real InternVL tiles are 448 px with 14-px patches (256 tokens per tile). The tiny model keeps the same
# algorithm on 224-px tiles with 28-px patches: 8x8 = 64 patches -> 16 tokens after pixel shuffle 0.5, so a
# CPU test step moves 4x fewer pixels.
TILE = 224
PATCH = 28
TOKENS_PER_TILE = (TILE // PATCH) ** 2 // 4


def train_tokenizer(vocab_size: int = 600):
    """A byte-level BPE in Qwen2's layout, trained on CORPUS; returns a transformers Qwen2Tokenizer."""
    from tokenizers import AddedToken, Tokenizer, pre_tokenizers, trainers
    from transformers import Qwen2Tokenizer

    seed_tok = Qwen2Tokenizer()   # carries Qwen2's normalizer, pre-tokenizer and decoder
    tok: Tokenizer = seed_tok.backend_tokenizer
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(CORPUS * 4, trainer=trainer)
    model = json.loads(tok.to_str())["model"]
    named = {"start_image_token": IMG_START, "end_image_token": IMG_END,
             "context_image_token": IMG_CONTEXT, "video_token": VIDEO}
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in model["merges"]]
    tokenizer = Qwen2Tokenizer(vocab=model["vocab"], merges=merges, eos_token=IM_END, pad_token=EOT,
                               unk_token=None, extra_special_tokens=named, model_max_length=4096)
    # ChatML and grounding tags must never be split (they are single added tokens in Qwen2/InternVL vocabs)
    tokenizer.add_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS])
    return tokenizer


def tiny_config(vocab_size: int, image_token_id: int, eos_id: int, pad_id: int):
    from transformers import InternVLConfig, InternVLVisionConfig, Qwen2Config

    vision = InternVLVisionConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                                  image_size=TILE, patch_size=PATCH, use_mean_pooling=True)
    text = Qwen2Config(vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
                       eos_token_id=eos_id, pad_token_id=pad_id, bos_token_id=None, tie_word_embeddings=True)
    return InternVLConfig(vision_config=vision, text_config=text, image_token_id=image_token_id,
                          image_seq_length=TOKENS_PER_TILE, downsample_ratio=0.5, tie_word_embeddings=True)


def build_tiny_processor(max_tiles: int = 6):
    """InternVLProcessor = GotOcr2 image processor (dynamic tiling, TILE-px tiles) + trained tokenizer + template."""
    from transformers.models.got_ocr2.image_processing_pil_got_ocr2 import (
        GotOcr2ImageProcessorPil,
    )

    from polycap.sharding.checkpoint import ImageOnlyInternVLProcessor

    image_processor = GotOcr2ImageProcessorPil(
        size={"height": TILE, "width": TILE}, crop_to_patches=True, min_patches=1, max_patches=max_tiles,
        do_resize=True, do_rescale=True, do_normalize=True,
        image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225])   # ImageNet stats, as InternViT
    return ImageOnlyInternVLProcessor(image_processor=image_processor, tokenizer=train_tokenizer(),
                                      image_seq_length=TOKENS_PER_TILE, chat_template=CHAT_TEMPLATE)


def build_tiny_internvl(out_dir: str, seed: int = 0) -> str:
    """Write a tiny random-init InternVL checkpoint + processor to `out_dir` (deterministic for a seed)."""
    import torch
    from transformers import GenerationConfig, InternVLForConditionalGeneration

    marker = os.path.join(out_dir, "polycap_tiny.json")
    stamp = {"seed": seed, "tile": TILE, "patch": PATCH, "tokens_per_tile": TOKENS_PER_TILE, "version": 2}
    if os.path.exists(marker):
        with open(marker, encoding="utf-8") as f:
            if json.load(f) == stamp:
                return out_dir   # cache hit: same seed and layout -> same weights
    processor = build_tiny_processor()
    tok = processor.tokenizer
    cfg = tiny_config(len(tok), tok.convert_tokens_to_ids(IMG_CONTEXT), tok.convert_tokens_to_ids(IM_END),
                      tok.convert_tokens_to_ids(EOT))
    torch.manual_seed(seed)
    model = InternVLForConditionalGeneration(cfg)
    model.generation_config = GenerationConfig(eos_token_id=cfg.text_config.eos_token_id,
                                               pad_token_id=cfg.text_config.pad_token_id)
    os.makedirs(out_dir, exist_ok=True)
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    with open(marker, "w", encoding="utf-8") as f:   # written last: a partial build is never a cache hit
        json.dump(stamp, f)
    return out_dir
