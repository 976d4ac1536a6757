#!/usr/bin/env bash
# OFFLINE FALLBACK base image: a Debian bookworm rootfs with python3.11 (what python:3.11-slim provides),
# built with debootstrap and imported under the base image's name, so BentoML's generated Dockerfile builds
# unchanged on a host that reaches no container registry. Called by scripts/container_smoke.sh when the
# base cannot be pulled; usable alone:
#
#   scripts/offline_base.sh TOOL [REF] [CACHE_DIR]
#     TOOL       podman or docker
#     REF        image name to import as (default docker.io/library/python:3.11-slim)
#     CACHE_DIR  where the temporary rootfs is built (default ~/.cache/cifar10-service/container)
#
# Environment: DEBOOTSTRAP_MIRROR (default http://deb.debian.org/debian). Needs root and debootstrap, a
# reachable Debian mirror, and later PyPI. The image carries ENV CIFAR10_BASE_STANDIN so it is never
# mistaken for the real one; remove it with `TOOL rmi REF` once the registry is reachable.
set -euo pipefail

TOOL="${1:?usage: scripts/offline_base.sh TOOL [REF] [CACHE_DIR]}"
REF="${2:-docker.io/library/python:3.11-slim}"
CACHE_DIR="${3:-${XDG_CACHE_HOME:-$HOME/.cache}/cifar10-service/container}"
MIRROR="${DEBOOTSTRAP_MIRROR:-http://deb.debian.org/debian}"

die() { printf 'ERROR: %s\n' "$*" >&2; exit 2; }
command -v debootstrap >/dev/null || die "the offline fallback needs debootstrap (apt-get install -y debootstrap)."
[[ $EUID -eq 0 ]] || die "the offline fallback (debootstrap) must run as root; or make $REF pullable."
command -v "$TOOL" >/dev/null || die "$TOOL is not installed."

mkdir -p "$CACHE_DIR"
ROOTFS="$(mktemp -d "$CACHE_DIR/standin-rootfs.XXXXXX")"
LOG="$(mktemp "${TMPDIR:-/tmp}/offline-base.XXXXXX.log")"
# shellcheck disable=SC2317  # invoked by the EXIT trap
cleanup() {
    for m in proc sys dev/pts dev; do umount "$ROOTFS/$m" 2>/dev/null || true; done
    rm -rf --one-file-system "$ROOTFS" "$LOG"
}
trap cleanup EXIT

t0="$(date +%s)"
echo "==> [OFFLINE FALLBACK] building a local stand-in for $REF with debootstrap (bookworm minbase, $MIRROR)"
if ! debootstrap --variant=minbase --include=python3,python3-venv,python3-pip,ca-certificates \
        bookworm "$ROOTFS" "$MIRROR" >"$LOG" 2>&1; then
    tail -n 40 "$LOG" >&2
    die "debootstrap failed (log above); is $MIRROR reachable?"
fi
# The host's CA bundle (it may hold a TLS-inspecting proxy's CA that pip and uv must trust).
if [[ -f /etc/ssl/certs/ca-certificates.crt ]]; then
    cp /etc/ssl/certs/ca-certificates.crt "$ROOTFS/etc/ssl/certs/ca-certificates.crt"
fi
rm -f "$ROOTFS"/usr/lib/python3.*/EXTERNALLY-MANAGED
ln -sf python3 "$ROOTFS/usr/bin/python"
for m in proc sys dev/pts dev; do umount "$ROOTFS/$m" 2>/dev/null || true; done
tar -C "$ROOTFS" -c . | "$TOOL" import \
    --change 'ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt' \
    --change 'ENV SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt' \
    --change 'ENV UV_NATIVE_TLS=1' \
    --change 'ENV CIFAR10_BASE_STANDIN=debootstrap-bookworm-minbase' \
    --change 'CMD ["/bin/bash"]' \
    - "$REF" >"$LOG" 2>&1 || { cat "$LOG" >&2; die "$TOOL import of the stand-in failed."; }
size="$("$TOOL" image inspect --format '{{.Size}}' "$REF" 2>/dev/null || echo 0)"
echo "==> [OFFLINE FALLBACK] stand-in $REF built in $(( $(date +%s) - t0 ))s ($(numfmt --to=iec-i --suffix=B "$size" 2>/dev/null || echo "$size bytes")); cached for later runs"
