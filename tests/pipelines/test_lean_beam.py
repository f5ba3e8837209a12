"""lean_beam: a local job that names no gs:// loads Beam without its Google Cloud clients, and still runs; any
other job, or a process that already imported Beam, is left alone."""
import subprocess
import sys

from polycap.pipelines.lean_beam import needs_gcp, skip_gcp_clients


def test_needs_gcp_for_remote_runners_and_gs_paths():
    local = {"sources": [{"kind": "dir", "path": "/data/in"}], "output": "/data/out"}
    assert not needs_gcp(local, [])
    assert not needs_gcp(local, ["--runner=DirectRunner", "--direct_num_workers=2"])
    assert not needs_gcp(local, ["--runner", "PrismRunner"])
    assert needs_gcp(local, ["--runner=DataflowRunner"])
    assert needs_gcp(local, ["--runner", "FlinkRunner"])
    assert needs_gcp({**local, "output": "gs://bucket/out"}, [])
    assert needs_gcp(local, ["--temp_location=gs://bucket/tmp"])


def test_a_process_that_already_imported_beam_is_left_alone():
    import apache_beam  # noqa: F401

    assert skip_gcp_clients({"output": "/tmp/x"}, []) is False


_FRESH = """
import sys
from polycap.pipelines.lean_beam import GCP_CLIENTS, skip_gcp_clients
assert skip_gcp_clients({"output": "/tmp/x"}, [])
import apache_beam as beam
from apache_beam.testing.util import assert_that, equal_to
with beam.Pipeline() as p:
    assert_that(p | beam.Create([1, 2]) | beam.Map(lambda x: x * 2), equal_to([2, 4]))
assert all(sys.modules.get(m) is None for m in GCP_CLIENTS)
print("ok")
"""


def test_a_fresh_local_job_runs_beam_without_the_gcp_clients():
    out = subprocess.run([sys.executable, "-c", _FRESH], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "ok"
    assert "apitools not found" not in out.stderr       # Beam's note about the missing clients is dropped


_POOL = """
import os, sys
from polycap.pipelines.lean_beam import system_arrow_pool
print(system_arrow_pool())
import pyarrow as pa
print(pa.default_memory_pool().backend_name)
print(system_arrow_pool())          # pyarrow is loaded now: too late to choose, left alone
"""


def _pool_run(env: dict[str, str]) -> list[str]:
    import os

    clean = {k: v for k, v in os.environ.items() if k != "ARROW_DEFAULT_MEMORY_POOL"}
    out = subprocess.run([sys.executable, "-c", _POOL], capture_output=True, text=True, timeout=120,
                         env={**clean, **env})
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout.split()


def test_a_fresh_process_gets_the_system_allocator_as_arrows_default_pool():
    assert _pool_run({}) == ["True", "system", "False"]


def test_an_allocator_the_user_chose_is_kept():
    assert _pool_run({"ARROW_DEFAULT_MEMORY_POOL": "jemalloc"})[0] == "False"
    assert _pool_run({"ARROW_DEFAULT_MEMORY_POOL": "mimalloc"}) == ["False", "mimalloc", "False"]
