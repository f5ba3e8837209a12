"""Which caption and which conversation a shard sample offers in a language (trainer and exports agree)."""
from __future__ import annotations

from polycap.schemas.conversations import describe_turns
from polycap.sharding.reader import ShardSample


def caption_text(sample: ShardSample, lang: str) -> str:
    """The sample's caption in `lang`: the record's `captions[lang].text`, else the `{key}.{lang}.txt` member."""
    cap = (sample.json.get("captions") or {}).get(lang) or {}
    return (cap.get("text") or sample.texts.get(lang) or "").strip()


def available_langs(sample: ShardSample, stage: str, caption_fallback: bool = True) -> list[str]:
    """Languages a sample can train in: captions for pretrain; conversations (+ captions) for SFT."""
    caps = sorted(lang for lang in set(sample.json.get("captions") or {}) | set(sample.texts)
                  if caption_text(sample, lang))
    if stage == "pretrain":
        return caps
    convs = sorted(lang for lang, turns in (sample.json.get("conversations") or {}).items() if turns)
    return sorted(set(convs) | set(caps)) if caption_fallback else convs


def sample_turns(sample: ShardSample, stage: str, lang: str, caption_fallback: bool = True
                 ) -> list[dict[str, str]] | None:
    """Pretrain: (image, caption). SFT: the stored conversation, or the caption as a describe turn (with the
    English instruction for a language that has none of its own)."""
    if stage == "sft":
        turns = (sample.json.get("conversations") or {}).get(lang)
        if turns:
            return turns
        if not caption_fallback:
            return None
    caption = caption_text(sample, lang)
    return describe_turns(caption, lang, fallback="en") if caption else None
