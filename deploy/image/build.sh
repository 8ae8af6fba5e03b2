#!/bin/sh
# Builds the bearward image with buildah, FROM scratch, from packages this machine reaches:
# the release binary built here, its shared libraries, Debian's CA roots. No registry is asked.
#   deploy/image/build.sh [TAG] [BINARY]
# TAG defaults to localhost/bearward:latest; BINARY to a fresh `cargo build --release`. For
# the profile-guided binary, the production build: deploy/image/build.sh TAG "$(deploy/pgo.sh)".
set -eu
cd "$(dirname "$0")/../.."
tag=${1:-localhost/bearward:latest}
bin=${2:-}
if [ -z "$bin" ]; then
  cargo build --release --locked --bin bearward
  bin=${CARGO_TARGET_DIR:-target}/release/bearward
fi
ctx=$(mktemp -d)
trap 'rm -rf "$ctx"' EXIT
sh deploy/image/rootfs.sh "$bin" deploy/bearward.toml "$ctx/rootfs"
strip "$ctx/rootfs/usr/local/bin/bearward" 2>/dev/null || true
buildah build --quiet --layers=false -f deploy/image/Containerfile -t "$tag" "$ctx"
