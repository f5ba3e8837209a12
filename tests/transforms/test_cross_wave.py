"""Near-dup search over earlier waves on the wave index's on-disk substring table (transforms/cross_wave.py,
sharding/wave_index.py `near`): complete within t against brute force, kept in step by finish_wave and
forget_from, and an index written before the table existed is filled from its kept rows, never searched empty."""
from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from polycap.sharding import wave_index as wi
from polycap.transforms.cross_wave import EarlierHashes, near_split


def _rows(hashes: np.ndarray, start: int) -> list[dict]:
    return [{"key": f"k{start + i}", "uri": f"u{start + i}", "phash": wi.signed64(int(h)), "solid": "",
             "rank": "[]", "thumb": b""} for i, h in enumerate(hashes)]


def _finish(conn: sqlite3.Connection, folder: Path, wave: int, hashes: np.ndarray, start: int) -> None:
    parts = [wi.write_part(_rows(hashes, start), str(folder / f"kept{wave}"))] if len(hashes) else []
    wi.finish_wave(conn, wave, parts, {"wave": wave})


@contextlib.contextmanager
def index_of(folder: Path, waves: list[np.ndarray], t: int = 10) -> Iterator[sqlite3.Connection]:
    """A wave index whose wave i kept the pHashes waves[i] (keys k0, k1, ... in order), substrings set for
    radius t after the first wave (as a wave's child does), opened read-only as a wave's child opens it."""
    conn = wi.connect(str(folder))
    start = 0
    for w, hashes in enumerate(waves):
        _finish(conn, folder, w, hashes, start)
        start += len(hashes)
        if w == 0:
            wi.use_near_widths(str(folder), near_split(t)[0])
    conn.close()
    wi.use_near_widths(str(folder), near_split(t)[0])
    ro = wi.connect(str(folder), readonly=True)
    try:
        yield ro
    finally:
        ro.close()


def _filed(conn: sqlite3.Connection) -> int:
    """How many (pHash, rowid) pairs `near` holds (16 bytes each)."""
    return conn.execute("SELECT coalesce(sum(length(items)), 0) / 16 FROM near").fetchone()[0]


def _brute(hashes: np.ndarray, rid: dict[str, int], q: int, t: int) -> list[tuple[int, int]]:
    dist = np.bitwise_count(hashes ^ np.uint64(q))
    return sorted((int(d), rid[f"k{i}"]) for i, d in enumerate(dist) if d <= t)


def _planted(rng: np.random.Generator, n: int) -> np.ndarray:
    """n pHashes: random ones, and near copies (1..12 bits flipped) of earlier ones; both signs of int64."""
    h = rng.integers(0, 2**64, n, dtype=np.uint64)
    for i in range(n // 2, n):
        bits = rng.choice(64, int(rng.integers(0, 13)), replace=False)
        h[i] = h[int(rng.integers(0, n // 2))] ^ np.uint64(sum(1 << int(b) for b in bits))
    return h


@pytest.mark.parametrize("t", [2, 5, 8, 10, 16])
def test_search_over_waves_finds_exactly_what_brute_force_finds(tmp_path, t):
    rng = np.random.default_rng(t)
    h = _planted(rng, 2400)
    queries = [int(h[int(i)]) ^ sum(1 << int(b) for b in rng.choice(64, int(rng.integers(0, t + 3)), replace=False))
               for i in rng.integers(0, len(h), 60)] + [int(x) for x in rng.integers(0, 2**64, 20, dtype=np.uint64)]
    with index_of(tmp_path, [h[:800], h[800:1600], h[1600:]], t) as conn:
        rid = dict(conn.execute("SELECT key, rowid FROM kept"))
        prior = EarlierHashes(conn, t)
        found = [prior.within(q) for q in queries]
    assert found == [_brute(h, rid, q, t) for q in queries]
    assert sum(map(len, found)) > len(queries) // 2      # the planted copies are found, not only misses


def test_forget_from_drops_the_substrings_of_forgotten_waves(tmp_path):
    rng = np.random.default_rng(1)
    a, b = _planted(rng, 300), _planted(rng, 300)
    with index_of(tmp_path, [a, b]) as conn:
        assert _filed(conn) == 600 * len(near_split(10)[0])
    conn = wi.connect(str(tmp_path))
    wi.forget_from(conn, 1)
    assert _filed(conn) == 300 * len(near_split(10)[0])
    _finish(conn, tmp_path, 1, a[:5], 1000)       # a rerun of wave 1 reuses the forgotten rowids
    conn.close()
    ro = wi.connect(str(tmp_path), readonly=True)
    kept = np.array([h & (2**64 - 1) for _, h in ro.execute("SELECT rowid, phash FROM kept ORDER BY rowid")],
                    dtype=np.uint64)
    rid = {f"k{i}": r for i, (r,) in enumerate(ro.execute("SELECT rowid FROM kept ORDER BY rowid"))}
    assert len(kept) == 305
    for q in [*b[:20], *a[:20]]:
        assert EarlierHashes(ro, 10).within(int(q)) == _brute(kept, rid, int(q), 10)
    assert EarlierHashes(ro, 10).within(int(a[0]))     # found in wave 0 and in the rerun wave 1
    ro.close()


def test_an_index_without_substrings_is_filled_from_its_kept_rows(tmp_path):
    """An index written by the version before `near` (kept rows, no table, no widths): resuming searches
    every kept row; so does an index whose widths were set for another radius."""
    rng = np.random.default_rng(2)
    h = _planted(rng, 500)
    conn = wi.connect(str(tmp_path))
    _finish(conn, tmp_path, 0, h, 0)
    conn.execute("DROP TABLE near")              # as the earlier version left it
    conn.commit()
    conn.close()
    for t in (10, 6):
        wi.use_near_widths(str(tmp_path), near_split(t)[0])
        ro = wi.connect(str(tmp_path), readonly=True)
        rid = dict(ro.execute("SELECT key, rowid FROM kept"))
        assert [EarlierHashes(ro, t).within(int(q)) for q in h[:50]] == [_brute(h, rid, int(q), t) for q in h[:50]]
        ro.close()
    conn = wi.connect(str(tmp_path))                 # a wave finished by the earlier version: kept rows only
    conn.executemany("INSERT INTO kept VALUES (?, 1, ?, ?, '', '[]', x'')",
                     [(r["key"], r["uri"], r["phash"]) for r in _rows(h[:3] ^ np.uint64(1), 500)])
    conn.commit()
    conn.close()
    wi.use_near_widths(str(tmp_path), near_split(6)[0])
    ro = wi.connect(str(tmp_path), readonly=True)
    assert len(EarlierHashes(ro, 6).within(int(h[0]))) == len(_brute(h, rid, int(h[0]), 6)) + 1
    ro.close()


def test_drop_known_rejects_what_brute_force_over_earlier_waves_rejects(tmp_path):
    """The stage's decisions on a randomized set: a sample within t of an earlier wave's kept item is a
    `duplicate` naming the best such item (dedup.member_order; no thumbnails here, so the pHash decides),
    any other passes; the same as the search over all earlier pHashes in memory made."""
    from polycap.schemas import Reject
    from polycap.schemas.config import DedupConfig
    from polycap.transforms.cross_wave import _DropKnownFn, kept_row
    from polycap.transforms.dedup import member_order, to_member
    from tests.transforms.test_dedup import hashed

    rng = np.random.default_rng(5)
    h = _planted(rng, 1500)
    conn = wi.connect(str(tmp_path))
    earlier = [hashed(i, int(x), area=int(rng.integers(5_000, 20_000))) for i, x in enumerate(h)]
    for w in range(3):
        rows = [kept_row(s) for s in earlier[w * 500:(w + 1) * 500]]
        wi.finish_wave(conn, w, [wi.write_part(rows, str(tmp_path / f"kept{w}"))], {})
    conn.close()
    queries = [hashed(10_000 + i, int(h[int(j)]) ^ sum(1 << int(b) for b in rng.choice(64, int(rng.integers(0, 14)),
                                                                                        replace=False)))
               for i, j in enumerate(rng.integers(0, len(h), 200))]
    fn = _DropKnownFn(str(tmp_path), DedupConfig(near=True, max_hamming=10))
    fn.setup()
    got = [fn.check(q) for q in queries]
    fn.teardown()
    members = [to_member(s) for s in earlier]
    for q, out in zip(queries, got):
        near = [m for m in members if m and int(np.bitwise_count(np.uint64(m.phash ^ int(q.hashes.content_phash, 16))))
                <= 10]
        if near:
            assert isinstance(out, Reject) and f"near duplicate of {min(near, key=member_order).key} " in out.detail
        else:
            assert out is q
    assert 20 < sum(isinstance(o, Reject) for o in got) < 180
