#!/bin/bash
# On-host setup, run as root by cfn-init at first boot and again by cfn-hup whenever the
# stack's artifacts change. Every step checks before it acts, so a second run with the same
# inputs changes nothing and a run with a new model or bundle swaps only what differs.
#
# Usage: bootstrap.sh --bundle APP_TAR_GZ --deploy-env FILE
#   FILE sets STACK_NAME, ARTIFACT_BUCKET, BUCKET_OWNER, MODEL_KEY, MODEL_SHA256, SECRET_ID,
#   APP_LOG_GROUP, ACCESS_LOG_GROUP, AWS_REGION and optionally SWAP_MIB (default 1024),
#   TRUSTED_PROXY_CIDR (behind a load balancer) and FRONT (cloudfront or alb).
# A model that does not become ready is swapped back for the one served before; either way
# the host reports what it serves to s3://ARTIFACT_BUCKET/STACK_NAME/status/INSTANCE.json.
set -euo pipefail

PREFIX=${MELANOMA_PREFIX:-/opt/melanoma}
CONF_DIR=/etc/melanoma
SERVICE_USER=melanoma
SWAPFILE=/swapfile
READY_URL=http://127.0.0.1/readyz

log() { echo "bootstrap: $*"; }
die() { echo "bootstrap: error: $*" >&2; exit 1; }

bundle=""
deploy_env=""
while [[ $# -gt 0 ]]; do
    case $1 in
        --bundle) bundle=$2; shift 2 ;;
        --deploy-env) deploy_env=$2; shift 2 ;;
        -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
        *) die "unknown argument: $1" ;;
    esac
done
[[ -r "$bundle" ]] || die "--bundle must name a readable app bundle"
[[ -r "$deploy_env" ]] || die "--deploy-env must name a readable file"
[[ $EUID -eq 0 ]] || die "must run as root"

# shellcheck source=/dev/null
. "$deploy_env"
: "${STACK_NAME:?missing in deploy env}" "${ARTIFACT_BUCKET:?missing in deploy env}"
: "${BUCKET_OWNER:?missing in deploy env}" "${MODEL_KEY:?missing in deploy env}"
: "${MODEL_SHA256:?missing in deploy env}" "${SECRET_ID:?missing in deploy env}"
: "${APP_LOG_GROUP:?missing in deploy env}" "${ACCESS_LOG_GROUP:?missing in deploy env}"
: "${AWS_REGION:?missing in deploy env}"
SWAP_MIB=${SWAP_MIB:-1024}
TRUSTED_PROXY_CIDR=${TRUSTED_PROXY_CIDR:-}
FRONT=${FRONT:-}
INSTANCE_TYPE=${INSTANCE_TYPE:-t3.micro}
# Every S3 call names the bucket's owner: a bucket re-created under another account after a
# teardown must not receive our status or feed us its objects.
S3_OWNER=(--expected-bucket-owner "$BUCKET_OWNER")

ensure_swap() {
    [[ "$SWAP_MIB" -gt 0 ]] || return 0
    if swapon --show=NAME --noheadings | grep -qx "$SWAPFILE"; then
        return 0
    fi
    if [[ ! -f "$SWAPFILE" ]]; then
        log "creating ${SWAP_MIB} MiB swap file"
        # dd rather than fallocate: swapon rejects preallocated extents on some filesystems.
        dd if=/dev/zero of="$SWAPFILE" bs=1M count="$SWAP_MIB" status=none
        chmod 0600 "$SWAPFILE"
        mkswap "$SWAPFILE" >/dev/null
    fi
    swapon "$SWAPFILE"
    grep -q "^$SWAPFILE " /etc/fstab || echo "$SWAPFILE none swap defaults 0 0" >>/etc/fstab
    # Swap is for the model-load spike, not for serving: keep the working set in RAM.
    echo "vm.swappiness=10" >/etc/sysctl.d/90-melanoma.conf
    sysctl -q -p /etc/sysctl.d/90-melanoma.conf
}

# Amazon Linux 2023 packages only; Python libraries come from the bundle's wheelhouse.
install_packages() {
    dnf install -y -q python3.11 nginx tar gzip rsyslog logrotate amazon-cloudwatch-agent
    PYTHON=python3.11
}

ensure_user() {
    id -u "$SERVICE_USER" >/dev/null 2>&1 && return 0
    useradd --system --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin "$SERVICE_USER"
}

# Each bundle unpacks into its own release folder; the app symlink flips atomically.
install_app() {
    local digest release staging
    digest=$(sha256sum -- "$bundle" | cut -c1-16)
    release="$PREFIX/releases/$digest"
    install -d -m 0755 "$PREFIX/releases"
    if [[ ! -d "$release" ]]; then
        staging=$(mktemp -d "$PREFIX/releases/.staging.XXXXXX")
        tar -xzf "$bundle" -C "$staging" --no-same-owner
        chmod 0755 "$staging"
        mv -T "$staging" "$release"
    fi
    ln -sfn "$release" "$PREFIX/app.next"
    mv -T "$PREFIX/app.next" "$PREFIX/app"
    # Keep the three newest releases so a bad bundle can be rolled back by hand.
    find "$PREFIX/releases" -mindepth 1 -maxdepth 1 -type d ! -name '.staging.*' -printf '%T@ %p\n' \
        | sort -rn | tail -n +4 | cut -d' ' -f2- | while read -r old; do
            [[ "$old" == "$release" ]] || rm -rf -- "$old"
        done
}

# Never an index at boot: the lock's hashes and the bundle's wheels, nothing else.
install_venv() {
    local lock wheels stamp_file wanted
    lock="$PREFIX/app/requirements.lock"
    wheels="$PREFIX/app/wheelhouse/$(uname -m)"
    [[ -r "$lock" ]] || die "bundle has no requirements.lock"
    [[ -d "$wheels" ]] || die "bundle has no wheelhouse for $(uname -m)"
    # The serving box never builds a model: refuse a bundle that would pull torch in.
    if grep -qiE '^[[:space:]]*(torch|torchvision|resnest|onnx)([[:space:]]*[=<>~!\[;]|[[:space:]]*$)' "$lock"; then
        die "requirements.lock asks for a training/export package; the host serves ONNX only"
    fi
    stamp_file="$PREFIX/venv/.requirements.sha256"
    wanted="$(sha256sum -- "$lock" | cut -d' ' -f1) $("$PYTHON" -V 2>&1)"
    if [[ -f "$stamp_file" && "$(cat "$stamp_file")" == "$wanted" ]]; then
        return 0
    fi
    log "installing the locked serving requirements into $PREFIX/venv"
    "$PYTHON" -m venv --clear "$PREFIX/venv"
    "$PREFIX/venv/bin/pip" install --quiet --no-cache-dir --disable-pip-version-check \
        --no-index --find-links "$wheels" --require-hashes --only-binary :all: -r "$lock"
    echo "$wanted" >"$stamp_file"
}

install_model() {
    local models target
    models="$PREFIX/models"
    target="$models/$MODEL_SHA256.onnx"
    install -d -m 0755 "$models"
    fetch_verified "$MODEL_KEY" "$MODEL_SHA256" "$target" "model"
    install_int8_model "$models"
    switch_model "$MODEL_SHA256"
}

# fetch_verified KEY SHA256 TARGET WHAT: TARGET holds the object KEY with that hash, fetched
# only when it does not already; a download that does not match is removed, never used.
fetch_verified() {
    local key=$1 sha=$2 target=$3 what=$4 part
    bash "$PREFIX/app/infra/host/verify-model.sh" "$target" "$sha" >/dev/null 2>&1 && return 0
    log "fetching $what s3://$ARTIFACT_BUCKET/$key"
    part="$target.part"
    rm -f -- "$part"
    aws s3api get-object --region "$AWS_REGION" "${S3_OWNER[@]}" \
        --bucket "$ARTIFACT_BUCKET" --key "$key" "$part" >/dev/null
    bash "$PREFIX/app/infra/host/verify-model.sh" "$part" "$sha" \
        || { rm -f -- "$part"; die "downloaded $what does not match its SHA-256 $sha"; }
    chmod 0644 "$part"
    mv -f -- "$part" "$target"
}

# The INT8 model exported beside the fp32 one, as <fp32 sha>.int8.onnx, where the server
# looks for it (inference/precision.py); it serves it only where gated and faster here.
install_int8_model() {
    local models=$1 target
    [[ -n "${INT8_MODEL_SHA256:-}" ]] || return 0
    target="$models/$MODEL_SHA256.int8.onnx"
    fetch_verified "$INT8_MODEL_KEY" "$INT8_MODEL_SHA256" "$target" "INT8 model"
}

# The sha256 of the model being served now, or nothing on a first boot.
served_model() {
    local link
    link=$(readlink -- "$PREFIX/models/current.onnx" 2>/dev/null) || return 0
    [[ -f "$link" ]] || return 0
    basename -- "$link" .onnx
}

switch_model() {
    local models=$PREFIX/models
    if [[ -f "$models/$1.int8.onnx" ]]; then
        ln -sfn "$models/$1.int8.onnx" "$models/current.int8.next"
        mv -T "$models/current.int8.next" "$models/current.int8.onnx"
    else
        rm -f -- "$models/current.int8.onnx"
    fi
    ln -sfn "$models/$1.onnx" "$models/current.next"
    mv -T "$models/current.next" "$models/current.onnx"
}

# Only once the new model serves: the previous one stays for the next rollback.
prune_models() {
    local models=$PREFIX/models keep=$1
    find "$models" -maxdepth 1 -name '*.onnx' ! -name '*.int8.onnx' -type f ! -name "$keep.onnx" -printf '%T@ %p\n' \
        | sort -rn | tail -n +2 | cut -d' ' -f2- | while read -r old; do rm -f -- "$old"; done
    # An INT8 model goes with its fp32 one.
    find "$models" -maxdepth 1 -name '*.int8.onnx' -type f | while read -r int8; do
        [[ -f "${int8%.int8.onnx}.onnx" ]] || rm -f -- "$int8"
    done
}

render_configs() {
    local rendered sha=$1
    rendered=$(mktemp -d)
    python3 "$PREFIX/app/infra/host/render.py" --out "$rendered" --nginx-main \
        --model-sha256 "$sha" --front "$FRONT" --instance-type "$INSTANCE_TYPE" \
        --app-dir "$PREFIX/app" --venv-dir "$PREFIX/venv" \
        --model-path "$PREFIX/models/current.onnx" \
        --user "$SERVICE_USER" \
        --env-file "$CONF_DIR/melanoma.env" --secret-env-file "$CONF_DIR/secret.env" \
        --trusted-proxy-cidr "$TRUSTED_PROXY_CIDR" >/dev/null
    install -d -m 0755 "$CONF_DIR"
    install -m 0644 "$rendered/melanoma.service" /etc/systemd/system/melanoma.service
    install -m 0644 "$rendered/melanoma.env" "$CONF_DIR/melanoma.env"
    install -m 0644 "$rendered/melanoma-nginx.conf" /etc/nginx/conf.d/melanoma.conf
    # Ours replaces the distribution's main config: its worker and connection limits are sized
    # for this box (templates/nginx.conf.in), and its stock server would also claim port 80.
    install -m 0644 "$rendered/nginx.conf" /etc/nginx/nginx.conf
    # Debian's stock site also claims default_server on port 80 (ours does not include it).
    rm -f /etc/nginx/sites-enabled/default
    rm -rf -- "$rendered"
}

# One secret for every host of the stack, so a form served by one host posts to any other.
# Fetched on every run: replacing the secret in Secrets Manager reaches the hosts on the next
# update.
ensure_secret() {
    local secret
    secret=$(aws secretsmanager get-secret-value --region "$AWS_REGION" --secret-id "$SECRET_ID" \
        --query SecretString --output text)
    [[ "$secret" =~ ^[A-Za-z0-9]{32,}$ ]] || die "the app secret $SECRET_ID is not 32+ letters and digits"
    install -d -m 0755 "$CONF_DIR"
    (umask 077 && printf 'MELANOMA_SECRET_KEY=%s\n' "$secret" >"$CONF_DIR/secret.env.next")
    mv -f -- "$CONF_DIR/secret.env.next" "$CONF_DIR/secret.env"
}

# The journal (gunicorn, nginx via syslog) goes to files the CloudWatch agent ships; nothing
# on the host outlives a replacement.
configure_logs() {
    local agent_conf=/opt/aws/amazon-cloudwatch-agent/etc/melanoma.json
    install -d -m 0750 /var/log/melanoma
    cat >/etc/rsyslog.d/30-melanoma.conf <<'RSYSLOG'
template(name="melanoma_bare" type="string" string="%msg:::drop-last-lf%\n")
if $programname == 'nginx_melanoma' then {
    action(type="omfile" file="/var/log/melanoma/nginx-access.log" template="melanoma_bare")
    stop
}
if $programname == 'melanoma' or $programname == 'gunicorn' or $programname == 'bootstrap' then {
    action(type="omfile" file="/var/log/melanoma/app.log")
    stop
}
RSYSLOG
    cat >/etc/logrotate.d/melanoma <<'ROTATE'
/var/log/melanoma/*.log {
    daily
    rotate 3
    compress
    missingok
    notifempty
    postrotate
        systemctl kill -s HUP rsyslog.service
    endscript
}
ROTATE
    install -d -m 0755 "$(dirname "$agent_conf")"
    cat >"$agent_conf" <<AGENT
{
  "agent": {"run_as_user": "root"},
  "logs": {
    "logs_collected": {
      "files": {
        "collect_list": [
          {"file_path": "/var/log/melanoma/app.log", "log_group_name": "$APP_LOG_GROUP", "log_stream_name": "{instance_id}/app"},
          {"file_path": "/var/log/nginx/error.log", "log_group_name": "$APP_LOG_GROUP", "log_stream_name": "{instance_id}/nginx-error"},
          {"file_path": "/var/log/melanoma/nginx-access.log", "log_group_name": "$ACCESS_LOG_GROUP", "log_stream_name": "{instance_id}"}
        ]
      }
    }
  }
}
AGENT
    systemctl enable --quiet rsyslog.service
    systemctl restart rsyslog.service
    /opt/aws/amazon-cloudwatch-agent/bin/amazon-cloudwatch-agent-ctl -a fetch-config -m ec2 \
        -c "file:$agent_conf" -s >/dev/null
}

start_services() {
    systemctl daemon-reload
    systemctl enable --quiet melanoma.service
    # Restart, not reload: a new model or bundle must be loaded (and re-verified) afresh.
    systemctl restart melanoma.service
    nginx -t -q
    systemctl enable --quiet nginx.service
    systemctl reload-or-restart nginx.service
}

wait_ready() {
    local _
    for _ in $(seq 1 "${READY_TRIES:-90}"); do
        if curl -fsS -o /dev/null --max-time 5 "$READY_URL"; then
            log "ready: $READY_URL"
            return 0
        fi
        sleep 2
    done
    journalctl -u melanoma.service -n 50 --no-pager >&2 || true
    return 1
}

instance_id() {
    local token
    token=$(curl -fsS -X PUT --max-time 5 -H 'X-aws-ec2-metadata-token-ttl-seconds: 60' \
        http://169.254.169.254/latest/api/token)
    curl -fsS --max-time 5 -H "X-aws-ec2-metadata-token: $token" \
        http://169.254.169.254/latest/meta-data/instance-id
}

# `deploy update-model` polls this object for the hash it shipped, or for the rollback.
report_status() {
    local state=$1 serving=$2 report
    report=$(mktemp)
    printf '{"state": "%s", "serving_sha256": "%s", "wanted_sha256": "%s", "time": "%s"}\n' \
        "$state" "$serving" "$MODEL_SHA256" "$(date -u +%Y-%m-%dT%H:%M:%SZ)" >"$report"
    aws s3api put-object --region "$AWS_REGION" "${S3_OWNER[@]}" --bucket "$ARTIFACT_BUCKET" \
        --key "$STACK_NAME/status/$(instance_id).json" --content-type application/json \
        --body "$report" >/dev/null
    rm -f -- "$report"
}

serve() {
    render_configs "$1"
    start_services
    wait_ready
}

ensure_swap
install_packages
ensure_user
configure_logs
install_app
install_venv
ensure_secret
previous=$(served_model)
install_model
if serve "$MODEL_SHA256"; then
    prune_models "$MODEL_SHA256"
    report_status serving "$MODEL_SHA256"
    exit 0
fi
if [[ -n "$previous" && "$previous" != "$MODEL_SHA256" ]]; then
    log "model $MODEL_SHA256 did not become ready; rolling back to $previous"
    switch_model "$previous"
    if serve "$previous"; then
        report_status rolled-back "$previous"
        die "model $MODEL_SHA256 failed readiness; rolled back to $previous"
    fi
fi
report_status failed ""
die "app did not become ready through nginx"
