"""Stage decoded image bytes out of the record, so the PCollections between stages carry no image data.

Beam's in-memory DirectRunner materializes every stage's output (and every GroupByKey input) in memory; with
image bytes in the records a run held ~0.23 MB per image (bench/results/urls_vs_img2dataset.json). In decode's
pool thread (transforms/decode.py) each decoded sample's bytes go to
`<output>/_staging/<run_id>/<k[:2]>/<key>.jpg` through the filesystem layer (sharding/fs.py `write_scratch`:
written in place on a disk, one PUT on an object store) and the record keeps `image.ref`; OCR, captioning and
the shard writer read them back with `image_bytes()`.

Staged bytes cannot go stale: the key is the content address of the *input* bytes, and what decode stages for
it depends on the decode settings, so a folder shared between runs would hand a rerun with other settings
the previous run's bytes. Every run therefore stages under its own run id, and the run's final step removes
the whole `_staging/` prefix (this run's and any crashed run's) on every filesystem.
"""
from __future__ import annotations

import dataclasses
import re

from polycap.schemas import Sample
from polycap.sharding import fs

STAGING_DIR = "_staging"
RUN_ID_RE = re.compile(r"^[0-9A-Za-z_-]+$")


def staging_root(output_dir: str, run_id: str) -> str:
    """This run's staging folder, `<output>/_staging/<run_id>`."""
    if not RUN_ID_RE.match(run_id):
        raise ValueError(f"staging: run id {run_id!r} must be a non-empty name of [0-9A-Za-z_-]")
    return fs.join(fs.abs_path(output_dir), STAGING_DIR, run_id)


def staged_path(root: str, key: str) -> str:
    return fs.join(root, key[:2], f"{key}.jpg")


def stage_bytes(sample: Sample, root: str) -> Sample:
    """Write the image bytes under `root` (this run's folder) and return the record without them.

    Within one run a key always stages the same bytes (same input, same settings), so a key staged twice
    (exact duplicates) is just written again, as cheap as asking first. Written as a scratch file
    (`fs.write_scratch`: no temp name, rename or fsync on a disk; staged bytes live for one run and a crashed
    run's are never read again; an fsync per image was a fifth of a folder run's time). Thread-safe
    (decode's pool threads call it); an OSError propagates to the caller's reject handling."""
    if not sample.image.bytes:
        return sample
    path = staged_path(root, sample.key)
    fs.write_scratch(path, sample.image.bytes)
    return dataclasses.replace(sample, image=dataclasses.replace(sample.image, bytes=b"", ref=path))


def image_bytes(sample: Sample) -> bytes:
    """The image bytes, in the record or staged; raises OSError if a staged file is gone."""
    if sample.image.bytes or not sample.image.ref:
        return sample.image.bytes
    return fs.read_bytes(sample.image.ref)


def clear_staging(output_dir: str) -> int:
    """Remove `<output>/_staging/` (every run's staged bytes); returns how many files went."""
    return fs.delete_prefix(fs.join(fs.abs_path(output_dir), STAGING_DIR))
