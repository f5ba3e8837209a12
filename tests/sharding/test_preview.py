"""`shards preview` shows the first samples with their captions, read through the real reader."""
from polycap.sharding.members import shard_name
from polycap.sharding.preview import preview
from polycap.sharding.writer import write_tar
from tests.trainer.conftest import make_samples


def test_preview_lists_first_samples(tmp_path):
    samples = make_samples(3, langs=("en", "ko"))
    with open(tmp_path / shard_name("train", 0), "wb") as f:
        write_tar(f, samples)
    rows = preview(str(tmp_path), n=2, width=20)
    assert [r["key"] for r in rows] == [s.key for s in samples[:2]]
    assert set(rows[0]["captions"]) == {"en", "ko"} and len(rows[0]["captions"]["en"]) <= 20
    assert rows[0]["size"] == "96x96" and rows[0]["conversations"] == ["en", "ko"]
