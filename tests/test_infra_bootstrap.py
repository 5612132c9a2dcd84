"""Dry run of infra/host/bootstrap.sh: the real script, as root, in a private mount namespace.

The whole filesystem is an overlay whose writes land in a tmpfs, so the script installs,
renders and links for real without touching this machine; dnf, systemctl, aws, curl, the
CloudWatch agent and the swap tools are stubs that record how they were called.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import platform
import shutil
import subprocess
import tarfile
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SECRET = "s3cr3tFromSecretsManager0123456789abcdefABCDEF"
OWNER = "111122223333"
INSTANCE = "i-0abc1234def567890"
EXPECTED_PACKAGES = {
    "python3.11",
    "nginx",
    "tar",
    "gzip",
    "rsyslog",
    "logrotate",
    "amazon-cloudwatch-agent",
}

_STUB = """#!/bin/bash
printf '%s' "$(basename "$0")" >>/stub/calls.log
printf ' %q' "$@" >>/stub/calls.log
printf '\\n' >>/stub/calls.log
"""
# What each package leaves behind that the script relies on; a name dnf would not find
# installs nothing.
_PACKAGE_DIRS = {
    "nginx": "/etc/nginx/conf.d",
    "rsyslog": "/etc/rsyslog.d",
    "logrotate": "/etc/logrotate.d",
}
_STUBS = {
    "dnf": "".join(
        f'for a in "$@"; do if [[ $a == {name} ]]; then mkdir -p {path}; fi; done\n'
        for name, path in _PACKAGE_DIRS.items()
    ),
    "systemctl": "",
    "journalctl": "",
    "nginx": "",
    "useradd": "",
    "mkswap": "",
    "sysctl": "",
    "sleep": "",
    "swapon": "",
    "dd": 'for a in "$@"; do case $a in of=*) : >"${a#of=}" ;; esac; done\n',
    "python3.11": (
        'if [[ $1 == -V ]]; then echo "Python 3.11.9"; exit 0; fi\n'
        # python3.11 -m venv --clear DIR: a venv whose pip only records its arguments.
        'venv=${!#}; mkdir -p "$venv/bin"\n'
        'printf \'#!/bin/bash\\nprintf "pip" >>/stub/calls.log; '
        'printf " %%q" "$@" >>/stub/calls.log; echo >>/stub/calls.log\\n\' '
        '>"$venv/bin/pip"; chmod +x "$venv/bin/pip"\n'
    ),
    "aws": (
        'args=("$@"); get() { local i; for ((i=0; i<${#args[@]}; i++)); do\n'
        '  [[ ${args[i]} == "$1" ]] && { echo "${args[i+1]}"; return; }; done; }\n'
        'case "$1 $2" in\n'
        '  "s3api get-object") cp "/stub/s3/$(get --key)" "${!#}" ;;\n'
        '  "s3api put-object") mkdir -p "$(dirname "/stub/s3/$(get --key)")";'
        ' cp "$(get --body)" "/stub/s3/$(get --key)" ;;\n'
        f'  "secretsmanager get-secret-value") echo "{SECRET}" ;;\n'
        "  *) exit 3 ;;\n"
        "esac\n"
    ),
    # Readiness fails while the model listed in /stub/bad-models is the current one.
    "curl": (
        "url=${!#}\n"
        "case $url in\n"
        "  */api/token) echo token ;;\n"
        f"  */instance-id) echo {INSTANCE} ;;\n"
        "  */readyz)\n"
        '    served=$(basename "$(readlink /opt/melanoma/models/current.onnx)" .onnx)\n'
        '    if grep -qx "$served" /stub/bad-models 2>/dev/null; then exit 22; fi ;;\n'
        "  *) exit 7 ;;\n"
        "esac\n"
    ),
}
_NAMESPACE = """set -euo pipefail
top=$1 stub=$2 out=$3
mount -t tmpfs tmpfs "$top"
mkdir "$top/upper" "$top/work" "$top/root"
mount -t overlay overlay -o "lowerdir=/,upperdir=$top/upper,workdir=$top/work" "$top/root"
mount --rbind /proc "$top/root/proc"
mount --rbind /dev "$top/root/dev"
mkdir -p "$top/root/stub"
mount --bind "$stub" "$top/root/stub"
agent=$top/root/opt/aws/amazon-cloudwatch-agent/bin
mkdir -p "$agent" && cp "$stub/bin/amazon-cloudwatch-agent-ctl" "$agent/"
rc=0
chroot "$top/root" /usr/bin/env -i HOME=/root PATH=/stub/bin:/usr/sbin:/usr/bin:/sbin:/bin \\
    bash /stub/run.sh || rc=$?
for path in etc/melanoma etc/systemd/system/melanoma.service etc/nginx/conf.d etc/rsyslog.d \\
        opt/melanoma/models opt/aws/amazon-cloudwatch-agent/etc; do
    if [[ -e "$top/root/$path" ]]; then
        mkdir -p "$out/$(dirname "$path")" && cp -a "$top/root/$path" "$out/$path"
    fi
done
exit "$rc"
"""


@dataclass(frozen=True)
class Run:
    returncode: int
    output: str
    calls: list[str]
    root: Path
    s3: Path

    def called(self, command: str) -> list[str]:
        return [c for c in self.calls if c.split(" ", 1)[0] == command]


def _namespace_prefix() -> list[str]:
    if shutil.which("unshare") is None:
        pytest.fail("unshare (util-linux) is needed for the bootstrap dry run")
    base = ["unshare", "--mount", "--propagation", "private", "--fork"]
    return base if os.geteuid() == 0 else ["unshare", "--user", "--map-root-user", *base[1:]]


def _bundle(path: Path) -> None:
    arch = platform.machine()
    members = {
        "webapp/__init__.py": b"",
        "webapp/static/style.css": b"body{}\n",
        "inference/__init__.py": b"",
        "gunicorn.conf.py": b"bind = '127.0.0.1:8000'\n",
        "requirements.lock": (REPO / "requirements.lock").read_bytes(),
        f"wheelhouse/{arch}/flask-3.1.3-py3-none-any.whl": b"wheel",
    }
    for script in (REPO / "infra" / "host").rglob("*"):
        if script.is_file() and "__pycache__" not in script.parts:
            members[script.relative_to(REPO).as_posix()] = script.read_bytes()
    with tarfile.open(path, "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o644
            tar.addfile(info, io.BytesIO(data))


def _deploy_env(stub: Path, model_sha: str, int8_sha: str = "") -> str:
    env = stub / f"deploy-{model_sha[:8]}.env"
    env.write_text(
        "STACK_NAME=mel\nARTIFACT_BUCKET=artifacts\n"
        f"BUCKET_OWNER={OWNER}\nAPP_KEY=mel/app/x.tar.gz\n"
        f"MODEL_KEY=mel/models/{model_sha}.onnx\nMODEL_SHA256={model_sha}\n"
        f"INT8_MODEL_KEY={f'mel/models/{int8_sha}.int8.onnx' if int8_sha else ''}\n"
        f"INT8_MODEL_SHA256={int8_sha}\n"
        "SECRET_ID=arn:aws:secretsmanager:eu-west-1:111122223333:secret:app\n"
        "APP_LOG_GROUP=/melanoma/mel/app\nACCESS_LOG_GROUP=/melanoma/mel/nginx-access\n"
        "SWAP_MIB=64\nFRONT=cloudfront\nAWS_REGION=eu-west-1\nREADY_TRIES=3\n",
        encoding="utf-8",
    )
    return f"/stub/{env.name}"


def _model(stub: Path, payload: bytes, suffix: str = ".onnx") -> str:
    sha = hashlib.sha256(payload).hexdigest()
    target = stub / "s3" / "mel" / "models" / f"{sha}{suffix}"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(payload)
    return sha


def _dry_run(tmp_path: Path, models: list[bytes], bad: set[int] = frozenset(),  # type: ignore[assignment]
             int8: dict[int, bytes] | None = None) -> Run:
    stub = tmp_path / "stub"
    (stub / "bin").mkdir(parents=True)
    for name, body in {**_STUBS, "amazon-cloudwatch-agent-ctl": ""}.items():
        script = stub / "bin" / name
        script.write_text(_STUB + body, encoding="utf-8")
        script.chmod(0o755)
    _bundle(stub / "app.tar.gz")
    shas = [_model(stub, payload) for payload in models]
    int8_shas = {i: _model(stub, payload, ".int8.onnx") for i, payload in (int8 or {}).items()}
    (stub / "bad-models").write_text("".join(f"{shas[i]}\n" for i in bad), encoding="utf-8")
    runs = "".join(
        f"bash /stub/infra/host/bootstrap.sh --bundle /stub/app.tar.gz "
        f"--deploy-env {_deploy_env(stub, sha, int8_shas.get(i, ''))} || exit $?\n"
        for i, sha in enumerate(shas)
    )
    (stub / "run.sh").write_text(
        "set -euo pipefail\ncd /stub && tar -xzf app.tar.gz infra/host\n" + runs, encoding="utf-8"
    )
    (tmp_path / "ns.sh").write_text(_NAMESPACE, encoding="utf-8")
    top, out = tmp_path / "top", tmp_path / "out"
    top.mkdir()
    out.mkdir()
    proc = subprocess.run(
        [*_namespace_prefix(), "bash", str(tmp_path / "ns.sh"), str(top), str(stub), str(out)],
        capture_output=True,
        text=True,
        timeout=240,
    )
    calls = (stub / "calls.log").read_text(encoding="utf-8").splitlines()
    return Run(proc.returncode, proc.stdout + proc.stderr, calls, out, stub / "s3")


@pytest.fixture(scope="module")
def first_boot(tmp_path_factory: pytest.TempPathFactory) -> Run:
    return _dry_run(tmp_path_factory.mktemp("boot"), [b"model-v1"])


def test_first_boot_succeeds(first_boot: Run) -> None:
    assert first_boot.returncode == 0, first_boot.output


def test_first_boot_installs_exactly_the_distribution_packages_it_needs(first_boot: Run) -> None:
    (call,) = first_boot.called("dnf")
    words = call.split()[1:]
    assert words[:2] == ["install", "-y"]
    assert {w for w in words if not w.startswith("-")} - {"install"} == EXPECTED_PACKAGES


def test_python_libraries_come_from_the_bundled_wheelhouse_with_hashes(first_boot: Run) -> None:
    (call,) = first_boot.called("pip")
    words = call.split()
    assert "--no-index" in words and "--require-hashes" in words
    assert words[words.index("--find-links") + 1] == (
        f"/opt/melanoma/app/wheelhouse/{platform.machine()}"
    )
    assert words[words.index("-r") + 1] == "/opt/melanoma/app/requirements.lock"


def test_the_secret_comes_from_secrets_manager_into_the_units_env_file(first_boot: Run) -> None:
    assert [c for c in first_boot.called("aws") if "secretsmanager get-secret-value" in c]
    secret_env = first_boot.root / "etc" / "melanoma" / "secret.env"
    assert secret_env.read_text(encoding="utf-8") == f"MELANOMA_SECRET_KEY={SECRET}\n"
    assert secret_env.stat().st_mode & 0o077 == 0
    unit = (first_boot.root / "etc" / "systemd" / "system" / "melanoma.service").read_text()
    assert "EnvironmentFile=-/etc/melanoma/secret.env" in unit


def test_every_s3_call_names_the_bucket_owner(first_boot: Run) -> None:
    s3_calls = [c for c in first_boot.called("aws") if c.split()[1] == "s3api"]
    assert len(s3_calls) == 2  # the model in, the status out
    assert all(f"--expected-bucket-owner {OWNER}" in c for c in s3_calls)


def test_services_are_restarted_and_logs_shipped(first_boot: Run) -> None:
    systemctl = first_boot.called("systemctl")
    assert "systemctl restart melanoma.service" in systemctl
    assert "systemctl restart rsyslog.service" in systemctl
    (agent,) = first_boot.called("amazon-cloudwatch-agent-ctl")
    conf_path = agent.split("file:", 1)[1].split()[0]
    conf = json.loads((first_boot.root / conf_path.lstrip("/")).read_text(encoding="utf-8"))
    files = conf["logs"]["logs_collected"]["files"]["collect_list"]
    assert {f["log_group_name"] for f in files} == {
        "/melanoma/mel/app",
        "/melanoma/mel/nginx-access",
    }
    rsyslog = (first_boot.root / "etc" / "rsyslog.d" / "30-melanoma.conf").read_text()
    for f in files:
        if f["file_path"].startswith("/var/log/melanoma/"):
            assert f["file_path"] in rsyslog


def test_nginx_site_reads_the_scheme_from_cloudfront(first_boot: Run) -> None:
    site = (first_boot.root / "etc" / "nginx" / "conf.d" / "melanoma.conf").read_text()
    assert "X-Forwarded-Proto $http_cloudfront_forwarded_proto;" in site


def test_host_reports_the_model_it_serves(first_boot: Run) -> None:
    status = json.loads((first_boot.s3 / "mel" / "status" / f"{INSTANCE}.json").read_text())
    wanted = hashlib.sha256(b"model-v1").hexdigest()
    assert (status["state"], status["serving_sha256"]) == ("serving", wanted)


def test_a_model_that_fails_readiness_is_rolled_back(tmp_path: Path) -> None:
    run = _dry_run(tmp_path, [b"model-v1", b"model-v2-broken"], bad={1})
    good, bad = (hashlib.sha256(p).hexdigest() for p in (b"model-v1", b"model-v2-broken"))
    assert run.returncode != 0
    assert f"rolled back to {good}" in run.output
    models = run.root / "opt" / "melanoma" / "models"
    assert os.readlink(models / "current.onnx").endswith(f"{good}.onnx")
    assert (models / f"{good}.onnx").is_file()
    status = json.loads((run.s3 / "mel" / "status" / f"{INSTANCE}.json").read_text())
    assert status == {
        **status,
        "state": "rolled-back",
        "serving_sha256": good,
        "wanted_sha256": bad,
    }
    unit = (run.root / "etc" / "systemd" / "system" / "melanoma.service").read_text()
    assert good in unit and bad not in unit


def test_a_good_update_replaces_the_model_and_keeps_the_previous_one(tmp_path: Path) -> None:
    run = _dry_run(tmp_path, [b"model-v1", b"model-v2"])
    assert run.returncode == 0, run.output
    old, new = (hashlib.sha256(p).hexdigest() for p in (b"model-v1", b"model-v2"))
    models = run.root / "opt" / "melanoma" / "models"
    assert os.readlink(models / "current.onnx").endswith(f"{new}.onnx")
    assert sorted(p.name for p in models.glob("*.onnx") if not p.is_symlink()) == sorted(
        [f"{old}.onnx", f"{new}.onnx"]
    )


def test_the_int8_model_lies_beside_the_served_one_and_leaves_with_it(tmp_path: Path) -> None:
    run = _dry_run(tmp_path, [b"model-v1", b"model-v2", b"model-v3"], int8={0: b"int8-v1"})
    assert run.returncode == 0, run.output
    first, third = (hashlib.sha256(p).hexdigest() for p in (b"model-v1", b"model-v3"))
    int8_sha = hashlib.sha256(b"int8-v1").hexdigest()
    assert [c for c in run.called("aws") if f"mel/models/{int8_sha}.int8.onnx" in c]
    models = run.root / "opt" / "melanoma" / "models"
    # v3 ships no INT8 model: nothing is left for the server to find beside it, and v1's
    # INT8 file went with v1 when v1 was pruned.
    assert os.readlink(models / "current.onnx").endswith(f"{third}.onnx")
    assert not (models / "current.int8.onnx").exists()
    assert not (models / f"{first}.int8.onnx").exists()


def test_a_shipped_int8_model_is_linked_as_the_server_expects(tmp_path: Path) -> None:
    run = _dry_run(tmp_path, [b"model-v1"], int8={0: b"int8-v1"})
    assert run.returncode == 0, run.output
    sha = hashlib.sha256(b"model-v1").hexdigest()
    models = run.root / "opt" / "melanoma" / "models"
    assert os.readlink(models / "current.int8.onnx").endswith(f"{sha}.int8.onnx")
    assert (models / f"{sha}.int8.onnx").read_bytes() == b"int8-v1"
