"""Training examples from shards: resumable shuffled stream, language mix, chat encoding with masked labels."""
from __future__ import annotations

import random
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from polycap.schemas.conversations import CHAT_ROLE as ROLES
from polycap.schemas.conversations import IMAGE_TOKEN as IMAGE
from polycap.sharding.reader import ShardSample, iter_shard, list_shards
from polycap.sharding.turns import available_langs, sample_turns
from polycap.trainer.tiling import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    MAX_TILES,
    TILE,
    closest_grid,
    dynamic_tiles,
    load_rgb,
    normalize,
)

IGNORE = -100


# ---------------------------------------------------------------- pure functions: which language

def choose_lang(langs: list[str], weights: dict[str, float], rng: random.Random) -> str | None:
    """Pick one language among those present, by the configured mixing weights (None if none has weight)."""
    cands = [(lang, weights.get(lang, 0.0)) for lang in langs if weights.get(lang, 0.0) > 0]
    if not cands:
        return None
    return rng.choices([c for c, _ in cands], weights=[w for _, w in cands], k=1)[0]


# ---------------------------------------------------------------- pure functions: tokens and labels

@dataclass
class Encoded:
    input_ids: list[int]
    labels: list[int]
    image_start: int                # index of `<img>`
    image_end: int                  # index one past `</img>`


def image_span(tokenizer: Any, n_image_tokens: int) -> list[int]:
    """`<img>` + `<IMG_CONTEXT>` * n + `</img>`, as InternVLProcessor expands an image."""
    return [tokenizer.start_image_token_id, *[tokenizer.context_image_token_id] * n_image_tokens,
            tokenizer.end_image_token_id]


def encode_turns(turns: list[dict[str, str]], tokenizer: Any, n_image_tokens: int) -> Encoded:
    """ChatML (`<|im_start|>role\\n ... <|im_end|>\\n`, as InternVL-hf/Qwen2 templates render it).

    Labels are IGNORE everywhere except assistant contents and their closing `<|im_end|>` (so the model
    learns to stop). The one `<image>` (first human turn) becomes the image span.
    """
    enc = lambda s: tokenizer.encode(s, add_special_tokens=False) if s else []
    ids: list[int] = []
    labels: list[int] = []
    start = end = -1
    for i, turn in enumerate(turns):
        role = ROLES.get(turn.get("from", ""))
        if role is None:
            raise ValueError(f"turn {i}: unknown role {turn.get('from')!r}")
        value = turn.get("value", "")
        head = enc(f"<|im_start|>{role}\n")
        ids += head
        labels += [IGNORE] * len(head)
        if IMAGE in value:
            if role != "user" or start >= 0 or value.count(IMAGE) != 1:
                raise ValueError("conversation must have exactly one <image>, in a human turn")
            before, after = value.split(IMAGE)
            pre, span, post = enc(before), image_span(tokenizer, n_image_tokens), enc(after)
            start = len(ids) + len(pre)
            end = start + len(span)
            body = pre + span + post
        else:
            body = enc(value)
        tail = enc("<|im_end|>")
        ids += body + tail + enc("\n")
        supervised = role == "assistant"
        labels += (body + tail if supervised else [IGNORE] * (len(body) + len(tail))) + [IGNORE] * len(enc("\n"))
    if start < 0:
        raise ValueError("conversation has no <image>")
    return Encoded(ids, labels, start, end)


def truncate(e: Encoded, max_len: int) -> Encoded | None:
    """Cut text after max_len; None when the image span would be cut or no supervised token is left."""
    if len(e.input_ids) <= max_len:
        return e
    if e.image_end > max_len:
        return None
    labels = e.labels[:max_len]
    if all(t == IGNORE for t in labels):
        return None
    return Encoded(e.input_ids[:max_len], labels, e.image_start, e.image_end)


def tile_count(width: int, height: int, max_tiles: int, tile: int = TILE) -> int:
    cols, rows = closest_grid(width, height, max_tiles, tile)
    return cols * rows + (1 if cols * rows > 1 else 0)


# ---------------------------------------------------------------- examples

@dataclass
class ExampleBuilder:
    """Turns a ShardSample into one training example (or a skip reason); deterministic per (epoch, key)."""
    tokenizer: Any
    stage: str
    tokens_per_tile: int
    lang_weights: dict[str, float]
    max_len: int = 2048
    max_tiles: int = MAX_TILES
    tile: int = TILE
    caption_fallback: bool = True
    seed: int = 0
    mean: Any = IMAGENET_MEAN
    std: Any = IMAGENET_STD
    skipped: Counter = field(default_factory=Counter)

    def build(self, sample: ShardSample, epoch: int = 0) -> dict[str, Any] | None:
        rng = random.Random(f"{self.seed}:{epoch}:{sample.key}")
        lang = choose_lang(available_langs(sample, self.stage, self.caption_fallback), self.lang_weights, rng)
        turns = sample_turns(sample, self.stage, lang, self.caption_fallback) if lang else None
        if turns is None:
            self.skipped["no_text_in_weighted_langs"] += 1
            return None
        image = load_rgb(sample.jpg)
        tiles = self.max_tiles
        while True:   # never cut image tokens: use fewer tiles before giving up on a long sample
            try:
                enc = encode_turns(turns, self.tokenizer, self.tokens_per_tile * tile_count(*image.size, tiles))
            except ValueError:
                self.skipped["bad_conversation"] += 1
                return None
            fit = truncate(enc, self.max_len)
            if fit is not None or tiles == 1:
                break
            tiles = max(1, tiles // 2)
        if fit is None:
            self.skipped["too_long"] += 1
            return None
        import torch

        return {"key": sample.key, "lang": lang, "input_ids": torch.tensor(fit.input_ids),
                "labels": torch.tensor(fit.labels),
                "pixel_values": normalize(dynamic_tiles(image, tiles, self.tile), self.mean, self.std)}


def collate(examples: list[dict[str, Any]], pad_id: int) -> dict[str, Any]:
    """Right-pad ids (pad_id) and labels (IGNORE); concatenate all tiles in batch order."""
    import torch

    n = max(len(e["input_ids"]) for e in examples)
    ids = torch.full((len(examples), n), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), n), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(examples), n), dtype=torch.long)
    for i, e in enumerate(examples):
        k = len(e["input_ids"])
        ids[i, :k], labels[i, :k], mask[i, :k] = e["input_ids"], e["labels"], 1
    return {"input_ids": ids, "labels": labels, "attention_mask": mask,
            "pixel_values": torch.cat([e["pixel_values"] for e in examples]),
            "keys": [e["key"] for e in examples]}


# ---------------------------------------------------------------- the stream

class ShardStream:
    """Endless, shuffled, rank-split stream of ShardSamples whose position is (epoch, consumed).

    Each epoch shuffles the shard order with (seed, epoch), splits shards across ranks (or samples, when
    there are fewer shards than ranks), and shuffles through a buffer seeded by (seed, epoch, rank). The
    order is a pure function of those, so resuming replays the epoch's prefix and skips `consumed`
    samples (tar reads only; nothing is decoded) instead of pickling buffers.
    """

    def __init__(self, path: str, seed: int = 0, shuffle_buffer: int = 256, rank: int = 0, world: int = 1):
        self.shards = list_shards(path)
        if not self.shards:
            raise FileNotFoundError(f"no shards (split-NNNNNN.tar) under {path}")
        self.seed, self.buffer, self.rank, self.world = seed, shuffle_buffer, rank, world
        self.epoch = 0
        self.consumed = 0

    def _ordered(self, epoch: int) -> Iterator[ShardSample]:
        shards = list(self.shards)
        random.Random(f"{self.seed}:shards:{epoch}").shuffle(shards)
        by_shard = len(shards) >= self.world
        mine = shards[self.rank::self.world] if by_shard else shards
        i = 0
        for shard in mine:
            for s in iter_shard(shard):
                if by_shard or i % self.world == self.rank:
                    yield s
                i += 1

    def _shuffled(self, epoch: int) -> Iterator[ShardSample]:
        rng = random.Random(f"{self.seed}:buffer:{epoch}:{self.rank}")
        buf: list[ShardSample] = []
        for s in self._ordered(epoch):
            buf.append(s)
            if len(buf) >= self.buffer:
                yield buf.pop(rng.randrange(len(buf)))
        rng.shuffle(buf)
        yield from buf

    def __iter__(self) -> Iterator[tuple[int, ShardSample]]:
        while True:
            seen = 0
            for i, s in enumerate(self._shuffled(self.epoch)):
                seen += 1
                if i < self.consumed:
                    continue
                self.consumed = i + 1
                yield self.epoch, s
            if seen == 0:
                raise ValueError(f"rank {self.rank}: no samples in {len(self.shards)} shard(s)")
            self.epoch, self.consumed = self.epoch + 1, 0

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "consumed": self.consumed, "seed": self.seed, "rank": self.rank,
                "world": self.world}

    def load_state_dict(self, state: dict[str, int]) -> None:
        if (state.get("world"), state.get("rank")) != (self.world, self.rank):
            raise ValueError(f"data position saved for rank {state.get('rank')}/{state.get('world')}, "
                             f"resumed as {self.rank}/{self.world}: resume with the same world size")
        self.epoch, self.consumed = int(state["epoch"]), int(state["consumed"])


class NoExamplesError(ValueError):
    """A whole epoch gave no training example: every sample was skipped (the message says why)."""


def batches(stream: ShardStream, builder: ExampleBuilder, batch_size: int, pad_id: int) -> Iterator[dict]:
    """Endless collated batches; skipped samples are counted in builder.skipped, never padded over.

    A full epoch in which every sample is skipped raises NoExamplesError with the skip counts by reason,
    instead of looping over the shards forever."""
    pending: list[dict[str, Any]] = []
    epoch_now, whole_epoch = stream.epoch, stream.consumed == 0
    seen = built = 0
    for epoch, sample in stream:
        if epoch != epoch_now:
            if whole_epoch and built == 0:
                reasons = ", ".join(f"{k}: {v}" for k, v in sorted(builder.skipped.items())) or "none recorded"
                raise NoExamplesError(f"epoch {epoch_now} gave no training example: all {seen} samples were "
                                      f"skipped ({reasons}); stage {builder.stage!r} needs captions (pretrain) "
                                      f"or conversations (sft) in the weighted languages")
            epoch_now, whole_epoch, seen, built = epoch, True, 0, 0
        seen += 1
        ex = builder.build(sample, epoch)
        if ex is None:
            continue
        built += 1
        pending.append(ex)
        if len(pending) == batch_size:
            yield collate(pending, pad_id)
            pending = []


def eval_batches(path: str, builder: ExampleBuilder, batch_size: int, pad_id: int, max_batches: int,
                 rank: int = 0, world: int = 1) -> Iterator[dict]:
    """One ordered pass over held-out shards (split by rank), at most max_batches batches."""
    pending: list[dict[str, Any]] = []
    done = 0
    i = 0
    for shard in list_shards(path):
        for s in iter_shard(shard):
            i += 1
            if (i - 1) % world != rank:
                continue
            ex = builder.build(s, 0)
            if ex is not None:
                pending.append(ex)
            if len(pending) == batch_size:
                yield collate(pending, pad_id)
                pending, done = [], done + 1
                if done >= max_batches:
                    return
    if pending:
        yield collate(pending, pad_id)
