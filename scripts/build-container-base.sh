#!/usr/bin/env bash
# Build a local Debian bookworm image with Python 3.11, pip and venv, to stand in for the
# official python:3.11-slim-bookworm where no image registry is reachable (the tests here):
# debootstrap from the host's own Debian mirror, then `podman import`. Cached: an image of
# that name already present is kept. Needs root (debootstrap), podman and debootstrap.
#
#   scripts/build-container-base.sh [IMAGE]      # default localhost/python:3.11-slim-bookworm
#   DEBIAN_MIRROR=URL scripts/build-container-base.sh   # where the host has no bookworm source
#   ARCH=arm64 scripts/build-container-base.sh localhost/python:3.11-slim-bookworm-arm64
#       (another architecture: needs qemu-user-static registered with binfmt_misc)
set -euo pipefail

image=${1:-localhost/python:3.11-slim-bookworm}
arch=${ARCH:-$(dpkg --print-architecture)}
if podman image exists "$image"; then
  exit 0
fi
[ "$(id -u)" -eq 0 ] || { echo "error: debootstrap needs root" >&2; exit 1; }

# The mirror apt already uses for bookworm on this host (no address is written here).
# shellcheck disable=SC2016  # apt expands $(REPO_URI), not the shell
mirror=${DEBIAN_MIRROR:-$(apt-get indextargets --format '$(REPO_URI) $(CODENAME)' 2>/dev/null \
  | awk '$2 == "bookworm" && $1 !~ /security/ {print $1; exit}')}
[ -n "$mirror" ] || { echo "error: no bookworm source in apt's lists; set DEBIAN_MIRROR" >&2; exit 1; }

root=$(mktemp -d /var/tmp/melanoma-base.XXXXXX)
trap 'rm -rf "$root"' EXIT
echo "debootstrap bookworm ($arch) from $mirror into $root (a few minutes, once)"
debootstrap --arch="$arch" --variant=minbase --include=python3,python3-venv,python3-pip,ca-certificates \
  bookworm "$root" "$mirror" >"$root.log" 2>&1 || { tail -20 "$root.log" >&2; exit 1; }
rm -f "$root.log"

# What the official slim images leave out too: apt's lists and caches, documentation,
# manuals and translations (nothing here reads them).
rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/* "$root"/var/cache/debconf/*-old \
  "$root"/usr/share/doc/* "$root"/usr/share/man/* "$root"/usr/share/info/* \
  "$root"/usr/share/locale/* "$root"/var/log/*
# A later `apt-get install` in the image keeps those out as well.
cat >"$root/etc/dpkg/dpkg.cfg.d/slim" <<'EOF'
path-exclude /usr/share/doc/*
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
EOF

tar --numeric-owner -C "$root" -c . | podman import --quiet --os linux --arch "$arch" \
  --change 'ENV LANG=C.UTF-8' \
  --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --change 'CMD ["python3"]' \
  - "$image" >/dev/null
echo "built $image ($(podman image inspect --format '{{.Size}}' "$image") bytes)"
