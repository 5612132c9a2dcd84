#!/bin/bash
# On-host setup, run as root by cfn-init at first boot and again by cfn-hup whenever the
# stack's artifacts change. Every step checks before it acts, so a second run with the same
# inputs changes nothing and a run with a new model or bundle swaps only what differs.
#
# Usage: bootstrap.sh --bundle APP_TAR_GZ --deploy-env FILE
#   FILE sets ARTIFACT_BUCKET, MODEL_KEY, MODEL_SHA256, AWS_REGION and optionally
#   SWAP_MIB (default 1024) and TRUSTED_PROXY_CIDR (set behind a load balancer).
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
        -h|--help) sed -n '2,9p' "$0"; exit 0 ;;
        *) die "unknown argument: $1" ;;
    esac
done
[[ -r "$bundle" ]] || die "--bundle must name a readable app bundle"
[[ -r "$deploy_env" ]] || die "--deploy-env must name a readable file"
[[ $EUID -eq 0 ]] || die "must run as root"

# shellcheck source=/dev/null
. "$deploy_env"
: "${ARTIFACT_BUCKET:?missing in deploy env}" "${MODEL_KEY:?missing in deploy env}"
: "${MODEL_SHA256:?missing in deploy env}" "${AWS_REGION:?missing in deploy env}"
SWAP_MIB=${SWAP_MIB:-1024}
TRUSTED_PROXY_CIDR=${TRUSTED_PROXY_CIDR:-}

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

install_packages() {
    if command -v dnf >/dev/null; then
        dnf install -y -q python3.11 nginx tar gzip
        PYTHON=python3.11
    elif command -v apt-get >/dev/null; then
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q python3 python3-venv nginx
        PYTHON=python3
    else
        die "neither dnf nor apt-get found"
    fi
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

install_venv() {
    local requirements stamp_file wanted
    requirements="$PREFIX/app/requirements.txt"
    [[ -r "$requirements" ]] || die "bundle has no requirements.txt"
    # The serving box never builds a model: refuse a bundle that would pull torch in.
    if grep -qiE '^[[:space:]]*(torch|torchvision|resnest|onnx)([[:space:]]*[=<>~!\[;]|[[:space:]]*$)' "$requirements"; then
        die "requirements.txt asks for a training/export package; the host serves ONNX only"
    fi
    stamp_file="$PREFIX/venv/.requirements.sha256"
    wanted="$(sha256sum -- "$requirements" | cut -d' ' -f1) $("$PYTHON" -V 2>&1)"
    if [[ -f "$stamp_file" && "$(cat "$stamp_file")" == "$wanted" ]]; then
        return 0
    fi
    log "installing serving requirements into $PREFIX/venv"
    "$PYTHON" -m venv "$PREFIX/venv"
    "$PREFIX/venv/bin/pip" install --quiet --no-cache-dir --disable-pip-version-check -r "$requirements"
    echo "$wanted" >"$stamp_file"
}

install_model() {
    local models target part
    models="$PREFIX/models"
    target="$models/$MODEL_SHA256.onnx"
    install -d -m 0755 "$models"
    if ! bash "$PREFIX/app/infra/host/verify-model.sh" "$target" "$MODEL_SHA256" >/dev/null 2>&1; then
        log "fetching model s3://$ARTIFACT_BUCKET/$MODEL_KEY"
        part="$target.part"
        rm -f -- "$part"
        aws s3 cp --only-show-errors --region "$AWS_REGION" "s3://$ARTIFACT_BUCKET/$MODEL_KEY" "$part"
        bash "$PREFIX/app/infra/host/verify-model.sh" "$part" "$MODEL_SHA256" \
            || { rm -f -- "$part"; die "downloaded model does not match MODEL_SHA256"; }
        chmod 0644 "$part"
        mv -f -- "$part" "$target"
    fi
    ln -sfn "$target" "$models/current.next"
    mv -T "$models/current.next" "$models/current.onnx"
    # The previous model stays for a manual rollback; older ones go.
    find "$models" -maxdepth 1 -name '*.onnx' -type f ! -name "$MODEL_SHA256.onnx" -printf '%T@ %p\n' \
        | sort -rn | tail -n +2 | cut -d' ' -f2- | while read -r old; do rm -f -- "$old"; done
}

render_configs() {
    local rendered
    rendered=$(mktemp -d)
    python3 "$PREFIX/app/infra/host/render.py" --out "$rendered" \
        --model-sha256 "$MODEL_SHA256" \
        --app-dir "$PREFIX/app" --venv-dir "$PREFIX/venv" \
        --model-path "$PREFIX/models/current.onnx" \
        --user "$SERVICE_USER" \
        --env-file "$CONF_DIR/melanoma.env" --secret-env-file "$CONF_DIR/secret.env" \
        --trusted-proxy-cidr "$TRUSTED_PROXY_CIDR" >/dev/null
    install -d -m 0755 "$CONF_DIR"
    install -m 0644 "$rendered/melanoma.service" /etc/systemd/system/melanoma.service
    install -m 0644 "$rendered/melanoma.env" "$CONF_DIR/melanoma.env"
    install -m 0644 "$rendered/melanoma-nginx.conf" /etc/nginx/conf.d/melanoma.conf
    # Debian's stock site also claims default_server on port 80.
    rm -f /etc/nginx/sites-enabled/default
    rm -rf -- "$rendered"
}

ensure_secret() {
    [[ -s "$CONF_DIR/secret.env" ]] && return 0
    (umask 077 && echo "MELANOMA_SECRET_KEY=$(python3 -c 'import secrets; print(secrets.token_hex(32))')" \
        >"$CONF_DIR/secret.env")
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
    for _ in $(seq 1 90); do
        if curl -fsS -o /dev/null --max-time 5 "$READY_URL"; then
            log "ready: $READY_URL"
            return 0
        fi
        sleep 2
    done
    journalctl -u melanoma.service -n 50 --no-pager >&2 || true
    die "app did not become ready through nginx"
}

ensure_swap
install_packages
ensure_user
install_app
install_venv
install_model
render_configs
ensure_secret
start_services
wait_ready
