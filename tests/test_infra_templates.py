"""CloudFormation templates: lint clean, and the security promises hold in the YAML itself."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
INFRA = REPO / "infra"
TEMPLATES = sorted((INFRA / "templates").glob("*.yaml"))
SINGLE = INFRA / "templates" / "single-instance.yaml"
SCALE_OUT = INFRA / "templates" / "scale-out.yaml"


class _CfnLoader(yaml.SafeLoader):
    """Reads !Ref, !Sub, ... as {"Ref": ...}, {"Fn::Sub": ...} like the JSON form."""


def _tag(loader: yaml.SafeLoader, suffix: str, node: yaml.Node) -> dict[str, Any]:
    name = "Ref" if suffix == "Ref" else f"Fn::{suffix}"
    if isinstance(node, yaml.ScalarNode):
        value: Any = loader.construct_scalar(node)
        if suffix == "GetAtt":
            value = value.split(".", 1)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_mapping(node, deep=True)  # type: ignore[arg-type]
    return {name: value}


_CfnLoader.add_multi_constructor("!", _tag)


def _load(path: Path) -> dict[str, Any]:
    return yaml.load(path.read_text(encoding="utf-8"), Loader=_CfnLoader)  # noqa: S506 - SafeLoader subclass


def _cfn_lint(path: Path) -> subprocess.CompletedProcess[str]:
    exe = Path(sys.executable).with_name("cfn-lint")
    command = [str(exe)] if exe.exists() else [shutil.which("cfn-lint") or "cfn-lint"]
    return subprocess.run(
        [*command, "--format", "parseable", str(path)], capture_output=True, text=True, timeout=120
    )


def _resources(template: dict[str, Any], kind: str) -> dict[str, dict[str, Any]]:
    return {name: res for name, res in template["Resources"].items() if res["Type"] == kind}


def test_there_are_two_templates() -> None:
    assert {p.name for p in TEMPLATES} == {"single-instance.yaml", "scale-out.yaml"}


@pytest.mark.parametrize("path", TEMPLATES, ids=lambda p: p.name)
def test_cfn_lint_passes_with_warnings_as_failures(path: Path) -> None:
    result = _cfn_lint(path)
    # cfn-lint exits 4 on warnings and 8 on informational findings: any finding fails.
    assert result.returncode == 0 and result.stdout.strip() == "", result.stdout + result.stderr


def test_cfn_lint_fails_a_template_with_only_a_warning(tmp_path: Path) -> None:
    template = tmp_path / "warn.yaml"
    template.write_text(
        "AWSTemplateFormatVersion: '2010-09-09'\n"
        "Parameters:\n  Unused: {Type: String, Default: x, Description: never referenced}\n"
        "Resources:\n  Topic: {Type: AWS::SNS::Topic}\n",
        encoding="utf-8",
    )
    result = _cfn_lint(template)
    assert result.returncode != 0 and "W2001" in result.stdout


def test_infra_holds_no_ami_ids_account_ids_or_keys() -> None:
    offenders = []
    for path in INFRA.rglob("*"):
        if not path.is_file() or "__pycache__" in path.parts:
            continue
        text = path.read_text(encoding="utf-8", errors="replace")
        for pattern in (
            r"\bami-[0-9a-f]{8,17}\b",
            r"(?<![0-9a-f-])\d{12}(?![0-9])",
            r"AKIA[0-9A-Z]{16}",
            r"(?i)aws_secret_access_key\s*=\s*\S+",
        ):
            offenders += [
                f"{path.relative_to(REPO)}: {m.group(0)}" for m in re.finditer(pattern, text)
            ]
    assert offenders == []


@pytest.mark.parametrize("path", TEMPLATES, ids=lambda p: p.name)
def test_ami_comes_from_the_ssm_public_parameter(path: Path) -> None:
    image = _load(path)["Parameters"]["ImageId"]
    assert image["Type"] == "AWS::SSM::Parameter::Value<AWS::EC2::Image::Id>"
    assert image["Default"].startswith("/aws/service/ami-amazon-linux-latest/")


def test_single_instance_defaults_to_t2_micro_with_credit_mode_parameter() -> None:
    template = _load(SINGLE)
    assert template["Parameters"]["InstanceType"]["Default"] == "t2.micro"
    assert template["Parameters"]["CpuCredits"]["AllowedValues"] == ["standard", "unlimited"]
    instance = template["Resources"]["Instance"]["Properties"]
    assert instance["CreditSpecification"] == {"CPUCredits": {"Ref": "CpuCredits"}}


@pytest.mark.parametrize("path", TEMPLATES, ids=lambda p: p.name)
def test_hosts_require_imdsv2_and_encrypt_the_root_volume(path: Path) -> None:
    template = _load(path)
    (data,) = [
        lt["Properties"]["LaunchTemplateData"]
        for lt in _resources(template, "AWS::EC2::LaunchTemplate").values()
    ]
    assert data["MetadataOptions"]["HttpTokens"] == "required"
    assert data["MetadataOptions"]["HttpPutResponseHopLimit"] == 1
    mappings = (
        data.get("BlockDeviceMappings")
        or template["Resources"]["Instance"]["Properties"]["BlockDeviceMappings"]
    )
    assert all(m["Ebs"]["Encrypted"] is True for m in mappings)


def test_single_instance_opens_only_http_https_and_ssh_is_off_by_default() -> None:
    template = _load(SINGLE)
    group = template["Resources"]["WebSecurityGroup"]["Properties"]
    assert sorted(
        (r["FromPort"], r["ToPort"], r["CidrIp"]) for r in group["SecurityGroupIngress"]
    ) == [(80, 80, "0.0.0.0/0"), (443, 443, "0.0.0.0/0")]
    assert template["Parameters"]["SshCidr"]["Default"] == ""
    ssh = template["Resources"]["SshIngress"]
    assert ssh["Condition"] == "HasSshCidr" and ssh["Properties"]["FromPort"] == 22
    assert template["Conditions"]["HasSshCidr"] == {
        "Fn::Not": [{"Fn::Equals": [{"Ref": "SshCidr"}, ""]}]
    }


def test_scale_out_hosts_take_traffic_only_from_the_load_balancer() -> None:
    template = _load(SCALE_OUT)
    (rule,) = template["Resources"]["HostSecurityGroup"]["Properties"]["SecurityGroupIngress"]
    assert rule["FromPort"] == 80 and rule["SourceSecurityGroupId"] == {
        "Fn::GetAtt": ["LoadBalancerSecurityGroup", "GroupId"]
    }


@pytest.mark.parametrize("path", TEMPLATES, ids=lambda p: p.name)
def test_instance_role_reads_only_its_own_artifacts(path: Path) -> None:
    role = _load(path)["Resources"]["InstanceRole"]["Properties"]
    statements = [s for policy in role["Policies"] for s in policy["PolicyDocument"]["Statement"]]
    actions = sorted(
        a
        for s in statements
        for a in ([s["Action"]] if isinstance(s["Action"], str) else s["Action"])
    )
    assert actions == [
        "cloudformation:DescribeStackResource",
        "cloudformation:SignalResource",
        "s3:GetObject",
    ]
    resources = {str(s["Resource"]) for s in statements}
    assert all("*" not in r or "${ArtifactBucket}/${AWS::StackName}/*" in r for r in resources), (
        resources
    )
    assert {"Ref": "AWS::StackId"} in [s["Resource"] for s in statements]


def test_scale_out_has_asg_bounds_cpu_tracking_health_checks_and_optional_https() -> None:
    template = _load(SCALE_OUT)
    params, res = template["Parameters"], template["Resources"]
    group = res["AutoScalingGroup"]["Properties"]
    assert {group[k]["Ref"] for k in ("MinSize", "MaxSize", "DesiredCapacity")} == {
        "MinSize",
        "MaxSize",
        "DesiredCapacity",
    }
    tracking = res["CpuTargetTracking"]["Properties"]["TargetTrackingConfiguration"]
    assert (
        tracking["PredefinedMetricSpecification"]["PredefinedMetricType"]
        == "ASGAverageCPUUtilization"
    )
    assert params["HealthCheckPath"]["Default"] == "/healthz"
    assert res["TargetGroup"]["Properties"]["HealthCheckPath"] == {"Ref": "HealthCheckPath"}
    assert params["CertificateArn"]["Default"] == ""
    assert res["HttpsListener"]["Condition"] == "HasCertificate"
    assert res["HttpForwardListener"]["Condition"] == "NoCertificate"


def _user_data_scripts() -> list[tuple[str, str]]:
    scripts = []
    for path in TEMPLATES:
        for name, res in _load(path)["Resources"].items():
            props = res.get("Properties", {})
            user_data = props.get("UserData") or props.get("LaunchTemplateData", {}).get("UserData")
            if user_data:
                scripts.append((f"{path.name}:{name}", user_data["Fn::Base64"]["Fn::Sub"]))
    return scripts


@pytest.mark.parametrize(
    ("where", "script"), _user_data_scripts(), ids=lambda v: v if ":" in v else ""
)
def test_user_data_passes_shellcheck(where: str, script: str) -> None:
    # CloudFormation fills ${Name} before the shell sees it; stand in a plain word.
    shell = re.sub(r"\$\{(?!!)[A-Za-z0-9:.]+\}", "placeholder", script)
    result = subprocess.run(
        ["shellcheck", "--shell=bash", "-"], input=shell, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, f"{where}\n{result.stdout}"
