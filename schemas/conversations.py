"""Conversation rules shared by the pipeline, the exports and the trainer: roles, `<image>`, instructions.

One home for these, so a dataset never carries two phrasings of the same instruction: the pipeline's SFT
records, the shard exports and the trainer's caption-as-conversation turns all call `describe_turns`
(tests/schemas/test_conversations.py checks that they agree for every language).
"""
from __future__ import annotations

IMAGE_TOKEN = "<image>"

# The instruction that pairs an image with its dense caption (ShareGPT4V's detailed-description task), per
# language, written in the caption's language so the model learns to answer in the language it is asked in.
DESCRIBE = {
    "en": "Describe this image in detail.",
    "ko": "이 이미지를 자세히 설명해 주세요.",
    "vi": "Hãy mô tả chi tiết hình ảnh này.",
}

# Any role spelling found in LLaVA / ShareGPT / OpenAI-messages files -> the ShareGPT `from` values we store.
SHAREGPT_ROLE = {"human": "human", "user": "human", "gpt": "gpt", "assistant": "gpt", "model": "gpt"}
# Stored `from` values (and their chat spellings) -> chat-template roles (trainer, LLaMA-Factory export).
CHAT_ROLE = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}


def describe_turns(caption: str, lang: str, fallback: str | None = None) -> list[dict[str, str]] | None:
    """`[human: <image>\\n{instruction}, gpt: caption]` in `lang`; for a language without an instruction,
    the `fallback` language's instruction, or None when no fallback is given."""
    prompt = DESCRIBE.get(lang) or (DESCRIBE.get(fallback) if fallback else None)
    if prompt is None:
        return None
    return [{"from": "human", "value": f"{IMAGE_TOKEN}\n{prompt}"}, {"from": "gpt", "value": caption}]
