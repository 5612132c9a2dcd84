"""Deploy the melanoma classifier to AWS: ship app + model, create or update the stack.

python -m infra.deploy deploy --stack-name melanoma --model models/default.onnx
python -m infra.deploy update-model --stack-name melanoma --model models/new.onnx
python -m infra.deploy status --stack-name melanoma
python -m infra.deploy teardown --stack-name melanoma
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    # Run as `python infra/deploy.py`: make the `infra` package importable.
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import boto3
from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError, NoRegionError

from infra import artifacts, stack
from infra.artifacts import ArtifactError
from infra.stack import StackError

REPO_ROOT = Path(__file__).resolve().parent.parent


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


def _bucket_name(session: Any, args: argparse.Namespace) -> str:
    if args.bucket:
        return args.bucket
    account = session.client("sts").get_caller_identity()["Account"]
    return f"melanoma-artifacts-{account}-{session.region_name}"


def _template_params(args: argparse.Namespace, session: Any) -> dict[str, str]:
    """Parameters the operator set on the command line (others keep their value or default)."""
    given = {
        "InstanceType": args.instance_type,
        "CpuCredits": args.cpu_credits,
        "SwapSizeMiB": args.swap_mib,
        "EnableSessionManager": args.session_manager,
    }
    if args.template == "single":
        given.update(SshCidr=args.ssh_cidr, KeyName=args.key_name)
    else:
        given.update(
            CertificateArn=args.certificate_arn,
            MinSize=args.min_size,
            MaxSize=args.max_size,
            DesiredCapacity=args.desired,
            TargetCpuPercent=args.target_cpu,
        )
    params = {k: str(v) for k, v in given.items() if v is not None}
    network = stack.default_network(
        session.client("ec2"), args.instance_type or "t2.micro", args.vpc_id
    )
    subnets = tuple(args.subnet_id) or network.subnet_ids
    if args.template == "single":
        params.update(VpcId=network.vpc_id, SubnetId=subnets[0])
    else:
        if len(subnets) < 2:
            raise DeployError(
                "the load balancer needs subnets in two zones; pass --subnet-id twice"
            )
        params.update(VpcId=network.vpc_id, VpcCidr=network.vpc_cidr, SubnetIds=",".join(subnets))
    return params


def _carried(previous: dict[str, str], wanted: set[str]) -> dict[str, str]:
    """Current values to pass again on an update, so nothing silently falls back to a default.

    ImageId is passed only as the SSM path it names: a resolved AMI id is not a valid value
    for that parameter type, and leaving it out re-reads the template's default path.
    """
    return {
        k: v
        for k, v in previous.items()
        if k in wanted and not (k == "ImageId" and not v.startswith("/"))
    }


def _print_outputs(found: dict[str, Any]) -> None:
    outs = stack.outputs(found)
    print(f"stack {found['StackName']}: {found['StackStatus']}")
    for key, value in sorted(outs.items()):
        print(f"  {key}: {value}")
    if "Url" in outs:
        print(outs["Url"])


def cmd_deploy(args: argparse.Namespace, session: Any) -> int:
    model = artifacts.model_artifact(args.model, args.stack_name)
    s3, cfn = session.client("s3"), session.client("cloudformation")
    bucket = _bucket_name(session, args)
    params = _template_params(args, session)
    with tempfile.TemporaryDirectory() as tmp:
        bundle = artifacts.build_bundle(args.source_dir, Path(tmp), args.stack_name)
        artifacts.ensure_bucket(s3, bucket, session.region_name)
        for artifact in (bundle, model):
            state = "uploaded" if artifacts.upload(s3, bucket, artifact) else "already in place"
            print(f"s3://{bucket}/{artifact.key}: {state}")
    params.update(
        ArtifactBucket=bucket, AppKey=bundle.key, ModelKey=model.key, ModelSha256=model.sha256
    )
    body = stack.TEMPLATES[args.template].read_text(encoding="utf-8")
    existing = stack.describe(cfn, args.stack_name)
    # On an update, settings given once (say --ssh-cidr) stay until given again.
    previous = stack.parameters(existing) if existing else {}
    wanted = stack.template_parameter_names(body)
    params = {**_carried(previous, wanted), **params}
    print(f"stack {args.stack_name}: creating or updating (this waits; first boot takes ~10 min)")
    result = stack.create_or_update(
        cfn, args.stack_name, body, params, args.poll_seconds, args.timeout
    )
    print(f"stack {args.stack_name}: {result}")
    _print_outputs(stack.describe(cfn, args.stack_name) or {})
    return 0


def cmd_update_model(args: argparse.Namespace, session: Any) -> int:
    cfn, s3 = session.client("cloudformation"), session.client("s3")
    found = stack.describe(cfn, args.stack_name)
    if found is None:
        raise DeployError(f"stack {args.stack_name} does not exist; run deploy first")
    current = stack.parameters(found)
    model = artifacts.model_artifact(args.model, args.stack_name)
    artifacts.upload(s3, current["ArtifactBucket"], model)
    params = {**_carried(current, set(current)), "ModelKey": model.key, "ModelSha256": model.sha256}
    result = stack.create_or_update(
        cfn, args.stack_name, None, params, args.poll_seconds, args.timeout
    )
    print(f"stack {args.stack_name}: {result}; model sha256 {model.sha256}")
    if "AutoScalingGroupName" not in stack.outputs(found):
        print(
            "the host re-runs its bootstrap within ~2 minutes (cfn-hup) "
            "and restarts on the new model"
        )
    return 0


def cmd_status(args: argparse.Namespace, session: Any) -> int:
    found = stack.describe(session.client("cloudformation"), args.stack_name)
    if found is None:
        print(f"stack {args.stack_name}: does not exist")
        return 1
    _print_outputs(found)
    print(f"  ModelSha256: {stack.parameters(found).get('ModelSha256', '?')}")
    return 0


def cmd_teardown(args: argparse.Namespace, session: Any) -> int:
    cfn, s3 = session.client("cloudformation"), session.client("s3")
    found = stack.describe(cfn, args.stack_name)
    bucket = args.bucket or (stack.parameters(found).get("ArtifactBucket") if found else None)
    if found is not None:
        print(f"stack {args.stack_name}: deleting")
        stack.delete(cfn, args.stack_name, args.poll_seconds, args.timeout)
        print(f"stack {args.stack_name}: deleted")
    else:
        print(f"stack {args.stack_name}: does not exist")
    if bucket:
        count = artifacts.delete_stack_objects(s3, bucket, args.stack_name)
        print(f"s3://{bucket}/{args.stack_name}/: deleted {count} object(s)")
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
    common.add_argument("--timeout", type=int, default=2700, help="seconds to wait for the stack")
    sub = parser.add_subparsers(dest="command", required=True)

    deploy = sub.add_parser(
        "deploy", parents=[common], help="ship app + model, create or update the stack"
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
    deploy.add_argument("--instance-type", help="EC2 type (template default: t2.micro)")
    deploy.add_argument(
        "--cpu-credits", choices=["standard", "unlimited"], help="T-family CPU credit mode"
    )
    deploy.add_argument("--swap-mib", type=int, help="swap file size on the host in MiB")
    deploy.add_argument(
        "--session-manager", choices=["true", "false"], help="attach the SSM core policy"
    )
    deploy.add_argument("--vpc-id", help="VPC to use (default: the region's default VPC)")
    deploy.add_argument(
        "--subnet-id", action="append", default=[], help="public subnet (repeat for scale-out)"
    )
    deploy.add_argument("--ssh-cidr", help="single: CIDR allowed to SSH; empty string closes SSH")
    deploy.add_argument("--key-name", help="single: EC2 key pair for SSH")
    deploy.add_argument(
        "--certificate-arn", help="scale-out: ACM certificate for an HTTPS listener"
    )
    deploy.add_argument("--min-size", type=int, help="scale-out: fewest hosts")
    deploy.add_argument("--max-size", type=int, help="scale-out: most hosts")
    deploy.add_argument("--desired", type=int, help="scale-out: hosts at launch")
    deploy.add_argument("--target-cpu", type=int, help="scale-out: average CPU percent to track")
    deploy.set_defaults(func=cmd_deploy)

    update = sub.add_parser(
        "update-model", parents=[common], help="ship a new model to a running stack"
    )
    update.add_argument("--model", type=Path, required=True, help="exported .onnx model to serve")
    update.set_defaults(func=cmd_update_model)

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
