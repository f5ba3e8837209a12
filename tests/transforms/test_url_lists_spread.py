"""URL lists are spread after listing: the listing is one element's work (one `Create` of the source path), so
without a shuffle between it and the list reader every list file would be parsed in that one bundle, on one
worker. The graph must put a Reshuffle between `List` and `ReadLists`, and the rows of several list files
still all arrive."""
from __future__ import annotations

import apache_beam as beam
from apache_beam.pipeline import PipelineVisitor

from polycap.schemas.config import IngestConfig, SourceConfig
from polycap.transforms.ingest import ReadSource


class _Labels(PipelineVisitor):
    def __init__(self):
        self.labels: list[str] = []

    def enter_composite_transform(self, node):
        self.labels.append(node.full_label)

    def visit_transform(self, node):
        self.labels.append(node.full_label)


def test_url_lists_are_reshuffled_before_they_are_read(tmp_path):
    for i in range(3):
        (tmp_path / f"part-{i}.tsv").write_text(f"url\tcaption\nhttp://example.invalid/{i}.jpg\tA picture {i}.\n")
    src = SourceConfig(kind="urls", path=str(tmp_path), name="lists")
    p = beam.Pipeline()
    samples, rejects = p | ReadSource(src, IngestConfig(retries=0, timeout_s=1.0))
    visitor = _Labels()
    p.visit(visitor)
    order = visitor.labels
    spread = next(i for i, label in enumerate(order) if label.endswith("Download/SpreadLists"))
    read = next(i for i, label in enumerate(order) if "Download/ReadLists" in label)
    listing = next(i for i, label in enumerate(order) if label.endswith("/List") or "/List/" in label)
    assert listing < spread < read
    counted = rejects | beam.combiners.Count.Globally()
    from apache_beam.testing.util import assert_that, equal_to
    assert_that(counted, equal_to([3]))      # every row of every list file reached the downloader
    p.run().wait_until_finish()
