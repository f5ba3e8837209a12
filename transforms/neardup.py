"""Near-duplicate search at scale: multi-index hashing over pHash substrings (complete within the radius),
a pixel check of each candidate pair, and clustering around the best copy (the cores and the per-key
steps that transforms/dedup.py runs in Beam).

Candidates (Norouzi et al., "Fast Search in Hamming Space with Multi-Index Hashing", CVPR 2012): the 64
bits are cut into m = ceil((t + 1) / 3) substrings, so two hashes within t bits agree on some substring
within s = floor(t / m) <= 2 bits. Each item is emitted under its substring value and every value one bit
away (width + 1 keys per substring); two substrings within 2 bits meet at a shared key. A pair is emitted
only from its first such substring and at one canonical meeting key, so it appears exactly once.
The pair work of a key group is one compiled kernel (transforms/neardup_kernel.py, numba), which compares
only the pairs the key can own; the Beam step (`key_pairs`) and the single-process search
(`all_pairs_within`) both run it, and `key_pairs` checks a key of up to SMALL_KEY items in plain ints.
No key holds more than `bound` items: a larger group is cut into hash blocks and keyed per block pair.
Clustering never chains: every dropped image names a kept centre that it was verified against directly.
"""
from __future__ import annotations

import functools
import hashlib
import math
from collections.abc import Iterable
from dataclasses import dataclass
from itertools import combinations

import numpy as np

from polycap.transforms.pixel_check import BLOCK_TESTS, detail_match

HASH_BITS = 64


@dataclass(frozen=True)
class NearMember:
    """What near-dup search needs of one content key; `rank` sorts the best copy first."""
    key: str
    phash: int
    rank: tuple        # transforms/dedup.rank: smaller is the better copy
    uri: str = ""
    thumb: bytes = b""
    solid: str = ""    # flat-colour class: such images are matched exactly by class, never by pHash


# ---- candidates: multi-index hashing ---------------------------------------------------------------

def mih_widths(t: int) -> list[int]:
    """Substring widths (high bits first) for radius t: m = ceil((t+1)/3) substrings of ~64/m bits."""
    return _split(max(2, math.ceil((t + 1) / 3)))   # at least 2: a substring and an item id pack into 64 bits


def _split(m: int) -> list[int]:
    base, extra = divmod(HASH_BITS, m)
    return [base + 1 if i < extra else base for i in range(m)]


# Two plans of the same search, both complete within t. MIH: the substrings above, each item under
# 1 + width keys per substring (67 for t = 8), keys of ~N / 2**21 items. EXACT: t + 1 substrings, two
# hashes within t agree exactly on one (pigeonhole), each item under t + 1 keys (9 for t = 8), keys of
# ~N / 2**7 items: 7x fewer shuffled elements, quadratic key work. `choose_plan` takes EXACT while its
# keys stay small (an expected EXACT_KEY_ITEMS items) and no key can pass the bound (N <= bound, so EXACT
# needs no counts of its own values), which a count of the items decides at run time.
MIH, EXACT = 0, 1
EXACT_KEY_ITEMS = 32
PLAN_SHIFT = 40      # packed key: plan << 40 | substring index << 32 | meeting value


def plan_widths(t: int, plan: int = MIH) -> list[int]:
    return _split(t + 1) if plan == EXACT else mih_widths(t)


def choose_plan(n_items: int, t: int, bound: int) -> int:
    """EXACT for at most `bound` items while its keys are expected to hold <= EXACT_KEY_ITEMS items (and it
    has >= 4-bit keys), else MIH."""
    w = min(_split(t + 1))
    return EXACT if w >= 4 and n_items <= min(bound, EXACT_KEY_ITEMS << w) else MIH


def substrings(h: np.ndarray, widths: list[int]) -> list[np.ndarray]:
    out, shift = [], HASH_BITS
    for w in widths:
        shift -= w
        out.append((h >> np.uint64(shift)) & np.uint64((1 << w) - 1))
    return out


def meet_radius(t: int, widths: list[int]) -> int:
    return 1 if t // len(widths) >= 1 else 0


def substrings_of(h: int, widths: list[int]) -> list[int]:
    """`substrings` of one hash in plain ints (per item, numpy's call overhead is most of the cost)."""
    out, shift = [], HASH_BITS
    for w in widths:
        shift -= w
        out.append(h >> shift & ((1 << w) - 1))
    return out


def item_keys(h: int, t: int, plan: int = MIH) -> list[tuple[int, int]]:
    """The (substring index, meeting value) keys one hash is grouped under: 1 + width per substring (MIH),
    one per substring (EXACT)."""
    widths = plan_widths(t, plan)
    r = meet_radius(t, widths)
    return [(j, v ^ flip) for j, v in enumerate(substrings_of(h, widths))
            for flip in [0, *(1 << b for b in range(widths[j] * r))]]


def own_values(h: int, t: int, plan: int = MIH) -> list[int]:
    """The hash's substring values, each packed as plan << 40 | j << 32 | value (what is counted)."""
    return [plan << PLAN_SHIFT | j << 32 | v for j, v in enumerate(substrings_of(h, plan_widths(t, plan)))]


class KeySizes:
    """Upper bounds on the items under an item's meeting keys, from the counts of substring values.

    A meeting key v holds the items whose own value lies within the meeting radius r of v, so its count is
    the sum of those values' counts. Only values counted more than q = bound // (width + 1) times are known
    (`heavy`, a side input: few values). A key without a heavy value in reach holds at most (width + 1) * q
    <= bound items; for one with, the unknown values count q each: an upper bound, so a key is split a
    little early (never late) and the split stays complete whatever the block count."""

    def __init__(self, heavy: dict[int, int], t: int, bound: int, plan: int = MIH):
        self.t, self.bound, self.plan = t, bound, plan
        self.widths = plan_widths(t, plan)
        self.r = meet_radius(t, self.widths)
        self.q = bound // (max(self.widths) + 1)
        by_j: dict[int, list[tuple[int, int]]] = {}
        for packed, count in heavy.items():
            if packed >= 0 and packed >> PLAN_SHIFT == plan:
                by_j.setdefault(packed >> 32 & 0xFF, []).append((packed & 0xFFFFFFFF, count))
        self.heavy = {j: (np.array([v for v, _ in vc], dtype=np.uint64), np.array([c for _, c in vc], dtype=np.int64))
                      for j, vc in by_j.items()}

    def keys(self, h: int) -> list[tuple[int, int]]:
        """(packed key plan << 40 | j << 32 | v, upper bound on its items, or 0 when it cannot exceed the
        bound)."""
        out, tag = [], self.plan << PLAN_SHIFT
        for j, v in item_keys(h, self.t, self.plan):
            hv = self.heavy.get(j)
            n = 0
            if hv is not None:
                near = np.bitwise_count(hv[0] ^ np.uint64(v)) <= self.r
                if near.any():
                    reach = 1 + self.widths[j] * self.r
                    n = int(hv[1][near].sum()) + (reach - int(near.sum())) * self.q
            out.append((tag | j << 32 | v, n if n > self.bound else 0))
        return out


@functools.cache
def _layout(t: int, plan: int) -> tuple[int, np.ndarray, np.ndarray, int]:
    """(s, substring shifts, substring masks, classes = 1 + the widest substring) for the kernels."""
    widths = plan_widths(t, plan)
    shifts = HASH_BITS - np.cumsum(widths)
    masks = np.array([(1 << w) - 1 for w in widths], dtype=np.uint64)
    return min(2, t // len(widths)), shifts.astype(np.int64), masks, 1 + max(widths)


_NO_BLOCKS = np.empty(0, np.int64)
# Keys of up to SMALL_KEY items are paired in plain ints: faster than the kernel's call below ~8 items (1.5 vs
# 3.1 us for 2 items; 4.8 vs 3.4 us for 8). Bigger keys too, until a process has checked PLAIN_PAIRS pairs
# that way (~0.3 s): importing numba costs 0.8 s and ~130 MB of RSS a process (and ~6 s to compile where
# its cache is cold), more than a small job's whole pair work; a process with more than that to do switches
# to the kernel for good.
SMALL_KEY = 8
PLAIN_PAIRS = 200_000
_plain_pairs_done = 0   # per process; a race between threads only moves the switch by a key


def owns(a: int, b: int, j: int, meet: int, t: int, widths: list[int]) -> bool:
    """Whether the key `meet` of substring j owns the pair (a, b): within t, j is the first substring
    within s bits, and `meet` is the pair's canonical meeting value (the kernel's rule, one pair in plain
    ints)."""
    if (a ^ b).bit_count() > t:
        return False
    s = min(2, t // len(widths))
    sa, sb = substrings_of(a, widths), substrings_of(b, widths)
    if next(i for i, (x, y) in enumerate(zip(sa, sb)) if (x ^ y).bit_count() <= s) != j:
        return False
    x, y = sa[j], sb[j]
    d = x ^ y
    if d == 0:
        return x == meet
    if d.bit_count() == 1:
        return min(x, y) == meet
    low = d & -d
    return min(x ^ low, x ^ (d ^ low)) == meet


def pairs_within(hashes: list[int], t: int) -> list[tuple[int, int]]:
    """Index pairs (i < k) of hashes within Hamming t, in the order of itertools.combinations."""
    h = np.array(hashes, dtype=np.uint64)
    i, k = np.nonzero(np.triu(np.bitwise_count(h[:, None] ^ h) <= t, 1))
    return list(zip(i.tolist(), k.tolist()))


def key_pairs(hashes: list[int], j: int, meet: int, t: int,
              blocks: list[int] | None = None, plan: int = MIH) -> list[tuple[int, int]]:
    """Index pairs (i < k) of one key's items that this key owns (within t, first close substring j,
    canonical meeting value). `blocks`: the items' blocks in a split key's (lo, hi) group with lo != hi,
    which owns only the pairs across its two blocks (pairs inside one block belong to (b, b))."""
    if len(hashes) < 2:
        return []
    global _plain_pairs_done
    n_pairs = len(hashes) * (len(hashes) - 1) // 2
    if len(hashes) <= SMALL_KEY or _plain_pairs_done + n_pairs <= PLAIN_PAIRS:
        pairs: Iterable[tuple[int, int]] = combinations(range(len(hashes)), 2)
        if len(hashes) > SMALL_KEY:
            _plain_pairs_done += n_pairs
            pairs = pairs_within(hashes, t)       # the same order, in one numpy pass
        widths = plan_widths(t, plan)
        return [(i, k) for i, k in pairs
                if (blocks is None or blocks[i] != blocks[k]) and owns(hashes[i], hashes[k], j, meet, t, widths)]
    from polycap.transforms.neardup_kernel import key_group_pairs  # numba: imported once a key needs it

    s, shifts, masks, classes = _layout(t, plan)
    b = np.asarray(blocks, dtype=np.int64) if blocks is not None else _NO_BLOCKS
    i, k = key_group_pairs(np.array(hashes, dtype=np.uint64), np.uint64(meet), j, t, s, shifts, masks, b,
                           classes)
    return list(zip(i.tolist(), k.tolist()))


def all_pairs_within(h: np.ndarray, t: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every pair (i < k) of `h` within Hamming t, each exactly once, and the items of the biggest key.
    The single-process form of the Beam graph (emit keys -> group by key -> pairs the key owns): one
    substring at a time, each key and item id packed into one uint64 and sorted in place (the shuffle),
    then every group through the same compiled pair work as the Beam step's `key_pairs`."""
    from polycap.transforms.neardup_kernel import sorted_pairs
    widths = mih_widths(t)
    r = meet_radius(t, widths)
    s, shifts, masks, classes = _layout(t, MIH)
    h = np.ascontiguousarray(h, dtype=np.uint64)
    id_bits = max(1, int(len(h) - 1).bit_length())
    assert max(widths) + id_bits <= 64, "too many items to pack keys and ids into 64 bits"
    ids = np.arange(len(h), dtype=np.uint64)
    shift = np.uint64(id_bits)
    found_a, found_b, biggest = [], [], np.zeros(0, np.int64)
    for j, sub in enumerate(substrings(h, widths)):
        packed: np.ndarray = np.empty((len(h), 1 + widths[j] * r), dtype=np.uint64)
        for c in range(packed.shape[1]):   # column by column: no (n, width) temporaries
            flip = np.uint64(0) if c == 0 else np.uint64(1 << (c - 1))
            packed[:, c] = ((sub ^ flip) << shift) | ids
        packed = packed.ravel()
        packed.sort()
        a, b, at, size = sorted_pairs(packed, id_bits, h, j, t, s, shifts, masks, classes)
        if size > biggest.size:
            biggest = (packed[at:at + size] & np.uint64((1 << id_bits) - 1)).astype(np.int64)
        found_a.append(a)
        found_b.append(b)
        del packed
    return np.concatenate(found_a), np.concatenate(found_b), biggest


# ---- bounded keys ----------------------------------------------------------------------------------

def stable_hash(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big")


def n_blocks(count: int, bound: int) -> int:
    """Blocks for a key of `count` items so that two blocks hold about bound/2 items: 1 when it fits."""
    return 1 if count <= bound else math.ceil(4 * count / bound)


def block_keys(item_key: str, nb: int) -> list[tuple[int, int]]:
    """The block pairs (lo, hi) an item of block b joins: (b, b) and (b, o) for every other block o."""
    b = stable_hash(item_key) % nb
    return [(min(b, o), max(b, o)) for o in range(nb)]


# ---- pixel check and the best copy -----------------------------------------------------------------

def same_picture(a: NearMember, b: NearMember, t: int) -> tuple[bool, str]:
    """The verification of one candidate pair: pHash within t and matching fine detail; (verdict, detail)."""
    dist = (a.phash ^ b.phash).bit_count()
    if dist > t:
        return False, f"pHash Hamming {dist} > {t}"
    if not a.thumb or not b.thumb:
        return True, f"pHash Hamming {dist} <= {t} (no thumbnail to check)"
    ok, shares, (scale, _, _) = detail_match(a.thumb, b.thumb)
    blocks = ", ".join(f"{s:.2f} >= {c}" for s, (c, _) in zip(shares, BLOCK_TESTS))
    where = "" if scale == 1.0 else f" at a {scale:.3g} crop"
    return ok, (f"pHash Hamming {dist} <= {t}, detail blocks correlating {blocks}{where} "
                f"({'match' if ok else 'too few'})")


# ---- clustering around centres ---------------------------------------------------------------------

def centre_rounds(better: np.ndarray, worse: np.ndarray, n: int, rounds: int) -> tuple[np.ndarray, int]:
    """Centre of each of n nodes from verified edges better -> worse (node ids ranked: lower = better copy).

    Round 1: a node with no better neighbour is a centre. Each later round, an undecided node joins the
    best centre among its better neighbours, or becomes a centre once all of them have joined others.
    Returns (centre per node: itself for centres, -1 for nodes still undecided, which are kept; undecided)."""
    centre = np.full(n, -1, dtype=np.int64)
    has_better = np.zeros(n, bool)
    has_better[worse] = True
    centre[~has_better] = np.arange(n)[~has_better]
    for _ in range(rounds - 1):
        undecided = centre < 0
        e = undecided[worse]
        b, w = better[e], worse[e]
        is_centre = centre[b] == b
        best = np.full(n, n, dtype=np.int64)
        np.minimum.at(best, w[is_centre], b[is_centre])
        pending = np.zeros(n, bool)
        pending[w[centre[b] < 0]] = True
        join = undecided & (best < n)
        centre[join] = best[join]
        become = undecided & ~join & ~pending
        centre[become] = np.arange(n)[become]
    return centre, int((centre < 0).sum())


# The same rounds one node at a time, as the Beam graph runs them (transforms/dedup.py): a node's status is
# CENTRE, JOINED (with the centre's key and the pair check that links them) or UNDECIDED; each round a node
# reads the previous round's status of its better neighbours.
CENTRE, JOINED, UNDECIDED = "centre", "joined", "undecided"


def first_status(has_better: bool) -> tuple:
    """Round 1: a node with no better neighbour is a centre."""
    return (UNDECIDED,) if has_better else (CENTRE,)


def next_status(status: tuple, better: list[tuple]) -> tuple:
    """One later round for one node. `better`: (rank, key, uri, status kind, pair detail) per better
    neighbour. Joins the best centre among them, or becomes a centre once none of them is undecided."""
    if status[0] != UNDECIDED:
        return status
    centres = [m for m in better if m[3] == CENTRE]
    if centres:
        _, key, uri, _, how = min(centres)
        return (JOINED, key, uri, how)
    return status if any(m[3] == UNDECIDED for m in better) else (CENTRE,)
