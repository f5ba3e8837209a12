"""Staged image bytes: per run, read back identically, the record carries no bytes, removed on every filesystem."""
import os
import uuid

import pytest

from polycap.sharding import fs
from polycap.sharding.staging import clear_staging, image_bytes, stage_bytes, staging_root
from tests.conftest import jpeg_bytes, make_sample


def test_stage_and_read_back(tmp_path):
    data = jpeg_bytes()
    s = make_sample(data)
    root = staging_root(str(tmp_path), "run1")
    staged = stage_bytes(s, root)
    assert staged.image.bytes == b"" and staged.image.ref.startswith(root)
    assert image_bytes(staged) == data == image_bytes(s)
    again = stage_bytes(s, root)                                         # same key, same run: same place
    assert again.image.ref == staged.image.ref and image_bytes(again) == data
    assert os.listdir(os.path.dirname(staged.image.ref)) == [os.path.basename(staged.image.ref)]
    clear_staging(str(tmp_path))
    assert not os.path.exists(root)
    with pytest.raises(OSError):
        image_bytes(staged)                                              # gone is an error, never b""


def test_staging_again_after_the_folder_was_cleared(tmp_path):
    """A process that staged into a run's folder before it was removed (an earlier run in the same process)
    makes the folder again instead of failing."""
    s = make_sample(jpeg_bytes())
    root = staging_root(str(tmp_path), "r1")
    stage_bytes(s, root)
    clear_staging(str(tmp_path))
    staged = stage_bytes(s, root)
    assert image_bytes(staged) == s.image.bytes


def test_runs_never_share_staged_bytes(tmp_path):
    """The same key staged by two runs (e.g. other decode settings) lands in two places: a rerun can never
    pick up what an earlier (or crashed) run left behind."""
    s = make_sample(jpeg_bytes())
    a = stage_bytes(s, staging_root(str(tmp_path), "a"))
    b = stage_bytes(s.__class__(**{**s.__dict__, "image": s.image.__class__(bytes=b"other")}),
                    staging_root(str(tmp_path), "b"))
    assert a.image.ref != b.image.ref and image_bytes(b) == b"other" and image_bytes(a) == s.image.bytes
    with pytest.raises(ValueError):
        staging_root(str(tmp_path), "")


def test_staging_on_s3(s3_server):
    out = s3_server.bucket(f"stg-{uuid.uuid4().hex[:8]}") + "/out"
    s = make_sample(jpeg_bytes())
    staged = stage_bytes(s, staging_root(out, "r1"))
    assert staged.image.ref.startswith(out + "/_staging/r1/") and image_bytes(staged) == s.image.bytes
    stage_bytes(s, staging_root(out, "r0"))                              # a crashed run's leftovers
    assert clear_staging(out) == 2 and not fs.exists(fs.join(out, "_staging"))
    with pytest.raises(OSError):
        image_bytes(staged)
