"""Typed records for polycap: Sample, Reject, the one Reason enum, and their pyarrow schemas."""
from polycap.schemas.arrow import REJECT_SCHEMA, SAMPLE_SCHEMA, reject_to_row
from polycap.schemas.reasons import Reason
from polycap.schemas.records import (
    SCHEMA_VERSION,
    Caption,
    Hashes,
    ImageInfo,
    OcrLine,
    OcrResult,
    Reject,
    Sample,
    Source,
    now_iso,
)

__all__ = [
    "SCHEMA_VERSION", "Caption", "Hashes", "ImageInfo", "OcrLine", "OcrResult", "Reject", "Sample",
    "Source", "Reason", "REJECT_SCHEMA", "SAMPLE_SCHEMA", "reject_to_row", "now_iso",
]
