"""Drop exact (same content key) and near duplicate images (content pHash within t and the same fine detail),
keeping the best copy of each cluster."""
from __future__ import annotations

import base64
import math
from collections import Counter
from collections.abc import Iterable

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.transforms.window import GlobalWindow
from apache_beam.typehints import KV, Any, List, Tuple
from apache_beam.utils.timestamp import MIN_TIMESTAMP
from apache_beam.utils.windowed_value import WindowedValue

from polycap.schemas import Reason, Reject, Sample
from polycap.schemas.config import DedupConfig
from polycap.transforms.decode import phash_hex
from polycap.transforms.neardup import (
    CENTRE,
    EXACT,
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
    pairs_within,
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

# Data flow (no step holds the dataset in one place, nothing is keyed by None, no image bytes in a shuffle).
# On the DirectRunner each step and each GroupByKey costs more than these 1000-photo jobs' element work
# (bench/dedup_stage.py), so the graph has as few as the flow allows: one pass over the samples feeds every
# branch, joins are a Flatten of values told apart by type plus one GroupByKey (no CoGroupByKey tagging
# steps), and per-bundle gathering keeps the count and key shuffles to a few elements per key.
#  1. One pass over the samples (`_ProjectFn`): (key, sample) for step 6; each sample -> a NearMember (key,
#     content pHash, rank, uri, 1 KB thumbnail, flat-colour class); exact copies of one key are one item
#     wherever they meet (the best copy, as `decide` keeps it).
#  2. Flat-colour members (their own output) go with step 4's join to its GroupByKey of pair members and
#     meet there per colour class: an edge from the best to every other (pHash says nothing about a flat
#     image).
#  3. Others: (key, pHash) under the multi-index-hashing keys (transforms/neardup.py: 68 keys for t = 10,
#     or t + 1 = 11 exact-substring keys while the item count allows, neardup.choose_plan; a job of at most
#     ONE_KEY_ITEMS items under that plan: one key of all its items), a list per key and bundle. Substring
#     values are counted (4 per item, summed per bundle first); the heavy ones (a side input) bound each key's
#     size (neardup.KeySizes), and a key that may exceed dedup.max_key_items is split into hash-block pairs.
#     Each key group emits the candidate pairs it owns (every pair within t exactly once).
#  4. A join of members and pairs on the content key sends each member of a pair to the pair's second key
#     (a GroupByKey of pair members only); there `same_picture` verifies the pair (transforms/pixel_check.py):
#     an edge from the better copy to the worse.
#  5. dedup.center_rounds rounds of clustering around centres over the edges (one GroupByKey a round, per
#     node: its state, its out-edges and its better neighbours' last status): a node joins the best centre
#     among its verified better neighbours, so a dropped copy always names a kept one it was checked against
#     (no chains). Nodes still undecided after the rounds are kept (counted `undecided_kept`).
#  6. The last round runs in the GroupByKey on the content key that joins each node's state and messages to
#     its samples and decides (the one shuffle that carries samples; their bytes are staged out of the record
#     by then).


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


BUFFER = 50_000    # entries a step gathers per bundle before it emits them (~15 MB)
# A job whose item count picks the EXACT plan and is at most ONE_KEY_ITEMS (t = 10: EXACT's own limit, 1024)
# pairs all its items in one key group, one key per item instead of t + 1 (the same pairs: every pair within t,
# once; a numpy pass over at most 1024^2 / 2 pairs, ~3 ms, bounded like any key by dedup.max_key_items).
ONE_KEY_ITEMS = 1024
ONE_KEY = (-1, 1, 0, 0)
COUNT_KEY = -1     # counted once per item next to the substring values: the item count that picks the plan
FLAT, REST, ITEMS, VALUES = "flat", "rest", "items", "values"


def _global(value: object) -> WindowedValue:
    """An output of finish_bundle (the dedup runs in the global window)."""
    return WindowedValue(value, MIN_TIMESTAMP, (GlobalWindow(),))


class _ProjectFn(beam.DoFn):
    """One pass over the samples: (content key, sample) for the decision join (main output) and, with near
    dedup on, the sample's member: ("#rrggbb", ("flat", member)) on FLAT for a flat-colour image (keyed for
    the GroupByKey that meets the members of each pair), else (key, member) on REST and (key, pHash as a
    signed int: a VarInt coder's range) on ITEMS (what the multi-index keys need, without the thumbnail);
    and on VALUES, counted
    per bundle (at most BUFFER distinct values held), (value, count) of COUNT_KEY (one per item) and of the
    items' MIH substring values (neardup.own_values), which CountValues sums (EXACT is only chosen when no
    key can pass the bound)."""

    def __init__(self, t: int, near: bool):
        self.t, self.near = t, near

    def start_bundle(self):
        self._counts: Counter[int] = Counter()

    def process(self, s: Sample):
        yield s.key, s
        m = to_member(s) if self.near else None
        if m is None:
            return
        if m.solid:
            yield beam.pvalue.TaggedOutput(FLAT, (f"#{m.solid}", ("flat", m)))
            return
        yield beam.pvalue.TaggedOutput(REST, (m.key, m))
        yield beam.pvalue.TaggedOutput(ITEMS, (m.key, m.phash - (1 << 64) if m.phash >> 63 else m.phash))
        counts = self._counts
        counts[COUNT_KEY] += 1
        for v in own_values(m.phash, self.t, MIH):
            counts[v] += 1
        if len(counts) >= BUFFER:
            yield from (beam.pvalue.TaggedOutput(VALUES, kv) for kv in self._flush())

    def _flush(self) -> list[tuple[int, int]]:
        out, self._counts = list(self._counts.items()), Counter()
        return out

    def finish_bundle(self):
        for kv in self._flush():
            yield beam.pvalue.TaggedOutput(VALUES, _global(kv))


def _heavy_values(kv: tuple[int, Iterable[int]], q: int) -> Iterable[tuple[int, int]]:
    """A counted value's total, kept when heavy (more than q): the side input that bounds key sizes."""
    n = sum(kv[1])
    if n > q:
        yield kv[0], n


class _KeysFn(beam.DoFn):
    """(content key, pHash) -> (group key, (content key, pHash)) per multi-index key; a key that may hold more than
    dedup.max_key_items (neardup.KeySizes over the side input of heavy substring values) becomes the item's
    hash-block pairs (neardup.block_keys). Group key: (j << 32 | meeting value, blocks, lo, hi). The items
    of one group key are gathered per bundle (at most BUFFER items held) and emitted as one list: the
    EXACT plan's keys hold ~N / 2**6 items, so the shuffle carries a list per key and bundle instead of an
    element per item and key (11 per item)."""

    def __init__(self, t: int, bound: int):
        self.t, self.bound = t, bound

    def start_bundle(self):
        self._buf: dict[tuple, list] = {}
        self._held = 0

    def process(self, item, heavy):
        key, h = item
        if getattr(self, "_heavy", None) is not heavy:     # one plan and KeySizes per side-input value
            n = heavy.get(COUNT_KEY, 0)
            plan = choose_plan(n, self.t, self.bound)
            self._heavy, self._sizes = heavy, KeySizes(heavy, self.t, self.bound, plan)
            self._one_key = plan == EXACT and n <= ONE_KEY_ITEMS
        buf = self._buf
        if self._one_key:
            buf.setdefault(ONE_KEY, []).append(item)
            self._held += 1
            if self._held >= BUFFER:
                yield from self._flush()
            return
        for mk, count in self._sizes.keys(h & MASK64):
            if not count:
                buf.setdefault((mk, 1, 0, 0), []).append(item)
                self._held += 1
            else:
                nb = n_blocks(count, self.bound)
                for lo, hi in block_keys(key, nb):
                    buf.setdefault((mk, nb, lo, hi), []).append(item)
                    self._held += 1
        if self._held >= BUFFER:
            yield from self._flush()

    def _flush(self) -> list[tuple[tuple, list]]:
        out, self._buf, self._held = list(self._buf.items()), {}, 0
        return out

    def finish_bundle(self):
        for kv in self._flush():
            yield _global(kv)


class _PairsFn(beam.DoFn):
    """One key group -> the candidate pairs (key_a, key_b, key_a < key_b) it owns, each as (key_a, key_b)
    and (key_b, ""): the first key learns its partner, the second that it is one."""

    def __init__(self, t: int):
        self.t = t
        self.size = Metrics.distribution(STAGE, "mih_key_items")
        self.candidates = Metrics.counter(STAGE, "candidate_pairs")

    def process(self, kv):
        (mk, nb, lo, hi), lists = kv
        items = [it for batch in lists for it in batch]
        if len(items) < 2:                         # most keys: nothing to pair
            return
        items = sorted(set(items))                 # exact copies of one content key: one item
        if len(items) < 2:
            return
        self.size.update(len(items))
        if mk == ONE_KEY[0]:
            pairs = pairs_within([h & MASK64 for _, h in items], self.t)
        else:
            blocks = [stable_hash(k) % nb for k, _ in items] if lo != hi else None
            pairs = key_pairs([h & MASK64 for _, h in items], mk >> 32 & 0xFF, mk & 0xFFFFFFFF, self.t, blocks,
                              mk >> PLAN_SHIFT)
        self.candidates.inc(len(pairs))
        for i, k in pairs:
            yield items[i][0], items[k][0]
            yield items[k][0], ""


def to_second_key(kv: tuple[str, Iterable[object]]) -> Iterable[tuple[str, object]]:
    """The join of members and pairs (a NearMember per copy of the key, a partner key or "" per pair): a
    member travels to the key of each partner it comes first to, and to its own key when it comes second in
    a pair, so the next GroupByKey holds only members of pairs. A flat-colour class ("#rrggbb": its
    ("flat", member) values) travels on as it is, to meet in the same GroupByKey."""
    key, values = kv
    if key.startswith("#"):
        for v in values:
            yield key, v
        return
    ms: list[NearMember] = []
    partners: set[str] = set()
    for v in values:
        if isinstance(v, NearMember):
            ms.append(v)
        elif isinstance(v, str):
            partners.add(v)
    if ms and partners:
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
    """Per content key, its samples and (near dedup) its node's state and messages for the last clustering
    round: keep one sample, or none when the key is a near duplicate of another key."""

    stage = STAGE

    def __init__(self, cfg: DedupConfig):
        self.cfg = cfg

    def process(self, kv):
        key, values = kv
        samples, node = [], []
        for v in values:
            (samples if isinstance(v, Sample) else node).append(v)
        drops = [d for _, d in node_round((key, node), True)] if node else []
        for out in decide(key, samples, drops, self.cfg):
            if isinstance(out, Reject):
                self.count("near_duplicates" if drops else "exact_duplicates")
            yield self.route(out)


def near_nodes(rest: beam.PCollection, items: beam.PCollection, flat: beam.PCollection,
               values: beam.PCollection, cfg: DedupConfig) -> beam.PCollection:
    """Steps 2-5 of the data flow: members -> (node key, state or message) for the last clustering round,
    which the decision join runs (one GroupByKey fewer)."""
    t, bound = cfg.max_hamming, cfg.max_key_items
    q = KeySizes({}, t, bound, MIH).q
    heavy = (values | "CountValues" >> beam.GroupByKey()
             | "Heavy" >> beam.FlatMap(_heavy_values, q).with_output_types(KV[int, int]))
    pairs = (items | "MihKeys" >> beam.ParDo(_KeysFn(t, bound), beam.pvalue.AsDict(heavy))
             .with_output_types(KV[Tuple[int, int, int, int], List[Tuple[str, int]]])
             | "GroupKeys" >> beam.GroupByKey()
             | "OwnedPairs" >> beam.ParDo(_PairsFn(t)).with_output_types(KV[str, str]))
    nodes = ((rest, flat, pairs) | "WithPairs" >> beam.Flatten().with_output_types(KV[str, Any])
             | "JoinPairs" >> beam.GroupByKey()
             | "ToSecond" >> beam.FlatMap(to_second_key)
             | "GroupPairs" >> beam.GroupByKey()
             | "Verify" >> beam.ParDo(_VerifyFn(t)).with_output_types(KV[str, Any]))
    for r in range(1, cfg.center_rounds):
        nodes = (nodes | f"GroupRound{r}" >> beam.GroupByKey()
                 | f"Round{r}" >> beam.FlatMap(node_round, False).with_output_types(KV[str, Any]))
    return nodes


class DedupImages(beam.PTransform):
    """Decoded Samples -> (one Sample per duplicate group, Rejects of stage "dedup", reason duplicate)."""

    def __init__(self, cfg: DedupConfig):
        super().__init__()
        self.cfg = cfg

    def expand(self, pcoll):
        cfg = self.cfg
        proj = pcoll | "Project" >> beam.ParDo(_ProjectFn(cfg.max_hamming, cfg.near)).with_outputs(
            REST, ITEMS, FLAT, VALUES, main="keyed")
        keyed: beam.PCollection = proj.keyed
        if cfg.near:
            nodes = near_nodes(proj[REST], proj[ITEMS], proj[FLAT], proj[VALUES], cfg)
            keyed = (keyed, nodes) | "WithNodes" >> beam.Flatten().with_output_types(KV[str, Any])
        joined = keyed | "JoinDecisions" >> beam.GroupByKey()
        return route_stage(joined, "Decide", _DecideFn(cfg), STAGE)
