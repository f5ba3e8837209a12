"""ResultCache on a local disk: round trip, misses, a broken entry is a miss and gets rewritten, no temp left."""
from __future__ import annotations

import os

from polycap.transforms.cache import ResultCache, cache_key


def test_local_round_trip_miss_and_broken_entries(tmp_path):
    cache = ResultCache(str(tmp_path / "c") + "/")
    key = cache_key("translate", 1, "abc", "ko", {"b": 1, "a": 2})
    assert key == cache_key("translate", 1, "abc", "ko", {"a": 2, "b": 1})   # dicts are sorted
    assert cache.get(key) is None
    cache.put(key, {"text": "안녕 \"x\"", "finish_reason": "stop"})
    assert cache.get(key) == {"text": "안녕 \"x\"", "finish_reason": "stop"}
    path = tmp_path / "c" / key[:2] / f"{key}.json"
    assert sorted(os.listdir(path.parent)) == [path.name]           # no temp file left beside it
    for broken in (b"", b'{"text": "cut sh'):                        # what a crash could leave
        path.write_bytes(broken)
        assert cache.get(key) is None
    cache.put(key, {"text": "again"})
    assert ResultCache("file://" + str(tmp_path / "c")).get(key) == {"text": "again"}
