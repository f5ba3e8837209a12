"""Drop exact (same content key) and near duplicate images (content pHash within t and the same fine detail),
keeping the best copy of each cluster."""
from __future__ import annotations

import base64
import math
from collections.abc import Iterable

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.typehints import KV, Any, Tuple

from polycap.schemas import Reason, Reject, Sample
from polycap.schemas.config import DedupConfig
from polycap.transforms.decode import phash_hex
from polycap.transforms.neardup import (
    CENTRE,
    JOINED,
    MIH,
    PLAN_SHIFT,
    KeySizes,
    NearMember,
    block_keys,
    choose_plan,
    first_status,
    key_pairs,
    n_blocks,
    next_status,
    own_values,
    same_picture,
    stable_hash,
)
from polycap.transforms.plumbing import RoutingDoFn, make_reject, route_stage

STAGE = "dedup"
# Which copy of a cluster is kept (`rank`), measured by bench/neardup_eval.py (original_kept_share). One
# score, not steps (any step has a boundary that a box peeled a pixel wider crosses):
#   log2(content area) + quality tier - added-border share
# tier: lossless 2, lossy at quality >= LOSSY_OK 1, else 0, so a lossless copy beats a lossy one of up to
# twice its area and a heavily compressed copy counts as half its area; a q80 original and its q90 re-encode
# are one tier (a re-encode adds no detail). Border share: the part of the image outside the content box (an
# added frame or letterbox). Score rounded to SCORE_STEP; ties go to the exact content area (a 5 % crop loses
# to its original), then the exact quality, a caption, the key. (Area in 4 steps an octave, then a bordered flag and the
# exact quality kept 85.5 % of originals: framed copies peeled a pixel wider and q90 crops of q80 originals won.)
LOSSY_OK = 70
SCORE_STEP = 0.02
MASK64 = (1 << 64) - 1

# phash_hex lives with the decode that computes it; re-exported here, where the dedup contract names it.
__all__ = ["DedupImages", "phash_hex"]

# Data flow (no step holds the dataset in one place, nothing is keyed by None, no image bytes in a shuffle):
#  1. Each sample -> a NearMember (key, content pHash, rank, uri, 1 KB thumbnail, flat-colour class); exact
#     copies of one key are one item wherever they meet (the best copy, as `decide` keeps it).
#  2. Flat-colour members (a second output of the same step) meet per colour class in step 4's GroupByKey:
#     an edge from the best to every other (pHash says nothing about a flat image).
#  3. Others: (key, pHash) under the multi-index-hashing keys (transforms/neardup.py: 68 keys for t = 10,
#     or t + 1 = 11 exact-substring keys while the item count allows, neardup.choose_plan).
#     Substring values are counted (4 per item); the heavy ones (a side input) bound each key's size
#     (neardup.KeySizes), and a key that may exceed dedup.max_key_items is split into hash-block pairs.
#     Each key group emits the candidate pairs it owns (every pair within t exactly once).
#  4. A join of members and pairs on the content key sends each member of a pair to the pair's second key
#     (a GroupByKey of pair members only); there `same_picture` verifies the pair (transforms/pixel_check.py):
#     an edge from the better copy to the worse.
#  5. dedup.center_rounds rounds of clustering around centres over the edges (one GroupByKey a round, per
#     node: its state, its out-edges and its better neighbours' last status): a node joins the best centre
#     among its verified better neighbours, so a dropped copy always names a kept one it was checked against
#     (no chains). Nodes still undecided after the rounds are kept (counted `undecided_kept`).
#  6. A CoGroupByKey on the content key joins the drop decisions back to the samples (the one shuffle that
#     carries samples; their bytes are staged out of the record by then).


def rank(sample: Sample) -> tuple:
    """Sort key of the best copy (smaller is better): -score (see LOSSY_OK above), -content area, -quality,
    no caption, key."""
    h, im = sample.hashes, sample.image
    whole = (im.orig_width * im.orig_height) or (im.width * im.height)
    if len(h.content_box) == 4:
        area = (h.content_box[2] - h.content_box[0]) * (h.content_box[3] - h.content_box[1])
    else:
        area = whole
    tier = 2 if h.quality >= 100 else int(h.quality >= LOSSY_OK)
    border = 1 - area / whole if whole > 0 and 0 < area <= whole else 0.0
    score = math.log2(area) + tier - border if area > 0 else 0.0
    return (-round(score / SCORE_STEP), -area, -h.quality, int(not sample.source.orig_caption), sample.key)


def to_member(sample: Sample) -> NearMember | None:
    """The near-dup projection of a sample (content pHash, else whole-image pHash), or None without one."""
    try:
        h = int(sample.hashes.content_phash or sample.hashes.phash or "", 16)
    except ValueError:
        return None
    thumb = base64.b64decode(sample.hashes.thumb) if sample.hashes.thumb else b""
    return NearMember(key=sample.key, phash=h, rank=rank(sample), uri=sample.source.uri, thumb=thumb,
                      solid=sample.hashes.solid)


def member_order(m: NearMember) -> tuple:
    return (m.rank, m.uri)


def best_member(members: Iterable[NearMember]) -> NearMember:
    """One member per content key: the copy that `decide` keeps (a caption first, then the smallest uri)."""
    return min(members, key=member_order)


def edge(better: NearMember, worse: NearMember, how: str) -> list[tuple[str, tuple]]:
    """A verified pair as the clustering rounds read it: the better node learns its out-edge, the worse one
    that it has a better neighbour."""
    return [(better.key, ("out", (worse.key, how), better.rank, better.uri)), (worse.key, ("in",))]


def solid_edges(colour: str, members: Iterable[NearMember]) -> list[tuple[str, tuple]]:
    """One flat-colour class: an edge from its best content key to every other (pHash says nothing about a
    flat image), so the rounds keep the best and drop the rest naming it."""
    best: dict[str, NearMember] = {}
    for m in members:
        if m.key not in best or member_order(m) < member_order(best[m.key]):
            best[m.key] = m
    kept, *rest = sorted(best.values(), key=member_order)
    return [e for m in rest for e in edge(kept, m, f"the same flat colour {colour}")]


COUNT_KEY = -1     # counted once per item next to the substring values: the item count that picks the plan


def _own_values(kv: tuple[str, NearMember], t: int) -> list[int]:
    """COUNT_KEY and the MIH substring values (neardup.own_values): what CountValues counts (EXACT is only
    chosen when no key can pass the bound)."""
    return [COUNT_KEY, *own_values(kv[1].phash, t, MIH)]


class _KeysFn(beam.DoFn):
    """Member -> (group key, (content key, pHash)) per multi-index key; a key that may hold more than
    dedup.max_key_items (neardup.KeySizes over the side input of heavy substring values) becomes the item's
    hash-block pairs (neardup.block_keys). Group key: (j << 32 | meeting value, blocks, lo, hi)."""

    def __init__(self, t: int, bound: int):
        self.t, self.bound = t, bound

    def process(self, kv, heavy):
        key, m = kv
        item = (key, m.phash - (1 << 64) if m.phash >> 63 else m.phash)   # signed: a VarInt coder's range
        if getattr(self, "_heavy", None) is not heavy:     # one plan and KeySizes per side-input value
            plan = choose_plan(heavy.get(COUNT_KEY, 0), self.t, self.bound)
            self._heavy, self._sizes = heavy, KeySizes(heavy, self.t, self.bound, plan)
        for mk, count in self._sizes.keys(m.phash):
            if not count:
                yield (mk, 1, 0, 0), item
            else:
                nb = n_blocks(count, self.bound)
                for lo, hi in block_keys(key, nb):
                    yield (mk, nb, lo, hi), item


class _PairsFn(beam.DoFn):
    """One key group -> the candidate pairs (key_a, key_b, key_a < key_b) it owns, each as (key_a, key_b)
    and (key_b, ""): the first key learns its partner, the second that it is one."""

    def __init__(self, t: int):
        self.t = t
        self.size = Metrics.distribution(STAGE, "mih_key_items")
        self.candidates = Metrics.counter(STAGE, "candidate_pairs")

    def process(self, kv):
        (mk, nb, lo, hi), items = kv
        items = list(items)
        if len(items) < 2:                         # most keys: nothing to pair
            return
        items = sorted(set(items))                 # exact copies of one content key: one item
        if len(items) < 2:
            return
        self.size.update(len(items))
        blocks = [stable_hash(k) % nb for k, _ in items] if lo != hi else None
        pairs = key_pairs([h & MASK64 for _, h in items], mk >> 32 & 0xFF, mk & 0xFFFFFFFF, self.t, blocks,
                          mk >> PLAN_SHIFT)
        self.candidates.inc(len(pairs))
        for i, k in pairs:
            yield items[i][0], items[k][0]
            yield items[k][0], ""


def to_second_key(kv: tuple[str, dict[str, list]]) -> Iterable[tuple[str, tuple[str, NearMember]]]:
    """The join of members and pairs: a member travels to the key of each partner it comes first to, and
    to its own key when it comes second in a pair, so the next GroupByKey holds only members of pairs."""
    _, grouped = kv
    ms = list(grouped["m"])
    partners = set(grouped["pairs"]) if ms else set()
    if partners:
        m = best_member(ms)
        for b in partners:
            yield (b, ("first", m)) if b else (m.key, ("second", m))


class _VerifyFn(beam.DoFn):
    """At the second key of its pairs, both members of each pair meet; a verified pair becomes an edge
    better -> worse. A flat-colour class (key "#rrggbb", not a content key) becomes its `solid_edges`."""

    def __init__(self, t: int):
        self.t = t
        self.failed = Metrics.counter(STAGE, "pairs_failed_pixel_check")
        self.verified = Metrics.counter(STAGE, "pairs_verified")

    def process(self, kv):
        key, values = kv
        if key.startswith("#"):
            yield from solid_edges(key, (m for _, m in values))
            return
        firsts = [m for role, m in values if role == "first"]
        seconds = [m for role, m in values if role == "second"]
        if not firsts or not seconds:
            return
        b = seconds[0]
        for a in firsts:
            ok, how = same_picture(a, b, self.t)
            if not ok:
                self.failed.inc()
                continue
            self.verified.inc()
            yield from edge(*sorted((a, b), key=member_order), how)


def node_round(kv: tuple[str, Iterable[tuple]], last: bool) -> Iterable[tuple[str, tuple]]:
    """One clustering round of one node (neardup.first_status / next_status). Its group holds its edges
    (round 1: "out" per worse neighbour, "in" per better one) or its state from the previous round
    ("self": status, out-edges, rank, uri) and a "msg" per better neighbour. Emits the new state and, to
    each worse neighbour, a message with the new status; the last round emits the drop, if any."""
    node, values = kv
    values = list(values)
    selfs = [v for v in values if v[0] == "self"]
    if selfs:
        _, status, outs, rnk, uri = selfs[0]
        status = next_status(status, [v[1] for v in values if v[0] == "msg"])
    else:
        outs = sorted(v[1] for v in values if v[0] == "out")
        ranked = [v for v in values if v[0] == "out"]
        rnk, uri = (ranked[0][2], ranked[0][3]) if ranked else ((), "")
        status = first_status(any(v[0] == "in" for v in values))
    if last:
        if status[0] == JOINED:
            yield node, status[1:]
        elif status[0] != CENTRE:
            Metrics.counter(STAGE, "undecided_kept").inc()
        return
    yield node, ("self", status, outs, rnk, uri)
    for worse, how in outs:
        yield worse, ("msg", (rnk, node, uri, status[0], how))


def decide(key: str, samples: Iterable[Sample], drops: list[tuple[str, str, str]],
           cfg: DedupConfig) -> list[Sample | Reject]:
    """One content key's outcomes: every copy rejected when the key is a near duplicate of another key
    (`drops` names the kept one), else the copy `best_member` chose kept (and the other exact copies
    rejected when `cfg.exact`)."""
    if drops:
        kept_key, kept_uri, how = min(drops)
        return [make_reject(s, STAGE, Reason.DUPLICATE, f"near duplicate of {kept_key} ({how}; kept {kept_uri})")
                for s in samples]
    samples = list(samples)
    if not samples:
        return []
    first = min(range(len(samples)), key=lambda i: (not samples[i].source.orig_caption, samples[i].source.uri,
                                                     samples[i].source.name, i))
    kept_uri = samples[first].source.uri
    return [s if i == first or not cfg.exact else
            make_reject(s, STAGE, Reason.DUPLICATE, f"exact duplicate of {key} (same content sha256; kept {kept_uri})")
            for i, s in enumerate(samples)]


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


FLAT = "flat"


def _member_kv(s: Sample) -> Iterable:
    """(key, member) of a textured image; a flat-colour one goes to the FLAT output as ("#rrggbb", member),
    keyed for the GroupByKey that meets the members of each pair."""
    m = to_member(s)
    if m is not None:
        yield beam.pvalue.TaggedOutput(FLAT, (f"#{m.solid}", ("flat", m))) if m.solid else (m.key, m)


class NearDuplicates(beam.PTransform):
    """Decoded Samples -> (dropped key, (kept key, kept uri, how they were matched)) per near duplicate."""

    def __init__(self, cfg: DedupConfig):
        super().__init__()
        self.cfg = cfg

    def expand(self, pcoll):
        t, bound = self.cfg.max_hamming, self.cfg.max_key_items
        members = pcoll | "Members" >> beam.FlatMap(_member_kv).with_outputs(FLAT, main="rest")
        rest = members.rest
        q = KeySizes({}, t, bound, MIH).q
        heavy = (rest | "OwnValues" >> beam.FlatMap(_own_values, t)
                 | "CountValues" >> beam.combiners.Count.PerElement().with_output_types(KV[int, int])
                 | "Heavy" >> beam.Filter(lambda kv: kv[1] > q))
        pairs = (rest | "MihKeys" >> beam.ParDo(_KeysFn(t, bound), beam.pvalue.AsDict(heavy))
                 .with_output_types(KV[Tuple[int, int, int, int], Tuple[str, int]])
                 | "GroupKeys" >> beam.GroupByKey()
                 | "OwnedPairs" >> beam.ParDo(_PairsFn(t)).with_output_types(KV[str, str]))
        to_second = ({"m": rest, "pairs": pairs} | "JoinPairs" >> beam.CoGroupByKey()
                     | "ToSecond" >> beam.FlatMap(to_second_key))
        nodes = ((to_second, members[FLAT]) | "WithFlat" >> beam.Flatten()
                 | "GroupPairs" >> beam.GroupByKey()
                 | "Verify" >> beam.ParDo(_VerifyFn(t)).with_output_types(KV[str, Any]))
        rounds = self.cfg.center_rounds
        for r in range(1, rounds + 1):
            nodes = (nodes | f"GroupRound{r}" >> beam.GroupByKey()
                     | f"Round{r}" >> beam.FlatMap(node_round, r == rounds))
        return nodes


class DedupImages(beam.PTransform):
    """Decoded Samples -> (one Sample per duplicate group, Rejects of stage "dedup", reason duplicate)."""

    def __init__(self, cfg: DedupConfig):
        super().__init__()
        self.cfg = cfg

    def expand(self, pcoll):
        keyed = pcoll | "KeyByContent" >> beam.Map(_key_by_content)
        if self.cfg.near:
            drops = pcoll | "Near" >> NearDuplicates(self.cfg)
        else:
            drops = pcoll.pipeline | "NoNearDups" >> beam.Create([])
        joined = {"samples": keyed, "drop": drops} | "JoinDecisions" >> beam.CoGroupByKey()
        return route_stage(joined, "Decide", _DecideFn(self.cfg), STAGE)

