"""Shard test fixtures: decoded Samples made from real photos in ../shared/eval/photos."""
from __future__ import annotations

import hashlib
import io
from pathlib import Path

import pytest

from polycap.schemas import Caption, Hashes, ImageInfo, Sample, Source
from polycap.schemas.config import ShardsConfig

SKIMAGE = ("astronaut.png", "brick.png", "camera.png", "chelsea.png", "coffee.png", "coins.png")
CAPTIONS = {
    "en": "A photograph used in image-processing tests.",
    "ko": "이미지 처리 테스트에 쓰이는 사진.",
    "vi": "Một bức ảnh dùng trong các bài kiểm tra xử lý ảnh.",
}


def decoded_sample(data: bytes, uri: str, name: str, langs: tuple[str, ...] = ("en",)) -> Sample:
    """A Sample as the decode stage leaves it: JPEG bytes, size and format filled in."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        w, h, fmt = im.width, im.height, im.format or ""
    sha = hashlib.sha256(data).hexdigest()
    caps = {lang: Caption(text=CAPTIONS[lang], kind="source" if lang == "en" else "translation",
                          backend="test", translated_from=None if lang == "en" else "en")
            for lang in langs}
    return Sample(key=sha[:32], source=Source(name=name, uri=uri, kind="dir"),
                  image=ImageInfo(bytes=data, format="jpeg", width=w, height=h, orig_format=fmt,
                                  orig_width=w, orig_height=h),
                  hashes=Hashes(sha256=sha), captions=caps)


def thumbnail_jpeg(path: Path, side: int = 96) -> bytes:
    from PIL import Image

    with Image.open(path) as im:
        im = im.convert("RGB")
        im.thumbnail((side, side))
        buf = io.BytesIO()
        im.save(buf, format="JPEG", quality=85)
        return buf.getvalue()


@pytest.fixture(scope="session")
def photo_samples(eval_dir: Path) -> list[Sample]:
    """12 real photos: 6 JPEGs from img2dataset's tests as-is, 6 scikit-image photos as 96px JPEGs."""
    out = []
    for i, p in enumerate(sorted((eval_dir / "photos" / "img2dataset_tests").glob("*.jpg"))):
        langs = ("en", "ko", "vi") if i % 2 == 0 else ("en",)
        out.append(decoded_sample(p.read_bytes(), str(p), "img2dataset", langs))
    for name in SKIMAGE:
        p = eval_dir / "photos" / "skimage" / name
        out.append(decoded_sample(thumbnail_jpeg(p), str(p), "skimage", ("en", "ko")))
    assert len({s.key for s in out}) == len(out) == 12
    return out


def run_write(samples: list[Sample], out: str, max_samples: int = 3, split: str = "train",
              argv: list[str] | None = None) -> list[dict]:
    """Run WriteShards in a real pipeline; returns the committed shard infos (read back from disk)."""
    import json

    import apache_beam as beam
    from apache_beam.options.pipeline_options import PipelineOptions

    from polycap.sharding.writer import WriteShards

    info_file = Path(out).parent / f"{Path(out).name}-infos-{split}.json"
    with beam.Pipeline(options=PipelineOptions(argv or [])) as p:
        infos = (p | beam.Create(samples)
                 | WriteShards(ShardsConfig(split=split, max_samples=max_samples), out))
        _ = (infos | beam.combiners.ToList()
             | beam.Map(lambda xs, f=str(info_file): Path(f).write_text(json.dumps(xs))))
    return sorted(json.loads(info_file.read_text()), key=lambda i: i["shard"])
