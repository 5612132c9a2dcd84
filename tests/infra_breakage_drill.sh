#!/bin/bash
# The sed expressions below are literal on purpose.
# shellcheck disable=SC2016
# Breakage drill: make each deliberate mistake named in issue 15, run the check that should
# catch it, print what failed, and restore the file. Run from the repository root.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
run() { # name file sed-expr tests...
  local name=$1 file=$2 expr=$3; shift 3
  sed -i "$expr" "$file"
  if git diff --quiet -- "$file"; then echo "== $name: SED DID NOT APPLY"; return; fi
  echo "== $name"
  timeout 600 .venv/bin/python -m pytest -q -p no:logging "$@" 2>&1 | grep -E "^FAILED|passed|failed" | sed 's/ - .*//'
  git checkout -q -- "$file"
}
run "misspelled cfn-signal resource" infra/templates/single-instance.yaml 's/cfn-signal -e "$rc" --stack ${AWS::StackName} --resource Instance/cfn-signal -e "$rc" --stack ${AWS::StackName} --resource Instanse/' tests/test_infra_templates.py -k "cfn_signal or cfn_lint_passes"
run "wrong hook path" infra/templates/single-instance.yaml 's/path=Resources.Instance.Metadata/path=Resources.Host.Metadata/' tests/test_infra_templates.py -k "cfn_signal or cfn_lint_passes"
run "health-check path the app does not answer" infra/templates/scale-out.yaml 's#    Default: /readyz#    Default: /health#' tests/test_infra_templates.py -k "health_check or cfn_lint_passes"
run "target group without its health-check path" infra/templates/scale-out.yaml '/      HealthCheckPath: !Ref HealthCheckPath/d' tests/test_infra_templates.py -k "health_check or cfn_lint_passes"
run "misspelled package (dnf)" infra/host/bootstrap.sh 's/ rsyslog logrotate/ rsylog logrotate/' tests/test_infra_bootstrap.py
run "misspelled package (requirements.txt)" requirements.txt 's/^gunicorn==/gunicron==/' tests/test_infra_lock.py
run "misspelled cfn-init resource (scale-out)" infra/templates/scale-out.yaml 's/--resource HostLaunchTemplate/--resource LaunchTemplate/' tests/test_infra_templates.py -k "cfn_signal or cfn_lint_passes"
run "cfn-hup left to the package's own unit" infra/templates/single-instance.yaml '/ExecStart=\/opt\/aws\/bin\/cfn-hup --no-daemon/d' tests/test_infra_templates.py -k "cfn_hup"
run "instance role back on AmazonSSMManagedInstanceCore" infra/templates/single-instance.yaml 's#^      Policies:\n##; s#^      Description: Melanoma host; reads#      ManagedPolicyArns: [!Sub "arn:${AWS::Partition}:iam::aws:policy/AmazonSSMManagedInstanceCore"]\n      Description: Melanoma host; reads#' tests/test_infra_templates.py -k "role_reads"
run "origin open to the world" infra/templates/single-instance.yaml 's#SourcePrefixListId: !Ref CloudFrontPrefixListId, Description: HTTP from CloudFront#CidrIp: 0.0.0.0/0, Description: HTTP#' tests/test_infra_templates.py tests/test_infra_checkov.py -k "cloudfront_only or checkov"
run "pip back to the index" infra/host/bootstrap.sh 's/--no-index --find-links/--find-links/' tests/test_infra_bootstrap.py
run "no rollback" infra/host/bootstrap.sh 's/^    switch_model "\$previous"$/    :/' tests/test_infra_bootstrap.py -k rolled_back
git status --short
