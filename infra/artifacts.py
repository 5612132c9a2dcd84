"""What gets shipped: a reproducible app bundle, the model, and their S3 home."""

from __future__ import annotations

import gzip
import hashlib
import io
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# The serving box gets these and nothing else: no export code, no tests, no checkpoints.
BUNDLE_PATHS = (
    "webapp",
    "requirements.txt",
    "gunicorn.conf.py",
    "infra/host",
)
_REQUIRED = ("webapp", "requirements.txt", "gunicorn.conf.py", "infra/host/bootstrap.sh")
_SKIP_NAMES = {"__pycache__", ".pytest_cache", ".mypy_cache"}
_SKIP_SUFFIXES = (".pyc", ".pyo", ".onnx", ".onnx.data", ".ckpt", ".pt", ".pth")
MANAGED_TAG = ("managed-by", "melanoma-infra-deploy")


class ArtifactError(ValueError):
    """An artifact is missing or would not work on the host."""


@dataclass(frozen=True)
class Artifact:
    """A local file and the S3 key it is shipped under."""

    path: Path
    key: str
    sha256: str


def sha256_file(path: Path) -> str:
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def _bundle_files(source_dir: Path) -> list[Path]:
    missing = [name for name in _REQUIRED if not (source_dir / name).exists()]
    if missing:
        raise ArtifactError(
            f"{source_dir} lacks {', '.join(missing)}; is --source-dir the repository root?"
        )
    files: list[Path] = []
    for name in BUNDLE_PATHS:
        root = source_dir / name
        candidates = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
        for path in candidates:
            rel = path.relative_to(source_dir)
            if _SKIP_NAMES.intersection(rel.parts) or path.name.endswith(_SKIP_SUFFIXES):
                continue
            files.append(rel)
    return files


def build_bundle(source_dir: Path, out_dir: Path, stack_name: str) -> Artifact:
    """Tar and gzip the serving files byte-for-byte reproducibly.

    Same tree, same bytes, same key: an unchanged app does not trigger a redeploy.
    """
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for rel in _bundle_files(source_dir):
            info = tar.gettarinfo(str(source_dir / rel), arcname=rel.as_posix())
            info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "root", "root"
            info.mode = 0o755 if info.mode & 0o111 else 0o644
            with (source_dir / rel).open("rb") as handle:
                tar.addfile(info, handle)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "app.tar.gz"
    with (
        path.open("wb") as archive,
        gzip.GzipFile(fileobj=archive, mode="wb", mtime=0, filename="") as gz,
    ):
        gz.write(raw.getvalue())
    digest = sha256_file(path)
    return Artifact(path=path, key=f"{stack_name}/app/{digest[:16]}.tar.gz", sha256=digest)


def model_artifact(model_path: Path, stack_name: str) -> Artifact:
    """Describe the model to ship, refusing files the host could not load."""
    if not model_path.is_file():
        raise ArtifactError(f"model not found: {model_path}")
    if model_path.suffix != ".onnx":
        raise ArtifactError(f"model must be an exported .onnx file, got {model_path.name}")
    external = model_path.with_name(model_path.name + ".data")
    if external.exists():
        raise ArtifactError(
            f"{external.name} holds external weights; re-export with weights embedded"
        )
    digest = sha256_file(model_path)
    return Artifact(path=model_path, key=f"{stack_name}/models/{digest}.onnx", sha256=digest)


def ensure_bucket(s3: Any, bucket: str, region: str) -> None:
    """Create the private, encrypted artifact bucket unless it already exists."""
    try:
        s3.head_bucket(Bucket=bucket)
        return
    except s3.exceptions.ClientError as exc:
        if exc.response.get("Error", {}).get("Code") not in ("404", "NoSuchBucket", "NotFound"):
            raise
    kwargs: dict[str, Any] = {"Bucket": bucket}
    if region != "us-east-1":
        kwargs["CreateBucketConfiguration"] = {"LocationConstraint": region}
    s3.create_bucket(**kwargs)
    s3.put_public_access_block(
        Bucket=bucket,
        PublicAccessBlockConfiguration={
            "BlockPublicAcls": True,
            "IgnorePublicAcls": True,
            "BlockPublicPolicy": True,
            "RestrictPublicBuckets": True,
        },
    )
    s3.put_bucket_encryption(
        Bucket=bucket,
        ServerSideEncryptionConfiguration={
            "Rules": [{"ApplyServerSideEncryptionByDefault": {"SSEAlgorithm": "AES256"}}]
        },
    )
    s3.put_bucket_tagging(
        Bucket=bucket, Tagging={"TagSet": [{"Key": MANAGED_TAG[0], "Value": MANAGED_TAG[1]}]}
    )


def upload(s3: Any, bucket: str, artifact: Artifact) -> bool:
    """Upload unless the content-addressed key is already there; True when uploaded."""
    try:
        s3.head_object(Bucket=bucket, Key=artifact.key)
        return False
    except s3.exceptions.ClientError as exc:
        if exc.response.get("Error", {}).get("Code") not in ("404", "NoSuchKey", "NotFound"):
            raise
    s3.upload_file(
        str(artifact.path),
        bucket,
        artifact.key,
        ExtraArgs={"Metadata": {"sha256": artifact.sha256}},
    )
    return True


def delete_stack_objects(s3: Any, bucket: str, stack_name: str) -> int:
    """Delete every object under the stack's prefix, then the bucket if it is ours and empty."""
    deleted = 0
    paginator = s3.get_paginator("list_objects_v2")
    for page in paginator.paginate(Bucket=bucket, Prefix=f"{stack_name}/"):
        keys = [{"Key": item["Key"]} for item in page.get("Contents", [])]
        if keys:
            s3.delete_objects(Bucket=bucket, Delete={"Objects": keys, "Quiet": True})
            deleted += len(keys)
    if s3.list_objects_v2(Bucket=bucket, MaxKeys=1).get("KeyCount", 0) == 0 and _is_managed(
        s3, bucket
    ):
        s3.delete_bucket(Bucket=bucket)
    return deleted


def _is_managed(s3: Any, bucket: str) -> bool:
    try:
        tags = s3.get_bucket_tagging(Bucket=bucket).get("TagSet", [])
    except s3.exceptions.ClientError:
        return False
    return {"Key": MANAGED_TAG[0], "Value": MANAGED_TAG[1]} in tags
