"""Deploy the melanoma classifier to AWS: ship app + model, create or update the stack.

python -m infra.deploy deploy --stack-name melanoma --model models/default.onnx
python -m infra.deploy update-model --stack-name melanoma --model models/new.onnx
python -m infra.deploy update-ami --stack-name melanoma --yes
python -m infra.deploy status --stack-name melanoma
python -m infra.deploy teardown --stack-name melanoma

Every change goes through a CloudFormation change set that is printed first; one that would
replace a resource stops unless --yes is given.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    # Run as `python infra/deploy.py`: make the `infra` package importable.
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import boto3
from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError, NoRegionError

from infra import artifacts, model_check, stack, wheelhouse
from infra.artifacts import ArtifactError
from infra.stack import StackError

REPO_ROOT = Path(__file__).resolve().parent.parent
AMI_PARAMETER = "/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-{arch}"
CLOUDFRONT_PREFIX_LIST = "com.amazonaws.global.cloudfront.origin-facing"
# The templates' CreationPolicy timeout and rolling-update PauseTime, in seconds.
CREATE_SECONDS = 900
PAUSE_SECONDS = 900
EXIT_STOPPED = 3


class DeployError(RuntimeError):
    """A problem the operator can fix; reported as one line, without a traceback."""


def _session(args: argparse.Namespace) -> Any:
    try:
        session = boto3.Session(profile_name=args.profile, region_name=args.region)
    except BotoCoreError as exc:
        raise DeployError(str(exc)) from None
    if not session.region_name:
        raise DeployError("no AWS region: pass --region or set AWS_REGION (or AWS_DEFAULT_REGION)")
    if session.get_credentials() is None:
        raise DeployError(
            "no AWS credentials: set AWS_PROFILE, or AWS_ACCESS_KEY_ID and "
            "AWS_SECRET_ACCESS_KEY, or run `aws configure`"
        )
    return session


def _account(session: Any) -> str:
    return str(session.client("sts").get_caller_identity()["Account"])


def _bucket_name(args: argparse.Namespace, account: str, region: str) -> str:
    return args.bucket or f"melanoma-artifacts-{account}-{region}"


def latest_ami(ssm: Any, instance_type: str) -> str:
    """The newest Amazon Linux 2023 AMI for the instance type's architecture."""
    arch = "arm64" if wheelhouse.machine_for(instance_type) == "aarch64" else "x86_64"
    return str(ssm.get_parameter(Name=AMI_PARAMETER.format(arch=arch))["Parameter"]["Value"])


def cloudfront_prefix_list(ec2: Any) -> str:
    found = ec2.describe_managed_prefix_lists(
        Filters=[{"Name": "prefix-list-name", "Values": [CLOUDFRONT_PREFIX_LIST]}]
    )["PrefixLists"]
    if not found:
        raise DeployError(f"this region has no managed prefix list {CLOUDFRONT_PREFIX_LIST}")
    return str(found[0]["PrefixListId"])


def _given(args: argparse.Namespace) -> dict[str, str]:
    """Parameters the operator set on the command line; the rest keep their stored value."""
    given: dict[str, Any] = {
        "InstanceType": args.instance_type,
        "CpuCredits": args.cpu_credits,
        "SwapSizeMiB": args.swap_mib,
        "EnableSessionManager": args.session_manager,
        "AlertEmail": args.alert_email,
        "MonthlyBudgetUsd": args.budget_usd,
    }
    if args.template == "single":
        given.update(SshCidr=args.ssh_cidr, KeyName=args.key_name)
    else:
        given.update(
            CertificateArn=args.certificate_arn,
            DomainName=args.domain_name,
            MinSize=args.min_size,
            MaxSize=args.max_size,
            DesiredCapacity=args.desired,
            TargetCpuPercent=args.target_cpu,
        )
    return {k: str(v) for k, v in given.items() if v is not None}


def _network(args: argparse.Namespace, session: Any, instance_type: str) -> dict[str, str]:
    network = stack.default_network(session.client("ec2"), instance_type, args.vpc_id)
    subnets = tuple(args.subnet_id) or network.subnet_ids
    if args.template == "single":
        return {"VpcId": network.vpc_id, "SubnetId": subnets[0]}
    if len(subnets) < 2:
        raise DeployError("the load balancer needs subnets in two zones; pass --subnet-id twice")
    return {"VpcId": network.vpc_id, "VpcCidr": network.vpc_cidr, "SubnetIds": ",".join(subnets)}


def rolling_sizes(min_size: int, max_size: int, desired: int) -> dict[str, str]:
    """Group sizes a rolling update accepts at every size.

    CloudFormation refuses MinInstancesInService >= MaxSize, and MinInstancesInService 0
    stops the only host before its replacement starts; so MaxSize gets one spare above
    MinSize, and one host (or all but the spare) keeps serving.
    """
    if not 0 <= min_size <= desired <= max(max_size, desired):
        raise DeployError(f"need MinSize <= DesiredCapacity, got {min_size} > {desired}")
    if desired > max_size:
        raise DeployError(f"need DesiredCapacity <= MaxSize, got {desired} > {max_size}")
    group_max = max(max_size, min_size + 1, 2)
    in_service = min(max(min_size, 1), group_max - 1) if desired > 0 else 0
    return {
        "MinSize": str(min_size),
        "MaxSize": str(group_max),
        "DesiredCapacity": str(desired),
        "MinInServiceDuringUpdate": str(in_service),
    }


def wait_seconds(params: dict[str, str], previous: dict[str, str]) -> int:
    """Long enough for the slowest path: create, then one rolling pause per host, plus margin."""
    hosts = int(params.get("MaxSize") or previous.get("MaxSize") or 1)
    return CREATE_SECONDS + (hosts + 1) * PAUSE_SECONDS + 600


def _print_outputs(found: dict[str, Any]) -> None:
    outs = stack.outputs(found)
    print(f"stack {found['StackName']}: {found['StackStatus']}")
    for key, value in sorted(outs.items()):
        print(f"  {key}: {value}")
    if "Url" in outs:
        print(outs["Url"])


def _apply(
    args: argparse.Namespace,
    cfn: Any,
    body: str | None,
    params: dict[str, str],
    previous: dict[str, str],
) -> str | None:
    """Show the change set, stop before a replacement unless --yes, run it.

    Returns 'created', 'updated', 'unchanged', or None when stopped.
    """
    wanted = stack.template_parameter_names(body) if body is not None else set(previous)
    parameters = stack.parameter_list(params, set(previous), wanted)
    change_set = stack.plan(cfn, args.stack_name, body, parameters, delay=args.poll_seconds)
    if change_set is None:
        return "unchanged"
    print(f"change set {change_set.name} ({change_set.kind.lower()}):")
    for change in change_set.changes:
        print(f"  {change.describe()}")
    if change_set.replaces and not args.yes:
        stack.discard(cfn, args.stack_name, change_set)
        names = ", ".join(c.logical_id for c in change_set.replaces)
        print(
            f"stopped: this would replace {names}; nothing was changed. "
            "Rerun with --yes to go ahead.",
            file=sys.stderr,
        )
        return None
    timeout = args.timeout or wait_seconds(params, previous)
    print(f"stack {args.stack_name}: applying (waits up to {timeout // 60} min)")
    return stack.execute(cfn, args.stack_name, change_set, args.poll_seconds, timeout)


def _models(args: argparse.Namespace) -> tuple[artifacts.Artifact, artifacts.Artifact | None]:
    """The fp32 model and the INT8 model beside it (if any), each checked as the host loads it."""
    model = artifacts.model_artifact(args.model, args.stack_name)
    print(f"model {args.model.name}: {model_check.validate_model(args.model)} loads and warms up")
    int8 = artifacts.int8_artifact(args.model, args.stack_name)
    if int8 is not None:
        print(f"INT8 model {int8.path.name}: {model_check.validate_model(int8.path)} loads and "
              "warms up; the host serves it where it is gated and faster")
    return model, int8


def cmd_deploy(args: argparse.Namespace, session: Any) -> int:
    model, int8 = _models(args)
    s3, cfn = session.client("s3"), session.client("cloudformation")
    account, region = _account(session), session.region_name
    bucket = _bucket_name(args, account, region)
    existing = stack.describe(cfn, args.stack_name)
    previous = stack.parameters(existing) if existing else {}
    params = _given(args)
    instance_type = params.get("InstanceType") or previous.get("InstanceType") or "t3.micro"
    if not model_fits(args, instance_type):
        return EXIT_STOPPED
    machine = wheelhouse.machine_for(instance_type)
    # Network, AMI and prefix list are looked up once and then kept (UsePreviousValue):
    # a later deploy never moves the stack to another VPC or image by itself.
    if existing is None or args.vpc_id or args.subnet_id:
        params.update(_network(args, session, instance_type))
    if "CloudFrontPrefixListId" not in previous:
        params["CloudFrontPrefixListId"] = cloudfront_prefix_list(session.client("ec2"))
    old_machine = wheelhouse.machine_for(previous.get("InstanceType", instance_type))
    # A stack made by an older template stored the AMI's SSM path, not a pinned id.
    pinned = previous.get("ImageId", "").startswith("ami-")
    if existing is None or machine != old_machine or not pinned:
        params["ImageId"] = latest_ami(session.client("ssm"), instance_type)
    if args.template == "scale-out":
        sizes = {
            k: int(params.get(k) or previous.get(k) or default)
            for k, default in (("MinSize", 1), ("MaxSize", 3), ("DesiredCapacity", 1))
        }
        params.update(rolling_sizes(sizes["MinSize"], sizes["MaxSize"], sizes["DesiredCapacity"]))
    with tempfile.TemporaryDirectory() as tmp:
        wheels = args.wheelhouse or wheelhouse.build(
            args.source_dir / "requirements.lock", machine, Path(tmp) / "wheelhouse"
        )
        if not any((wheels / machine).glob("*.whl")):
            raise DeployError(f"{wheels} has no {machine} wheels")
        bundle = artifacts.build_bundle(args.source_dir, Path(tmp), args.stack_name, wheels)
        artifacts.ensure_bucket(s3, bucket, region, account)
        for artifact in (bundle, model, *([int8] if int8 else [])):
            uploaded = artifacts.upload(s3, bucket, artifact, account)
            print(f"s3://{bucket}/{artifact.key}: {'uploaded' if uploaded else 'already in place'}")
    params.update(
        ArtifactBucket=bucket, AppKey=bundle.key, **artifacts.model_parameters(model, int8)
    )
    body = stack.TEMPLATES[args.template].read_text(encoding="utf-8")
    result = _apply(args, cfn, body, params, previous)
    if result is None:
        return EXIT_STOPPED
    print(f"stack {args.stack_name}: {result}")
    _print_outputs(stack.describe(cfn, args.stack_name) or {})
    return 0


def model_fits(args: argparse.Namespace, instance_type: str) -> bool:
    """Say whether the model fits the instance's memory; stop before uploading unless --yes."""
    verdict = model_check.check_fit(args.model, instance_type)
    print(f"memory: {verdict.sentence()}")
    if verdict.fits or args.yes:
        return True
    print(f"deploy: stopped before uploading: {args.model.name} would be killed for memory "
          f"on {instance_type}. Rerun with --yes to deploy it anyway.", file=sys.stderr)
    return False


def cmd_update_ami(args: argparse.Namespace, session: Any) -> int:
    cfn = session.client("cloudformation")
    found = stack.describe(cfn, args.stack_name)
    if found is None:
        raise DeployError(f"stack {args.stack_name} does not exist; run deploy first")
    previous = stack.parameters(found)
    image = latest_ami(session.client("ssm"), previous.get("InstanceType", "t3.micro"))
    if image == previous.get("ImageId"):
        print(f"stack {args.stack_name}: already on the newest image {image}")
        return 0
    print(f"stack {args.stack_name}: image {previous.get('ImageId')} -> {image}")
    result = _apply(args, cfn, None, {"ImageId": image}, previous)
    if result is None:
        return EXIT_STOPPED
    print(f"stack {args.stack_name}: {result}")
    return 0


def _host_status(s3: Any, bucket: str, owner: str, key: str) -> dict[str, Any] | None:
    try:
        body = s3.get_object(Bucket=bucket, Key=key, ExpectedBucketOwner=owner)["Body"].read()
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
            return None
        raise
    return dict(json.loads(body))


def wait_for_host(
    s3: Any, bucket: str, owner: str, key: str, sha256: str, timeout: int, delay: int
) -> dict[str, Any]:
    """Poll the host's status report until it answers for sha256 (serving or rolled back)."""
    deadline = time.monotonic() + timeout
    while True:
        status = _host_status(s3, bucket, owner, key)
        if status and status.get("wanted_sha256") == sha256:
            return status
        if time.monotonic() >= deadline:
            raise DeployError(
                f"the host did not report on model {sha256[:12]} within {timeout} s "
                f"(see the {key} report and the app log group)"
            )
        time.sleep(delay)


def instance_id(cfn: Any, stack_name: str) -> str:
    """The single-instance stack's host."""
    resources = cfn.describe_stack_resources(StackName=stack_name, LogicalResourceId="Instance")
    return str(resources["StackResources"][0]["PhysicalResourceId"])


def cmd_update_model(args: argparse.Namespace, session: Any) -> int:
    cfn, s3 = session.client("cloudformation"), session.client("s3")
    found = stack.describe(cfn, args.stack_name)
    if found is None:
        raise DeployError(f"stack {args.stack_name} does not exist; run deploy first")
    previous = stack.parameters(found)
    model, int8 = _models(args)
    if not model_fits(args, previous.get("InstanceType", "t3.micro")):
        return EXIT_STOPPED
    account, bucket = _account(session), previous["ArtifactBucket"]
    for artifact in (model, *([int8] if int8 else [])):
        artifacts.upload(s3, bucket, artifact, account)
    params = artifacts.model_parameters(model, int8)
    result = _apply(args, cfn, None, params, previous)
    if result is None:
        return EXIT_STOPPED
    print(f"stack {args.stack_name}: {result}; model sha256 {model.sha256}")
    if result == "unchanged" or "SubnetId" not in previous:
        # Scale-out: the rolling update itself waited for each new host's readiness signal.
        return 0
    instance = instance_id(cfn, args.stack_name)
    print("waiting for the host to load the model (cfn-hup polls every minute)")
    status = wait_for_host(
        s3,
        bucket,
        account,
        f"{args.stack_name}/status/{instance}.json",
        model.sha256,
        args.host_timeout,
        args.poll_seconds,
    )
    if status.get("state") == "serving" and status.get("serving_sha256") == model.sha256:
        print(f"host serves model {model.sha256}")
        return 0
    served = status.get("serving_sha256") or "nothing"
    print(
        f"deploy: error: the host could not serve model {model.sha256[:12]} and "
        f"{status.get('state')}: it serves {served}",
        file=sys.stderr,
    )
    return 1


def cmd_status(args: argparse.Namespace, session: Any) -> int:
    found = stack.describe(session.client("cloudformation"), args.stack_name)
    if found is None:
        print(f"stack {args.stack_name}: does not exist")
        return 1
    _print_outputs(found)
    params = stack.parameters(found)
    print(f"  ModelSha256: {params.get('ModelSha256', '?')}")
    print(f"  ImageId: {params.get('ImageId', '?')}")
    return 0


def cmd_teardown(args: argparse.Namespace, session: Any) -> int:
    cfn, s3 = session.client("cloudformation"), session.client("s3")
    found = stack.describe(cfn, args.stack_name)
    bucket = args.bucket or (stack.parameters(found).get("ArtifactBucket") if found else None)
    if found is not None:
        print(f"stack {args.stack_name}: deleting")
        stack.delete(cfn, args.stack_name, args.poll_seconds, args.timeout or 1800)
        print(f"stack {args.stack_name}: deleted")
    else:
        print(f"stack {args.stack_name}: does not exist")
    if bucket:
        count = artifacts.delete_stack_objects(s3, bucket, args.stack_name, _account(session))
        print(f"s3://{bucket}/{args.stack_name}/: deleted {count} object version(s)")
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="deploy", description=__doc__.splitlines()[0])
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--stack-name", required=True, help="CloudFormation stack name (also the S3 prefix)"
    )
    common.add_argument("--region", help="AWS region (default: AWS_REGION / profile setting)")
    common.add_argument(
        "--profile", help="AWS named profile (default: AWS_PROFILE / default chain)"
    )
    common.add_argument(
        "--poll-seconds", type=int, default=15, help="seconds between stack status polls"
    )
    common.add_argument(
        "--timeout",
        type=int,
        help="seconds to wait for the stack (default: create time plus one rolling pause per host)",
    )
    changes = argparse.ArgumentParser(add_help=False)
    changes.add_argument(
        "--yes",
        action="store_true",
        help="go ahead when the change set replaces a resource, or when the model's measured "
        "peak memory does not fit the instance",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    deploy = sub.add_parser(
        "deploy", parents=[common, changes], help="ship app + model, create or update the stack"
    )
    deploy.add_argument("--model", type=Path, required=True, help="exported .onnx model to serve")
    deploy.add_argument(
        "--template",
        choices=sorted(stack.TEMPLATES),
        default="single",
        help="single instance, or an Auto Scaling group behind a load balancer",
    )
    deploy.add_argument(
        "--bucket", help="artifact bucket (default: melanoma-artifacts-ACCOUNT-REGION)"
    )
    deploy.add_argument(
        "--source-dir", type=Path, default=REPO_ROOT, help="repository root to bundle"
    )
    deploy.add_argument(
        "--wheelhouse",
        type=Path,
        help="folder with MACHINE/*.whl for the lock (default: download them for the host)",
    )
    deploy.add_argument("--instance-type", help="EC2 type (template default: t3.micro)")
    deploy.add_argument(
        "--cpu-credits", choices=["standard", "unlimited"], help="T-family CPU credit mode"
    )
    deploy.add_argument("--swap-mib", type=int, help="swap file size on the host in MiB")
    deploy.add_argument(
        "--session-manager",
        choices=["true", "false"],
        help="let Session Manager open a shell (scoped policy; default false)",
    )
    deploy.add_argument("--alert-email", help="address for alarms; empty string for none")
    deploy.add_argument(
        "--budget-usd", type=int, help="monthly cost budget e-mailed to --alert-email; 0 for none"
    )
    deploy.add_argument("--vpc-id", help="VPC to use (default: the region's default VPC)")
    deploy.add_argument(
        "--subnet-id", action="append", default=[], help="public subnet (repeat for scale-out)"
    )
    deploy.add_argument("--ssh-cidr", help="single: CIDR allowed to SSH; empty string closes SSH")
    deploy.add_argument("--key-name", help="single: EC2 key pair for SSH")
    deploy.add_argument(
        "--certificate-arn",
        help="scale-out: ACM certificate for HTTPS on the load balancer (default: CloudFront)",
    )
    deploy.add_argument("--domain-name", help="scale-out: the name the certificate covers")
    deploy.add_argument("--min-size", type=int, help="scale-out: fewest hosts")
    deploy.add_argument("--max-size", type=int, help="scale-out: most hosts")
    deploy.add_argument("--desired", type=int, help="scale-out: hosts at launch")
    deploy.add_argument("--target-cpu", type=int, help="scale-out: average CPU percent to track")
    deploy.set_defaults(func=cmd_deploy)

    update = sub.add_parser(
        "update-model", parents=[common, changes], help="ship a new model to a running stack"
    )
    update.add_argument("--model", type=Path, required=True, help="exported .onnx model to serve")
    update.add_argument(
        "--host-timeout",
        type=int,
        default=900,
        help="seconds to wait for the host to report the new model (single instance)",
    )
    update.set_defaults(func=cmd_update_model)

    ami = sub.add_parser(
        "update-ami",
        parents=[common, changes],
        help="move the stack to the newest Amazon Linux 2023 image (replaces hosts)",
    )
    ami.set_defaults(func=cmd_update_ami)

    status = sub.add_parser("status", parents=[common], help="print the stack's state and URL")
    status.set_defaults(func=cmd_status)

    teardown = sub.add_parser(
        "teardown", parents=[common], help="delete the stack and its artifacts"
    )
    teardown.add_argument("--bucket", help="artifact bucket (default: the one the stack names)")
    teardown.set_defaults(func=cmd_teardown)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return int(args.func(args, _session(args)))
    except (DeployError, ArtifactError, StackError) as exc:
        message = str(exc)
    except NoCredentialsError:
        message = (
            "no AWS credentials: set AWS_PROFILE, or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"
        )
    except NoRegionError:
        message = "no AWS region: pass --region or set AWS_REGION (or AWS_DEFAULT_REGION)"
    except ClientError as exc:
        error = exc.response.get("Error", {})
        message = f"AWS refused {exc.operation_name}: {error.get('Code')}: {error.get('Message')}"
    except BotoCoreError as exc:
        message = f"AWS client error: {exc}"
    print(f"deploy: error: {message}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    raise SystemExit(main())
