"""The filesystem layer behaves the same on a local disk and on a real S3-protocol server (moto on 127.0.0.1)."""
from __future__ import annotations

import uuid

import pyarrow as pa
import pytest

from polycap.sharding import fs


@pytest.fixture(params=["local", "s3"])
def root(request, tmp_path):
    if request.param == "local":
        return str(tmp_path / "run")
    server = request.getfixturevalue("s3_server")
    return server.bucket(f"fs-{uuid.uuid4().hex[:8]}") + "/run"


def test_files_folders_and_listing(root):
    assert not fs.exists(root) and not fs.is_dir(root) and fs.list_dir(root) == {}
    fs.write_bytes(fs.join(root, "a.bin"), b"abc")
    fs.write_json(fs.join(root, "sub", "b.json"), {"x": 1})
    fs.write_bytes(fs.join(root, ".hidden"), b"h")   # (Beam cannot PUT a 0-byte S3 object)
    assert fs.exists(root) and fs.is_dir(root)            # a "folder" on an object store: a prefix
    assert fs.exists(fs.join(root, "sub")) and not fs.is_file(fs.join(root, "sub"))
    assert fs.is_file(fs.join(root, "a.bin")) and not fs.is_dir(fs.join(root, "a.bin"))
    assert fs.list_dir(root) == {"a.bin": 3, ".hidden": 1}
    assert set(fs.list_dir(root, recursive=True)) == {"a.bin", ".hidden", "sub/b.json"}
    assert fs.read_json(fs.join(root, "sub", "b.json")) == {"x": 1}
    assert fs.size(fs.join(root, "a.bin")) == 3
    fs.write_bytes(fs.join(root, "a.bin"), b"replaced")       # overwrite, atomically
    assert fs.read_bytes(fs.join(root, "a.bin")) == b"replaced"
    assert not any(".tmp-" in n for n in fs.list_dir(root, recursive=True))
    fs.delete([fs.join(root, "a.bin"), fs.join(root, "never-there")])   # a missing file is no error
    assert fs.delete_prefix(root) == 2
    assert not fs.exists(root) and fs.delete_prefix(root) == 0


def test_prefix_is_not_a_name_prefix(root):
    """`out` does not contain `out2/x`: a folder is its name plus a slash."""
    fs.write_bytes(root + "2/x", b"1")
    assert not fs.exists(root) and fs.list_dir(root) == {}
    fs.write_bytes(fs.join(root, "y"), b"2")
    assert fs.delete_prefix(root) == 1 and fs.exists(root + "2/x")


def test_parquet_through_beam_handles(root):
    table = pa.table({"k": ["a", "b", "c"], "n": [1, 2, 3]})
    path = fs.join(root, "t.parquet")
    fs.write_parquet(path, table)
    assert fs.read_parquet(path).equals(table)
    assert fs.read_parquet(path, columns=["n"], filters=[("n", ">", 1)]).column("n").to_pylist() == [2, 3]
    assert sum(b.num_rows for b in fs.iter_parquet(path, batch_size=2)) == 3
    assert fs.parquet_schema(path) == table.schema


def test_atomic_create_leaves_nothing_on_error(root):
    path = fs.join(root, "f.bin")
    fs.write_bytes(path, b"old")
    with pytest.raises(RuntimeError), fs.atomic_create(path) as f:
        f.write(b"half")
        raise RuntimeError("boom")
    remaining = fs.list_dir(root)
    if fs.has_dirs(path):
        assert fs.read_bytes(path) == b"old" and remaining == {"f.bin": 3}
    else:   # an object store cannot keep the old object under a failed PUT: it is gone, never half
        assert remaining == {}
