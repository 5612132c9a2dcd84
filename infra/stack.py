"""CloudFormation and network look-ups behind the deploy commands."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from botocore.exceptions import ClientError, WaiterError

TEMPLATE_DIR = Path(__file__).resolve().parent / "templates"
TEMPLATES = {
    "single": TEMPLATE_DIR / "single-instance.yaml",
    "scale-out": TEMPLATE_DIR / "scale-out.yaml",
}
# A create that failed leaves a stack CloudFormation will not update; only deletion helps.
_DEAD_STATES = {"ROLLBACK_COMPLETE", "ROLLBACK_FAILED", "DELETE_FAILED"}


class StackError(RuntimeError):
    """The stack could not reach the state asked for."""


@dataclass(frozen=True)
class Network:
    """Where the hosts go: a VPC and public subnets in zones that offer the instance type."""

    vpc_id: str
    vpc_cidr: str
    subnet_ids: tuple[str, ...]


def describe(cfn: Any, stack_name: str) -> dict[str, Any] | None:
    """The stack's description, or None when it does not exist."""
    try:
        return cfn.describe_stacks(StackName=stack_name)["Stacks"][0]
    except ClientError as exc:
        if "does not exist" in exc.response.get("Error", {}).get("Message", ""):
            return None
        raise


def template_parameter_names(body: str) -> set[str]:
    """Names under the template's top-level Parameters section (no YAML tags needed)."""
    match = re.search(r"^Parameters:\n(.*?)(?=^\S)", body, flags=re.M | re.S)
    return set(re.findall(r"^  ([A-Za-z0-9]+):", match.group(1), flags=re.M)) if match else set()


def outputs(stack: dict[str, Any]) -> dict[str, str]:
    return {o["OutputKey"]: o["OutputValue"] for o in stack.get("Outputs", [])}


def parameters(stack: dict[str, Any]) -> dict[str, str]:
    return {p["ParameterKey"]: p.get("ParameterValue", "") for p in stack.get("Parameters", [])}


def default_network(ec2: Any, instance_type: str, vpc_id: str | None = None) -> Network:
    """The default VPC (or vpc_id) and its default subnets in zones offering instance_type."""
    filters = (
        [{"Name": "vpc-id", "Values": [vpc_id]}]
        if vpc_id
        else [{"Name": "isDefault", "Values": ["true"]}]
    )
    vpcs = ec2.describe_vpcs(Filters=filters)["Vpcs"]
    if not vpcs:
        raise StackError("no default VPC in this region; pass --vpc-id and --subnet-id")
    vpc = vpcs[0]
    offered = {
        o["Location"]
        for o in ec2.describe_instance_type_offerings(
            LocationType="availability-zone",
            Filters=[{"Name": "instance-type", "Values": [instance_type]}],
        )["InstanceTypeOfferings"]
    }
    subnets = ec2.describe_subnets(Filters=[{"Name": "vpc-id", "Values": [vpc["VpcId"]]}])[
        "Subnets"
    ]
    usable = sorted(
        (s for s in subnets if s["AvailabilityZone"] in offered and s.get("MapPublicIpOnLaunch")),
        key=lambda s: s["AvailabilityZone"],
    )
    if not usable:
        raise StackError(
            f"no public subnet in {vpc['VpcId']} sits in a zone offering {instance_type}"
        )
    return Network(
        vpc_id=vpc["VpcId"],
        vpc_cidr=vpc["CidrBlock"],
        subnet_ids=tuple(s["SubnetId"] for s in usable),
    )


def _wait(cfn: Any, waiter_name: str, stack_name: str, delay: int, timeout: int) -> None:
    waiter = cfn.get_waiter(waiter_name)
    try:
        waiter.wait(
            StackName=stack_name,
            WaiterConfig={"Delay": delay, "MaxAttempts": max(1, timeout // max(delay, 1))},
        )
    except WaiterError as exc:
        status = exc.last_response.get("Stacks", [{}])[0].get("StackStatus", exc)
        raise StackError(
            f"{stack_name}: {waiter_name} failed ({status})"
            f"{_failure_reasons(cfn, stack_name)}"
        ) from None


def _failure_reasons(cfn: Any, stack_name: str) -> str:
    try:
        events = cfn.describe_stack_events(StackName=stack_name)["StackEvents"]
    except ClientError:
        return ""
    reasons = [
        f"{e['LogicalResourceId']}: {e.get('ResourceStatusReason', '')}"
        for e in events
        if e.get("ResourceStatus", "").endswith("FAILED")
    ][:3]
    return "; " + "; ".join(reasons) if reasons else ""


def create_or_update(
    cfn: Any,
    stack_name: str,
    template_body: str | None,
    params: dict[str, str],
    delay: int = 15,
    timeout: int = 1800,
) -> str:
    """Create the stack or update it in place; wait; return 'created', 'updated' or 'unchanged'.

    template_body None reuses the stack's template. Parameters left out take the template's
    default, so callers pass the values they mean to keep.
    """
    existing = describe(cfn, stack_name)
    if existing and existing["StackStatus"] in _DEAD_STATES:
        raise StackError(
            f"{stack_name} is {existing['StackStatus']} after a failed deploy; run teardown first"
        )
    cfn_params = [{"ParameterKey": k, "ParameterValue": v} for k, v in sorted(params.items())]
    template = (
        {"TemplateBody": template_body}
        if template_body is not None
        else {"UsePreviousTemplate": True}
    )
    common = {
        "StackName": stack_name,
        "Parameters": cfn_params,
        "Capabilities": ["CAPABILITY_IAM"],
        **template,
    }
    if existing is None:
        if template_body is None:
            raise StackError(f"stack {stack_name} does not exist; run deploy first")
        cfn.create_stack(**common, Tags=[{"Key": "app", "Value": "melanoma"}])
        _wait(cfn, "stack_create_complete", stack_name, delay, timeout)
        return "created"
    try:
        cfn.update_stack(**common)
    except ClientError as exc:
        if "No updates are to be performed" in exc.response.get("Error", {}).get("Message", ""):
            return "unchanged"
        raise
    _wait(cfn, "stack_update_complete", stack_name, delay, timeout)
    return "updated"


def delete(cfn: Any, stack_name: str, delay: int = 15, timeout: int = 1800) -> None:
    cfn.delete_stack(StackName=stack_name)
    _wait(cfn, "stack_delete_complete", stack_name, delay, timeout)
