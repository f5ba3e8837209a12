"""Staged image bytes: written once per key, read back identically, the record carries no bytes."""
import os

import pytest

from polycap.sharding.staging import clear_staging, image_bytes, stage_bytes, staging_root
from tests.conftest import jpeg_bytes, make_sample


def test_stage_and_read_back(tmp_path):
    data = jpeg_bytes()
    s = make_sample(data)
    root = staging_root(str(tmp_path))
    staged = stage_bytes(s, root)
    assert staged.image.bytes == b"" and staged.image.ref.startswith(root)
    assert image_bytes(staged) == data == image_bytes(s)
    mtime = os.path.getmtime(staged.image.ref)
    assert stage_bytes(s, root).image.ref == staged.image.ref            # same key: not rewritten
    assert os.path.getmtime(staged.image.ref) == mtime
    assert not [f for f in os.listdir(os.path.dirname(staged.image.ref)) if ".tmp-" in f]
    clear_staging(str(tmp_path))
    assert not os.path.exists(root)
    with pytest.raises(OSError):
        image_bytes(staged)                                              # gone is an error, never b""
