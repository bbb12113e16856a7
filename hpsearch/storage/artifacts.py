"""Where checkpoints go: a directory (shared across machines on a cluster) or S3."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from hpsearch.errors import HpsearchError
from hpsearch.storage.backend import DEFAULT_DIR, journal_path, kind, resolve_url

log = logging.getLogger("hpsearch")


def artifact_location(url: str | None = None) -> str:
    """Where this storage's checkpoints go, as an absolute path or s3:// URL.

    create-study records it in the study, so a retry started on another machine or in another
    directory finds the checkpoint its predecessor wrote (a relative default would not).
    """
    target = os.environ.get("HPSEARCH_ARTIFACTS", "")
    if target.startswith("s3://"):
        return target
    if not target:
        url = resolve_url(url)
        base = journal_path(url).parent if kind(url) == "journal" else Path(DEFAULT_DIR)
        target = str(base / "artifacts")
    return str(Path(target).expanduser().absolute())


def artifact_store(url: str | None = None, recorded: str | None = None) -> Any:
    """Checkpoints: a directory (shared across machines on a cluster) or S3.

    HPSEARCH_ARTIFACTS wins, then the location the study recorded at create-study (`recorded`),
    then the default beside the journal (./.hpsearch/artifacts for database storages).
    """
    from optuna.artifacts import FileSystemArtifactStore

    target = recorded if recorded and not os.environ.get("HPSEARCH_ARTIFACTS") else artifact_location(url)
    if target.startswith("s3://"):
        return _s3_store(target)
    try:
        Path(target).mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        # A checkpoint is an optimisation: trials run without one (each says so once).
        log.warning("artifacts directory %s cannot be created (%s); trials run without checkpoints",
                    target, exc.strerror or exc)
    return FileSystemArtifactStore(target)


def _s3_store(target: str) -> Any:
    from optuna.artifacts import Boto3ArtifactStore

    try:
        import boto3
    except ImportError:
        raise HpsearchError(f"HPSEARCH_ARTIFACTS={target} needs boto3, but it is not installed: "
                            "pip install 'hpsearch[s3]'") from None
    bucket = target[len("s3://"):].split("/")[0]
    if not bucket:
        raise HpsearchError(f"HPSEARCH_ARTIFACTS must be s3://BUCKET, but got {target=}")
    # AWS_ENDPOINT_URL selects an S3-compatible server (MinIO, Ceph, moto); boto3 reads
    # credentials and region the usual way (environment, ~/.aws).
    return Boto3ArtifactStore(bucket, client=boto3.client("s3", endpoint_url=os.environ.get("AWS_ENDPOINT_URL")))
