"""Drop exact (same content key) and near (pHash Hamming <= t, found by LSH banding) duplicate images."""
from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import apache_beam as beam
from apache_beam.metrics import Metrics

from polycap.schemas import Reason, Reject, Sample
from polycap.schemas.config import DedupConfig
from polycap.transforms.decode import phash_hex
from polycap.transforms.plumbing import RoutingDoFn, make_reject, route_stage

STAGE = "dedup"
HASH_BITS = 64
VERIFY_BLOCK = 1024   # rows per numpy block when verifying a bucket: memory ~ 8 * VERIFY_BLOCK * bucket bytes

# phash_hex lives with the decode that computes it; re-exported here, where the dedup contract names it.
__all__ = ["DedupImages", "phash_hex"]

# Data flow and memory model (nothing ever holds the whole dataset in one place):
#  1. Each sample is projected to a small Member(key, phash, area, uri), ~100 bytes, no image bytes.
#  2. Each Member is emitted under `bands` keys (band index, band value). By pigeonhole, two 64-bit
#     hashes within t bits agree exactly on at least one of t+1 bands, so grouping by band key finds
#     every pair within t. A bucket holds the Members whose band value collides: about
#     N / 2**(64/bands) of them for uniform hashes (N=1e6, t=8: ~7.8k per bucket), verified in numpy
#     blocks (O(bucket^2) popcounts, but only within a bucket). Fewer, wider bands shrink buckets
#     exponentially at the price of the pigeonhole guarantee (recall becomes probabilistic).
#  3. Each bucket emits a spanning forest of its verified pairs (member -> smallest key of its local
#     component), and each pair only from the first band it agrees on, so edges are O(near-dup members).
#  4. One final group holds only those edges (members with at least one near duplicate, not the
#     dataset), runs union-find, and picks one kept image per component.
#  5. A CoGroupByKey on the content key joins the drop decisions back to the samples; a key's group
#     holds that key's exact copies only (the one shuffle that carries image bytes).


@dataclass(frozen=True, order=True)
class Member:
    key: str
    phash: int
    area: int       # of the original image (largest wins)
    uri: str
    width: int = 0
    height: int = 0


def band_widths(bands: int) -> list[int]:
    """Split 64 bits into `bands` contiguous bands whose widths differ by at most one bit."""
    bands = max(1, min(HASH_BITS, bands))
    base, extra = divmod(HASH_BITS, bands)
    return [base + 1 if i < extra else base for i in range(bands)]


def band_keys(h: int, widths: list[int]) -> list[tuple[int, int]]:
    """[(band index, band value)] of a 64-bit hash, high bits first."""
    out, shift = [], HASH_BITS
    for i, w in enumerate(widths):
        shift -= w
        out.append((i, (h >> shift) & ((1 << w) - 1)))
    return out


def hamming(a: int, b: int) -> int:
    return (a ^ b).bit_count()


def n_bands(cfg: DedupConfig) -> int:
    return cfg.bands if cfg.bands > 0 else cfg.max_hamming + 1


def choose_kept(members: Iterable[Member]) -> Member:
    """Deterministic representative: largest original area, then smallest key."""
    return min(members, key=lambda m: (-m.area, m.key))


def to_member(sample: Sample) -> Member | None:
    """The near-dup projection of a sample, or None when it carries no (valid) pHash."""
    try:
        h = int(sample.hashes.phash or "", 16)
    except ValueError:
        return None
    im = sample.image
    w, ht = (im.orig_width, im.orig_height) if im.orig_width and im.orig_height else (im.width, im.height)
    return Member(sample.key, h, w * ht, sample.source.uri, im.width, im.height)


def verified_pairs(members: list[Member], max_hamming: int) -> Iterator[tuple[int, int, int]]:
    """(i, j, distance) for i < j with Hamming(members[i], members[j]) <= max_hamming, numpy-blocked."""
    import numpy as np

    hashes = np.array([m.phash for m in members], dtype=np.uint64)
    n = len(members)
    for start in range(0, n, VERIFY_BLOCK):
        block = hashes[start:start + VERIFY_BLOCK]
        dist = np.bitwise_count(block[:, None] ^ hashes[None, :])
        rows, cols = np.nonzero(dist <= max_hamming)
        for r, c in zip(rows.tolist(), cols.tolist()):
            i = start + r
            if i < c:
                yield i, c, int(dist[r, c])


class UnionFind:
    """Disjoint sets over hashable items with path halving; the root of a set is its smallest item."""

    def __init__(self) -> None:
        self.parent: dict[Any, Any] = {}

    def find(self, x: Any) -> Any:
        self.parent.setdefault(x, x)
        while self.parent[x] != x:
            self.parent[x] = self.parent[self.parent[x]]
            x = self.parent[x]
        return x

    def union(self, a: Any, b: Any) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            lo, hi = (ra, rb) if ra < rb else (rb, ra)
            self.parent[hi] = lo


def bucket_edges(band: int, members: Iterable[Member], cfg: DedupConfig) -> Iterator[tuple[Member, Member]]:
    """Spanning-forest edges (member, local root) among the verified near pairs of one LSH bucket."""
    # one Member per key (exact copies collide in every band); the copy with the smallest uri represents it
    uniq = sorted({m.key: m for m in sorted(members, key=lambda m: m.uri, reverse=True)}.values())
    if len(uniq) < 2:
        return
    widths = band_widths(n_bands(cfg))
    uf = UnionFind()
    for i, j, _ in verified_pairs(uniq, cfg.max_hamming):
        a, b = band_keys(uniq[i].phash, widths), band_keys(uniq[j].phash, widths)
        first_shared = next(k for k in range(len(widths)) if a[k] == b[k])
        if first_shared == band:   # the same pair is verified in the first band it shares only
            uf.union(i, j)
    for i in sorted(uf.parent):
        root = uf.find(i)
        if root != i:
            yield uniq[i], uniq[root]


def components(edges: Iterable[tuple[Member, Member]]) -> Iterator[tuple[str, tuple[str, str, int]]]:
    """Union-find over edges -> (dropped key, (kept key, kept uri, Hamming to kept)) per non-kept member."""
    uf = UnionFind()
    by_key: dict[str, Member] = {}
    for a, b in edges:
        for m in (a, b):
            if m.key not in by_key or m.uri < by_key[m.key].uri:
                by_key[m.key] = m
        uf.union(a.key, b.key)
    groups: dict[str, list[Member]] = {}
    for key in sorted(by_key):
        groups.setdefault(uf.find(key), []).append(by_key[key])
    for members in groups.values():
        kept = choose_kept(members)
        for m in members:
            if m.key != kept.key:
                yield m.key, (kept.key, kept.uri, hamming(m.phash, kept.phash))


def decide(key: str, samples: Iterable[Sample], drops: list[tuple[str, str, int]],
           cfg: DedupConfig) -> list[Sample | Reject]:
    """One content key's outcomes: every copy rejected when the key is a near duplicate of another key
    (`drops` names the kept one), else the copy with the smallest source uri kept (and the other exact
    copies rejected when `cfg.exact`)."""
    if drops:
        kept_key, kept_uri, dist = min(drops)
        t = cfg.max_hamming
        how = (f"pHash Hamming {dist} <= dedup.max_hamming {t}" if dist <= t else
               f"pHash Hamming {dist} to the kept image, linked by a chain of pairs each <= {t}")
        return [make_reject(s, STAGE, Reason.DUPLICATE, f"near duplicate of {kept_key} ({how}; kept {kept_uri})")
                for s in samples]
    samples = list(samples)
    if not samples:
        return []
    first = min(range(len(samples)), key=lambda i: (samples[i].source.uri, samples[i].source.name, i))
    kept_uri = samples[first].source.uri
    return [s if i == first or not cfg.exact else
            make_reject(s, STAGE, Reason.DUPLICATE, f"exact duplicate of {key} (same content sha256; kept {kept_uri})")
            for i, s in enumerate(samples)]


class _BandFn(beam.DoFn):
    def __init__(self, cfg: DedupConfig):
        self.widths = band_widths(n_bands(cfg))

    def process(self, sample: Sample):
        m = to_member(sample)
        if m is not None:
            for bk in band_keys(m.phash, self.widths):
                yield bk, m


class _BucketFn(beam.DoFn):
    def __init__(self, cfg: DedupConfig):
        self.cfg = cfg
        self.bucket_size = Metrics.distribution(STAGE, "lsh_bucket_size")

    def process(self, kv):
        (band, _value), members = kv
        members = list(members)
        self.bucket_size.update(len(members))
        yield from bucket_edges(band, members, self.cfg)


class _DecideFn(RoutingDoFn):
    """Per content key: keep one sample, or none when the key is a near duplicate of another key."""

    stage = STAGE

    def __init__(self, cfg: DedupConfig):
        self.cfg = cfg

    def process(self, kv):
        key, grouped = kv
        drops = list(grouped["drop"])
        for out in decide(key, grouped["samples"], drops, self.cfg):
            if isinstance(out, Reject):
                self.count("near_duplicates" if drops else "exact_duplicates")
            yield self.route(out)


def _key_by_content(s: Sample) -> tuple[str, Sample]:
    return s.key, s


class DedupImages(beam.PTransform):
    """Decoded Samples -> (one Sample per duplicate group, Rejects of stage "dedup", reason duplicate)."""

    def __init__(self, cfg: DedupConfig):
        super().__init__()
        self.cfg = cfg

    def expand(self, pcoll):
        keyed = pcoll | "KeyByContent" >> beam.Map(_key_by_content)
        if self.cfg.near:
            drops = (pcoll
                     | "LshBands" >> beam.ParDo(_BandFn(self.cfg))
                     | "GroupBuckets" >> beam.GroupByKey()
                     | "VerifyBuckets" >> beam.ParDo(_BucketFn(self.cfg))
                     | "OneEdgeGroup" >> beam.Map(lambda e: (None, e))
                     | "GroupEdges" >> beam.GroupByKey()
                     | "Components" >> beam.FlatMap(lambda kv: components(kv[1])))
        else:
            drops = pcoll.pipeline | "NoNearDups" >> beam.Create([])
        joined = {"samples": keyed, "drop": drops} | "JoinDecisions" >> beam.CoGroupByKey()
        return route_stage(joined, "Decide", _DecideFn(self.cfg), STAGE)
