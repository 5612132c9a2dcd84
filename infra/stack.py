"""CloudFormation and network look-ups behind the deploy commands."""

from __future__ import annotations

import re
import time
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
            f"{stack_name}: {waiter_name} failed ({status}){_failure_reasons(cfn, stack_name)}"
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


@dataclass(frozen=True)
class Change:
    """One resource a change set would touch, as the operator reads it."""

    action: str
    logical_id: str
    resource_type: str
    replacement: str

    def describe(self) -> str:
        replaced = self.replacement not in ("", "False")
        suffix = f" (replacement: {self.replacement})" if replaced else ""
        return f"{self.action:<7} {self.logical_id} [{self.resource_type}]{suffix}"


@dataclass(frozen=True)
class Plan:
    """A created change set: what it would do, and whether that replaces anything."""

    name: str
    kind: str
    changes: tuple[Change, ...]

    @property
    def replaces(self) -> tuple[Change, ...]:
        # "Conditional" replacement depends on values only known at run time: treat as real.
        return tuple(c for c in self.changes if c.replacement in ("True", "Conditional"))


def parameter_list(
    given: dict[str, str], previous: set[str], wanted: set[str]
) -> list[dict[str, Any]]:
    """Values given now, UsePreviousValue for the rest the stack already has and still takes.

    CloudFormation keeps the stored value itself (a NoEcho or resolved value included), so
    nothing falls back to a default or gets recomputed on a later deploy.
    """
    keep = sorted((previous & wanted) - given.keys())
    return [{"ParameterKey": k, "ParameterValue": v} for k, v in sorted(given.items())] + [
        {"ParameterKey": k, "UsePreviousValue": True} for k in keep
    ]


def plan(
    cfn: Any,
    stack_name: str,
    template_body: str | None,
    parameters: list[dict[str, Any]],
    delay: int = 5,
) -> Plan | None:
    """Create a change set for the stack (new or existing); None when it would change nothing."""
    existing = describe(cfn, stack_name)
    if existing and existing["StackStatus"] in _DEAD_STATES:
        raise StackError(
            f"{stack_name} is {existing['StackStatus']} after a failed deploy; run teardown first"
        )
    if existing is None and template_body is None:
        raise StackError(f"stack {stack_name} does not exist; run deploy first")
    kind = "CREATE" if existing is None else "UPDATE"
    name = f"{stack_name}-{int(time.time())}"
    template = (
        {"TemplateBody": template_body}
        if template_body is not None
        else {"UsePreviousTemplate": True}
    )
    cfn.create_change_set(
        StackName=stack_name,
        ChangeSetName=name,
        ChangeSetType=kind,
        Parameters=parameters,
        Capabilities=["CAPABILITY_IAM"],
        Tags=[{"Key": "app", "Value": "melanoma"}],
        **template,
    )
    try:
        cfn.get_waiter("change_set_create_complete").wait(
            StackName=stack_name, ChangeSetName=name, WaiterConfig={"Delay": delay}
        )
    except WaiterError:
        pass
    found = cfn.describe_change_set(StackName=stack_name, ChangeSetName=name)
    if found["Status"] == "FAILED":
        reason = found.get("StatusReason", "")
        cfn.delete_change_set(StackName=stack_name, ChangeSetName=name)
        if "didn't contain changes" in reason or "No updates" in reason:
            return None
        raise StackError(f"{stack_name}: change set failed: {reason}")
    changes = tuple(
        Change(
            action=rc.get("Action", ""),
            logical_id=rc.get("LogicalResourceId", ""),
            resource_type=rc.get("ResourceType", ""),
            replacement=str(rc.get("Replacement", "")),
        )
        for rc in (c.get("ResourceChange", {}) for c in found.get("Changes", []))
    )
    return Plan(name=name, kind=kind, changes=changes)


def discard(cfn: Any, stack_name: str, change_set: Plan) -> None:
    cfn.delete_change_set(StackName=stack_name, ChangeSetName=change_set.name)
    if change_set.kind == "CREATE":
        # A create change set leaves a REVIEW_IN_PROGRESS stack shell behind.
        cfn.delete_stack(StackName=stack_name)


def execute(
    cfn: Any, stack_name: str, change_set: Plan, delay: int = 15, timeout: int = 1800
) -> str:
    """Run the change set and wait for the stack; return 'created' or 'updated'."""
    cfn.execute_change_set(StackName=stack_name, ChangeSetName=change_set.name)
    if change_set.kind == "CREATE":
        _wait(cfn, "stack_create_complete", stack_name, delay, timeout)
        return "created"
    _wait(cfn, "stack_update_complete", stack_name, delay, timeout)
    return "updated"


def delete(cfn: Any, stack_name: str, delay: int = 15, timeout: int = 1800) -> None:
    cfn.delete_stack(StackName=stack_name)
    _wait(cfn, "stack_delete_complete", stack_name, delay, timeout)
