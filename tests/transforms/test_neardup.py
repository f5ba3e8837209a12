"""Near-dup cores: multi-index hashing finds exactly the brute-force pairs, each once; clustering never
chains beyond one verified pair; split keys still meet every pair; signatures trim borders, class flat
images, and the pixel check tells text cards of one layout apart."""
from __future__ import annotations

import io
from itertools import combinations

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFont, ImageOps

from polycap.transforms.neardup import NearMember, all_pairs_within, block_keys, centre_rounds, same_picture
from polycap.transforms.signature import signature

FONT = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"


def planted(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    h = rng.integers(0, np.iinfo(np.int64).max, n, dtype=np.int64).astype(np.uint64)
    for i in range(0, n, 3):                         # every third hash: a copy of an earlier one, 0..10 bits off
        h[i] = h[rng.integers(0, n)]
        for b in rng.choice(64, rng.integers(0, 11), replace=False):
            h[i] ^= np.uint64(1) << np.uint64(b)
    return h


@pytest.mark.parametrize("t", [0, 2, 5, 8, 10])
def test_multi_index_pairs_equal_brute_force_each_once(t):
    h = planted(1200, t)
    a, b, _ = all_pairs_within(h, t)
    got = list(zip(a.tolist(), b.tolist()))
    d = np.bitwise_count(h[:, None] ^ h[None, :])
    want = {(i, k) for i, k in combinations(range(len(h)), 2) if d[i, k] <= t}
    assert len(got) == len(set(got)) and set(got) == want and want


def test_no_chain_merges_beyond_the_radius():
    # 0 - 1 - 2: 0 and 2 are not a verified pair. 1 joins 0; 2 must stay (not dropped "via" 1).
    centre, undecided = centre_rounds(np.array([0, 1]), np.array([1, 2]), 3, rounds=4)
    assert centre.tolist() == [0, 0, 2] and undecided == 0
    # a long chain, best copy first: every other node is a centre, each drop names a direct neighbour
    n = 9
    centre, _ = centre_rounds(np.arange(n - 1), np.arange(1, n), n, rounds=16)
    assert centre.tolist() == [0, 0, 2, 2, 4, 4, 6, 6, 8]


def test_split_key_block_pairs_meet_every_pair():
    # a split key's block pair (lo, hi) owns the pairs between blocks lo and hi; both items must reach it
    keys = [f"k{i}" for i in range(200)]
    nb = 5
    slots = {k: block_keys(k, nb) for k in keys}
    block = {k: next(lo for lo, hi in s if lo == hi) for k, s in slots.items()}
    assert len(set(block.values())) == nb and all(len(set(s)) == nb for s in slots.values())
    for a, b in combinations(keys, 2):
        owner = (min(block[a], block[b]), max(block[a], block[b]))
        assert owner in slots[a] and owner in slots[b]


def card(text: str, size=(800, 450)) -> Image.Image:
    im = Image.new("RGB", size, (246, 244, 238))
    d = ImageDraw.Draw(im)
    d.text((60, 190), text, fill=(30, 30, 40), font=ImageFont.truetype(FONT, 34))
    return im


def member(im: Image.Image, key: str) -> NearMember:
    s = signature(im, 100)
    return NearMember(key=key, phash=int(s.phash, 16), rank=(), thumb=s.thumb, solid=s.solid)


def reencoded(im: Image.Image, q: int) -> Image.Image:
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=q)
    return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")


def test_signature_trims_borders_and_classes_flat_images():
    im = card("The assembly will change its name")
    framed = ImageOps.expand(im, 30, fill=(0, 0, 0))
    a, b = signature(im, 100), signature(framed, 100)
    assert (int(a.phash, 16) ^ int(b.phash, 16)).bit_count() <= 8 and b.bordered   # untrimmed: 14
    red, big_red = signature(Image.new("RGB", (64, 48), (200, 30, 30)), 100), signature(
        Image.new("RGB", (640, 480), (201, 31, 29)), 100)
    assert red.solid and red.solid == big_red.solid and not a.solid


def test_pixel_check_tells_text_cards_of_one_layout_apart():
    one = card("Welsh AMs worried about looking like muppets")
    other = card("Plans to change the name of the assembly")
    assert same_picture(member(one, "a"), member(reencoded(one, 30), "b"), 8)[0]
    assert not same_picture(member(one, "a"), member(other, "c"), 8)[0]


def test_key_sizes_split_every_key_over_the_bound():
    """KeySizes bounds a meeting key's items from the counts of heavy substring values only: never below
    the true count of a key over the bound (a key is split early, never late)."""
    from collections import Counter

    from polycap.transforms.neardup import KeySizes, item_keys, own_values

    t, bound = 8, 64
    hashes = [int(x) for x in planted(400, 3)] + [int(planted(1, 4)[0]) ^ (1 << b) for b in range(60)] * 2
    true = Counter(j << 32 | v for h in hashes for j, v in item_keys(h, t))
    q = KeySizes({}, t, bound).q
    heavy = {v: n for v, n in Counter(v for h in hashes for v in own_values(h, t)).items() if n > q}
    sizes = KeySizes(heavy, t, bound)
    split = {mk: n for h in hashes for mk, n in sizes.keys(h) if n}
    assert any(n > bound for n in true.values())
    for mk, n in true.items():
        if n > bound:
            assert split.get(mk, 0) >= n, (mk, n)


@pytest.mark.parametrize("t", [0, 3, 8, 12])
def test_both_plans_find_every_pair_within_t_once(t):
    """Grouping by item_keys and keeping what key_pairs owns finds exactly the brute-force pairs, each
    once, under the EXACT plan (t + 1 substrings) and the MIH plan alike; choose_plan switches by size."""
    from collections import defaultdict

    from polycap.transforms.neardup import EXACT, MIH, choose_plan, item_keys, key_pairs

    h = planted(300, t)
    d = np.bitwise_count(h[:, None] ^ h[None, :])
    want = {(i, k) for i, k in combinations(range(len(h)), 2) if d[i, k] <= t}
    for plan in (EXACT, MIH):
        groups = defaultdict(list)
        for i, x in enumerate(h.tolist()):
            for key in item_keys(x, t, plan):
                groups[key].append(i)
        got = []
        for (j, meet), items in groups.items():
            got += [(items[a], items[b]) for a, b in key_pairs([int(h[i]) for i in items], j, meet, t, None, plan)]
        assert len(got) == len(set(got)) and set(got) == want and want
    assert choose_plan(1000, 8, 2048) == EXACT and choose_plan(3000, 8, 2048) == MIH == choose_plan(1000, 8, 512)
