"""The compiled pair work of one near-dup key group (numba): which pairs of a multi-index key's items are
within t bits and owned by that key (transforms/neardup.py states the key plan and the ownership rule)."""
from __future__ import annotations

import numpy as np
from numba import njit, types
from numba.extending import intrinsic

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
def group_pairs(hg, g, meet, j, t, s, shifts, masks, blocks, gh, order, bounds, out_a, out_b, n):
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
def key_group_pairs(h, meet, j, t, s, shifts, masks, blocks, classes):
    """`group_pairs` of one key's items (the Beam step's group)."""
    g = h.size
    out_a, out_b = np.empty(max(16, g), np.int64), np.empty(max(16, g), np.int64)
    out_a, out_b, n = group_pairs(h, g, meet, j, t, s, shifts, masks, blocks, np.empty(g, np.uint64),
                                   np.empty(g, np.int64), np.empty(classes + 1, np.int64), out_a, out_b, 0)
    return out_a[:n], out_b[:n]


@njit(cache=True, nogil=True)
def sorted_pairs(pk, id_bits, h, j, t, s, shifts, masks, classes):
    """`group_pairs` of every group of sorted `key << id_bits | id` records (one substring's keys, as a
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
            out_a, out_b, n = group_pairs(hg, g, key, j, t, s, shifts, masks, none, gh, order, bounds,
                                           out_a, out_b, n)
            for q in range(n0, n):              # positions -> ids; records are in id order, so lo < hi
                out_a[q], out_b[q] = ig[out_a[q]], ig[out_b[q]]
        lo = hi
    return out_a[:n], out_b[:n], big_at, big
