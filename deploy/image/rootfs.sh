#!/bin/sh
# Lays out the image's root file system from a built binary, for both image recipes:
# deploy/Dockerfile (a registry's Rust image builds the binary) and deploy/image/build.sh
# (buildah, FROM scratch, from this machine's own build). One script, so both images hold
# the same files at the same places:
#   /usr/local/bin/bearward            the binary
#   /lib*, /usr/lib*                   the shared libraries it links (glibc, libgcc_s), as ldd lists them
#   /etc/ssl/certs/ca-certificates.crt CA roots for HTTPS JWKS, discovery and upstreams
#   /etc/passwd, /etc/group            root and the bearward user (uid 10001), so tools name it
#   /etc/nsswitch.conf                 name lookups from /etc/hosts, then DNS
#   /etc/bearward/bearward.toml        the example config (mount your own over /etc/bearward)
#   /tmp                               writable scratch, mode 1777 (bearward demo writes there)
# usage: rootfs.sh BINARY CONFIG OUT_DIR
set -eu
bin=$1 config=$2 out=$3
[ -x "$bin" ] || { echo "rootfs.sh: $bin is not an executable" >&2; exit 1; }
rm -rf "$out"
mkdir -p "$out/usr/local/bin" "$out/etc/ssl/certs" "$out/etc/bearward" "$out/tmp"
chmod 1777 "$out/tmp"
install -m 0755 "$bin" "$out/usr/local/bin/bearward"
# Every library the binary needs, and the dynamic loader, at the paths ldd resolves them to.
ldd "$bin" | awk '/=> \// { print $3 } /^[[:space:]]*\/[^ ]+ \(/ { print $1 }' | sort -u |
  while read -r lib; do
    mkdir -p "$out$(dirname "$lib")"
    cp -L "$lib" "$out$lib"
  done
cp -L /etc/ssl/certs/ca-certificates.crt "$out/etc/ssl/certs/ca-certificates.crt"
printf 'root:x:0:0:root:/:/usr/sbin/nologin\nbearward:x:10001:10001:bearward:/:/usr/sbin/nologin\n' >"$out/etc/passwd"
printf 'root:x:0:\nbearward:x:10001:\n' >"$out/etc/group"
printf 'hosts: files dns\n' >"$out/etc/nsswitch.conf"
install -m 0644 "$config" "$out/etc/bearward/bearward.toml"
