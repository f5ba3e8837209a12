"""Progress lines while a job runs: per-stage counts and rate, throttled to one line every few seconds."""
from __future__ import annotations

import sys
import time

import apache_beam as beam


class _ProgressDoFn(beam.DoFn):
    def __init__(self, stage: str, every_s: float):
        self.stage = stage
        self.every_s = every_s

    def setup(self):
        self.n = 0
        self.t0 = time.monotonic()
        self.last = self.t0

    def process(self, element):
        self.n += 1
        now = time.monotonic()
        if now - self.last >= self.every_s:
            self.last = now
            rate = self.n / max(now - self.t0, 1e-9)
            print(f"[polycap] {self.stage}: {self.n} so far in this worker ({rate:.1f}/s)",
                  file=sys.stderr, flush=True)
        yield element


class LogProgress(beam.PTransform):
    """Pass-through that prints how many elements reached `stage` (per worker)."""

    def __init__(self, stage: str, every_s: float = 5.0):
        super().__init__()
        self.stage = stage
        self.every_s = every_s

    def expand(self, pcoll):
        return pcoll | beam.ParDo(_ProgressDoFn(self.stage, self.every_s))
