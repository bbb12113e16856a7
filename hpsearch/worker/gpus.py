"""One GPU per worker on a multi-GPU machine, whoever started the workers.

`docker compose up --scale worker=4` cannot give replicas different devices (a reservation of
`count: 1` per replica lands every replica on the same GPU), and `launch local` or a job that runs
several workers per node has the same problem. So every worker sees all GPUs and takes the first
free one itself: a lock file per GPU in a directory the workers of one machine share (a volume
in compose), held for the worker's life. The kernel releases it when the worker dies, however it
dies, so a restarted worker finds its GPU free again.
"""

from __future__ import annotations

import fcntl
import logging
import os
from pathlib import Path
from typing import IO

from hpsearch.errors import HpsearchError

log = logging.getLogger("hpsearch.gpus")
DEFAULT_LOCKS = "/tmp/hpsearch-gpu-locks"
_HELD: list[IO[str]] = []  # open lock files: the GPU stays this process's while it lives


def claim_free_gpu(n_devices: int, lock_dir: str | None = None) -> int:
    """Index of a GPU no other worker on this machine holds; with more workers than GPUs, the
    least shared one (by this worker's process id) with a warning."""
    if n_devices <= 1:
        return 0
    root = Path(lock_dir or os.environ.get("HPSEARCH_GPU_LOCKS") or DEFAULT_LOCKS)
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise HpsearchError(f"HPSEARCH_GPU_LOCKS must be a directory this worker can write, but got {str(root)!r} "
                            f"({exc.strerror})") from None
    for index in range(n_devices):
        fh = open(root / f"gpu-{index}.lock", "a+")  # noqa: SIM115 - held for the process's life
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.close()
            continue
        try:  # who holds it, for a person looking; the lock works without it
            fh.seek(0)
            fh.truncate()
            fh.write(f"{os.getpid()}\n")
            fh.flush()
        except OSError:
            pass
        _HELD.append(fh)
        return index
    index = os.getpid() % n_devices
    log.warning("all %d GPUs are taken by other workers on this machine; sharing cuda:%d", n_devices, index)
    return index
