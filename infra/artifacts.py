"""What gets shipped: a reproducible app bundle, the model, and their S3 home."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# The serving box gets these and nothing else: no export code, no tests, no checkpoints.
BUNDLE_PATHS = (
    "inference",
    "webapp",
    "requirements.txt",
    "requirements.lock",
    "gunicorn.conf.py",
    "infra/host",
)
_REQUIRED = (
    "webapp",
    "inference",
    "requirements.txt",
    "requirements.lock",
    "gunicorn.conf.py",
    "infra/host/bootstrap.sh",
)
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


def build_bundle(
    source_dir: Path, out_dir: Path, stack_name: str, wheelhouse: Path | None = None
) -> Artifact:
    """Tar and gzip the serving files (and the wheelhouse) byte-for-byte reproducibly.

    Same tree, same bytes, same key: an unchanged app does not trigger a redeploy.
    wheelhouse holds one folder per machine name (x86_64, aarch64) and lands as wheelhouse/.
    """
    entries = [(source_dir / rel, rel.as_posix()) for rel in _bundle_files(source_dir)]
    if wheelhouse is not None:
        entries += [
            (path, f"wheelhouse/{path.relative_to(wheelhouse).as_posix()}")
            for path in sorted(wheelhouse.rglob("*.whl"))
        ]
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for source, arcname in entries:
            info = tar.gettarinfo(str(source), arcname=arcname)
            info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "root", "root"
            info.mode = 0o755 if info.mode & 0o111 else 0o644
            with source.open("rb") as reader:
                tar.addfile(info, reader)
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


def int8_artifact(model_path: Path, stack_name: str) -> Artifact | None:
    """The INT8 model beside `model_path`, shipped with it where the export wrote one; the
    host serves it only where it is gated and faster there (inference/precision.py)."""
    from inference.precision import int8_path  # the name the server looks for

    path = int8_path(model_path)
    if not path.is_file():
        return None
    digest = sha256_file(path)
    return Artifact(path=path, key=f"{stack_name}/models/{digest}.int8.onnx", sha256=digest)


def model_parameters(model: Artifact, int8: Artifact | None) -> dict[str, str]:
    """The stack parameters naming the model files (empty INT8 ones: fp32 only)."""
    return {"ModelKey": model.key, "ModelSha256": model.sha256,
            "Int8ModelKey": int8.key if int8 else "",
            "Int8ModelSha256": int8.sha256 if int8 else ""}


def ensure_bucket(s3: Any, bucket: str, region: str, owner: str) -> None:
    """Create the private, encrypted, versioned, TLS-only artifact bucket unless it exists.

    Settings are (re)applied either way, so a bucket made by an older deploy catches up.
    """
    try:
        s3.head_bucket(Bucket=bucket, ExpectedBucketOwner=owner)
    except s3.exceptions.ClientError as exc:
        if exc.response.get("Error", {}).get("Code") not in ("404", "NoSuchBucket", "NotFound"):
            raise
        kwargs: dict[str, Any] = {"Bucket": bucket}
        if region != "us-east-1":
            kwargs["CreateBucketConfiguration"] = {"LocationConstraint": region}
        s3.create_bucket(**kwargs)
        s3.put_bucket_tagging(
            Bucket=bucket,
            ExpectedBucketOwner=owner,
            Tagging={"TagSet": [{"Key": MANAGED_TAG[0], "Value": MANAGED_TAG[1]}]},
        )
    s3.put_public_access_block(
        Bucket=bucket,
        ExpectedBucketOwner=owner,
        PublicAccessBlockConfiguration={
            "BlockPublicAcls": True,
            "IgnorePublicAcls": True,
            "BlockPublicPolicy": True,
            "RestrictPublicBuckets": True,
        },
    )
    s3.put_bucket_encryption(
        Bucket=bucket,
        ExpectedBucketOwner=owner,
        ServerSideEncryptionConfiguration={
            "Rules": [{"ApplyServerSideEncryptionByDefault": {"SSEAlgorithm": "AES256"}}]
        },
    )
    # Versions let a model or bundle overwritten by mistake come back; the lifecycle rule
    # keeps old versions from costing money forever.
    s3.put_bucket_versioning(
        Bucket=bucket, ExpectedBucketOwner=owner, VersioningConfiguration={"Status": "Enabled"}
    )
    s3.put_bucket_lifecycle_configuration(
        Bucket=bucket,
        ExpectedBucketOwner=owner,
        LifecycleConfiguration={"Rules": [LIFECYCLE_RULE]},
    )
    s3.put_bucket_policy(
        Bucket=bucket, ExpectedBucketOwner=owner, Policy=json.dumps(tls_only_policy(bucket))
    )


LIFECYCLE_RULE: dict[str, Any] = {
    "ID": "expire-old-versions",
    "Status": "Enabled",
    "Filter": {"Prefix": ""},
    "NoncurrentVersionExpiration": {"NoncurrentDays": 30},
    "AbortIncompleteMultipartUpload": {"DaysAfterInitiation": 7},
}


def tls_only_policy(bucket: str) -> dict[str, Any]:
    """Refuse every request to the bucket that does not arrive over TLS."""
    return {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Sid": "DenyPlainHttp",
                "Effect": "Deny",
                "Principal": "*",
                "Action": "s3:*",
                "Resource": [f"arn:aws:s3:::{bucket}", f"arn:aws:s3:::{bucket}/*"],
                "Condition": {"Bool": {"aws:SecureTransport": "false"}},
            }
        ],
    }


def upload(s3: Any, bucket: str, artifact: Artifact, owner: str) -> bool:
    """Upload unless the content-addressed key is already there; True when uploaded."""
    try:
        s3.head_object(Bucket=bucket, Key=artifact.key, ExpectedBucketOwner=owner)
        return False
    except s3.exceptions.ClientError as exc:
        if exc.response.get("Error", {}).get("Code") not in ("404", "NoSuchKey", "NotFound"):
            raise
    s3.upload_file(
        str(artifact.path),
        bucket,
        artifact.key,
        ExtraArgs={"Metadata": {"sha256": artifact.sha256}, "ExpectedBucketOwner": owner},
    )
    return True


def delete_stack_objects(s3: Any, bucket: str, stack_name: str, owner: str) -> int:
    """Delete every version under the stack's prefix, then the bucket if it is ours and empty."""
    deleted = 0
    paginator = s3.get_paginator("list_object_versions")
    pages = paginator.paginate(Bucket=bucket, Prefix=f"{stack_name}/", ExpectedBucketOwner=owner)
    for page in pages:
        keys = [
            {"Key": item["Key"], "VersionId": item["VersionId"]}
            for item in page.get("Versions", []) + page.get("DeleteMarkers", [])
        ]
        if keys:
            s3.delete_objects(
                Bucket=bucket,
                ExpectedBucketOwner=owner,
                Delete={"Objects": keys, "Quiet": True},
            )
            deleted += len(keys)
    left = s3.list_object_versions(Bucket=bucket, MaxKeys=1, ExpectedBucketOwner=owner)
    if not (left.get("Versions") or left.get("DeleteMarkers")) and _is_managed(s3, bucket, owner):
        s3.delete_bucket(Bucket=bucket, ExpectedBucketOwner=owner)
    return deleted


def _is_managed(s3: Any, bucket: str, owner: str) -> bool:
    try:
        tags = s3.get_bucket_tagging(Bucket=bucket, ExpectedBucketOwner=owner).get("TagSet", [])
    except s3.exceptions.ClientError:
        return False
    return {"Key": MANAGED_TAG[0], "Value": MANAGED_TAG[1]} in tags
