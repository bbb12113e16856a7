"""Where checkpoints go: a directory (shared across machines on a cluster) or S3, one folder per study.

A study's checkpoints live under ROOT/STUDY/ID on a directory, as under PREFIX/STUDY/ID on S3: two
studies sharing a location never meet, and a study's checkpoints are found (and deleted) by its
name. Checkpoints written before that layout (ROOT/ID) are still read and removed, so a study
created earlier resumes its trials as before.
"""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import quote

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


def artifact_store(url: str | None = None, recorded: str | None = None, study: str | None = None,
                   tag: str | None = None) -> Any:
    """Checkpoints: a directory (shared across machines on a cluster) or S3.

    HPSEARCH_ARTIFACTS wins, then the location the study recorded at create-study (`recorded`),
    then the default beside the journal (./.hpsearch/artifacts for database storages). Given a
    `study`, its checkpoints go in the study's own folder: ROOT/STUDY on a directory, PREFIX/STUDY on
    S3 (a bucket shared by teams is scoped by prefix). Without one (the dashboard's uploads): ROOT.
    `tag`, the study's creation token (schema.INSTANCE_ATTR), starts the name of every checkpoint
    written there, so sweep() finds them all, named by a trial or not, and no other study's.
    """
    from optuna.artifacts import FileSystemArtifactStore

    target = recorded if recorded and not os.environ.get("HPSEARCH_ARTIFACTS") else artifact_location(url)
    if target.startswith("s3://"):
        return _s3_store(target, study, tag)
    try:
        Path(target).mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        # A checkpoint is an optimisation: trials run without one (each says so once).
        log.warning("artifacts directory %s cannot be created (%s); trials run without checkpoints",
                    target, exc.strerror or exc)
    return StudyDirStore(target, study, tag) if study else FileSystemArtifactStore(target)


def checkpoint_prefix(tag: str | None) -> str:
    """How the names of a study's checkpoints begin: with its creation's tag, when it has one."""
    return f"checkpoint-{tag}-" if tag else "checkpoint-"


def study_segment(study: str) -> str:
    """The study's name as one path segment or key segment, whatever it holds ('/' included)."""
    segment = quote(study, safe="")
    # '.' and '..' are the only names quote() leaves meaning something else in a path.
    return segment.replace(".", "%2E") if not segment.strip(".") else segment


def _s3_store(target: str, study: str | None = None, tag: str | None = None) -> Any:
    try:
        import boto3
    except ImportError:
        raise HpsearchError(f"HPSEARCH_ARTIFACTS={target} needs boto3, but it is not installed: "
                            "pip install 'hpsearch[s3]'") from None
    bucket, _, prefix = target[len("s3://"):].partition("/")
    if not bucket:
        raise HpsearchError(f"HPSEARCH_ARTIFACTS must be s3://BUCKET[/PREFIX], but got {target=}")
    # The study's name is one key segment whatever it holds ('/' included), so names never collide.
    parts = [p for p in prefix.split("/") if p] + ([study_segment(study)] if study else [])
    # AWS_ENDPOINT_URL selects an S3-compatible server (MinIO, Ceph, moto); boto3 reads
    # credentials and region the usual way (environment, ~/.aws).
    client = boto3.client("s3", endpoint_url=os.environ.get("AWS_ENDPOINT_URL"))
    return PrefixedS3Store(bucket, "/".join(parts), client, tag)


class PrefixedS3Store:
    """Optuna's Boto3ArtifactStore under a key prefix (Optuna's own writes at the bucket root)."""

    def __init__(self, bucket: str, prefix: str, client: Any, tag: str | None = None) -> None:
        from optuna.artifacts import Boto3ArtifactStore

        self._inner = Boto3ArtifactStore(bucket, client=client)
        self._bucket, self._client = bucket, client
        self.prefix = prefix
        self.tag = tag
        # What messages name as the place (hpsearch.training.checkpoints.describe_store): s3://{bucket}.
        self.bucket = f"{bucket}/{prefix}" if prefix else bucket

    def key(self, artifact_id: str) -> str:
        return f"{self.prefix}/{artifact_id}" if self.prefix else artifact_id

    def open_reader(self, artifact_id: str) -> BinaryIO:
        return self._inner.open_reader(self.key(artifact_id))

    def write(self, artifact_id: str, content_body: BinaryIO) -> None:
        self._inner.write(self.key(artifact_id), content_body)

    def remove(self, artifact_id: str) -> None:
        self._inner.remove(self.key(artifact_id))

    def sweep(self) -> int:
        """Remove every checkpoint of this study's creation (tag) still under the prefix; how many."""
        if not self.tag:
            return 0
        removed = 0
        pages = self._client.get_paginator("list_objects_v2").paginate(Bucket=self._bucket,
                                                                       Prefix=self.key(checkpoint_prefix(self.tag)))
        for page in pages:
            for obj in page.get("Contents", []):
                self._client.delete_object(Bucket=self._bucket, Key=obj["Key"])
                removed += 1
        return removed


class StudyDirStore:
    """Optuna's FileSystemArtifactStore in the study's folder ROOT/STUDY (S3: PrefixedS3Store).

    The folder is made by the first write, so a full or read-only disk fails that write (said
    once by the trainer) rather than the worker's start. A checkpoint not in the folder is looked
    for at ROOT, where checkpoints were written before studies had a folder: a trial of such a
    study still resumes from it (its id, held by the trial, names no other study's file).
    """

    def __init__(self, root: str | Path, study: str, tag: str | None = None) -> None:
        from optuna.artifacts import FileSystemArtifactStore

        self.tag = tag
        self.root = Path(root)
        self.path = self.root / study_segment(study)
        self._inner = FileSystemArtifactStore(self.path)
        self._legacy = FileSystemArtifactStore(self.root)

    def open_reader(self, artifact_id: str) -> BinaryIO:
        from optuna.artifacts.exceptions import ArtifactNotFound

        try:
            return self._inner.open_reader(artifact_id)
        except ArtifactNotFound:
            return self._legacy.open_reader(artifact_id)

    def write(self, artifact_id: str, content_body: BinaryIO) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        self._inner.write(artifact_id, content_body)

    def remove(self, artifact_id: str) -> None:
        from optuna.artifacts.exceptions import ArtifactNotFound

        try:
            self._inner.remove(artifact_id)
        except ArtifactNotFound:
            self._legacy.remove(artifact_id)

    def sweep(self) -> int:
        """Remove every checkpoint of this study's creation (tag) still in its folder; how many."""
        if not self.tag:
            return 0
        removed = 0
        for path in self.path.glob(f"{checkpoint_prefix(self.tag)}*"):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
                removed += 1
        return removed

    def drop_if_empty(self) -> None:
        """Remove the study's folder once nothing is left in it (`hpsearch delete`). A file written
        in it meanwhile (a worker of a same-named study of another storage) keeps it."""
        try:
            self.path.rmdir()
        except OSError:
            pass
