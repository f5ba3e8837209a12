"""Load Beam without its Google Cloud clients when a local job cannot need them (a launcher's start-up cost)."""
# `import apache_beam` imports apache_beam.io, which imports Beam's BigQuery, Pub/Sub and GCS modules whenever
# their client libraries are installed (the `gcs` extra): ~0.4 s of CPU of the ~2.5 s a 10-image `polycap run`
# costs on the bench machine (python -X importtime: gcsio 0.32 s, pubsub 0.19 s, bigquery 0.10 s, partly
# shared). Beam imports each of them inside `try: ... except ImportError`, so when the client libraries are
# marked absent (None in sys.modules: Python's own way to make an import fail) Beam goes on without them,
# exactly as on a machine without the extra. Only done for a fresh process (Beam not imported yet) running a
# local runner, with no gs:// anywhere in the job's config or Beam arguments; a job that names gs:// or runs
# on another runner loads Beam whole. The forked wave children inherit the launcher's modules.
from __future__ import annotations

import json
import logging
import os
import sys
from typing import Any

# the client packages Beam's GCP modules import (google.cloud itself is a namespace made at start-up)
GCP_CLIENTS = ("google.cloud.storage", "google.cloud.pubsub", "google.cloud.pubsub_v1", "google.cloud.bigquery",
               "google.cloud.bigquery_storage_v1", "google.cloud.dataflow", "google.cloud.dataflow_v1beta3",
               "apitools", "oauth2client")
LOCAL_RUNNERS = ("DirectRunner", "direct", "PrismRunner", "prism")
# What Beam logs when the BigQuery client modules are missing (apache_beam/io/gcp/internal/clients/bigquery)
_BQ_NOTE = "apitools not found, and bigquery client libraries are not"


class _DropBigQueryNote(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return _BQ_NOTE not in record.getMessage()


def runner_name(args: list[str]) -> str:
    """The Beam runner named in the pipeline args (`--runner=X` or `--runner X`), DirectRunner by default."""
    for i, a in enumerate(args):
        if a.startswith("--runner="):
            return a.split("=", 1)[1]
        if a == "--runner" and i + 1 < len(args):
            return args[i + 1]
    return "DirectRunner"


def needs_gcp(config: dict[str, Any], args: list[str]) -> bool:
    """Whether a job may use Google Cloud through Beam: a runner other than a local one, or gs:// in the
    config or the Beam arguments."""
    return runner_name(args) not in LOCAL_RUNNERS or "gs://" in json.dumps(config, default=str) + " ".join(args)


def skip_gcp_clients(config: dict[str, Any], args: list[str]) -> bool:
    """Before Beam is first imported: mark its Google Cloud client libraries absent when this local job
    cannot need them; True when it did."""
    if "apache_beam" in sys.modules or needs_gcp(config, args):
        return False
    for name in GCP_CLIENTS:
        if name not in sys.modules:
            sys.modules[name] = None   # type: ignore[assignment]  # the next import of it raises ImportError
    logging.getLogger().addFilter(_DropBigQueryNote())
    return True


def system_arrow_pool() -> bool:
    """Before pyarrow is first imported: make the system allocator (malloc) pyarrow's default memory pool, unless
    ARROW_DEFAULT_MEMORY_POOL is set already; True when it did. Arrow reads that variable once, when pyarrow loads
    (`pa.set_memory_pool` later reaches only pyarrow's own calls: the parquet writer still allocates from the
    C++ default). Its own default, mimalloc, keeps freed pages in its reservation, and in a forked wave child
    (pipelines/waves.py) each wave's parquet work (RecordKept's parts, finish_wave reading them back, the shard
    writer's manifest and rejects) held 14-24 MB private dirty there at the child's peak, against 4-6 MB in the
    one graph of a 1k run, so a run in waves peaked above one wave's worth (smaps of the children, 3k inputs in
    waves of 1000 against 1k; bench/results/pipeline_memory.json). malloc returns large blocks to the system as
    they are freed. The output's bytes do not depend on the allocator."""
    if "pyarrow" in sys.modules or "ARROW_DEFAULT_MEMORY_POOL" in os.environ:
        return False
    os.environ["ARROW_DEFAULT_MEMORY_POOL"] = "system"
    return True
