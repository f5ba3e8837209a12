"""The persistent state of a run in waves (`<out>/_waves/<split>/`): the kept-item index that later waves
dedup against, and which waves are finished.

One SQLite file, `index.sqlite`, on the output's local disk (waves are the local mode; pipelines/waves.py):
  kept(key, wave, uri, phash, solid, rank, thumb)  one row per content key kept by dedup in a finished wave
  waves(wave, stats)                               a wave's row is written in the same transaction as its
                                                   kept rows, after its shards, rejects and stats committed
  near(k, items)                                   multi-index hashing on disk: for each substring value k
                                                   (substring index << 32 | value) of the textured kept
                                                   pHashes, their (pHash, rowid) pairs as one blob
  meta(k, v)                                       the run's fingerprint, the input listing's length, and
                                                   which kept rows `near` files under which widths
Every lookup is a query on disk, so a wave's process holds SQLite's bounded page cache, never the index: one
row by key (exact dedup) or by flat-colour class; for near dup, the `near` blobs of a sample's candidate keys
(their distances are checked in numpy), then the thumbnails of the candidates within the radius. A wave's kept
members reach the index as parquet parts written by its pipeline (`KEPT_SCHEMA`), moved in by the wave's
process once the wave is done; their pairs are appended to `near` in the same transaction.
"""
from __future__ import annotations

import json
import sqlite3
import uuid
from collections.abc import Iterable
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from polycap.sharding import fs

INDEX_NAME = "index.sqlite"
KEPT_SCHEMA = pa.schema([
    ("key", pa.string()), ("uri", pa.string()), ("phash", pa.int64()), ("solid", pa.string()),
    ("rank", pa.string()), ("thumb", pa.binary()),
])
_TABLES = """
CREATE TABLE IF NOT EXISTS kept (key TEXT PRIMARY KEY, wave INTEGER NOT NULL, uri TEXT NOT NULL,
    phash INTEGER, solid TEXT NOT NULL, rank TEXT NOT NULL, thumb BLOB NOT NULL);
CREATE INDEX IF NOT EXISTS kept_solid ON kept (solid) WHERE solid != '';
CREATE TABLE IF NOT EXISTS waves (wave INTEGER PRIMARY KEY, stats TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS near (k INTEGER PRIMARY KEY, items BLOB NOT NULL);
"""
NEAR_META = "near"
_TEXTURED = "phash IS NOT NULL AND solid = ''"


def signed64(h: int) -> int:
    """A 64-bit hash as SQLite's signed INTEGER."""
    return h - (1 << 64) if h >> 63 else h


def connect(folder: str, readonly: bool = False, timeout: float = 5.0) -> sqlite3.Connection:
    path = fs.join(folder, INDEX_NAME)
    if readonly:
        return sqlite3.connect(f"file:{path}?mode=ro", uri=True, check_same_thread=False)
    fs.mkdirs(folder)
    conn = sqlite3.connect(path, timeout=timeout)
    conn.executescript(_TABLES)
    return conn


def get_meta(conn: sqlite3.Connection, k: str) -> str | None:
    row = conn.execute("SELECT v FROM meta WHERE k = ?", (k,)).fetchone()
    return row[0] if row else None


def set_meta(conn: sqlite3.Connection, k: str, v: str) -> None:
    with conn:
        conn.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (k, v))


def finished_waves(conn: sqlite3.Connection) -> dict[int, dict[str, Any]]:
    """wave number -> the stats it recorded, for every finished wave."""
    return {w: json.loads(s) for w, s in conn.execute("SELECT wave, stats FROM waves ORDER BY wave")}


def forget_from(conn: sqlite3.Connection, wave: int) -> None:
    """Drop what waves >= `wave` left (a rerun redoes them; nothing of theirs may dedup their own items)."""
    with conn:
        filed = _near_filed(conn)
        if filed is not None:
            _unfile_near(conn, filed[0], wave)
        conn.execute("DELETE FROM kept WHERE wave >= ?", (wave,))
        if filed is not None:
            _set_near_filed(conn, filed[0])
        conn.execute("DELETE FROM waves WHERE wave >= ?", (wave,))


def finish_wave(conn: sqlite3.Connection, wave: int, parts: Iterable[str], stats: dict[str, Any]) -> int:
    """Move a wave's kept members (its parquet parts) into the index, file them in `near` (once its widths
    are set: use_near_widths) and mark the wave finished, in one transaction; returns the rows added."""
    added = 0
    with conn:
        for part in parts:
            t = pq.read_table(part, schema=KEPT_SCHEMA)
            rows = zip(*(t.column(n).to_pylist() for n in KEPT_SCHEMA.names))
            cur = conn.executemany("INSERT OR IGNORE INTO kept VALUES (?, ?, ?, ?, ?, ?, ?)",
                                   ((k, wave, u, h, s, r, b) for k, u, h, s, r, b in rows))
            added += cur.rowcount
        if (filed := _near_filed(conn)) is not None:
            _fill_near(conn, filed[0], "AND rowid > ?", (filed[1],))    # the rows added since it was filed
            _set_near_filed(conn, filed[0])
        conn.execute("INSERT OR REPLACE INTO waves VALUES (?, ?)", (wave, json.dumps(stats, sort_keys=True)))
    return added


def kept_uri(conn: sqlite3.Connection, key: str) -> str | None:
    row = conn.execute("SELECT uri FROM kept WHERE key = ?", (key,)).fetchone()
    return row[0] if row else None


def solid_kept(conn: sqlite3.Connection, colour: str) -> tuple[str, str] | None:
    """(key, uri) of the kept item of a flat-colour class, if an earlier wave kept one."""
    row = conn.execute("SELECT key, uri FROM kept WHERE solid = ? ORDER BY rowid LIMIT 1", (colour,)).fetchone()
    return (row[0], row[1]) if row else None


def members_by_rowid(conn: sqlite3.Connection, rowids: Iterable[int]) -> list[dict[str, Any]]:
    """key, uri, phash (unsigned), rank (a tuple), thumb of the given kept rows."""
    out = []
    for rid in rowids:
        row = conn.execute("SELECT key, uri, phash, rank, thumb FROM kept WHERE rowid = ?", (int(rid),)).fetchone()
        if row:
            key, uri, h, rank, thumb = row
            out.append({"key": key, "uri": uri, "phash": h & ((1 << 64) - 1),
                        "rank": tuple(json.loads(rank)), "thumb": bytes(thumb)})
    return out


def write_part(rows: list[dict[str, Any]], folder: str) -> str:
    """One parquet part of a wave's kept members (KEPT_SCHEMA rows), written whole under a unique name."""
    path = fs.join(folder, f"part-{uuid.uuid4().hex}.parquet")
    fs.mkdirs(folder)
    with fs.create(path) as f:
        pq.write_table(pa.Table.from_pylist(rows, schema=KEPT_SCHEMA), f)
    return path


_ITEM = np.dtype("<i8")      # near items: (pHash, rowid) pairs of little-endian int64
_APPEND = "INSERT INTO near VALUES (?, ?) ON CONFLICT (k) DO UPDATE SET items = CAST(items || excluded.items AS BLOB)"


def _near_filed(conn: sqlite3.Connection) -> tuple[list[int], int] | None:
    """(widths, the kept table's largest rowid when `near` was last brought up to date), if `near` is kept."""
    v = get_meta(conn, NEAR_META)
    return (json.loads(v)["widths"], json.loads(v)["upto"]) if v else None


def _max_rowid(conn: sqlite3.Connection) -> int:
    return conn.execute("SELECT coalesce(max(rowid), 0) FROM kept").fetchone()[0]


def _set_near_filed(conn: sqlite3.Connection, widths: list[int]) -> None:
    conn.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)",
                 (NEAR_META, json.dumps({"widths": widths, "upto": _max_rowid(conn)})))


def _keys(phashes: np.ndarray, widths: list[int]) -> list[np.ndarray]:
    """Per substring (high bits first: transforms/neardup.substrings), the near keys of int64 pHashes."""
    out, shift, h = [], 64, phashes.view(np.uint64)
    for j, w in enumerate(widths):
        shift -= w
        out.append((h >> np.uint64(shift) & np.uint64((1 << w) - 1)).astype(np.int64) | j << 32)
    return out


def _fill_near(conn: sqlite3.Connection, widths: list[int], where: str = "", args: tuple[Any, ...] = ()) -> None:
    """Append to `near` the (pHash, rowid) pairs of the textured kept rows `where` selects, under each of their
    substring keys; in blocks, so a rebuild holds a block, not the index."""
    cur = conn.execute(f"SELECT phash, rowid FROM kept WHERE {_TEXTURED} {where} ORDER BY rowid", args)
    while rows := cur.fetchmany(1 << 16):
        items = np.asarray(rows, dtype=_ITEM).reshape(-1, 2)
        for keys in _keys(items[:, 0], widths):
            order = np.argsort(keys, kind="stable")
            ks, its = keys[order], items[order]
            cuts = [0, *(np.flatnonzero(ks[1:] != ks[:-1]) + 1).tolist(), len(ks)]
            conn.executemany(_APPEND, ((int(ks[a]), its[a:b].tobytes()) for a, b in zip(cuts, cuts[1:])))


def _unfile_near(conn: sqlite3.Connection, widths: list[int], wave: int) -> None:
    """Take the pairs of the kept rows of waves >= `wave` out of `near` (a rerun reuses their rowids)."""
    gone = np.asarray(conn.execute(f"SELECT phash, rowid FROM kept WHERE {_TEXTURED} AND wave >= ?",
                                   (wave,)).fetchall(), dtype=_ITEM).reshape(-1, 2)
    for k in np.unique(np.concatenate([*_keys(gone[:, 0], widths), np.zeros(0, np.int64)])).tolist():
        row = conn.execute("SELECT items FROM near WHERE k = ?", (k,)).fetchone()
        items = np.frombuffer(row[0], dtype=_ITEM).reshape(-1, 2) if row else np.zeros((0, 2), _ITEM)
        left = items[~np.isin(items[:, 1], gone[:, 1])]
        if len(left):
            conn.execute("UPDATE near SET items = ? WHERE k = ?", (left.tobytes(), k))
        else:
            conn.execute("DELETE FROM near WHERE k = ?", (k,))


def use_near_widths(folder: str, widths: list[int]) -> None:
    """Make `near` file every textured kept row under split `widths`: nothing to do when it does; else (an
    index written by a version without `near`, or `near` of other widths, or kept rows added by such a
    version) rebuilt from `kept` in one transaction, so a resumed run never searches an incomplete table.
    Waves finished after this append their own rows (finish_wave)."""
    conn = connect(folder, timeout=3600.0)     # a concurrent instance rebuilding holds the write lock
    conn.isolation_level = None
    try:
        conn.execute("BEGIN IMMEDIATE")
        try:
            if _near_filed(conn) != (widths, _max_rowid(conn)):
                conn.execute("DELETE FROM near")
                _fill_near(conn, widths)
                _set_near_filed(conn, widths)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
    finally:
        conn.close()


def near_candidates(conn: sqlite3.Connection, keys: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """(rowids int64, pHashes uint64) of the textured kept rows filed under any of `keys` (substring index
    << 32 | value), each once, by rowid; needs `near` filed under the widths the keys were made with
    (use_near_widths)."""
    rows = conn.execute("SELECT items FROM near WHERE k IN (SELECT value FROM json_each(?))",
                        (json.dumps(keys),)).fetchall()
    items = np.frombuffer(b"".join(r[0] for r in rows), dtype=_ITEM).reshape(-1, 2)
    rids, first = np.unique(items[:, 1], return_index=True)
    return rids, items[first, 0].view(np.uint64)
