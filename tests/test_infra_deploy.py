"""infra/deploy.py against moto's fake AWS: stacks, artifacts, outputs, teardown, errors."""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import tarfile
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest
from moto import mock_aws

from infra import artifacts, deploy, fit, model_check

REPO = Path(__file__).resolve().parents[1]
REGION = "eu-west-1"
# Costs as export/cost.py records them: the demo-sized model, and a five-member ResNeSt-50
# ensemble at 128 px as measured on this project's 2-core Xeon (fp32: two copies of 569 MiB
# of weights while loading).
SMALL_MODEL_COST = {"load_peak_mib": 300.0, "resting_mib": 190.0, "per_view_mib": 2.0}
ENSEMBLE_COST = {"load_peak_mib": 1253.0, "resting_mib": 680.0, "per_view_mib": 11.6}


@pytest.fixture
def aws(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    for name in ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))
    # moto ignores a policy's Condition, so the bucket's TLS-only deny (aws:SecureTransport
    # false) would refuse every request; real S3 sees these requests arrive over TLS.
    from moto.iam.access_control import PermissionResult
    from moto.s3.models import FakeBucket

    monkeypatch.setattr(
        FakeBucket, "get_permission", lambda self, *a, **k: PermissionResult.NEUTRAL
    )
    # The real loader is tested on a real model below; here the bytes are stand-ins.
    monkeypatch.setattr(deploy.model_check, "validate_model", lambda path: "stand-in model")
    monkeypatch.setattr(deploy.model_check, "check_fit",
                        lambda path, instance_type: fit.check(SMALL_MODEL_COST, instance_type))
    with mock_aws():
        yield


@pytest.fixture
def source_dir(tmp_path: Path) -> Path:
    """A repository-shaped tree with the serving files and some that must stay behind."""
    root = tmp_path / "src"
    (root / "webapp" / "static").mkdir(parents=True)
    (root / "webapp" / "__init__.py").write_text("def create_app():\n    pass\n")
    (root / "webapp" / "static" / "style.css").write_text("body{}\n")
    (root / "webapp" / "__pycache__").mkdir()
    (root / "webapp" / "__pycache__" / "x.cpython-311.pyc").write_bytes(b"\0")
    (root / "inference").mkdir()
    (root / "inference" / "__init__.py").write_text("")
    (root / "requirements.txt").write_text("flask==3.1.3\nonnxruntime==1.31.1\n")
    (root / "requirements.lock").write_text("flask==3.1.3 --hash=sha256:" + "0" * 64 + "\n")
    (root / "gunicorn.conf.py").write_text("bind = '127.0.0.1:8000'\n")
    (root / "tests").mkdir()
    (root / "tests" / "test_x.py").write_text("")
    (root / "models").mkdir()
    (root / "models" / "default.onnx").write_bytes(b"not shipped in the bundle")
    shutil.copytree(REPO / "infra" / "host", root / "infra" / "host")
    return root


def _model(tmp_path: Path, payload: bytes = b"onnx-bytes-v1") -> Path:
    path = tmp_path / f"model-{hashlib.sha1(payload).hexdigest()[:6]}.onnx"
    path.write_bytes(payload)
    return path


def _params(stack_name: str) -> dict[str, str]:
    stack = boto3.client("cloudformation", region_name=REGION).describe_stacks(
        StackName=stack_name
    )["Stacks"][0]
    return {p["ParameterKey"]: p["ParameterValue"] for p in stack["Parameters"]}


def _wheelhouse(source_dir: Path) -> Path:
    wheels = source_dir.parent / "wheelhouse"
    for machine in ("x86_64", "aarch64"):
        (wheels / machine).mkdir(parents=True, exist_ok=True)
        (wheels / machine / f"flask-3.1.3-py3-none-{machine}.whl").write_bytes(b"wheel")
    return wheels


def _deploy(source_dir: Path, model: Path, *extra: str, stack: str = "mel") -> int:
    return deploy.main(
        [
            "deploy",
            "--stack-name",
            stack,
            "--model",
            str(model),
            "--source-dir",
            str(source_dir),
            "--wheelhouse",
            str(_wheelhouse(source_dir)),
            "--poll-seconds",
            "1",
            *extra,
        ]
    )


def test_deploy_ships_the_int8_model_beside_the_fp32_one(
    aws: None, source_dir: Path, tmp_path: Path
) -> None:
    model = _model(tmp_path)
    int8 = model.with_name(f"{model.stem}.int8.onnx")
    int8.write_bytes(b"int8-bytes")
    assert _deploy(source_dir, model) == 0

    params = _params("mel")
    assert params["Int8ModelSha256"] == hashlib.sha256(b"int8-bytes").hexdigest()
    assert params["Int8ModelKey"].startswith("mel/models/")
    assert params["Int8ModelKey"].endswith(".int8.onnx")
    s3 = boto3.client("s3", region_name=REGION)
    shipped = s3.get_object(Bucket=params["ArtifactBucket"], Key=params["Int8ModelKey"])
    assert shipped["Body"].read() == b"int8-bytes"


def test_deploy_without_an_int8_model_ships_fp32_only(
    aws: None, source_dir: Path, tmp_path: Path
) -> None:
    assert _deploy(source_dir, _model(tmp_path)) == 0
    params = _params("mel")
    assert params["Int8ModelKey"] == "" and params["Int8ModelSha256"] == ""


def test_deploy_creates_stack_with_model_hash_and_uploads_both_artifacts(
    aws: None, source_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = _model(tmp_path)
    assert _deploy(source_dir, model) == 0

    params = _params("mel")
    assert params["ModelSha256"] == hashlib.sha256(model.read_bytes()).hexdigest()
    assert params["InstanceType"] == "t3.micro" and params["CpuCredits"] == "standard"
    assert params["ImageId"].startswith("ami-") and params["CloudFrontPrefixListId"].startswith(
        "pl-"
    )
    assert params["SshCidr"] == ""
    assert params["VpcId"].startswith("vpc-") and params["SubnetId"].startswith("subnet-")
    bucket = params["ArtifactBucket"]
    assert bucket == f"melanoma-artifacts-123456789012-{REGION}"  # moto's fixed test account
    s3 = boto3.client("s3", region_name=REGION)
    shipped = s3.get_object(Bucket=bucket, Key=params["ModelKey"])["Body"].read()
    assert shipped == model.read_bytes()
    assert params["AppKey"].startswith("mel/app/") and params["ModelKey"].startswith("mel/models/")
    assert s3.get_public_access_block(Bucket=bucket)["PublicAccessBlockConfiguration"][
        "BlockPublicAcls"
    ]

    out = capsys.readouterr().out
    # moto has no CloudFront, so the stack's https Url output is checked in the template tests.
    assert "stack mel: created" in out
    assert "change set mel-" in out


def test_bundle_holds_the_serving_files_only_and_is_reproducible(
    aws: None, source_dir: Path, tmp_path: Path
) -> None:
    first = artifacts.build_bundle(source_dir, tmp_path / "a", "mel")
    second = artifacts.build_bundle(source_dir, tmp_path / "b", "mel")
    assert first.sha256 == second.sha256 and first.key == second.key
    with tarfile.open(first.path) as tar:
        names = set(tar.getnames())
        bootstrap_mode = tar.getmember("infra/host/bootstrap.sh").mode
    assert {
        "webapp/__init__.py",
        "webapp/static/style.css",
        "inference/__init__.py",
        "requirements.txt",
        "gunicorn.conf.py",
        "infra/host/bootstrap.sh",
        "infra/host/render.py",
    } <= names
    assert not [n for n in names if n.startswith(("tests/", "models/")) or n.endswith(".pyc")]
    assert bootstrap_mode == 0o755


@pytest.mark.filterwarnings("ignore:Tried to parse .* not supported by moto")
def test_scale_out_deploy_passes_network_and_certificate_and_prints_https_url(
    aws: None, source_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cert = boto3.client("acm", region_name=REGION).request_certificate(
        DomainName="melanoma.example.org"
    )
    rc = _deploy(
        source_dir,
        _model(tmp_path),
        "--template",
        "scale-out",
        "--certificate-arn",
        cert["CertificateArn"],
        "--max-size",
        "4",
        stack="melfleet",
    )
    assert rc == 0
    params = _params("melfleet")
    assert params["CertificateArn"] == cert["CertificateArn"] and params["MaxSize"] == "4"
    assert len(params["SubnetIds"].split(",")) >= 2 and "/" in params["VpcCidr"]
    assert params["MinInServiceDuringUpdate"] == "1"


def _host_reports(monkeypatch: pytest.MonkeyPatch, bucket: str, report: dict[str, str]) -> None:
    """Stand in for bootstrap.sh on the host: its status object, under its instance id."""
    # moto's describe_stack_resources fails on stacks holding types it does not model
    # (CloudFront); the stack's only instance is the host.
    (reservation,) = boto3.client("ec2", region_name=REGION).describe_instances()["Reservations"]
    instance = reservation["Instances"][0]["InstanceId"]
    monkeypatch.setattr(deploy, "instance_id", lambda cfn, name: instance)
    boto3.client("s3", region_name=REGION).put_object(
        Bucket=bucket, Key=f"mel/status/{instance}.json", Body=json.dumps(report)
    )


def test_update_model_swaps_only_the_model_and_keeps_other_settings(
    aws: None, monkeypatch: pytest.MonkeyPatch, source_dir: Path, tmp_path: Path
) -> None:
    assert _deploy(source_dir, _model(tmp_path), "--ssh-cidr", "203.0.113.0/24") == 0
    before = _params("mel")
    new_model = _model(tmp_path, b"onnx-bytes-v2")
    new = hashlib.sha256(b"onnx-bytes-v2").hexdigest()
    report = {"state": "serving", "serving_sha256": new, "wanted_sha256": new}
    _host_reports(monkeypatch, before["ArtifactBucket"], report)

    assert (
        deploy.main(
            [
                "update-model",
                "--stack-name",
                "mel",
                "--model",
                str(new_model),
                "--poll-seconds",
                "1",
            ]
        )
        == 0
    )

    after = _params("mel")
    assert after["ModelSha256"] == hashlib.sha256(b"onnx-bytes-v2").hexdigest()
    assert after["ModelKey"] != before["ModelKey"]
    unchanged = {k: v for k, v in before.items() if k not in ("ModelKey", "ModelSha256")}
    assert {k: after[k] for k in unchanged} == unchanged
    assert after["SshCidr"] == "203.0.113.0/24"
    s3 = boto3.client("s3", region_name=REGION)
    assert (
        s3.get_object(Bucket=after["ArtifactBucket"], Key=after["ModelKey"])["Body"].read()
        == b"onnx-bytes-v2"
    )


def test_redeploy_without_a_flag_keeps_the_value_given_before(
    aws: None, source_dir: Path, tmp_path: Path
) -> None:
    model = _model(tmp_path)
    assert _deploy(source_dir, model, "--instance-type", "t3.micro") == 0
    (source_dir / "webapp" / "views.py").write_text("# changed app\n")
    assert _deploy(source_dir, model) == 0
    params = _params("mel")
    assert params["InstanceType"] == "t3.micro"


def test_teardown_deletes_stack_artifacts_and_the_bucket_it_made(
    aws: None, source_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _deploy(source_dir, _model(tmp_path)) == 0
    bucket = _params("mel")["ArtifactBucket"]

    assert deploy.main(["teardown", "--stack-name", "mel", "--poll-seconds", "1"]) == 0

    cfn = boto3.client("cloudformation", region_name=REGION)
    live = [s for s in cfn.list_stacks()["StackSummaries"] if s["StackStatus"] != "DELETE_COMPLETE"]
    assert live == []
    names = [b["Name"] for b in boto3.client("s3", region_name=REGION).list_buckets()["Buckets"]]
    assert bucket not in names
    assert "deleted 2 object version(s)" in capsys.readouterr().out


def test_teardown_leaves_other_stacks_artifacts_alone(
    aws: None, source_dir: Path, tmp_path: Path
) -> None:
    model = _model(tmp_path)
    assert _deploy(source_dir, model, stack="one") == 0
    assert _deploy(source_dir, model, stack="two") == 0
    assert deploy.main(["teardown", "--stack-name", "one", "--poll-seconds", "1"]) == 0
    bucket = _params("two")["ArtifactBucket"]
    keys = [
        o["Key"]
        for o in boto3.client("s3", region_name=REGION).list_objects_v2(Bucket=bucket)["Contents"]
    ]
    assert keys and all(k.startswith("two/") for k in keys)


def test_status_prints_url_and_model_hash(
    aws: None, source_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = _model(tmp_path)
    assert _deploy(source_dir, model) == 0
    capsys.readouterr()
    assert deploy.main(["status", "--stack-name", "mel"]) == 0
    out = capsys.readouterr().out
    assert "CREATE_COMPLETE" in out and hashlib.sha256(model.read_bytes()).hexdigest() in out
    assert deploy.main(["status", "--stack-name", "absent"]) == 1


def _assert_one_line_error(capsys: pytest.CaptureFixture[str], *words: str) -> None:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("deploy: error:"), err
    assert all(w in lines[0] for w in words), lines[0]


def _no_aws_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in (
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "AWS_PROFILE",
        "AWS_DEFAULT_PROFILE",
        "AWS_REGION",
        "AWS_DEFAULT_REGION",
        "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
        "AWS_CONTAINER_CREDENTIALS_FULL_URI",
        "AWS_WEB_IDENTITY_TOKEN_FILE",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))
    # Otherwise botocore asks the instance metadata service, slowly, on a machine that has none.
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


def test_missing_credentials_is_a_one_line_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _no_aws_env(monkeypatch, tmp_path)
    rc = deploy.main(
        ["deploy", "--stack-name", "mel", "--region", REGION, "--model", str(_model(tmp_path))]
    )
    assert rc != 0
    _assert_one_line_error(capsys, "no AWS credentials")


def test_missing_region_is_a_one_line_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _no_aws_env(monkeypatch, tmp_path)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    assert deploy.main(["status", "--stack-name", "mel"]) != 0
    _assert_one_line_error(capsys, "no AWS region", "--region")


def test_unknown_profile_is_a_one_line_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _no_aws_env(monkeypatch, tmp_path)
    assert (
        deploy.main(["status", "--stack-name", "mel", "--profile", "nope", "--region", REGION]) != 0
    )
    _assert_one_line_error(capsys, "nope")


@pytest.mark.parametrize(
    ("name", "sidecar", "words"),
    [
        ("model.onnx", True, "external weights"),
        ("model.ckpt", False, ".onnx"),
        ("missing.onnx", None, "not found"),
    ],
)
def test_deploy_refuses_a_model_the_host_could_not_load(
    aws: None,
    source_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    name: str,
    sidecar: bool | None,
    words: str,
) -> None:
    model = tmp_path / name
    if sidecar is not None:
        model.write_bytes(b"x")
    if sidecar:
        (tmp_path / (name + ".data")).write_bytes(b"weights")
    assert _deploy(source_dir, model) != 0
    _assert_one_line_error(capsys, words)
    assert boto3.client("cloudformation", region_name=REGION).list_stacks()["StackSummaries"] == []


def test_bundle_refuses_a_tree_without_the_app(
    aws: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "empty").mkdir()
    assert _deploy(tmp_path / "empty", _model(tmp_path)) != 0
    _assert_one_line_error(capsys, "webapp", "--source-dir")


def test_every_flag_has_help() -> None:
    parser = deploy._parser()
    action = next(a for a in parser._actions if a.dest == "command")
    subparsers: dict[str, argparse.ArgumentParser] = action.choices  # type: ignore[assignment]
    missing = [
        f"{name} {a.option_strings}"
        for name, sub in subparsers.items()
        for a in sub._actions
        if a.option_strings and not a.help
    ]
    assert missing == []


def test_redeploy_keeps_the_network_and_ami_given_at_create_time(
    aws: None, source_dir: Path, tmp_path: Path
) -> None:
    ec2 = boto3.client("ec2", region_name=REGION)
    vpc = ec2.create_vpc(CidrBlock="10.9.0.0/16")["Vpc"]["VpcId"]
    subnet = ec2.create_subnet(VpcId=vpc, CidrBlock="10.9.1.0/24")["Subnet"]["SubnetId"]
    ec2.modify_subnet_attribute(SubnetId=subnet, MapPublicIpOnLaunch={"Value": True})
    model = _model(tmp_path)
    assert _deploy(source_dir, model, "--vpc-id", vpc, "--subnet-id", subnet) == 0
    first = _params("mel")
    (source_dir / "webapp" / "views.py").write_text("# changed app\n")
    assert _deploy(source_dir, model) == 0
    after = _params("mel")
    assert (after["VpcId"], after["SubnetId"], after["ImageId"]) == (vpc, subnet, first["ImageId"])
    assert after["AppKey"] != first["AppKey"]


def test_a_change_set_that_replaces_something_stops_without_yes(
    aws: None,
    monkeypatch: pytest.MonkeyPatch,
    source_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    model = _model(tmp_path)
    assert _deploy(source_dir, model) == 0
    before = _params("mel")
    real_plan = deploy.stack.plan

    def replacing_plan(*args: object, **kwargs: object) -> deploy.stack.Plan | None:
        found = real_plan(*args, **kwargs)  # type: ignore[arg-type]
        assert found is not None
        instance = deploy.stack.Change("Modify", "Instance", "AWS::EC2::Instance", "True")
        return deploy.stack.Plan(found.name, found.kind, (*found.changes, instance))

    monkeypatch.setattr(deploy.stack, "plan", replacing_plan)
    assert _deploy(source_dir, model, "--instance-type", "t3.small") == deploy.EXIT_STOPPED
    assert "would replace Instance" in capsys.readouterr().err
    assert _params("mel") == before
    assert _deploy(source_dir, model, "--instance-type", "t3.small", "--yes") == 0
    assert _params("mel")["InstanceType"] == "t3.small"


@pytest.mark.parametrize(
    ("sizes", "group_max", "in_service"),
    [((1, 1, 1), "2", "1"), ((0, 1, 1), "2", "1"), ((0, 3, 0), "3", "0"), ((2, 2, 2), "3", "2")],
)
def test_rolling_update_sizes_work_at_every_size(
    sizes: tuple[int, int, int], group_max: str, in_service: str
) -> None:
    got = deploy.rolling_sizes(*sizes)
    assert (got["MaxSize"], got["MinInServiceDuringUpdate"]) == (group_max, in_service)
    assert int(got["MinInServiceDuringUpdate"]) < int(got["MaxSize"])


def test_deploy_waits_longer_than_a_rolling_update_of_every_host() -> None:
    assert deploy.wait_seconds({"MaxSize": "4"}, {}) > (
        deploy.CREATE_SECONDS + 4 * deploy.PAUSE_SECONDS
    )


def test_artifact_bucket_is_tls_only_versioned_with_a_lifecycle(
    aws: None, source_dir: Path, tmp_path: Path
) -> None:
    assert _deploy(source_dir, _model(tmp_path)) == 0
    bucket = _params("mel")["ArtifactBucket"]
    s3 = boto3.client("s3", region_name=REGION)
    assert s3.get_bucket_versioning(Bucket=bucket)["Status"] == "Enabled"
    (rule,) = s3.get_bucket_lifecycle_configuration(Bucket=bucket)["Rules"]
    assert rule["NoncurrentVersionExpiration"]["NoncurrentDays"] == 30
    (statement,) = json.loads(s3.get_bucket_policy(Bucket=bucket)["Policy"])["Statement"]
    assert statement["Effect"] == "Deny"
    assert statement["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}


def test_update_model_waits_for_the_host_and_reports_a_rollback(
    aws: None,
    monkeypatch: pytest.MonkeyPatch,
    source_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert _deploy(source_dir, _model(tmp_path)) == 0
    params = _params("mel")
    old = params["ModelSha256"]
    new = hashlib.sha256(b"onnx-bytes-v2").hexdigest()
    # What bootstrap.sh on the host writes when the new model fails readiness.
    report = {"state": "rolled-back", "serving_sha256": old, "wanted_sha256": new}
    _host_reports(monkeypatch, params["ArtifactBucket"], report)
    rc = deploy.main(
        [
            "update-model",
            "--stack-name",
            "mel",
            "--model",
            str(_model(tmp_path, b"onnx-bytes-v2")),
            "--poll-seconds",
            "1",
            "--host-timeout",
            "5",
        ]
    )
    assert rc == 1
    assert f"rolled-back: it serves {old}" in capsys.readouterr().err


def test_deploy_refuses_a_model_onnxruntime_cannot_load(tmp_path: Path) -> None:
    from infra import model_check

    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not a protobuf")
    with pytest.raises(artifacts.ArtifactError, match="broken.onnx"):
        model_check.validate_model(broken)


def test_deploy_accepts_a_real_exported_model(tiny_onnx_model: Path) -> None:
    from infra import model_check

    assert model_check.validate_model(tiny_onnx_model)


def test_bundle_carries_the_lock_and_the_wheelhouse(source_dir: Path, tmp_path: Path) -> None:
    bundle = artifacts.build_bundle(source_dir, tmp_path / "out", "mel", _wheelhouse(source_dir))
    with tarfile.open(bundle.path) as tar:
        names = set(tar.getnames())
    assert "requirements.lock" in names
    assert "wheelhouse/x86_64/flask-3.1.3-py3-none-x86_64.whl" in names


def test_deploy_stops_before_uploading_a_model_too_big_for_the_instance(
    aws: None,
    monkeypatch: pytest.MonkeyPatch,
    source_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setattr(deploy.model_check, "check_fit",
                        lambda path, instance_type: fit.check(ENSEMBLE_COST, instance_type))
    model = _model(tmp_path)
    assert _deploy(source_dir, model) == deploy.EXIT_STOPPED
    out, err = capsys.readouterr()
    assert "would be killed for memory on t3.micro. Rerun with --yes" in err
    assert "does not fit t3.micro: its server needs about 1445 MiB" in out
    assert "t3.small fits (deploy --instance-type t3.small)" in out
    assert boto3.client("s3").list_buckets()["Buckets"] == []
    assert boto3.client("cloudformation").describe_stacks()["Stacks"] == []

    assert _deploy(source_dir, model, "--instance-type", "t3.small") == 0
    assert _params("mel")["InstanceType"] == "t3.small"
    assert _deploy(source_dir, model, "--yes", stack="forced") == 0


def test_the_fit_check_measures_a_real_model_that_carries_no_cost(
    tiny_onnx_model: Path,
) -> None:
    verdict = model_check.check_fit(tiny_onnx_model, "t3.micro")
    assert verdict.fits, verdict.sentence()
    assert 192 < verdict.need_mib < verdict.allowed_mib == 750 * 0.9
