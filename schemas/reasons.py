"""The single enum of reasons a record can be rejected for, grouped by the stage that emits them."""
from enum import StrEnum


class Reason(StrEnum):
    # ingest
    DOWNLOAD_FAILED = "download_failed"        # HTTP status or network error in detail
    INVALID_URL = "invalid_url"                # empty, malformed or non-http(s) scheme
    TOO_LARGE_DOWNLOAD = "too_large_download"  # body exceeded ingest max_bytes
    UNSAFE_PATH = "unsafe_path"                # tar member with `..` or an absolute path
    UNREADABLE = "unreadable"                  # file/tar member could not be read
    MISSING_IMAGE = "missing_image"            # a record (e.g. LLaVA row) names an image that is not there
    BAD_RECORD = "bad_record"                  # a JSON/CSV/parquet row that cannot be parsed
    # decode
    EMPTY_FILE = "empty_file"
    NOT_AN_IMAGE = "not_an_image"
    CORRUPT_IMAGE = "corrupt_image"
    DECOMPRESSION_BOMB = "decompression_bomb"
    UNSUPPORTED_FORMAT = "unsupported_format"
    # filter
    TOO_SMALL = "too_small"                    # min side below filter.min_side
    EXTREME_ASPECT = "extreme_aspect"          # aspect ratio above filter.max_aspect
    FILE_TOO_SMALL = "file_too_small"
    FILE_TOO_LARGE = "file_too_large"
    CAPTION_LANGUAGE = "caption_language"      # source caption not in filter.caption_langs
    CAPTION_TOO_SHORT = "caption_too_short"
    CAPTION_TOO_LONG = "caption_too_long"
    # dedup
    DUPLICATE = "duplicate"                    # detail names the kept key (exact or near)
    # ocr
    OCR_FAILED = "ocr_failed"
    # caption (model output gates)
    CAPTION_FAILED = "caption_failed"          # backend error after retries
    GATE_TOO_SHORT = "gate_too_short"
    GATE_TOO_LONG = "gate_too_long"
    GATE_REFUSAL = "gate_refusal"
    GATE_REPETITION = "gate_repetition"
    GATE_WRONG_LANGUAGE = "gate_wrong_language"
    GATE_UNGROUNDED_TEXT = "gate_ungrounded_text"  # quoted text the OCR did not see
    # translate (model output gates)
    TRANSLATE_FAILED = "translate_failed"
    GATE_ENGLISH_LEFT = "gate_english_left"
    GATE_LENGTH_RATIO = "gate_length_ratio"
    GATE_SPANS_CHANGED = "gate_spans_changed"
    GATE_PREAMBLE = "gate_preamble"
    GATE_TRUNCATED = "gate_truncated"
    GATE_EMPTY = "gate_empty"
    # anything unexpected, routed by .with_exception_handling()
    INTERNAL_ERROR = "internal_error"
