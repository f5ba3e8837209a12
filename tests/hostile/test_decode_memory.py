"""Decode memory is bounded by the decode budget, not by image size × threads: four 9400×9400 16-bit PNGs
(about 1 MB each on disk, 177 MB of pixels each once loaded) decoded with two threads."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from tests.hostile.helpers import run_job

SIDE = 9400          # 88.4 MP: just under Pillow's bomb limit, so the decode really happens


@pytest.fixture(scope="module")
def big_pngs(tmp_path_factory):
    src = tmp_path_factory.mktemp("big16") / "in"
    src.mkdir()
    ramp = (np.arange(SIDE, dtype=np.uint32) * 65535 // SIDE).astype(np.uint16)
    for i in range(4):
        a = np.broadcast_to(np.roll(ramp, i * 997), (SIDE, SIDE))
        Image.fromarray(np.ascontiguousarray(a), "I;16").save(src / f"big{i}.png", compress_level=9)
    return src


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_big_16bit_pngs_decode_within_the_budget(tmp_path, big_pngs):
    """Measured: ~820 MB peak for the whole job (4.6 GB before gray images were scaled to 8 bits in bands
    and downscaled before becoming RGB, and before the decode budget)."""
    r = run_job(tmp_path, [{"kind": "dir", "path": str(big_pngs), "name": "big"}], timeout=580,
                decode={"threads": 2, "max_side": 1600}, dedup={"near": False})
    assert r["rc"] == 0, r["stderr"]
    assert (r["inputs"], r["kept"], r["rejected"]) == (4, 4, 0)
    assert r["maxrss_mb"] < 1000, r["maxrss_mb"]
    assert r["written_outside"] == []


def test_budget_admits_decodes_within_the_limit_and_a_big_one_alone():
    import threading
    import time

    from polycap.transforms.decode import MemoryBudget

    budget, peak, lock = MemoryBudget(100), [0], threading.Lock()

    def work(cost):
        with budget.hold(cost):
            with lock:
                peak[0] = max(peak[0], budget.used)
            time.sleep(0.02)

    threads = [threading.Thread(target=work, args=(c,)) for c in (60, 60, 30, 30, 250, 10, 90)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert not any(t.is_alive() for t in threads)       # nothing waits forever, even the 250 > limit
    assert peak[0] == 250                               # the big one ran, and alone
    assert budget.used == 0
    held: list[int] = []
    checker = MemoryBudget(100)

    def tracked(cost):
        with checker.hold(cost):
            held.append(checker.used)
            time.sleep(0.01)

    ts = [threading.Thread(target=tracked, args=(40,)) for _ in range(8)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(10)
    assert len(held) == 8 and max(held) <= 100 and max(held) == 80   # two at a time, never three
