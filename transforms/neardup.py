"""Near-duplicate search at scale: multi-index hashing over pHash substrings (complete within the radius),
a pixel check of each candidate pair, and clustering around the best copy (the cores and the per-key
steps that transforms/dedup.py runs in Beam).

Candidates (Norouzi et al., "Fast Search in Hamming Space with Multi-Index Hashing", CVPR 2012): the 64
bits are cut into m = ceil((t + 1) / 3) substrings, so two hashes within t bits agree on some substring
within s = floor(t / m) <= 2 bits. Each item is emitted under its substring value and every value one bit
away (width + 1 keys per substring); two substrings within 2 bits meet at a shared key. A pair is emitted
only from its first such substring and at one canonical meeting key, so it appears exactly once.
The pair work of a key group is one compiled kernel (numba, `_group_pairs`), which compares only the pairs
the key can own; the Beam step (`key_pairs`) and the single-process search (`all_pairs_within`) both run it.
No key holds more than `bound` items: a larger group is cut into hash blocks and keyed per block pair.
Clustering never chains: every dropped image names a kept centre that it was verified against directly.
"""
from __future__ import annotations

import functools
import hashlib
import math
from dataclasses import dataclass

import numpy as np
from numba import njit, types
from numba.extending import intrinsic

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


# ---- the pair work of one key group: compiled ------------------------------------------------------
#
# Within the group of meeting value v of substring j, an item's class is the bit in which its substring
# differs from v (0: none; c: bit c - 1; with meeting radius 1 no item differs in more). The canonical
# meeting key of two substrings within 2 bits (the one key that owns the pair) is: the value itself when
# they are equal; the smaller of the two when they differ in one bit; the smaller of the two values
# halfway when they differ in two. Read by class, v owns: pairs inside class 0 (equal substrings, both v);
# pairs of class 0 and class c when v has bit c - 1 clear (v is the smaller of v and v ^ bit); pairs of
# classes c < c' when v has bit c' - 1 clear (the values halfway are v and v ^ both bits, and the higher
# bit decides which is smaller). Nothing else: two items of one class c > 0 have equal substrings and
# meet at their own value. So each pair of substrings within 2 bits is compared once, at its owner, about
# half the comparisons of every pair of every group; a pair within t is kept when substring j is its
# first within s = min(2, t // m) bits (and, in a split key's (lo, hi) group, its items' blocks differ).

@intrinsic
def _popcount(typingctx, x):
    def codegen(context, builder, sig, args):
        return builder.ctpop(args[0])
    return types.int64(types.uint64), codegen


@njit(cache=True, nogil=True)
def _grow(a: np.ndarray) -> np.ndarray:
    b = np.empty(2 * a.size, dtype=a.dtype)
    b[:a.size] = a
    return b


@njit(cache=True, nogil=True)
def _group_pairs(hg, g, meet, j, t, s, shifts, masks, blocks, gh, order, bounds, out_a, out_b, n):
    """The pairs (p < q, positions in hg[:g]) that the key `meet` of substring j owns, appended to
    out_a/out_b from n on (grown when full). blocks: a block per position, or empty (no split).
    gh, order, bounds: scratch of >= g, >= g and >= width + 2 entries. Returns (out_a, out_b, n)."""
    width_classes = bounds.size - 1
    bounds[:] = 0
    shift, mask = np.uint64(shifts[j]), np.uint64(masks[j])
    for p in range(g):                          # counting sort by class; items 2+ bits from v own nothing
        c = ((hg[p] >> shift) & mask) ^ meet
        if c == 0:
            bounds[1] += 1
        elif c & (c - np.uint64(1)) == 0:
            bounds[int(_popcount(c - np.uint64(1))) + 2] += 1
    for c in range(1, width_classes + 1):
        bounds[c] += bounds[c - 1]
    for p in range(g):
        c = ((hg[p] >> shift) & mask) ^ meet
        if c == 0:
            k = 0
        elif c & (c - np.uint64(1)) == 0:
            k = int(_popcount(c - np.uint64(1))) + 1
        else:
            continue
        gh[bounds[k]] = hg[p]
        order[bounds[k]] = p
        bounds[k] += 1
    for c in range(width_classes - 1, 0, -1):   # back to class starts: bounds[c] .. bounds[c + 1]
        bounds[c] = bounds[c - 1]
    bounds[0] = 0
    split = blocks.size > 0
    for ca in range(width_classes):
        for cb in range(ca, width_classes):
            if ca == cb:
                if ca != 0:
                    continue
            elif (meet >> np.uint64(cb - 1)) & np.uint64(1):
                continue
            for pa in range(bounds[ca], bounds[ca + 1]):
                x = gh[pa]
                for pb in range(pa + 1 if ca == cb else bounds[cb], bounds[cb + 1]):
                    d = x ^ gh[pb]
                    if _popcount(d) > t:
                        continue
                    first = -1                  # first substring within s bits: the owner must be j
                    for i in range(j + 1):
                        if _popcount((d >> np.uint64(shifts[i])) & np.uint64(masks[i])) <= s:
                            first = i
                            break
                    if first != j:
                        continue
                    a, b = order[pa], order[pb]
                    if split and blocks[a] == blocks[b]:
                        continue
                    if n == out_a.size:
                        out_a, out_b = _grow(out_a), _grow(out_b)
                    out_a[n], out_b[n] = min(a, b), max(a, b)
                    n += 1
    return out_a, out_b, n


@njit(cache=True, nogil=True)
def _key_pairs(h, meet, j, t, s, shifts, masks, blocks, classes):
    """`_group_pairs` of one key's items (the Beam step's group)."""
    g = h.size
    out_a, out_b = np.empty(max(16, g), np.int64), np.empty(max(16, g), np.int64)
    out_a, out_b, n = _group_pairs(h, g, meet, j, t, s, shifts, masks, blocks, np.empty(g, np.uint64),
                                   np.empty(g, np.int64), np.empty(classes + 1, np.int64), out_a, out_b, 0)
    return out_a[:n], out_b[:n]


@njit(cache=True, nogil=True)
def _sorted_pairs(pk, id_bits, h, j, t, s, shifts, masks, classes):
    """`_group_pairs` of every group of sorted `key << id_bits | id` records (one substring's keys, as a
    shuffle hands them out): pairs (lo, hi) of ids, and (start, size) of the biggest group."""
    id_mask = np.uint64((1 << id_bits) - 1)
    sh = np.uint64(id_bits)
    out_a, out_b = np.empty(1 << 16, np.int64), np.empty(1 << 16, np.int64)
    hg, ig = np.empty(1024, np.uint64), np.empty(1024, np.int64)
    gh, order = np.empty(1024, np.uint64), np.empty(1024, np.int64)
    bounds, none = np.empty(classes + 1, np.int64), np.empty(0, np.int64)
    n, lo, big_at, big = 0, 0, 0, 0
    while lo < pk.size:
        key = pk[lo] >> sh
        hi = lo + 1
        while hi < pk.size and pk[hi] >> sh == key:
            hi += 1
        g = hi - lo
        if g > big:
            big_at, big = lo, g
        if g > 1:
            if g > hg.size:
                hg, ig = np.empty(2 * g, np.uint64), np.empty(2 * g, np.int64)
                gh, order = np.empty(2 * g, np.uint64), np.empty(2 * g, np.int64)
            for p in range(g):
                ig[p] = np.int64(pk[lo + p] & id_mask)
                hg[p] = h[ig[p]]
            n0 = n
            out_a, out_b, n = _group_pairs(hg, g, key, j, t, s, shifts, masks, none, gh, order, bounds,
                                           out_a, out_b, n)
            for q in range(n0, n):              # positions -> ids; records are in id order, so lo < hi
                out_a[q], out_b[q] = ig[out_a[q]], ig[out_b[q]]
        lo = hi
    return out_a[:n], out_b[:n], big_at, big


@functools.cache
def _layout(t: int, plan: int) -> tuple[int, np.ndarray, np.ndarray, int]:
    """(s, substring shifts, substring masks, classes = 1 + the widest substring) for the kernels."""
    widths = plan_widths(t, plan)
    shifts = HASH_BITS - np.cumsum(widths)
    masks = np.array([(1 << w) - 1 for w in widths], dtype=np.uint64)
    return min(2, t // len(widths)), shifts.astype(np.int64), masks, 1 + max(widths)


_NO_BLOCKS = np.empty(0, np.int64)


def key_pairs(hashes: list[int], j: int, meet: int, t: int,
              blocks: list[int] | None = None, plan: int = MIH) -> list[tuple[int, int]]:
    """Index pairs (i < k) of one key's items that this key owns (within t, first close substring j,
    canonical meeting value). `blocks`: the items' blocks in a split key's (lo, hi) group with lo != hi,
    which owns only the pairs across its two blocks (pairs inside one block belong to (b, b))."""
    if len(hashes) < 2:
        return []
    s, shifts, masks, classes = _layout(t, plan)
    b = np.asarray(blocks, dtype=np.int64) if blocks is not None else _NO_BLOCKS
    i, k = _key_pairs(np.array(hashes, dtype=np.uint64), np.uint64(meet), j, t, s, shifts, masks, b, classes)
    return list(zip(i.tolist(), k.tolist()))


def all_pairs_within(h: np.ndarray, t: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every pair (i < k) of `h` within Hamming t, each exactly once, and the items of the biggest key.
    The single-process form of the Beam graph (emit keys -> group by key -> pairs the key owns): one
    substring at a time, each key and item id packed into one uint64 and sorted in place (the shuffle),
    then every group through the same compiled pair work as the Beam step's `key_pairs`."""
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
        a, b, at, size = _sorted_pairs(packed, id_bits, h, j, t, s, shifts, masks, classes)
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
