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


@pytest.mark.parametrize("path", TEMPLATES, ids=lambda p: p.name)
def test_ami_is_a_pinned_id_not_the_public_parameter(path: Path) -> None:
    image = _load(path)["Parameters"]["ImageId"]
    assert image["Type"] == "AWS::EC2::Image::Id" and "Default" not in image


@pytest.mark.parametrize("path", TEMPLATES, ids=lambda p: p.name)
def test_instance_role_reads_only_its_artifacts_and_its_one_secret(path: Path) -> None:
    template = _load(path)
    role = template["Resources"]["InstanceRole"]["Properties"]
    assert "ManagedPolicyArns" not in role
    statements = {
        s["Sid"]: s for policy in role["Policies"] for s in policy["PolicyDocument"]["Statement"]
    }
    assert statements["ReadAppSecret"]["Resource"] == {"Ref": "AppSecret"}
    assert statements["ReadAppSecret"]["Action"] == "secretsmanager:GetSecretValue"
    assert "${ArtifactBucket}/${AWS::StackName}/*" in str(statements["ReadOwnArtifacts"])
    assert "/status/*" in str(statements["ReportStatus"]["Resource"])
    assert template["Parameters"]["EnableSessionManager"]["Default"] == "false"


def test_single_instance_takes_http_from_cloudfront_only() -> None:
    template = _load(SINGLE)
    (rule,) = template["Resources"]["WebSecurityGroup"]["Properties"]["SecurityGroupIngress"]
    assert rule["FromPort"] == 80 and rule["SourcePrefixListId"] == {
        "Ref": "CloudFrontPrefixListId"
    }


@pytest.mark.parametrize("path", TEMPLATES, ids=lambda p: p.name)
def test_https_by_default_with_redirect_and_hsts(path: Path) -> None:
    res = _load(path)["Resources"]
    behaviour = res["Distribution"]["Properties"]["DistributionConfig"]["DefaultCacheBehavior"]
    assert behaviour["ViewerProtocolPolicy"] == "redirect-to-https"
    hsts = res["SecurityHeadersPolicy"]["Properties"]["ResponseHeadersPolicyConfig"][
        "SecurityHeadersConfig"
    ]["StrictTransportSecurity"]
    assert hsts["AccessControlMaxAgeSec"] >= 31536000


def test_scale_out_with_a_certificate_redirects_and_sends_hsts() -> None:
    res = _load(SCALE_OUT)["Resources"]
    redirect = res["HttpRedirectListener"]["Properties"]["DefaultActions"][0]
    assert redirect["RedirectConfig"]["Protocol"] == "HTTPS"
    (attr,) = res["HttpsListener"]["Properties"]["ListenerAttributes"]
    assert attr["Value"].startswith("max-age=")


def test_scale_out_rolling_update_suspends_processes_and_keeps_a_host() -> None:
    template = _load(SCALE_OUT)
    group = template["Resources"]["AutoScalingGroup"]
    rolling = group["UpdatePolicy"]["AutoScalingRollingUpdate"]
    assert rolling["MinInstancesInService"] == {"Ref": "MinInServiceDuringUpdate"}
    assert {"HealthCheck", "ReplaceUnhealthy", "AZRebalance"} <= set(rolling["SuspendProcesses"])
    assert group["Properties"]["NotificationConfigurations"][0]["TopicARN"] == {"Ref": "AlarmTopic"}


def test_the_health_check_path_is_a_route_the_app_answers(client: Any) -> None:
    path = _load(SCALE_OUT)["Parameters"]["HealthCheckPath"]["Default"]
    assert client.get(path).status_code == 200


@pytest.mark.parametrize("path", TEMPLATES, ids=lambda p: p.name)
def test_alarms_cover_errors_status_checks_and_cpu_credits(path: Path) -> None:
    res = _load(path)["Resources"]
    alarms = _resources(_load(path), "AWS::CloudWatch::Alarm")
    assert {"ServerErrorRateAlarm", "StatusCheckAlarm", "CpuCreditAlarm"} <= set(alarms)
    assert all(a["Properties"]["AlarmActions"] == [{"Ref": "AlarmTopic"}] for a in alarms.values())
    assert res["AlarmEmail"]["Condition"] == "HasAlertEmail"
    assert res["Budget"]["Condition"] == "HasBudget"


def _signal_and_init_targets(path: Path) -> list[tuple[str, str]]:
    text = path.read_text(encoding="utf-8")
    found = re.findall(r"(cfn-signal|cfn-init)\b[^\n]*--resource (\w+)", text)
    found += [("hook", m) for m in re.findall(r"path=Resources\.(\w+)\.Metadata", text)]
    return found


@pytest.mark.parametrize("path", TEMPLATES, ids=lambda p: p.name)
def test_cfn_signal_init_and_hook_name_real_resources(path: Path) -> None:
    res = _load(path)["Resources"]
    targets = _signal_and_init_targets(path)
    assert {tool for tool, _ in targets} >= {"cfn-signal", "cfn-init"}
    for tool, name in targets:
        assert name in res, f"{tool} names {name}, which the template lacks"
        if tool == "cfn-signal":
            assert "CreationPolicy" in res[name], f"{name} waits for no signal"
        else:
            assert "AWS::CloudFormation::Init" in res[name].get("Metadata", {}), name


def test_cfn_hup_runs_as_its_own_systemd_unit() -> None:
    init = _load(SINGLE)["Resources"]["Instance"]["Metadata"]["AWS::CloudFormation::Init"]
    files = init["deploy"]["files"]
    unit = files["/etc/systemd/system/cfn-hup.service"]["content"]
    assert "ExecStart=/opt/aws/bin/cfn-hup --no-daemon" in unit
    assert init["deploy"]["services"]["systemd"]["cfn-hup"]["enabled"] == "true"
