"""Dedup against earlier waves of a run made in waves (pipelines/waves.py): a sample whose content key an
earlier wave kept, or that is a near duplicate (same check as transforms/dedup.py) of an item an earlier wave
kept, is a `duplicate` reject naming that kept item; the wave's dedup then runs on the rest, and its kept
members are recorded for the waves after it (sharding/wave_index.py)."""
# An earlier wave's copy always stays: a later, better copy of an image already written cannot replace it
# (it is dropped naming the earlier one), where one graph over all inputs would have kept the better copy.
# Near-dup candidates: the same multi-index split of the pHash as transforms/neardup.py (m substrings; two
# hashes within t agree on one substring within s = t // m <= 2 bits). The earlier waves' substrings live on
# disk in the wave index (sharding/wave_index.py `near`): each query reads the rows under every value within s
# bits of each of its substrings, so a wave's process holds no per-item state of the earlier waves (loading
# their pHashes cost ~56 B per kept item in every wave's child: bench/results/wave_index_scale.json).
from __future__ import annotations

import json
from itertools import combinations
from typing import Any

import apache_beam as beam
import numpy as np

from polycap.schemas import Reason, Sample
from polycap.schemas.config import DedupConfig
from polycap.sharding import wave_index as wi
from polycap.transforms.dedup import STAGE, member_order, to_member
from polycap.transforms.neardup import NearMember, mih_widths, same_picture, substrings_of
from polycap.transforms.plumbing import RoutingDoFn, make_reject, route_stage


def near_split(t: int) -> tuple[list[int], list[list[int]]]:
    """Substring widths for radius t and, per substring, the masks of the values within s bits of a value."""
    widths = mih_widths(t)
    s = min(2, t // len(widths))
    return widths, [[sum(1 << b for b in bits) for r in range(s + 1) for bits in combinations(range(w), r)]
                    for w in widths]


class EarlierHashes:
    """The earlier waves' kept pHashes in the wave index, searchable within Hamming t (complete: every item
    within t is found). `wi.use_near_widths(folder, near_split(t)[0])` must have run on the index."""

    def __init__(self, conn: Any, t: int):
        self.conn, self.t = conn, t
        self.widths, self.flips = near_split(t)

    def keys(self, phash: int) -> list[int]:
        return [j << 32 | v ^ f for j, (v, flips) in enumerate(zip(substrings_of(phash, self.widths), self.flips))
                for f in flips]

    def within(self, phash: int) -> list[tuple[int, int]]:
        """(distance, rowid) of every earlier item within t of `phash`, nearest first."""
        ids, hashes = wi.near_candidates(self.conn, self.keys(phash))
        dist = np.bitwise_count(hashes ^ np.uint64(phash))
        ok = dist <= self.t
        return sorted(zip(dist[ok].tolist(), ids[ok].tolist()))


def _prior_member(row: dict[str, Any]) -> NearMember:
    return NearMember(key=row["key"], phash=row["phash"], rank=row["rank"], uri=row["uri"], thumb=row["thumb"])


class _DropKnownFn(RoutingDoFn):
    """Sample -> itself, or a `duplicate` reject naming the earlier wave's kept item it repeats."""

    stage = STAGE

    def __init__(self, waves_dir: str, cfg: DedupConfig):
        self.waves_dir, self.cfg = waves_dir, cfg

    def setup(self) -> None:
        self.prior = None
        if self.cfg.near:
            wi.use_near_widths(self.waves_dir, near_split(self.cfg.max_hamming)[0])
        self.conn = wi.connect(self.waves_dir, readonly=True)
        if self.cfg.near:
            self.prior = EarlierHashes(self.conn, self.cfg.max_hamming)

    def teardown(self) -> None:
        self.conn.close()

    def process(self, sample: Sample):
        yield self.route(self.check(sample))

    def check(self, sample: Sample) -> Any:
        if self.cfg.exact and (uri := wi.kept_uri(self.conn, sample.key)) is not None:
            self.count("earlier_wave_exact")
            return make_reject(sample, STAGE, Reason.DUPLICATE,
                               f"exact duplicate of {sample.key} (same content sha256; kept {uri} in an earlier wave)")
        m = to_member(sample) if self.prior is not None else None
        if m is None or self.prior is None:
            return sample
        if m.solid:
            hit = wi.solid_kept(self.conn, m.solid)
            if hit:
                return self._near(sample, hit[0], hit[1], f"the same flat colour {m.solid}")
            return sample
        candidates = [_prior_member(r) for r in
                      wi.members_by_rowid(self.conn, [rid for _, rid in self.prior.within(m.phash)])]
        for prior in sorted(candidates, key=member_order):
            ok, how = same_picture(prior, m, self.cfg.max_hamming)
            if ok:
                return self._near(sample, prior.key, prior.uri, how)
        return sample

    def _near(self, sample: Sample, key: str, uri: str, how: str) -> Any:
        self.count("earlier_wave_near")
        return make_reject(sample, STAGE, Reason.DUPLICATE,
                           f"near duplicate of {key} ({how}; kept {uri} in an earlier wave)")


class DropKnown(beam.PTransform):
    """Samples -> (samples no earlier wave kept a copy of, `duplicate` rejects)."""

    def __init__(self, waves_dir: str, cfg: DedupConfig):
        super().__init__()
        self.waves_dir, self.cfg = waves_dir, cfg

    def expand(self, pcoll):
        return route_stage(pcoll, "DropKnown", _DropKnownFn(self.waves_dir, self.cfg), STAGE)


def kept_row(sample: Sample) -> dict[str, Any]:
    """What the index keeps of a sample the wave's dedup kept (sharding/wave_index.KEPT_SCHEMA)."""
    m = to_member(sample)
    return {"key": sample.key, "uri": sample.source.uri,
            "phash": wi.signed64(m.phash) if m is not None else None, "solid": m.solid if m else "",
            "rank": json.dumps(list(m.rank) if m else []), "thumb": m.thumb if m else b""}


class _RecordKeptFn(beam.DoFn):
    """Writes one parquet part of kept members per bundle into the wave's `kept/` folder."""

    def __init__(self, folder: str):
        self.folder = folder

    def start_bundle(self) -> None:
        self.rows: list[dict[str, Any]] = []

    def process(self, sample: Sample):
        self.rows.append(kept_row(sample))

    def finish_bundle(self) -> None:
        if self.rows:
            wi.write_part(self.rows, self.folder)
        self.rows = []


class RecordKept(beam.PTransform):
    """Samples kept by the wave's dedup -> parquet parts under `folder` (nothing downstream)."""

    def __init__(self, folder: str):
        super().__init__()
        self.folder = folder

    def expand(self, pcoll):
        return pcoll | "WriteKeptParts" >> beam.ParDo(_RecordKeptFn(self.folder))
