"""The shard reader never yields a sample out of a truncated tar, wherever it was cut."""
import io
import json
import tarfile

import pytest

from polycap.sharding.reader import ShardError, iter_shard
from tests.conftest import jpeg_bytes


def _tar(path, n=3):
    with tarfile.open(path, "w") as tf:
        for i in range(n):
            key = f"{i:032x}"
            for ext, data in (("jpg", jpeg_bytes()), ("json", json.dumps({"key": key}).encode()),
                              ("en.txt", b"a caption")):
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
    return path


def test_reads_complete_tar(tmp_path):
    samples = list(iter_shard(str(_tar(tmp_path / "train-000000.tar"))))
    assert [s.texts["en"] for s in samples] == ["a caption"] * 3 and all(s.jpg for s in samples)


@pytest.mark.parametrize("where", ["member_boundary", "inside_member", "end_blocks"])
def test_truncated_tar_raises_before_any_sample(tmp_path, where):
    path = _tar(tmp_path / "train-000000.tar")
    data = path.read_bytes()
    with tarfile.open(path) as tf:
        members = tf.getmembers()
    last = members[-1]
    cut = {"member_boundary": members[3].offset,          # start of the second sample's header
           "inside_member": last.offset_data + 3,
           "end_blocks": last.offset_data + 512 + 512}[where]  # one of two zero blocks
    path.write_bytes(data[:cut])
    got = []
    with pytest.raises(ShardError):
        for s in iter_shard(str(path)):
            got.append(s)
    assert got == []
