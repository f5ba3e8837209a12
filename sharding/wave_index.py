"""The persistent state of a run in waves (`<out>/_waves/<split>/`): the kept-item index that later waves
dedup against, and which waves are finished.

One SQLite file, `index.sqlite`, on the output's local disk (waves are the local mode; pipelines/waves.py):
  kept(key, wave, uri, phash, solid, rank, thumb)  one row per content key kept by dedup in a finished wave
  waves(wave, stats)                               a wave's row is written in the same transaction as its
                                                   kept rows, after its shards, rejects and stats committed
  meta(k, v)                                       the run's fingerprint and the input listing's length
Lookups read one row by key (exact dedup) or by flat-colour class; near-dup search loads only the pHashes
(8 B per kept item) and reads the thumbnails of candidate pairs. A wave's kept members reach the index as
parquet parts written by its pipeline (`KEPT_SCHEMA`), moved in by the launcher once the wave is done.
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
"""


def signed64(h: int) -> int:
    """A 64-bit hash as SQLite's signed INTEGER."""
    return h - (1 << 64) if h >> 63 else h


def connect(folder: str, readonly: bool = False) -> sqlite3.Connection:
    path = fs.join(folder, INDEX_NAME)
    if readonly:
        return sqlite3.connect(f"file:{path}?mode=ro", uri=True, check_same_thread=False)
    fs.mkdirs(folder)
    conn = sqlite3.connect(path)
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
        conn.execute("DELETE FROM kept WHERE wave >= ?", (wave,))
        conn.execute("DELETE FROM waves WHERE wave >= ?", (wave,))


def finish_wave(conn: sqlite3.Connection, wave: int, parts: Iterable[str], stats: dict[str, Any]) -> int:
    """Move a wave's kept members (its parquet parts) into the index and mark it finished, in one
    transaction; returns the rows added."""
    added = 0
    with conn:
        for part in parts:
            t = pq.read_table(part, schema=KEPT_SCHEMA)
            rows = zip(*(t.column(n).to_pylist() for n in KEPT_SCHEMA.names))
            cur = conn.executemany("INSERT OR IGNORE INTO kept VALUES (?, ?, ?, ?, ?, ?, ?)",
                                   ((k, wave, u, h, s, r, b) for k, u, h, s, r, b in rows))
            added += cur.rowcount
        conn.execute("INSERT OR REPLACE INTO waves VALUES (?, ?)", (wave, json.dumps(stats, sort_keys=True)))
    return added


def kept_uri(conn: sqlite3.Connection, key: str) -> str | None:
    row = conn.execute("SELECT uri FROM kept WHERE key = ?", (key,)).fetchone()
    return row[0] if row else None


def solid_kept(conn: sqlite3.Connection, colour: str) -> tuple[str, str] | None:
    """(key, uri) of the kept item of a flat-colour class, if an earlier wave kept one."""
    row = conn.execute("SELECT key, uri FROM kept WHERE solid = ? ORDER BY rowid LIMIT 1", (colour,)).fetchone()
    return (row[0], row[1]) if row else None


def textured_hashes(conn: sqlite3.Connection) -> tuple[np.ndarray, np.ndarray]:
    """(rowids int64, pHashes uint64) of every kept item with a pHash and no flat-colour class."""
    n = conn.execute("SELECT count(*) FROM kept WHERE phash IS NOT NULL AND solid = ''").fetchone()[0]
    ids, hashes = np.empty(n, np.int64), np.empty(n, np.int64)
    cur = conn.execute("SELECT rowid, phash FROM kept WHERE phash IS NOT NULL AND solid = '' ORDER BY rowid")
    i = 0
    while rows := cur.fetchmany(4096):    # small blocks: freed row tuples stay in the heap as free space
        block = np.asarray(rows, dtype=np.int64).reshape(-1, 2)
        ids[i:i + len(block)], hashes[i:i + len(block)] = block[:, 0], block[:, 1]
        i += len(block)
    return ids[:i], hashes[:i].view(np.uint64)


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
