"""Build training records: source captions carried forward, and one SFT conversation per caption language."""
from __future__ import annotations

import dataclasses

import apache_beam as beam
from apache_beam.metrics import Metrics

from polycap.schemas import Caption, Sample
from polycap.schemas.conversations import describe_turns


def carry_source_captions(sample: Sample) -> Sample:
    """No captioner is usable: the source caption (alt-text) becomes captions["en"]; never invents one.

    Lives here, not in transforms/caption.py, so a run without captioning never imports the model stack
    (Beam's RunInference pulls in torch: 1.35 s per worker start, bench/results/pipeline.json)."""
    text = (sample.source.orig_caption or "").strip()
    if "en" in sample.captions or not text:
        return sample
    # no `created`: nothing was generated, and reruns must write identical shards
    cap = Caption(text=text, kind="source", backend="source")
    return dataclasses.replace(sample, captions={**sample.captions, "en": cap},
                               provenance={**sample.provenance, "caption": {"backend": "source", "carried": True}})


def build_records(sample: Sample) -> Sample:
    """Add a describe-the-image conversation for every caption language that has no conversation yet."""
    convs = dict(sample.conversations)
    for lang, cap in sorted(sample.captions.items()):
        if lang not in convs:
            conv = describe_turns(cap.text, lang)
            if conv is not None:
                convs[lang] = conv
    if convs == sample.conversations:
        return sample
    return dataclasses.replace(sample, conversations=convs)


class _BuildDoFn(beam.DoFn):
    def __init__(self, carry_source: bool):
        self.carry_source = carry_source
        self.with_caption = Metrics.counter("records", "with_caption")
        self.without_caption = Metrics.counter("records", "without_caption")

    def process(self, sample: Sample):
        if self.carry_source:
            sample = carry_source_captions(sample)
        sample = build_records(sample)
        (self.with_caption if sample.captions else self.without_caption).inc()
        yield sample


class BuildRecords(beam.PTransform):
    """Final per-sample assembly before sharding; never drops a sample."""

    def __init__(self, carry_source: bool):
        super().__init__()
        self.carry_source = carry_source

    def expand(self, pcoll):
        return pcoll | beam.ParDo(_BuildDoFn(self.carry_source))
