"""Stage decoded image bytes out of the record, so the PCollections between stages carry no image data.

Beam's in-memory DirectRunner materializes every stage's output (and every GroupByKey input) in memory; with
image bytes in the records a run held ~0.23 MB per image (bench/results/urls_vs_img2dataset.json). In decode's
pool thread (transforms/decode.py) each decoded sample's bytes go to `<output>/_staging/<k[:2]>/<key>.jpg`
(temp name + rename, any Beam filesystem) and the record keeps `image.ref`; OCR, captioning and the shard
writer read them back with `image_bytes()`. The run removes the staging folder once the shards are committed.
"""
from __future__ import annotations

import dataclasses
import uuid

from apache_beam.io.filesystems import FileSystems

from polycap.schemas import Sample

STAGING_DIR = "_staging"


def staging_root(output_dir: str) -> str:
    return FileSystems.join(output_dir, STAGING_DIR)


def staged_path(root: str, key: str) -> str:
    return FileSystems.join(root, key[:2], f"{key}.jpg")


_made_dirs: set[str] = set()  # parents this process created (or found): one mkdirs per folder, not per image


def stage_bytes(sample: Sample, root: str) -> Sample:
    """Write the image bytes under `root` (once per key) and return the record without them.

    Thread-safe (decode's pool threads call it); an OSError propagates to the caller's reject handling."""
    if not sample.image.bytes:
        return sample
    path = staged_path(root, sample.key)
    if not FileSystems.exists(path):
        parent = FileSystems.join(root, sample.key[:2])
        if parent not in _made_dirs:
            try:
                FileSystems.mkdirs(parent)
            except OSError:
                pass  # exists already (another thread or worker, or an earlier run)
            _made_dirs.add(parent)
        tmp = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
        with FileSystems.create(tmp) as f:
            f.write(sample.image.bytes)
        FileSystems.rename([tmp], [path])
    return dataclasses.replace(sample, image=dataclasses.replace(sample.image, bytes=b"", ref=path))


def image_bytes(sample: Sample) -> bytes:
    """The image bytes, in the record or staged; raises OSError if a staged file is gone."""
    if sample.image.bytes or not sample.image.ref:
        return sample.image.bytes
    with FileSystems.open(sample.image.ref) as f:
        return f.read()


def clear_staging(output_dir: str) -> None:
    root = staging_root(output_dir)
    if FileSystems.exists(root):
        FileSystems.delete([root])
