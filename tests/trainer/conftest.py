"""Tiny shards for trainer tests, written with the real shard writer's `write_tar` (sharding/members.py layout)."""
from __future__ import annotations

import hashlib
import io
import os

import pytest

COLORS = [("red", (220, 30, 30)), ("green", (30, 200, 40)), ("blue", (30, 40, 220)), ("yellow", (230, 220, 20)),
          ("white", (245, 245, 245)), ("black", (10, 10, 10)), ("purple", (140, 30, 160)), ("orange", (250, 140, 0))]
SHAPES = [("square", 0), ("stripe", 1), ("dot", 2), ("frame", 3)]
KO = {"red": "빨간", "green": "초록", "blue": "파란", "yellow": "노란", "white": "흰", "black": "검은",
      "purple": "보라", "orange": "주황"}
VI = {"red": "đỏ", "green": "xanh lá", "blue": "xanh dương", "yellow": "vàng", "white": "trắng", "black": "đen",
      "purple": "tím", "orange": "cam"}


def _image(i: int, w: int, h: int) -> bytes:
    """A distinct picture per index: a colored shape on a gray background."""
    from PIL import Image, ImageDraw

    color = COLORS[i % len(COLORS)][1]
    shape = SHAPES[(i // len(COLORS)) % len(SHAPES)][1]
    im = Image.new("RGB", (w, h), (120, 120, 120))
    d = ImageDraw.Draw(im)
    box = (w // 4, h // 4, 3 * w // 4, 3 * h // 4)
    if shape == 0:
        d.rectangle(box, fill=color)
    elif shape == 1:
        d.rectangle((0, h // 3, w, 2 * h // 3), fill=color)
    elif shape == 2:
        d.ellipse(box, fill=color)
    else:
        d.rectangle(box, outline=color, width=max(2, w // 10))
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def make_samples(n: int, start: int = 0, sizes: tuple[tuple[int, int], ...] = ((96, 96),),
                 langs: tuple[str, ...] = ("en", "ko", "vi"), conversations: bool = True):
    """`n` distinct Samples with captions (and SFT conversations) in `langs`, keys in sorted order."""
    from polycap.schemas import Caption, Hashes, ImageInfo, Sample, Source

    out = []
    for i in range(start, start + n):
        w, h = sizes[i % len(sizes)]
        data = _image(i, w, h)
        sha = hashlib.sha256(data).hexdigest()
        color = COLORS[i % len(COLORS)][0]
        shape = SHAPES[(i // len(COLORS)) % len(SHAPES)][0]
        text = {"en": f"A {color} {shape} on a gray background, picture {i}.",
                "ko": f"회색 배경 위의 {KO[color]} {shape}, 사진 {i}.",
                "vi": f"Một {shape} màu {VI[color]} trên nền xám, ảnh {i}."}
        caps = {lang: Caption(text=text[lang], kind="dense", backend="test") for lang in langs}
        convs = {lang: [{"from": "human", "value": "<image>\nWhat is in the picture?"},
                        {"from": "gpt", "value": text[lang]},
                        {"from": "human", "value": "What color is it?"},
                        {"from": "gpt", "value": color}] for lang in langs} if conversations else {}
        out.append(Sample(key=sha[:32], source=Source(name="test", uri=f"mem://{i}", kind="dir"),
                          image=ImageInfo(bytes=data, format="jpeg", width=w, height=h),
                          hashes=Hashes(sha256=sha), captions=caps, conversations=convs))
    return sorted(out, key=lambda s: s.key)


def write_shards(out_dir: str, samples: list, per_shard: int, split: str = "train") -> list[str]:
    """Write `samples` into `{split}-{i:06d}.tar` files of at most `per_shard` samples."""
    from polycap.sharding.members import shard_name
    from polycap.sharding.writer import write_tar

    os.makedirs(out_dir, exist_ok=True)
    paths = []
    for i in range(0, len(samples), per_shard):
        path = os.path.join(out_dir, shard_name(split, i // per_shard))
        with open(path, "wb") as f:
            write_tar(f, samples[i:i + per_shard])
        paths.append(path)
    return paths


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> str:
    from polycap.trainer.tiny import build_tiny_internvl

    return build_tiny_internvl(str(tmp_path_factory.mktemp("tiny-model")), seed=0)


@pytest.fixture(scope="session")
def shards32(tmp_path_factory) -> str:
    """32 samples written by `polycap run` itself (the main job): images + alt-text sidecars in a folder,
    decoded, filtered, exact-deduplicated and sharded (max 8 per shard); the English caption is carried
    forward from the sidecar and the SFT conversation is built from it."""
    from polycap.pipelines.run import run
    from polycap.schemas.config import load_config

    src = tmp_path_factory.mktemp("src32")
    for s in make_samples(32):
        (src / f"{s.key}.jpg").write_bytes(s.image.bytes)
        (src / f"{s.key}.txt").write_text(s.captions["en"].text, encoding="utf-8")
    out = tmp_path_factory.mktemp("run32")
    # near-dup off: the synthetic shapes share pHashes by design (same layout, other colors)
    cfg = load_config(data={"sources": [{"kind": "dir", "path": str(src), "name": "shapes"}],
                            "output": str(out), "dedup": {"near": False}, "shards": {"max_samples": 8}})
    stats = run(cfg)
    assert stats["balanced"] and stats["kept"] == 32, stats
    return str(out)


@pytest.fixture(scope="session")
def eval_shard(tmp_path_factory) -> str:
    d = str(tmp_path_factory.mktemp("eval"))
    write_shards(d, make_samples(8, start=100), per_shard=8, split="eval")
    return d
