"""One GPU per worker: the free-GPU picker, with real processes holding real lock files."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT

HOLD = """
import sys, time
from hpsearch.worker.gpus import claim_free_gpu
print(claim_free_gpu(int(sys.argv[1]), sys.argv[2]), flush=True)
time.sleep(60)
"""


def _start(n: int, locks: Path) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-c", HOLD, str(n), str(locks)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=ROOT)


def test_workers_on_one_machine_take_different_gpus_and_a_dead_ones_gpu_comes_back(tmp_path: Path) -> None:
    procs = [_start(3, tmp_path) for _ in range(3)]
    try:
        taken = [int(p.stdout.readline()) for p in procs]  # type: ignore[union-attr]
        assert sorted(taken) == [0, 1, 2]
        crowd = _start(3, tmp_path)  # a fourth worker: shares one, and says so
        assert int(crowd.stdout.readline()) in (0, 1, 2)  # type: ignore[union-attr]
        crowd.kill()
        assert "all 3 GPUs are taken" in crowd.communicate()[1]
        victim = procs[taken.index(1)]
        victim.kill()  # kill -9: the kernel releases its lock
        victim.wait()
        again = _start(3, tmp_path)
        procs.append(again)
        assert int(again.stdout.readline()) == 1  # type: ignore[union-attr]
    finally:
        for p in procs:
            p.kill()
            p.wait()


def test_one_visible_gpu_needs_no_lock(tmp_path: Path) -> None:
    from hpsearch.worker.gpus import claim_free_gpu

    assert claim_free_gpu(1, str(tmp_path / "locks")) == 0
    assert not (tmp_path / "locks").exists()  # CUDA_VISIBLE_DEVICES=K (SLURM, PBS): nothing to share


def test_an_unwritable_lock_directory_is_one_clear_error(tmp_path: Path) -> None:
    from hpsearch.errors import HpsearchError
    from hpsearch.worker.gpus import claim_free_gpu

    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(HpsearchError, match="HPSEARCH_GPU_LOCKS must be a directory"):
        claim_free_gpu(2, str(blocker / "locks"))
