#!/usr/bin/env bash
# Builds the wasm-run container image with Podman where no image registry
# is reachable: the runtime base is made from Debian's packages
# (debootstrap), the binary is built outside and copied in (the Dockerfile's
# `prebuilt` target). Every step uses host networking; nothing listens.
#
#   deploy/image.sh [--binary PATH] [--tag TAG]
#
# Default binary: target/release/wasm-run (built first if missing); default
# tag: localhost/wasm-run:latest. Prints the image's size. Needs podman,
# runc and debootstrap (Debian: apt-get install podman runc debootstrap).
set -euo pipefail
cd "$(dirname "$0")/.."
binary=target/release/wasm-run
tag=localhost/wasm-run:latest
while [ $# -gt 0 ]; do
    case "$1" in
        --binary) binary=$2; shift 2 ;;
        --tag) tag=$2; shift 2 ;;
        *) echo "usage: deploy/image.sh [--binary PATH] [--tag TAG]" >&2; exit 2 ;;
    esac
done
export CONTAINERS_CONF="${CONTAINERS_CONF:-$PWD/deploy/containers.conf}"
base=localhost/debian:bookworm-slim
mirror="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

if ! podman image exists "$base"; then
    echo "image.sh: making $base from Debian's packages ($mirror)" >&2
    debootstrap --variant=minbase bookworm "$work/root" "$mirror" >"$work/debootstrap.log" 2>&1 \
        || { tail -20 "$work/debootstrap.log" >&2; exit 1; }
    # What a slim image leaves out: package lists, caches, documentation.
    rm -rf "$work/root/var/lib/apt/lists"/* "$work/root/var/cache/apt"/*.bin \
        "$work/root/usr/share/doc" "$work/root/usr/share/man" "$work/root/usr/share/locale"
    tar -C "$work/root" -c . | podman import --quiet --change 'CMD ["bash"]' - "$base" >/dev/null
    rm -rf "$work/root"
fi

if [ ! -x "$binary" ]; then
    cargo build --release -p wasm-run-cli --bin wasm-run
fi
mkdir "$work/context"
cp "$binary" "$work/context/wasm-run"
strip "$work/context/wasm-run"
podman build --network host --quiet --format docker -f deploy/Dockerfile --target prebuilt \
    --build-arg RUNTIME_IMAGE="$base" -t "$tag" "$work/context" >/dev/null
size=$(podman image inspect --format '{{.Size}}' "$tag")
echo "image.sh: built $tag ($((size / 1024 / 1024)) MiB; base $base)"
